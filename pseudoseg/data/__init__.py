"""Data sets: readers for 2-D image folders, CT and MRI volumes and nnU-Net data sets; splits, the sample cache, augmentation."""

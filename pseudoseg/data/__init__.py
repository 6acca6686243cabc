"""Data sets: the data formats (found by ``data.kind`` in :mod:`pseudoseg.data.registry`; built in: 2-D
image folders and NIfTI volumes, each with nnU-Net's layout; plug-ins through the ``pseudoseg.data_sources``
entry point), splits, the sample cache, augmentation and ``pseudoseg data check``."""

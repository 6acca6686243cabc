"""pseudoseg: semi-supervised medical image segmentation with pseudo labels."""

__version__ = "0.1.0"

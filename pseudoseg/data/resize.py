"""Resizing images and masks to the working resolution, as training, evaluation and prediction all do."""

from __future__ import annotations

import numpy as np
from PIL import Image

from pseudoseg.data.classes import resize_class_indices


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [C, size, size], bilinear (area-like when shrinking)."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8).reshape(size, size, -1).transpose(2, 0, 1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Class indices [H, W] (bool: one class) -> uint8 [size, size] class indices.

    Each class's indicator is resized bilinearly as a 0/255 image and each
    pixel takes the class of the largest value, the background's being 255
    minus the resized union of the classes (ties: the lower index). For one
    class: bilinear then 0.5 (``>= 128``), smoother than nearest.
    """
    return resize_class_indices(mask, lambda indicator: _resize_indicator(indicator, size), 255.0)


def _resize_indicator(indicator: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> uint8 [size, size] in 0..255, bilinear."""
    resized = Image.fromarray(indicator.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized)

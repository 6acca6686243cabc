"""Segmentation losses on logits, per sample, with an optional pixel mask.

Losses are averaged per image (Dice over each image's pixels, then the mean
over the batch), so averaging over processes equals the loss of the global
batch. Targets may be soft (teacher probabilities) or hard; pixels where
``valid`` is 0 (low-confidence pseudo labels) do not count.

With soft targets MONAI's ``soft_label=True`` Dice is used, which is smallest
exactly when the prediction equals the target. The momentum paper's code uses
the plain Dice formula, which with soft targets rewards predictions more
confident than the teacher; with hard targets the two coincide.

One output channel: sigmoid Dice (+ binary cross-entropy). Several (C + 1,
see :mod:`pseudoseg.engine.labels`): softmax Dice over the C foreground
channels, the background left out of the Dice as is usual (its Dice would be
near 1 on every image), + cross-entropy over all C + 1 classes. Targets are
probability maps with the network's channels (one-hot for hard labels).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, MaskedDiceLoss
from torch import nn

from pseudoseg.engine.labels import probabilities


class SegmentationLoss(nn.Module):
    def __init__(self, kind: str = "dice", *, smooth: float = 1e-5, channels: int = 1) -> None:
        super().__init__()
        self.kind = kind
        self.channels = channels
        binary = channels == 1
        activation = {"sigmoid": True} if binary else {"softmax": True, "include_background": False}
        self.dice = DiceLoss(soft_label=True, smooth_nr=smooth, smooth_dr=smooth, **activation)
        self.masked_dice = MaskedDiceLoss(soft_label=True, smooth_nr=smooth, smooth_dr=smooth, **activation)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """``logits`` and ``target`` ``[B, K, H, W]`` (target: probabilities); ``valid`` ``[B, 1, H, W]`` or None."""
        logits = logits.float()
        target = target.float()
        dice = self.dice(logits, target) if valid is None else self.masked_dice(logits, target, mask=valid)
        if self.kind == "dice":
            return dice
        if self.channels == 1:
            pixel_loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        else:  # cross-entropy against probability targets, per pixel
            pixel_loss = -(target * F.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)
        return dice + masked_mean_per_image(pixel_loss, valid)


def masked_mean_per_image(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over each image's counted pixels, then over the batch.

    Per image, so that a batch split over processes averages to the loss of the
    whole batch even when images count different numbers of pixels (confidence
    masks). An image with no counted pixel contributes 0.
    """
    if valid is None:
        return values.flatten(1).mean(1).mean()
    valid = valid.expand_as(values).flatten(1)
    return ((values.flatten(1) * valid).sum(1) / valid.sum(1).clamp_min(1.0)).mean()


def probability_mse(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None, *, channels: str = "sum") -> torch.Tensor:
    """Mean Teacher's consistency: the squared error between the probabilities of ``logits``
    and the target probabilities, summed (``channels="sum"``) or averaged (``"mean"``, the
    common medical implementations') over the channels of a pixel, then averaged per image
    (:func:`masked_mean_per_image`). One sigmoid channel: the two agree."""
    squared = (probabilities(logits) - target) ** 2
    per_pixel = squared.sum(dim=1, keepdim=True) if channels == "sum" else squared.mean(dim=1, keepdim=True)
    return masked_mean_per_image(per_pixel, valid)


def sigmoid_rampup(step: int, length: int) -> float:
    """exp(-5 (1 - t)^2) for t = step / length in [0, 1] (Laine & Aila); 1 when length is 0."""
    if length <= 0:
        return 1.0
    t = min(max(step / length, 0.0), 1.0)
    return math.exp(-5.0 * (1.0 - t) ** 2)

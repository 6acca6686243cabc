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

Two losses of the published codes compute one Dice per class over the whole
batch instead (``train.loss: batch_dice``, ``batch_dice_ce``): with several
processes each computes it over its share of the batch, as those codes do.
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
        if self.kind == "batch_dice":
            return smp_batch_dice(logits, target, valid)
        if self.kind == "batch_dice_ce":
            return medical_dice_ce(logits, target, valid)
        dice = self.dice(logits, target) if valid is None else self.masked_dice(logits, target, mask=valid)
        if self.kind == "dice":
            return dice
        return dice + masked_mean_per_image(pixel_cross_entropy(logits, target), valid)


def pixel_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Each pixel's cross-entropy against probability targets, ``[B, 1, ...]``: binary for one
    sigmoid channel, over the softmax's channels for several."""
    if logits.shape[1] == 1:
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return -(target * F.log_softmax(logits, dim=1)).sum(dim=1, keepdim=True)


def class_maps(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities and targets of every class, the background included: one sigmoid channel
    as its two classes (background, foreground), several channels as they are (softmax)."""
    if logits.shape[1] == 1:
        foreground = torch.sigmoid(logits)
        return torch.cat([1.0 - foreground, foreground], 1), torch.cat([1.0 - target, target], 1)
    return torch.softmax(logits, 1), target


def batch_dice_per_class(probs: torch.Tensor, classes: torch.Tensor, region: torch.Tensor, *, smooth: float) -> torch.Tensor:
    """``1 - (2 sum p t + e) / (sum p^2 + sum t^2 + e)`` per class, each sum over the whole batch's
    pixels where ``region`` is 1 (the Dice of SSL4MIS, UniMatch's medical code and BCP): ``[K]``."""
    dims = (0, *range(2, probs.ndim))
    intersection = (probs * classes * region).sum(dims)
    denominator = (probs.square() * region).sum(dims) + (classes.square() * region).sum(dims)
    return 1.0 - (2.0 * intersection + smooth) / (denominator + smooth)


def medical_dice_ce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """UniMatch's medical loss (``train.loss: batch_dice_ce``): ``(CE + Dice) / 2``, the Dice of
    :func:`batch_dice_per_class` (e = 1e-5) averaged over every class, the background included,
    the cross-entropy averaged over the counted pixels of the batch."""
    probs, classes = class_maps(logits, target)
    region = torch.ones_like(probs[:, :1]) if valid is None else valid.float()
    pixel_ce = pixel_cross_entropy(logits, target)
    cross_entropy = (pixel_ce * region).sum() / region.expand_as(pixel_ce).sum().clamp_min(1.0)
    return (cross_entropy + batch_dice_per_class(probs, classes, region, smooth=1e-5).mean()) / 2.0


def smp_batch_dice(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """segmentation-models-pytorch's ``DiceLoss`` (the momentum authors' loss; ``train.loss:
    batch_dice``): per class, ``1 - 2 sum p t / max(sum p + sum t, 1e-7)`` over the whole batch,
    0 for a class without target pixels in the batch, averaged over the classes: the foreground
    alone for one sigmoid channel, every class (the background included) for several."""
    if logits.shape[1] == 1:
        probs, classes = torch.sigmoid(logits), target
    else:
        probs, classes = torch.softmax(logits, 1), target
    if valid is not None:
        probs, classes = probs * valid, classes * valid
    dims = (0, *range(2, probs.ndim))
    intersection = (probs * classes).sum(dims)
    cardinality = (probs + classes).sum(dims)
    loss = 1.0 - 2.0 * intersection / cardinality.clamp_min(1e-7)
    return (loss * (classes.sum(dims) > 0).to(loss.dtype)).mean()


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

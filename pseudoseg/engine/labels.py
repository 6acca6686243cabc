"""From logits to probabilities, decisions and targets, for one class or several.

One foreground class: one output channel, a sigmoid, the foreground
probability ``p`` and the decision ``p >= threshold``. ``C >= 2`` classes:
``C + 1`` channels (channel 0 the background), a softmax and the decision
``argmax``. Targets inside the engine are always probability maps with the
network's channels (``[B, K, H, W]``): a binary mask is its foreground
channel, a class-index map its one-hot encoding, a soft pseudo label the
teacher's probabilities; so warping, losses and pseudo labels treat hard,
soft, binary and multi-class targets alike.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from pseudoseg.data.augment import CutMix


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Sigmoid of a one-channel output, softmax over the channels of a wider one (in float32)."""
    logits = logits.float()
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, dim=1)


def decide(prob: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Class index per pixel, ``long [B, H, W]``: ``prob >= threshold`` for one channel, else the argmax."""
    if prob.shape[1] == 1:
        return (prob[:, 0] >= threshold).long()
    return prob.argmax(dim=1)


def one_hot(index: torch.Tensor, channels: int) -> torch.Tensor:
    """Probability maps ``float [B, K, H, W]`` of class indices (``[B, H, W]`` or ``[B, 1, H, W]``).

    With one channel the map is the foreground indicator (index 1), so a binary
    mask stays the 0/1 mask it was.
    """
    if index.dim() == 4:
        index = index[:, 0]
    index = index.long()
    if channels == 1:
        return (index == 1).float().unsqueeze(1)
    return F.one_hot(index, channels).permute(0, 3, 1, 2).float()


def harden(target: torch.Tensor, *, strict: bool = False) -> torch.Tensor:
    """Hard targets from probability maps: ``> 0.5`` (``>= 0.5`` when not ``strict``) for one channel, one-hot argmax otherwise."""
    if target.shape[1] == 1:
        return (target > 0.5).float() if strict else (target >= 0.5).float()
    return one_hot(target.argmax(dim=1), target.shape[1])


def pixel_confidence(prob: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]``: the probability of the decided class, ``max(p, 1 - p)`` for one channel."""
    if prob.shape[1] == 1:
        return torch.maximum(prob, 1.0 - prob)
    return prob.amax(dim=1, keepdim=True)


def class_overlap_counts(decided: torch.Tensor, truth: torch.Tensor, classes: int) -> torch.Tensor:
    """Per map and foreground class ``[|P & G|, |P|, |G|]``, ``float64 [B, C, 3]``.

    ``decided`` and ``truth``: class indices ``[B, H, W]`` (or ``[B, 1, H, W]``);
    class ``c`` (1..C) is ``P = decided == c``, ``G = truth == c``. Exact counts
    on the inputs' device, nothing read back.
    """
    if decided.dim() == 4:
        decided = decided[:, 0]
    if truth.dim() == 4:
        truth = truth[:, 0]
    labels = torch.arange(1, classes + 1, device=decided.device).view(1, -1, 1)
    pred = decided.flatten(1).unsqueeze(1) == labels  # [B, C, N]
    gt = truth.long().flatten(1).unsqueeze(1) == labels
    counts = [torch.count_nonzero(pred & gt, dim=2), torch.count_nonzero(pred, dim=2), torch.count_nonzero(gt, dim=2)]
    return torch.stack(counts, dim=2).to(torch.float64)


def dice_iou_defined(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Dice, IoU and whether defined, from ``[..., 3]`` counts; a class absent from both
    prediction and truth is undefined (skipped in means over several classes)."""
    inter, pred, gt = counts.unbind(-1)
    total = pred + gt
    defined = total > 0
    dice = 2.0 * inter / total.clamp_min(1.0)
    iou = inter / (total - inter).clamp_min(1.0)
    return dice, iou, defined


def overlap_counts(prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Per map ``[|P & G|, |P|, |G|]`` of ``P = prob >= threshold`` and ``G = target > 0.5``.

    Returns a float64 tensor ``[B, 3]`` on ``prob``'s device (exact integer
    counts; float64 so that sums over a whole data set stay exact and can be
    all-reduced). Nothing is read back to the host.
    """
    if prob.shape != target.shape:
        raise ValueError(f"prob has shape {tuple(prob.shape)} but target has shape {tuple(target.shape)}")
    pred = (prob >= threshold).flatten(1)
    gt = (target if target.dtype == torch.bool else target > 0.5).flatten(1)
    # count_nonzero: exact integer counts, and faster than sum() on bool tensors.
    counts = [torch.count_nonzero(pred & gt, dim=1), torch.count_nonzero(pred, dim=1), torch.count_nonzero(gt, dim=1)]
    return torch.stack(counts, dim=1).to(torch.float64)


def dice_iou_from_counts(inter: torch.Tensor, pred: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU from ``|P & G|``, ``|P|`` and ``|G|`` (any shape); both empty scores 1."""
    total = pred + gt  # |P| + |G|
    union = total - inter
    ones = torch.ones_like(inter)
    # Both empty -> total == union == 0: the prediction is perfect, score 1.
    dice = torch.where(total > 0, 2.0 * inter / total.clamp_min(1.0), ones)
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), ones)
    return dice, iou


def pseudo_targets(prob: torch.Tensor, kind: str, confidence: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Targets from teacher probabilities (``[B, K, H, W]``), and the mask of pixels that count.

    ``soft``: the probabilities themselves (class probability maps with several
    classes). ``hard``: thresholded at 0.5 (one class) or the argmax, one-hot;
    with ``confidence > 0``, pixels whose decided class has a probability below
    it (``max(p, 1 - p)`` for one class) are ignored.
    """
    if kind == "soft":
        return prob, None
    target = harden(prob, strict=True)
    if confidence <= 0:
        return target, None
    return target, (pixel_confidence(prob) >= confidence).float()


def weak_to_strong_targets(weak_logits: torch.Tensor, threshold: float, mix: CutMix | None, partner_logits: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Hard targets of the weak view's prediction and the mask of its confident pixels
    (``[u, K, H, W]``, ``[u, 1, H, W]``), CutMix-mixed like the strong view they supervise;
    ``partner_logits``: the second batch's weak-view prediction, when its images fill the boxes.

    Not differentiated; the probabilities are taken in float32 (:func:`probabilities`).
    """
    target, valid = _confident_decisions(weak_logits, threshold)
    if mix is not None and partner_logits is not None:
        partner_target, partner_valid = _confident_decisions(partner_logits, threshold)
        target, valid = mix.apply(target, partner_target), mix.apply(valid, partner_valid)
    elif mix is not None:
        target, valid = mix.apply(target), mix.apply(valid)
    return target, valid


def _confident_decisions(logits: torch.Tensor, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    prob = probabilities(logits.detach())
    target, valid = pseudo_targets(prob, "hard", threshold)
    if valid is None:  # threshold 0: every pixel counts
        valid = torch.ones_like(prob[:, :1])
    return target, valid


__all__ = ["class_overlap_counts", "decide", "dice_iou_defined", "dice_iou_from_counts", "harden", "one_hot", "overlap_counts", "pixel_confidence", "probabilities", "pseudo_targets", "weak_to_strong_targets"]

"""3-D metrics for CT cases: Dice and 95th-percentile Hausdorff distance per volume.

CT results are reported per case (patient), never per slice: all slices of a
case are predicted, stacked back into the volume (see
:func:`pseudoseg.data.volumes.slices_to_volume`) and compared with the label
volume; the per-case numbers are then averaged over cases.

Empty masks are common in organ/tumour data, so their handling is fixed here:

* **Dice**: both empty -> 1.0 (the prediction is exactly right); one empty -> 0.0.
* **HD95**: both empty -> 0.0 mm; exactly one empty -> ``nan`` (a distance to
  nothing is undefined). ``nan`` is kept in the per-case table and left out of
  the mean (``nanmean``); :meth:`VolumeMetrics.compute` counts such cases in
  ``"hd95_undefined"`` so a mean over few cases is not mistaken for a mean over
  all of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

__all__ = ["VolumeMetrics", "volume_dice", "volume_hd95"]


def _as_mask(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """A boolean mask from a bool, integer (non-zero = foreground) or 0/1 float array."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.dtype == bool:
        return array
    if array.dtype.kind == "f" and not np.isin(array, (0.0, 1.0)).all():
        # A probability map scored as "non-zero = foreground" would silently
        # count every faint voxel; make the caller pick the threshold.
        raise ValueError(f"{name} must be a binary mask, got non-binary floats; threshold probabilities first")
    return array != 0


def _check_shapes(pred: np.ndarray, target: np.ndarray) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from target shape {target.shape}")


def volume_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """Dice coefficient ``2|P & T| / (|P| + |T|)`` of two binary volumes; 1.0 when both are empty."""
    p = _as_mask(pred, "pred")
    t = _as_mask(target, "target")
    _check_shapes(p, t)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total


def volume_hd95(pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance between two binary volumes, in millimetres.

    Computed by :func:`monai.metrics.compute_hausdorff_distance` with
    ``percentile=95`` on the surface (edge) voxels of both masks, with
    Euclidean distances scaled by ``spacing``: the 95th percentile of the
    distances from each surface to the other is taken, and the larger of the
    two directions is returned.

    Args:
        pred: binary prediction volume.
        target: binary reference volume of the same shape.
        spacing: voxel size in mm along each array axis, in the arrays' axis
            order (:func:`pseudoseg.data.volumes.voxel_spacing` of the image
            the arrays are aligned with).

    Returns:
        The distance in mm; 0.0 when both masks are empty, ``nan`` when exactly
        one of them is.
    """
    p = _as_mask(pred, "pred")
    t = _as_mask(target, "target")
    _check_shapes(p, t)
    if len(spacing) != p.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {p.ndim}-D volume")
    p_any, t_any = bool(p.any()), bool(t.any())
    if not p_any and not t_any:
        return 0.0
    if p_any != t_any:
        return math.nan
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about a deprecated argument it passes to itself.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        distance = compute_hausdorff_distance(
            torch.from_numpy(p[None, None]),
            torch.from_numpy(t[None, None]),
            include_background=True,  # the single channel *is* the foreground
            percentile=95,
            spacing=[float(s) for s in spacing],
        )
    return float(distance.item())


class VolumeMetrics:
    """Accumulates per-case Dice and HD95 and averages them over cases.

    Example::

        metrics = VolumeMetrics()
        for case in cases:
            metrics.update(case.case_id, pred, target, voxel_spacing(image))
        summary = metrics.compute()   # {"dice": ..., "hd95_mm": ..., "n": ..., "cases": {...}}
    """

    def __init__(self) -> None:
        self._cases: dict[str, dict[str, float]] = {}

    def reset(self) -> None:
        self._cases = {}

    def update(
        self,
        case_id: str,
        pred: np.ndarray,
        target: np.ndarray,
        spacing: Sequence[float],
    ) -> dict[str, float]:
        """Score one case and remember it; returns ``{"dice": ..., "hd95_mm": ...}``."""
        if case_id in self._cases:
            raise ValueError(f"case {case_id!r} was already scored")
        scores = {"dice": volume_dice(pred, target), "hd95_mm": volume_hd95(pred, target, spacing)}
        self._cases[case_id] = scores
        return dict(scores)

    def compute(self) -> dict[str, Any]:
        """Means over cases (HD95 over the cases where it is defined) and the per-case table."""
        dice = np.array([c["dice"] for c in self._cases.values()], dtype=np.float64)
        hd95 = np.array([c["hd95_mm"] for c in self._cases.values()], dtype=np.float64)
        defined = ~np.isnan(hd95)
        return {
            "dice": float(dice.mean()) if dice.size else math.nan,
            "hd95_mm": float(hd95[defined].mean()) if defined.any() else math.nan,
            "n": int(dice.size),
            "hd95_undefined": int((~defined).sum()),
            "cases": {case_id: dict(scores) for case_id, scores in sorted(self._cases.items())},
        }

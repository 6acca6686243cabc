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
  all of them. Left out, a missed structure would make a model look better than
  one that found it badly, so beside that mean stands ``hd95_penalised_mm``: the
  mean over *all* cases where a missed (or spurious) structure counts as the
  diagonal of the case's volume in mm (:func:`volume_diagonal_mm`), the largest
  distance two voxels of the case can have.

With several classes (``VolumeMetrics(class_names)``, predictions and labels
as class-index volumes) every class is scored as above on its own voxels,
except that a class absent from both the prediction and the label of a case
is *skipped* for that case (neither Dice 1 nor HD95 0: most cases of a
multi-organ set would otherwise score perfectly on the organs they do not
show). ``dice/<class>`` is the class's mean over the cases where it is
present, ``hd95_mm/<class>`` over the cases where it is in both; ``dice``
and ``hd95_mm`` are the means over the classes (those defined somewhere), and
a case's own mean over classes is over the classes defined in it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import compute_hausdorff_distance

from pseudoseg.evaluation.metrics import class_columns, mean_defined

__all__ = ["VolumeMetrics", "volume_diagonal_mm", "volume_dice", "volume_hd95"]


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


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """The diagonal of a volume of ``shape`` voxels of size ``spacing`` (mm): the HD95 a missed
    or spurious structure is penalised with."""
    return float(math.sqrt(sum((n * float(s)) ** 2 for n, s in zip(shape, spacing))))


def _penalised(hd95: float, present: bool, diagonal: float) -> float:
    """HD95 where defined; the diagonal where the structure is in exactly one of prediction and label."""
    return diagonal if present and math.isnan(hd95) else hd95


class VolumeMetrics:
    """Accumulates per-case Dice and HD95 and averages them over cases.

    ``class_names``: none (or one name) for one foreground class, scored on
    binary masks as the module describes; several for class-index volumes
    (0 background, ``i`` the i-th name), scored per class.

    Example::

        metrics = VolumeMetrics()
        for case in cases:
            metrics.update(case.case_id, pred, target, voxel_spacing(image))
        summary = metrics.compute()   # {"dice": ..., "hd95_mm": ..., "n": ..., "cases": {...}}
    """

    def __init__(self, class_names: Sequence[str] | None = None) -> None:
        self.class_names = tuple(class_names) if class_names is not None and len(class_names) > 1 else None
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
        """Score one case and remember it; returns ``{"dice": ..., "hd95_mm": ...}``.

        With several classes ``pred`` and ``target`` are class-index volumes
        and the result holds ``dice/<class>`` and ``hd95_mm/<class>`` (NaN where
        the class is absent from both, HD95 also where it is in only one) and
        the case's ``dice`` and ``hd95_mm``, means over the classes defined in it.
        """
        if case_id in self._cases:
            raise ValueError(f"case {case_id!r} was already scored")
        if self.class_names is None:
            hd95 = volume_hd95(pred, target, spacing)
            scores = {"dice": volume_dice(pred, target), "hd95_mm": hd95, "hd95_penalised_mm": _penalised(hd95, True, volume_diagonal_mm(np.shape(pred), spacing))}
        else:
            scores = self._class_scores(np.asarray(pred), np.asarray(target), spacing)
        self._cases[case_id] = scores
        return dict(scores)

    def _class_scores(self, pred: np.ndarray, target: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
        _check_shapes(pred, target)
        dice: dict[str, float] = {}
        hd95: dict[str, float] = {}
        penalised: dict[str, float] = {}
        diagonal = volume_diagonal_mm(pred.shape, spacing)
        for index, name in enumerate(self.class_names, 1):
            p, t = pred == index, target == index
            present = bool(p.any() or t.any())
            dice[f"dice/{name}"] = volume_dice(p, t) if present else math.nan
            hd95[f"hd95_mm/{name}"] = volume_hd95(p, t, spacing) if present else math.nan
            penalised[f"hd95_penalised_mm/{name}"] = _penalised(hd95[f"hd95_mm/{name}"], present, diagonal)
        return {
            "dice": mean_defined(list(dice.values())),
            **dice,
            "hd95_mm": mean_defined(list(hd95.values())),
            **hd95,
            "hd95_penalised_mm": mean_defined(list(penalised.values())),
            **penalised,
        }

    def compute(self) -> dict[str, Any]:
        """Means over cases (HD95 over the cases where it is defined) and the per-case table."""
        if self.class_names is not None:
            return self._compute_classes()
        dice = np.array([c["dice"] for c in self._cases.values()], dtype=np.float64)
        hd95 = np.array([c["hd95_mm"] for c in self._cases.values()], dtype=np.float64)
        penalised = np.array([c["hd95_penalised_mm"] for c in self._cases.values()], dtype=np.float64)
        defined = ~np.isnan(hd95)
        return {
            "dice": float(dice.mean()) if dice.size else math.nan,
            "hd95_mm": float(hd95[defined].mean()) if defined.any() else math.nan,
            "hd95_penalised_mm": float(penalised.mean()) if penalised.size else math.nan,
            "n": int(dice.size),
            "hd95_undefined": int((~defined).sum()),
            "cases": {case_id: dict(scores) for case_id, scores in sorted(self._cases.items())},
        }

    def _compute_classes(self) -> dict[str, Any]:
        """Per class: mean over the cases where it is defined; the means over classes; undefined HD95 counts."""
        names = self.class_names
        keys = (*class_columns("dice", names), *class_columns("hd95_mm", names), *class_columns("hd95_penalised_mm", names))
        column = {key: np.array([c[key] for c in self._cases.values()], dtype=np.float64) for key in keys}
        dice = {key: mean_defined(column[key]) for key in class_columns("dice", names)}
        hd95 = {key: mean_defined(column[key]) for key in class_columns("hd95_mm", names)}
        penalised = {key: mean_defined(column[key]) for key in class_columns("hd95_penalised_mm", names)}
        # present (a Dice) but no HD95: the class is in exactly one of prediction and label
        undefined = {
            f"hd95_undefined/{name}": int((~np.isnan(column[f"dice/{name}"]) & np.isnan(column[f"hd95_mm/{name}"])).sum())
            for name in names
        }
        return {
            "dice": mean_defined(list(dice.values())),
            **dice,
            "hd95_mm": mean_defined(list(hd95.values())),
            **hd95,
            "hd95_penalised_mm": mean_defined(list(penalised.values())),
            **penalised,
            "hd95_undefined": sum(undefined.values()),
            **undefined,
            "n": len(self._cases),
            "cases": {case_id: dict(scores) for case_id, scores in sorted(self._cases.items())},
        }

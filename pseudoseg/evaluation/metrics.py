"""Segmentation metrics under the two conventions of the polyp literature.

**Paper convention** (the momentum pseudo-labelling paper), columns
``dice@0.5`` and ``iou@0.5``: the probability map is binarised with
``prob >= 0.5`` and compared with the mask *at the model's working resolution*
(the data pipeline resizes masks with nearest neighbour, e.g. to 352 x 352).
Dice and IoU are computed per image and averaged over the test set. An image
whose prediction and mask are both empty scores Dice 1 and IoU 1 (the
prediction is exactly right); an empty prediction against a non-empty mask, or
the reverse, scores 0.

**PraNet convention** (the community benchmark used by PraNet, Polyp-PVT and
most polyp papers), columns ``meanDice``, ``meanIoU``, ``wFmeasure``,
``Smeasure``, ``meanEmeasure``, ``maxEmeasure`` and ``MAE``: every metric is
computed by ``pysodmetrics`` per image *at the mask's native resolution* (the
probability map is resized up to it bilinearly, see :func:`resize_bilinear`)
and averaged over the test set. As in the benchmark, the map is first stored
as an 8-bit grey image and then min-max normalised; meanDice and meanIoU are
the Dice/IoU averaged over the 256 thresholds ``>= k/255``, ``k = 0..255``, of
that normalised map; mean/max E-measure are the mean and the maximum over
thresholds of the E-measure curve averaged over images.

The two conventions give different numbers for the same predictions (the
threshold-averaged Dice of a confident model is usually a little below its
Dice at 0.5, and native resolution differs from 352 x 352), so every column is
named after its convention and :data:`METRIC_CONVENTIONS` describes each one
for the report legends.

**Several classes** (a model of ``C >= 2`` foreground classes, see
:class:`~pseudoseg.data.classes.ClassSet`): the decision is the argmax over
the ``C + 1`` class probabilities, resized bilinearly to the mask's native
resolution, and :class:`ClassMetrics` scores Dice and IoU per image and class
(columns ``dice/<class>``, ``iou/<class>``) and their mean over the foreground
classes (``dice``, ``iou``). A class absent from both the prediction and the
mask of an image is *skipped* in that class's mean over images (not counted as
a perfect 1, which would reward every image for the classes it does not
show); the mean over classes is over the classes present in at least one
image. The PraNet metrics are binary saliency measures and are computed for
one class only. :func:`conventions_for` gives the legend of a class set's
columns and :func:`headline_columns` the columns a comparison table shows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from py_sod_metrics import MAE, DICEHandler, Emeasure, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

from pseudoseg.data.classes import ClassSet
from pseudoseg.engine.labels import dice_iou_from_counts, overlap_counts  # the training loop counts with these too

__all__ = [
    "ClassMetrics",
    "METRIC_CONVENTIONS",
    "PAPER_COLUMNS",
    "PRANET_COLUMNS",
    "PaperMetrics",
    "PraNetMetrics",
    "class_columns",
    "class_overlap_counts",
    "conventions_for",
    "dice_iou_at_threshold",
    "dice_iou_from_counts",
    "headline_columns",
    "mean_defined",
    "overlap_counts",
    "resize_bilinear",
    "to_uint8_pair",
]

PAPER_COLUMNS: tuple[str, ...] = ("dice@0.5", "iou@0.5")
PRANET_COLUMNS: tuple[str, ...] = (
    "meanDice",
    "meanIoU",
    "wFmeasure",
    "Smeasure",
    "meanEmeasure",
    "maxEmeasure",
    "MAE",
)

#: Column name -> one-line description of the convention it follows. Read-only.
METRIC_CONVENTIONS: Mapping[str, str] = MappingProxyType(
    {
        "dice@0.5": (
            "paper convention: per-image Dice of (prob >= 0.5) against the mask resized (bilinear, then 0.5) "
            "to the model's working resolution, averaged over images; empty prediction and empty mask score 1"
        ),
        "iou@0.5": (
            "paper convention: per-image IoU of (prob >= 0.5) against the mask resized (bilinear, then 0.5) "
            "to the model's working resolution, averaged over images; empty prediction and empty mask score 1"
        ),
        "meanDice": (
            "PraNet convention: per-image Dice averaged over 256 thresholds of the min-max normalised "
            "prediction at the mask's native resolution (pysodmetrics), averaged over images"
        ),
        "meanIoU": (
            "PraNet convention: per-image IoU averaged over 256 thresholds of the min-max normalised "
            "prediction at the mask's native resolution (pysodmetrics), averaged over images"
        ),
        "wFmeasure": (
            "PraNet convention: weighted F-measure (beta^2 = 1) at the mask's native resolution "
            "(pysodmetrics), averaged over images"
        ),
        "Smeasure": (
            "PraNet convention: structure measure (alpha = 0.5) at the mask's native resolution "
            "(pysodmetrics), averaged over images"
        ),
        "meanEmeasure": (
            "PraNet convention: E-measure curve over 256 thresholds at the mask's native resolution "
            "(pysodmetrics), averaged over images, then over thresholds"
        ),
        "maxEmeasure": (
            "PraNet convention: E-measure curve over 256 thresholds at the mask's native resolution "
            "(pysodmetrics), averaged over images, then its maximum over thresholds"
        ),
        "MAE": (
            "PraNet convention: mean absolute error between the min-max normalised prediction and the mask "
            "at the mask's native resolution (pysodmetrics), averaged over images; lower is better"
        ),
        "dice": (
            "volume convention: 3-D Dice per case of the slice predictions stacked and restored to the scan's "
            "voxel grid, thresholded at 0.5, averaged over cases; empty prediction and empty label score 1"
        ),
        "hd95_mm": (
            "volume convention: 95th-percentile symmetric Hausdorff distance per case in millimetres (voxel "
            "spacing, MONAI), averaged over the cases where it is defined (not when exactly one of prediction "
            "and label is empty; 0 when both are); empty when it is defined for no case; lower is better"
        ),
        "hd95_penalised_mm": (
            "volume convention: HD95 in mm averaged over every case, a case whose HD95 is undefined (the "
            "structure missed, or predicted where the label has none) counting as the diagonal of its volume "
            "in mm, the largest distance in the scan; lower is better"
        ),
        "hd95_undefined": (
            "volume convention: number of cases whose HD95 is undefined (an empty prediction against a label, "
            "or a prediction against an empty label), left out of hd95_mm and penalised in hd95_penalised_mm"
        ),
    }
)


# --------------------------------------------------------------------------- paper convention


def dice_iou_at_threshold(
    prob: torch.Tensor, target: torch.Tensor, threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image Dice and IoU of ``prob >= threshold`` against ``target``.

    Args:
        prob: probabilities, shape ``[B, 1, H, W]`` (any ``[B, ...]`` works; all
            dimensions after the first are reduced).
        target: mask of the same shape with values in {0, 1} (bool, integer or
            float); values above 0.5 are foreground.
        threshold: a pixel is foreground when ``prob >= threshold``, so a
            probability of exactly 0.5 (a logit of exactly 0) counts as
            foreground at the default threshold.

    Returns:
        ``(dice, iou)``, each a float32 tensor of shape ``[B]`` on ``prob``'s
        device. An image with an empty prediction *and* an empty mask gets
        Dice 1 and IoU 1.

    Nothing here reads values back to the host, so it is cheap enough to run
    on every validation batch without stalling an accelerator.
    """
    if prob.ndim < 2:
        raise ValueError(f"expected a batch [B, ...] of maps, got shape {tuple(prob.shape)}")
    counts = overlap_counts(prob, target, threshold)
    dice, iou = dice_iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
    return dice.to(torch.float32), iou.to(torch.float32)


class PaperMetrics:
    """Accumulates the paper convention (Dice and IoU at a fixed threshold) over a test set.

    Per-image scores stay on the device of the inputs until :meth:`compute`,
    so :meth:`update` never synchronises.

    Example:
        >>> metrics = PaperMetrics()
        >>> for image, mask in loader:            # mask resized (nearest) to the input size
        ...     metrics.update(model(image).sigmoid(), mask)
        >>> metrics.compute()
        {'dice@0.5': 0.87..., 'iou@0.5': 0.80..., 'n': 100}
    """

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = float(threshold)
        self._dice: list[torch.Tensor] = []
        self._iou: list[torch.Tensor] = []

    @property
    def columns(self) -> tuple[str, str]:
        """Names of the two output columns, e.g. ``("dice@0.5", "iou@0.5")``."""
        return f"dice@{self.threshold:g}", f"iou@{self.threshold:g}"

    def reset(self) -> None:
        self._dice.clear()
        self._iou.clear()

    def update(self, prob: torch.Tensor, target: torch.Tensor) -> None:
        """Add a batch: ``prob`` and ``target`` of shape ``[B, 1, H, W]``."""
        dice, iou = dice_iou_at_threshold(prob.detach(), target.detach(), self.threshold)
        self._dice.append(dice)
        self._iou.append(iou)

    def per_image(self) -> dict[str, torch.Tensor]:
        """Per-image scores in the order they were added, as CPU tensors."""
        dice_col, iou_col = self.columns
        if not self._dice:
            return {dice_col: torch.empty(0), iou_col: torch.empty(0)}
        return {dice_col: torch.cat(self._dice).cpu(), iou_col: torch.cat(self._iou).cpu()}

    def compute(self) -> dict[str, float | int]:
        """Mean Dice and IoU over all images added so far, and their number ``n``."""
        if not self._dice:
            raise ValueError("PaperMetrics.compute() called before any update()")
        scores = self.per_image()
        dice_col, iou_col = self.columns
        return {
            dice_col: float(scores[dice_col].double().mean()),
            iou_col: float(scores[iou_col].double().mean()),
            "n": int(scores[dice_col].numel()),
        }


# --------------------------------------------------------------------------- several classes


def class_columns(metric: str, names: Sequence[str]) -> list[str]:
    """Per-class column names of ``metric``: ``["dice/anterior", "dice/posterior"]``."""
    return [f"{metric}/{name}" for name in names]


def mean_defined(values: Sequence[float] | np.ndarray) -> float:
    """Mean of the finite values (NaN marks a class or case where a score is not defined); NaN when none is."""
    array = np.asarray(values, dtype=np.float64)
    finite = array[np.isfinite(array)]
    return float(finite.mean()) if finite.size else math.nan


def class_overlap_counts(pred: torch.Tensor, target: torch.Tensor, count: int) -> torch.Tensor:
    """Per map and foreground class ``[|P_c & G_c|, |P_c|, |G_c|]`` of two class-index maps.

    Args:
        pred: decided class indices, ``[B, H, W]`` (0 background, 1..count the classes).
        target: true class indices of the same shape.
        count: number C of foreground classes.

    Returns:
        float64 ``[B, C, 3]`` on ``pred``'s device; nothing is read back to the host.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
    return torch.stack([overlap_counts((pred == c).float(), target == c) for c in range(1, count + 1)], dim=1)


class ClassMetrics:
    """Per-class Dice and IoU at the decision over a test set, and their mean over classes.

    For every image and foreground class ``c`` the Dice and IoU of the decided
    pixels of ``c`` against the mask's pixels of ``c``. A class absent from
    both in an image is skipped (NaN) for that image: ``dice/<class>`` is the
    mean over the images where the class is present in the prediction or the
    mask, and ``dice`` the mean of the per-class columns over the classes
    present somewhere (so a test set without some class still has a mean).
    Per-image means over classes (:meth:`per_image`) are over the classes
    present in that image.

    Example:
        >>> metrics = ClassMetrics(("anterior", "posterior"))
        >>> metrics.update(decided, mask)          # class indices [B, H, W]
        >>> metrics.compute()
        {'dice': 0.83, 'dice/anterior': 0.85, 'dice/posterior': 0.81, 'iou': ..., 'n': 100}
    """

    def __init__(self, names: Sequence[str]) -> None:
        if len(names) < 2:
            raise ValueError("ClassMetrics scores several classes; use PaperMetrics for one")
        self.names = tuple(names)
        self._counts: list[torch.Tensor] = []

    @property
    def columns(self) -> list[str]:
        """``dice``, ``dice/<class>``..., ``iou``, ``iou/<class>``... in report order."""
        return [column for metric in ("dice", "iou") for column in (metric, *class_columns(metric, self.names))]

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add decided class indices and the true ones, both ``[B, H, W]`` (or one map ``[H, W]``)."""
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        self._counts.append(class_overlap_counts(pred.detach(), target.detach(), len(self.names)))

    def per_image(self) -> dict[str, np.ndarray]:
        """Per-image scores in the order added: each class's column (NaN where the class is absent), and
        ``dice``/``iou``, the mean over the classes present in the image (NaN when none is)."""
        counts = torch.cat(self._counts).cpu() if self._counts else torch.zeros((0, len(self.names), 3), dtype=torch.float64)
        dice, iou = dice_iou_from_counts(counts[..., 0], counts[..., 1], counts[..., 2])
        absent = (counts[..., 1] + counts[..., 2]) == 0
        scores: dict[str, np.ndarray] = {}
        for metric, values in (("dice", dice), ("iou", iou)):
            table = values.masked_fill(absent, math.nan).numpy()
            scores[metric] = np.array([mean_defined(row) for row in table])
            scores.update({column: table[:, k] for k, column in enumerate(class_columns(metric, self.names))})
        return {column: scores[column] for column in self.columns}

    def compute(self) -> dict[str, float | int]:
        """Each class's mean over the images where it is present, the mean over classes, and ``n``."""
        if not self._counts:
            raise ValueError("ClassMetrics.compute() called before any update()")
        scores = self.per_image()
        out: dict[str, float | int] = {}
        for metric in ("dice", "iou"):
            per_class = {column: mean_defined(scores[column]) for column in class_columns(metric, self.names)}
            out[metric] = mean_defined(list(per_class.values()))
            out.update(per_class)
        out["n"] = int(len(scores["dice"]))
        return out


# --------------------------------------------------------------------------- PraNet convention


def resize_bilinear(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize maps to ``size = (H, W)`` bilinearly (``align_corners=False``, as PraNet's test script).

    Accepts ``[H, W]``, ``[C, H, W]`` or ``[B, C, H, W]`` and returns the same
    layout. Resizing probabilities keeps them in [0, 1] (bilinear weights are a
    convex combination). PraNet itself resizes the logits and applies the
    sigmoid afterwards; pass logits here and apply the sigmoid to the result
    to reproduce that exactly.
    """
    if maps.ndim not in (2, 3, 4):
        raise ValueError(f"expected [H, W], [C, H, W] or [B, C, H, W], got shape {tuple(maps.shape)}")
    lead = maps.shape[:-2]
    batch = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.interpolate(batch, size=tuple(size), mode="bilinear", align_corners=False)
    return out.reshape(*lead, *out.shape[-2:])


def to_uint8_pair(prob: np.ndarray | torch.Tensor, mask: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Convert a probability map and a mask into pysodmetrics' 8-bit inputs.

    ``prob`` (float in [0, 1]) becomes ``rint(prob * 255)`` as uint8: rounded to
    the nearest level, ties to even (``numpy.rint``), so 1.0 maps to 255, 0.0
    to 0 and 0.5 to 128 -- what saving the map as an 8-bit PNG with rounding
    gives. ``mask`` (bool, or uint8 with foreground > 128 as in the benchmark
    files) becomes 0/255.
    """
    pred = _as_numpy(prob)
    gt = _as_numpy(mask)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(
            f"prediction {pred.shape} and mask {gt.shape} must be 2-D and of the same (native) size; "
            "resize the prediction with resize_bilinear first"
        )
    if not np.issubdtype(pred.dtype, np.floating):
        raise ValueError(f"prediction must be float probabilities in [0, 1], got dtype {pred.dtype}")
    # A tiny tolerance for float round-off (e.g. float16 maps); anything beyond is a bug upstream.
    if not np.all(np.isfinite(pred)) or pred.min() < -1e-3 or pred.max() > 1 + 1e-3:
        raise ValueError("prediction must contain finite probabilities in [0, 1]")
    pred_u8 = np.rint(np.clip(pred.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)

    if gt.dtype == np.bool_:
        fg = gt
    elif gt.dtype == np.uint8:
        fg = gt > 128
    else:
        raise ValueError(f"mask must be bool, or uint8 with foreground > 128; got dtype {gt.dtype}")
    return pred_u8, fg.astype(np.uint8) * np.uint8(255)


def _as_numpy(array: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


class PraNetMetrics:
    """Accumulates the PraNet-convention metrics over a test set, one image at a time.

    The metric classes are pysodmetrics' own (``FmeasureV2`` with
    ``DICEHandler``/``IOUHandler``, ``WeightedFmeasure``, ``Smeasure``,
    ``Emeasure``, ``MAE``), so the numbers match the published evaluation
    toolboxes. Inputs are at the mask's *native* resolution.

    Note on a constant prediction: pysodmetrics skips the min-max normalisation
    when the map is constant (it would divide by zero), so such a map keeps its
    own value ``v/255``. And the E-measure divides by ``H*W - 1`` (as the
    MATLAB original does), so a perfect map scores ``H*W / (H*W - 1)``, a hair
    above 1.
    """

    def __init__(self) -> None:
        self._dice_iou = FmeasureV2(
            metric_handlers={
                "dice": DICEHandler(with_dynamic=True, with_adaptive=False),
                "iou": IOUHandler(with_dynamic=True, with_adaptive=False),
            }
        )
        self._wfm = WeightedFmeasure()
        self._sm = Smeasure()
        self._em = Emeasure()
        self._mae = MAE()
        self._n = 0

    @property
    def n(self) -> int:
        """Number of images added so far."""
        return self._n

    def update(self, prob_native: np.ndarray | torch.Tensor, mask_native: np.ndarray | torch.Tensor) -> None:
        """Add one image.

        Args:
            prob_native: float probability map ``[H, W]`` in [0, 1], already
                resized to the mask's size (see :func:`resize_bilinear`).
            mask_native: the mask ``[H, W]`` as read from disk: bool, or uint8
                with foreground > 128.
        """
        pred_u8, gt_u8 = to_uint8_pair(prob_native, mask_native)
        # Each metric applies pysodmetrics' own normalisation (/255, min-max, gt > 128)
        # to the 8-bit pair, exactly as when it evaluates saved PNG maps.
        for metric in (self._dice_iou, self._wfm, self._sm, self._em, self._mae):
            metric.step(pred_u8, gt_u8)
        self._n += 1

    def compute(self) -> dict[str, float | int]:
        """The seven PraNet-convention metrics averaged over images, and ``n``."""
        if self._n == 0:
            raise ValueError("PraNetMetrics.compute() called before any update()")
        fm = self._dice_iou.get_results()
        em_curve = np.asarray(self._em.get_results()["em"]["curve"], dtype=np.float64)
        return {
            # "dynamic" is the per-threshold curve averaged over images; its mean is the
            # mean over images of each image's mean over the 256 thresholds.
            "meanDice": float(np.mean(fm["dice"]["dynamic"])),
            "meanIoU": float(np.mean(fm["iou"]["dynamic"])),
            "wFmeasure": float(self._wfm.get_results()["wfm"]),
            "Smeasure": float(self._sm.get_results()["sm"]),
            "meanEmeasure": float(em_curve.mean()),
            "maxEmeasure": float(em_curve.max()),
            "MAE": float(self._mae.get_results()["mae"]),
            "n": self._n,
        }


# --------------------------------------------------------------------------- columns and legends per class set

_SKIPPED = "a class absent from both prediction and {truth} of {unit} is skipped there, not counted as 1"


def _class_label(classes: ClassSet, index: int) -> str:
    values = classes.values[index] if classes.values is not None else ()
    shown = f" (label value{'s' if len(values) > 1 else ''} {', '.join(map(str, values))})" if values else ""
    return f"class {classes.names[index]}{shown}"


def conventions_for(classes: ClassSet, geometry: str) -> dict[str, str]:
    """Column -> description of its convention, for the reports of a model of ``classes`` on data of ``geometry``.

    One class: :data:`METRIC_CONVENTIONS`, unchanged. Several: the per-class
    and mean columns that :class:`ClassMetrics` (``images``) or
    :class:`~pseudoseg.evaluation.volume_metrics.VolumeMetrics` (``volumes``)
    write, each stating the absent-class rule.
    """
    if classes.is_binary:
        return dict(METRIC_CONVENTIONS)
    decision = "the argmax over the C + 1 class probabilities"
    per_class: dict[str, str]
    if geometry == "volumes":
        where = f"per case in 3-D, on the slice predictions stacked, restored to the scan's voxel grid and decided by {decision}"
        skipped = _SKIPPED.format(truth="label", unit="a case")
        means = {
            "dice": f"volume convention, several classes: Dice {where}; each class averaged over the cases where it is present ({skipped}), then the mean over the foreground classes present in some case",
            "hd95_mm": f"volume convention, several classes: 95th-percentile symmetric Hausdorff distance in mm (voxel spacing, MONAI) {where}; each class averaged over the cases where it is in both prediction and label (absent from both: skipped, not counted as 0 mm; in exactly one: undefined, counted in hd95_undefined), then the mean over the classes where it is defined; lower is better",
            "hd95_penalised_mm": f"volume convention, several classes: HD95 in mm {where}; each class averaged over the cases where it is present, a case where it is in exactly one of prediction and label counting as the diagonal of the volume in mm (absent from both: skipped), then the mean over the classes; lower is better",
            "hd95_undefined": "volume convention, several classes: number of (case, class) pairs where the class is in exactly one of prediction and label (HD95 undefined), left out of hd95_mm and penalised in hd95_penalised_mm",
        }
        per_class = {
            "dice": f"volume convention: Dice of {{label}} {where}, averaged over the cases where the class is present in the prediction or the label (absent from both: skipped)",
            "hd95_mm": f"volume convention: HD95 in mm of {{label}} {where}, averaged over the cases where the class is in both prediction and label; lower is better",
            "hd95_penalised_mm": f"volume convention: HD95 in mm of {{label}} {where}, averaged over the cases where the class is present, a miss or a spurious prediction counting as the volume's diagonal in mm; lower is better",
            "hd95_undefined": "volume convention: number of cases where {label} is in exactly one of prediction and label (HD95 undefined), left out of its hd95_mm and penalised in its hd95_penalised_mm",
        }
    else:
        where = f"per image at the decision ({decision} resized bilinearly to the mask's native resolution)"
        skipped = _SKIPPED.format(truth="mask", unit="an image")
        means = {
            metric: f"several classes: {title} {where}; each class averaged over the images where it is present ({skipped}), then the mean over the foreground classes present in some image"
            for metric, title in (("dice", "Dice"), ("iou", "IoU"))
        }
        per_class = {
            metric: f"several classes: {title} of {{label}} {where}, averaged over the images where the class is present in the prediction or the mask (absent from both: skipped)"
            for metric, title in (("dice", "Dice"), ("iou", "IoU"))
        }
    out: dict[str, str] = {}
    for metric, description in means.items():
        out[metric] = description
        for index, column in enumerate(class_columns(metric, classes.names)):
            out[column] = per_class[metric].format(label=_class_label(classes, index))
    return out


def headline_columns(classes: ClassSet, geometry: str) -> tuple[str, ...]:
    """The columns a comparison of models (an experiment grid) tabulates, one table each.

    One class: the paper Dice and the PraNet meanDice (images), or 3-D Dice,
    HD95 and the undefined-HD95 count (volumes). Several: the mean over classes
    and each class, for Dice (and HD95 for volumes; IoU's mean for images).
    """
    if classes.is_binary:
        return ("dice", "hd95_mm", "hd95_penalised_mm", "hd95_undefined") if geometry == "volumes" else ("dice@0.5", "meanDice")
    dice = ("dice", *class_columns("dice", classes.names))
    if geometry == "volumes":
        return (*dice, "hd95_mm", *class_columns("hd95_mm", classes.names), "hd95_penalised_mm", *class_columns("hd95_penalised_mm", classes.names), "hd95_undefined")
    return (*dice, "iou")

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
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from py_sod_metrics import MAE, DICEHandler, Emeasure, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

from pseudoseg.engine.labels import dice_iou_from_counts, overlap_counts  # the training loop counts with these too

__all__ = [
    "METRIC_CONVENTIONS",
    "PAPER_COLUMNS",
    "PRANET_COLUMNS",
    "PaperMetrics",
    "PraNetMetrics",
    "dice_iou_at_threshold",
    "dice_iou_from_counts",
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
        "hd95_undefined": (
            "volume convention: number of cases whose HD95 is undefined (an empty prediction against a label, "
            "or a prediction against an empty label), left out of hd95_mm"
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

"""The validation score that chooses checkpoints, and the collapse check.

Two conventions, one per kind of data (``train.selection_metric`` picks Dice or
IoU in either):

* **2-D images** (per image): Dice / IoU of ``prob >= threshold`` per image,
  averaged over images. An image whose mask and prediction are both empty
  scores 1 (the prediction is exactly right), as in the paper convention of
  the test tables.
* **Volumes** (per case): the slices of a case are scored as one 3-D mask at
  the working resolution: Dice ``2 |P & G| / (|P| + |G|)`` over all slices of
  the case, averaged over cases. A case with an organ and an empty
  prediction scores 0, whatever share of its slices is empty. (Per-slice
  Dice would score each empty slice 1, so a network that predicts background
  everywhere would read about the share of empty slices.) The foreground is
  the single binary class of the pool.

**Trivial predictors never win selection.** A validation at which a network's
thresholded prediction is empty on every validation pixel, or foreground on
every one, is a *collapse*: it is logged, recorded in ``metrics.jsonl``
(``<network>/collapse: "empty"`` or ``"full"``) and such a checkpoint replaces
the stage's best only while every earlier validation of the network collapsed
too; any non-collapsed validation replaces a collapsed best, whatever the
scores. With many empty images (2-D) a network that predicts nothing at all
would otherwise beat real, imperfect networks.

Everything is accumulated on the device; :meth:`ValidationTally.reduce` sums
the tallies of all processes (each scores its share of the slices, the case
sums are added) and reads them back once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pseudoseg.engine.distributed import DistInfo, all_reduce_sum
from pseudoseg.engine.labels import class_overlap_counts, decide, dice_iou_defined, dice_iou_from_counts, overlap_counts

__all__ = ["ValidationTally", "case_positions", "prefer"]


def case_positions(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Case number (0..C-1, in sorted case order) of every sample, and C."""
    names, positions = np.unique(np.asarray(groups), return_inverse=True)
    return positions.astype(np.int64), len(names)


class ValidationTally:
    """Sums over a validation pass, per image (``cases=None``) or per case.

    Args:
        cases: number of cases for the volume convention; ``None`` for the
            per-image convention.
        device: where the sums live.
        classes: number C of foreground classes (probabilities with 1 or C + 1 channels).
    """

    def __init__(self, cases: int | None, device: torch.device, *, classes: int = 1) -> None:
        self.cases = cases
        self.classes = classes
        rows = 1 if cases is None else cases
        # one class, per-image: [sum dice, sum iou, images]; per case: [|P & G|, |P|, |G|] per case.
        # C classes, per image: [sum dice, sum iou, images where defined] per class; per case: the counts per case and class
        shape = (rows, 3) if classes == 1 else ((classes, 3) if cases is None else (cases, classes, 3))
        self.sums = torch.zeros(shape, dtype=torch.float64, device=device)
        self.predicted = torch.zeros(1, dtype=torch.float64, device=device)  # predicted foreground pixels
        # counts known on the host: added to the device sums once, in reduce()
        self.images = 0
        self.pixels = 0

    def update(self, prob: torch.Tensor, target: torch.Tensor, threshold: float, case: torch.Tensor | None = None) -> None:
        """Add a batch: probabilities ``[B, K, H, W]``, target class indices ``[B, 1, H, W]``;
        ``case``: the case number of each image (volume convention)."""
        if self.cases is not None and case is None:
            raise ValueError("the volume convention needs the case of every image")
        if self.classes > 1:
            decided = decide(prob, threshold)
            counts = class_overlap_counts(decided, target, self.classes)  # [B, C, 3]
            if self.cases is None:
                dice, iou, defined = dice_iou_defined(counts)
                self.sums += torch.stack([(dice * defined).sum(0), (iou * defined).sum(0), defined.sum(0).to(torch.float64)], dim=1)
            else:
                self.sums.index_add_(0, case.to(self.sums.device), counts)
            self.predicted += torch.count_nonzero(decided).to(torch.float64)
            self.pixels += decided[0].numel() * len(decided)
            return
        counts = overlap_counts(prob, target, threshold)
        if self.cases is None:
            dice, iou = dice_iou_from_counts(counts[:, 0], counts[:, 1], counts[:, 2])
            self.sums[0, :2] += torch.stack([dice.sum(), iou.sum()])
            self.images += len(prob)
        else:
            self.sums.index_add_(0, case.to(self.sums.device), counts)
        self.predicted += counts[:, 1].sum()
        self.pixels += prob[0].numel() * len(prob)

    def reduce(self, dist: DistInfo) -> dict[str, Any]:
        """Scores over all processes (one read-back): ``dice``, ``iou``, ``collapse`` (None, "empty" or
        "full"), and with several classes ``class_dice`` / ``class_iou`` (``None`` for a class defined nowhere)."""
        if self.cases is None and self.classes == 1:
            self.sums[0, 2] += self.images
        pixels = self.predicted.new_tensor([float(self.pixels)])
        flat = all_reduce_sum(torch.cat([self.sums.flatten(), self.predicted, pixels]), dist).tolist()
        sums = torch.tensor(flat[:-2], dtype=torch.float64).view(self.sums.shape)
        predicted, pixels = flat[-2:]
        collapse = "empty" if pixels > 0 and predicted == 0 else "full" if pixels > 0 and predicted == pixels else None
        if self.classes > 1:
            if self.cases is None:
                defined = sums[:, 2]
                class_dice, class_iou = sums[:, 0] / defined.clamp_min(1.0), sums[:, 1] / defined.clamp_min(1.0)
            else:
                dice, iou, per_case = dice_iou_defined(sums)  # [cases, C]
                defined = per_case.sum(0).to(torch.float64)
                class_dice = (dice * per_case).sum(0) / defined.clamp_min(1.0)
                class_iou = (iou * per_case).sum(0) / defined.clamp_min(1.0)
            present = defined > 0
            # nothing of any class anywhere, predicted or true: exactly right
            mean_dice = float(class_dice[present].mean()) if present.any() else 1.0
            mean_iou = float(class_iou[present].mean()) if present.any() else 1.0
            return {
                "dice": mean_dice,
                "iou": mean_iou,
                "collapse": collapse,
                "class_dice": [float(v) if p else None for v, p in zip(class_dice, present)],
                "class_iou": [float(v) if p else None for v, p in zip(class_iou, present)],
            }
        sums = sums.view(-1, 3)
        if self.cases is None:
            count = max(1.0, float(sums[0, 2]))
            dice, iou = float(sums[0, 0]) / count, float(sums[0, 1]) / count
        else:
            per_case_dice, per_case_iou = dice_iou_from_counts(sums[:, 0], sums[:, 1], sums[:, 2])
            dice, iou = float(per_case_dice.mean()), float(per_case_iou.mean())
        return {"dice": dice, "iou": iou, "collapse": collapse}


def prefer(candidate: dict[str, Any], best: dict[str, Any] | None, metric: str) -> bool:
    """Whether a validation result replaces the best so far: a non-collapsed one always wins over a collapsed one."""
    if best is None:
        return True
    collapsed, best_collapsed = candidate.get("collapse") is not None, best.get("collapse") is not None
    if collapsed != best_collapsed:
        return best_collapsed
    return candidate[metric] > best["score"]

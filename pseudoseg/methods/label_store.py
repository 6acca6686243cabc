"""Pseudo labels on disk: rendering them in batches, reading them back by pool index.

Rounds-based methods (ATSO, self-learning) keep a label map for every
unlabeled sample between rounds. Holding them in memory would grow with the
unlabeled set (10 000 CT slices at 256 px are 655 MB of ``uint8``), so they
live in a record file (:class:`~pseudoseg.data.store.ArrayStore`): one
``uint8 [S, S]`` record per covered pool index, in ascending pool-index order.
Values are probabilities scaled to 0..255 (``soft``) or {0, 255} (``hard``),
so the trainer's ``/ 255`` turns either into a target in [0, 1].

Rendering is batched, without gradients, in the trainer's mixed precision and
with the trainer's input normalisation (passed in, never re-implemented here).
With several processes each renders its share of the records
(:meth:`~pseudoseg.engine.distributed.DistInfo.shard`) into one shared
temporary file, which the first process renames into place once every
process has finished: a label file that exists is always complete.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.data.store import ArrayStore
from pseudoseg.engine.distributed import DistInfo, barrier
from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import dice_iou_at_threshold
from pseudoseg.fileio import atomic_path

LabelKind = Literal["hard", "soft"]


class PseudoLabelStore:
    """Read-only view of a label file covering the pool indices ``indices``.

    Only the sorted index list (8 bytes per record) is held in memory; label
    records are read from disk on demand, one batch at a time.
    """

    def __init__(self, path: Path, indices: Sequence[int] | np.ndarray) -> None:
        self.path = Path(path)
        self.indices = _sorted_unique(indices)
        self._store = ArrayStore(self.path)
        if len(self._store.record_shape) != 2 or self._store.dtype != np.uint8:
            self._store.close()
            raise UserError(f"{self.path}: not a pseudo-label file (expected uint8 records [N, S, S], got {self._store.dtype} {self._store.shape})")
        if len(self._store) != len(self.indices):
            self._store.close()
            raise UserError(f"{self.path}: holds {len(self._store)} label records, expected {len(self.indices)}; delete it to render it again")

    @property
    def record_shape(self) -> tuple[int, ...]:
        return self._store.record_shape

    def __len__(self) -> int:
        return len(self.indices)

    def rows_of(self, pool_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Record positions of ``pool_indices``; every index must be covered."""
        wanted = np.asarray(pool_indices, dtype=np.int64)
        rows = np.searchsorted(self.indices, wanted)
        inside = rows < len(self.indices)
        if not inside.all() or not np.array_equal(self.indices[rows], wanted):
            missing = wanted[~inside] if not inside.all() else wanted[self.indices[rows] != wanted]
            raise KeyError(f"{self.path}: no pseudo label for pool index {int(missing[0])}")
        return rows

    def read(self, pool_indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Labels ``uint8 [n, S, S]`` of the given pool indices (any order, repeats allowed)."""
        return self._store.read(self.rows_of(pool_indices))

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Records ``start:stop`` (in pool-index order) in one read."""
        return self._store.read_range(start, stop)

    def close(self) -> None:
        self._store.close()

    def __getstate__(self) -> dict:  # picklable: reopen by path
        return {"path": self.path, "indices": self.indices}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["indices"])


def _sorted_unique(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(array) > 1 and not bool((np.diff(array) > 0).all()):
        raise ValueError("pseudo-label indices must be sorted and unique")
    return array


def encode_labels(prob: torch.Tensor, kind: LabelKind, *, threshold: float = 0.5) -> torch.Tensor:
    """Probabilities ``[B, 1, S, S]`` -> ``uint8 [B, S, S]``: {0, 255} (hard, ``p >= threshold``) or round(255 p)."""
    prob = prob.float()[:, 0]
    if kind == "hard":
        return (prob >= threshold).to(torch.uint8).mul_(255)
    if kind == "soft":
        return prob.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
    raise ValueError(f"label kind must be hard or soft, got {kind!r}")


@torch.no_grad()
def render_pseudo_labels(
    network: nn.Module,
    images: ArrayStore,
    indices: Sequence[int] | np.ndarray,
    path: Path,
    *,
    normalizer: InputNormalizer,
    autocast: Callable[[], contextlib.AbstractContextManager],
    kind: LabelKind = "hard",
    batch_size: int = 16,
    threshold: float = 0.5,
    dist: DistInfo | None = None,
) -> PseudoLabelStore:
    """Predict the images at pool ``indices`` and write their labels to ``path``.

    Args:
        network: the model that labels (put in eval mode here).
        images: the pool's image records ``uint8 [N, C, S, S]``.
        indices: sorted, unique pool indices to label; record ``i`` of the
            file is the label of ``indices[i]``.
        path: the ``.npy`` file to write (replaced atomically).
        normalizer: the trainer's input normaliser (same inputs as training).
        autocast: the trainer's mixed-precision context.
        kind: ``hard`` ({0, 255} at ``threshold``) or ``soft`` (0..255).
        batch_size: images per forward pass.
        threshold: hard labels only.
        dist: the process group; every process renders its share.

    Returns:
        The written labels, opened read-only.
    """
    dist = dist or DistInfo()
    indices = _sorted_unique(indices)
    size = images.record_shape[-2:]
    path = Path(path)
    network.eval()
    with contextlib.ExitStack() as stack:
        tmp: Path | None = None
        if dist.is_main:
            tmp = stack.enter_context(atomic_path(path))  # renamed onto ``path`` when the block ends
            ArrayStore.create(tmp, len(indices), size).close()
        tmp = _broadcast_path(tmp, dist)
        out = ArrayStore(tmp, writable=True)
        try:
            rows = np.arange(len(indices))[dist.shard()]
            contiguous = dist.world == 1
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                inputs = normalizer(normalizer.to_unit(images.read(indices[chunk])))
                with autocast():
                    logits = network(inputs)
                records = encode_labels(torch.sigmoid(logits.float()), kind, threshold=threshold).cpu().numpy()
                if contiguous:
                    out.write(int(chunk[0]), records)
                else:
                    out.write_at(chunk, records)
        finally:
            out.close()
        barrier(dist)  # every share is written before the first process renames the file
    barrier(dist)  # ... and the file is in place before anyone reads it
    return PseudoLabelStore(path, indices)


def _broadcast_path(path: Path | None, dist: DistInfo) -> Path:
    if not dist.enabled:
        assert path is not None
        return path
    import torch.distributed as torch_dist

    holder = [str(path) if path is not None else None]
    torch_dist.broadcast_object_list(holder, src=0)
    return Path(holder[0])


def label_agreement(
    read_a: Callable[[np.ndarray], np.ndarray],
    read_b: Callable[[np.ndarray], np.ndarray],
    indices: Sequence[int] | np.ndarray,
    *,
    threshold_a: int = 128,
    threshold_b: int = 128,
    chunk: int = 256,
) -> dict[str, float]:
    """How much two label sets over ``indices`` agree, read ``chunk`` records at a time.

    ``read_a`` / ``read_b`` return ``uint8 [n, S, S]`` records for pool
    indices; a pixel is foreground when its value is ``>= threshold``
    (128 for 0..255 labels, i.e. probability 0.5; use 1 for {0, 1} masks).

    Returns:
        ``dice``: per-image Dice of A against B at those thresholds, averaged
        over images (Dice 1 when both are empty, the validation convention);
        ``dice_pooled``: Dice over all pixels of all images at once (closer to
        the 3-D Dice of CT evaluation; 1 when both are empty);
        ``changed``: fraction of pixels whose foreground/background differs;
        ``n``: number of images.
    """
    indices = np.asarray(indices, dtype=np.int64)
    dice_sum, changed, pixels, overlap, total = 0.0, 0, 0, 0, 0
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        a = torch.from_numpy(read_a(part) >= threshold_a)
        b = torch.from_numpy(read_b(part) >= threshold_b)
        dice, _ = dice_iou_at_threshold(a.float().unsqueeze(1), b.float().unsqueeze(1), 0.5)
        dice_sum += float(dice.double().sum())
        changed += int((a != b).sum())
        pixels += a.numel()
        overlap += int((a & b).sum())
        total += int(a.sum()) + int(b.sum())
    count = len(indices)
    return {
        "dice": dice_sum / count if count else float("nan"),
        "dice_pooled": 2.0 * overlap / total if total else 1.0,
        "changed": changed / pixels if pixels else float("nan"),
        "n": count,
    }


__all__ = ["LabelKind", "PseudoLabelStore", "encode_labels", "label_agreement", "render_pseudo_labels"]

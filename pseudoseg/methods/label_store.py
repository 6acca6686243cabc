"""Pseudo labels on disk: rendering them in batches, reading them back by pool index.

Rounds-based methods (ATSO, self-learning) keep a label map for every
unlabeled sample between rounds. Holding them in memory would grow with the
unlabeled set (10 000 CT slices at 256 px are 655 MB of ``uint8``), so they
live in a record file (:class:`~pseudoseg.data.store.ArrayStore`): one
record per covered pool index, in ascending pool-index order:

* one class: ``uint8 [S, S]``, the foreground probability scaled to 0..255
  (``soft``) or {0, 255} (``hard``);
* C >= 2 classes, ``hard``: ``uint8 [S, S]`` class indices 0..C;
* C >= 2 classes, ``soft``: ``uint8 [C + 1, S, S]``, each class's probability
  scaled to 0..255 (C + 1 bytes per pixel, on disk, whatever the size of U).

:meth:`PseudoLabelStore.targets` turns any of them into the training target
(probability maps with the network's channels), and
:meth:`PseudoLabelStore.read_classes` into class indices for the diagnostics.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.data.store import ArrayStore
from pseudoseg.engine.distributed import DistInfo, barrier
from pseudoseg.engine.labels import class_overlap_counts, decide, dice_iou_defined, one_hot, probabilities
from pseudoseg.errors import UserError
from pseudoseg.fileio import atomic_path

LabelKind = Literal["hard", "soft"]


class PseudoLabelStore:
    """Read-only view of a label file covering the pool indices ``indices``.

    Only the sorted index list (8 bytes per record) is held in memory; label
    records are read from disk on demand, one batch at a time.
    """

    def __init__(self, path: Path, indices: Sequence[int] | np.ndarray, *, channels: int = 1) -> None:
        self.path = Path(path)
        self.indices = _sorted_unique(indices)
        self.channels = channels
        """The network's output channels: 1 for one class, C + 1 for C classes."""
        self._store = ArrayStore(self.path)
        shape = self._store.record_shape
        fits = len(shape) == 2 or (channels > 1 and len(shape) == 3 and shape[0] == channels)
        if not fits or self._store.dtype != np.uint8:
            self._store.close()
            raise UserError(f"{self.path}: not a pseudo-label file for {channels} output channel(s) (got {self._store.dtype} records {shape})")
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
        """Records of the given pool indices (any order, repeats allowed), as stored."""
        return self._store.read(self.rows_of(pool_indices))

    @property
    def holds_probabilities(self) -> bool:
        """Whether records are 0..255 probabilities (one class, or soft labels of several)."""
        return self.channels == 1 or len(self._store.record_shape) == 3

    def targets(self, pool_indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """Training targets ``float [n, K, S, S]``: probability maps with the network's channels."""
        records = torch.from_numpy(self.read(pool_indices)).to(device)
        if self.channels == 1:
            return records.unsqueeze(1).float().div_(255.0)
        if self.holds_probabilities:
            return records.float().div_(255.0)
        return one_hot(records, self.channels)

    def read_classes(self, pool_indices: np.ndarray) -> np.ndarray:
        """Class indices ``uint8 [n, S, S]`` (one class: ``value >= 128``, probability 0.5)."""
        records = self.read(pool_indices)
        if self.channels == 1:
            return (records >= 128).astype(np.uint8)
        if self.holds_probabilities:
            return records.argmax(axis=1).astype(np.uint8)
        return records

    def read_rows(self, start: int, stop: int) -> np.ndarray:
        """Records ``start:stop`` (in pool-index order) in one read."""
        return self._store.read_range(start, stop)

    def close(self) -> None:
        self._store.close()

    def __getstate__(self) -> dict:  # picklable: reopen by path
        return {"path": self.path, "indices": self.indices, "channels": self.channels}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["indices"], channels=state.get("channels", 1))


class LabelFiles:
    """Label files read as one, each for its own part of U (a round that trains on several
    subsets, whose current labels come from different files): the labels of a pool index come
    from the file of the part that holds it. Parts are disjoint; a file may serve several."""

    def __init__(self, parts: Sequence[tuple[PseudoLabelStore, np.ndarray]]) -> None:
        self.parts = tuple((store, np.sort(np.asarray(members, dtype=np.int64))) for store, members in parts)

    def targets(self, pool_indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """Training targets ``float [n, K, S, S]``, as :meth:`PseudoLabelStore.targets`, in the order asked."""
        pool_indices = np.asarray(pool_indices, dtype=np.int64)
        pieces, positions = [], []
        for store, members in self.parts:
            mine = np.flatnonzero(np.isin(pool_indices, members))
            if len(mine):
                pieces.append(store.targets(pool_indices[mine], device))
                positions.append(mine)
        if sum(map(len, positions)) != len(pool_indices):
            raise KeyError(f"no pseudo label part holds some of the pool indices {pool_indices.tolist()[:8]}")
        return torch.cat(pieces)[torch.from_numpy(np.argsort(np.concatenate(positions), kind="stable")).to(device)]

    def close(self) -> None:
        for store in {id(store): store for store, _ in self.parts}.values():
            store.close()


def _sorted_unique(indices: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(array) > 1 and not bool((np.diff(array) > 0).all()):
        raise ValueError("pseudo-label indices must be sorted and unique")
    return array


def encode_labels(prob: torch.Tensor, kind: LabelKind, *, threshold: float = 0.5) -> torch.Tensor:
    """Probabilities ``[B, K, S, S]`` -> label records (see the module's formats).

    One channel: ``uint8 [B, S, S]``, {0, 255} (hard, ``p >= threshold``) or
    round(255 p). Several: class indices ``[B, S, S]`` (hard, the argmax) or
    round(255 p) per channel ``[B, K, S, S]`` (soft).
    """
    if kind not in ("hard", "soft"):
        raise ValueError(f"label kind must be hard or soft, got {kind!r}")
    prob = prob.float()
    if prob.shape[1] > 1:
        if kind == "hard":
            return decide(prob).to(torch.uint8)
        return prob.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)
    prob = prob[:, 0]
    if kind == "hard":
        return (prob >= threshold).to(torch.uint8).mul_(255)
    return prob.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


@dataclass(frozen=True)
class LabelFormat:
    """How rendered labels are stored (see the module's formats)."""

    kind: LabelKind = "hard"
    """``hard`` ({0, 255} at ``threshold``, or class indices) or ``soft`` (0..255)."""
    threshold: float = 0.5
    """Hard labels of one class only."""
    channels: int = 1
    """The network's output channels (1, or C + 1 for C classes)."""

    def record_shape(self, size: tuple[int, ...]) -> tuple[int, ...]:
        """The shape of the label record of an image of ``size`` pixels."""
        return (self.channels, *size) if self.channels > 1 and self.kind == "soft" else size


@dataclass(frozen=True)
class Labeler:
    """The model that renders pseudo labels, run as the trainer runs it."""

    network: nn.Module
    """Put in eval mode when it renders."""
    normalizer: InputNormalizer
    """The trainer's input normaliser (same inputs as training)."""
    autocast: Callable[[], contextlib.AbstractContextManager]
    """The trainer's mixed-precision context."""
    batch_size: int = 16
    """Images per forward pass."""

    def probabilities(self, records: np.ndarray) -> torch.Tensor:
        """Probabilities of a batch of image records ``uint8 [B, C, S, S]``."""
        inputs = self.normalizer(self.normalizer.to_unit(records))
        with self.autocast():
            logits = self.network(inputs)
        return probabilities(logits)


@torch.no_grad()
def render_pseudo_labels(
    labeler: Labeler,
    images: ArrayStore,
    indices: Sequence[int] | np.ndarray,
    path: Path,
    *,
    label_format: LabelFormat = LabelFormat(),
    dist: DistInfo | None = None,
) -> PseudoLabelStore:
    """Predict the images at pool ``indices`` with ``labeler`` and write their labels to ``path``.

    Args:
        labeler: the model that labels (its network is put in eval mode here).
        images: the pool's image records ``uint8 [N, C, S, S]``.
        indices: sorted, unique pool indices to label; record ``i`` of the
            file is the label of ``indices[i]``.
        path: the ``.npy`` file to write (replaced atomically).
        label_format: how the labels are stored (hard or soft, the threshold, the channels).
        dist: the process group; every process renders its share into one shared temporary file.

    Returns:
        The written labels, opened read-only.
    """
    dist = dist or DistInfo()
    indices = _sorted_unique(indices)
    path = Path(path)
    labeler.network.eval()
    record_shape = label_format.record_shape(images.record_shape[-2:])
    with contextlib.ExitStack() as stack:
        out = ArrayStore(_shared_label_file(stack, path, len(indices), record_shape, dist), writable=True)
        try:
            rows = np.arange(len(indices))[dist.shard()]
            contiguous = dist.world == 1
            for start in range(0, len(rows), labeler.batch_size):
                chunk = rows[start : start + labeler.batch_size]
                prob = labeler.probabilities(images.read(indices[chunk]))
                records = encode_labels(prob, label_format.kind, threshold=label_format.threshold).cpu().numpy()
                if contiguous:
                    out.write(int(chunk[0]), records)
                else:
                    out.write_at(chunk, records)
        finally:
            out.close()
        barrier(dist)  # every share is written before the first process renames the file
    barrier(dist)  # ... and the file is in place before anyone reads it
    return PseudoLabelStore(path, indices, channels=label_format.channels)


def _shared_label_file(stack: contextlib.ExitStack, path: Path, count: int, record_shape: tuple[int, ...], dist: DistInfo) -> Path:
    """The temporary file of ``count`` label records that every process writes its share into:
    the first process creates it, the others receive its name."""
    tmp: Path | None = None
    if dist.is_main:
        tmp = stack.enter_context(atomic_path(path))  # renamed onto ``path`` when the block ends
        ArrayStore.create(tmp, count, record_shape).close()
    return _broadcast_path(tmp, dist)


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
    classes: int = 1,
    chunk: int = 256,
) -> dict[str, float]:
    """How much two label sets over ``indices`` agree, read ``chunk`` records at a time.

    ``read_a`` / ``read_b`` return class indices ``uint8 [n, S, S]`` for pool
    indices (:meth:`PseudoLabelStore.read_classes`, the pool's masks).

    Returns:
        ``dice``: one class: per-image Dice, averaged over images (Dice 1 when
        both are empty, the validation convention); C classes: per class, the
        mean over the images where the class is in A or B, then the mean over
        the classes (a class absent from both is skipped);
        ``dice_pooled``: Dice over all pixels of all images at once, per class
        and then the mean over classes (closer to the 3-D Dice of CT
        evaluation; 1 when both are empty);
        ``changed``: fraction of pixels whose class differs;
        ``n``: number of images.
    """
    indices = np.asarray(indices, dtype=np.int64)
    per_image = torch.zeros(classes, 2, dtype=torch.float64)  # sum of Dice, images where defined
    pooled = torch.zeros(classes, 3, dtype=torch.float64)
    changed, pixels = 0, 0
    for start in range(0, len(indices), chunk):
        part = indices[start : start + chunk]
        a = torch.from_numpy(read_a(part).astype(np.int64))
        b = torch.from_numpy(read_b(part).astype(np.int64))
        counts = class_overlap_counts(a, b, classes)  # [n, C, 3]
        dice, _, defined = dice_iou_defined(counts)
        if classes == 1:  # an image empty in both is exactly right: Dice 1, and it counts
            dice, defined = torch.where(defined, dice, torch.ones_like(dice)), torch.ones_like(defined)
        per_image += torch.stack([(dice * defined).sum(0), defined.sum(0).to(torch.float64)], dim=1)
        pooled += counts.sum(0)
        changed += int((a != b).sum())
        pixels += a.numel()
    pooled_dice, _, pooled_defined = dice_iou_defined(pooled)
    image_classes = per_image[:, 1] > 0
    count = len(indices)
    return {
        "dice": float((per_image[image_classes, 0] / per_image[image_classes, 1]).mean()) if count and image_classes.any() else (1.0 if count else float("nan")),
        "dice_pooled": float(pooled_dice[pooled_defined].mean()) if pooled_defined.any() else 1.0,
        "changed": changed / pixels if pixels else float("nan"),
        "n": count,
    }


__all__ = ["LabelFiles", "LabelFormat", "LabelKind", "Labeler", "PseudoLabelStore", "encode_labels", "label_agreement", "render_pseudo_labels"]

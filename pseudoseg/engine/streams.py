"""Endless, seeded streams of batch indices with an exactly resumable position."""

from __future__ import annotations

import numpy as np
import torch


def batches_per_epoch(count: int, batch_size: int) -> int:
    """Global batches in one epoch over ``count`` samples (at least one)."""
    return max(1, count // batch_size)


class IndexStream:
    """Global batches of indices into a subset, reshuffled every epoch.

    The order of epoch ``e`` depends only on ``(seed, e)``, so the stream's
    whole state is its position ``(epoch, batch)``. An epoch holds
    ``len(indices) // batch_size`` batches (at least one; a subset smaller than
    a batch is repeated to fill it).
    """

    def __init__(self, indices: np.ndarray, batch_size: int, seed: int) -> None:
        if len(indices) == 0:
            raise ValueError("cannot stream an empty subset")
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0
        self.batch = 0
        self.batches_per_epoch = batches_per_epoch(len(self.indices), batch_size)
        self._order: np.ndarray | None = None

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            repeats = -(-self.batch_size // len(self.indices))
            order = torch.cat([torch.randperm(len(self.indices), generator=generator) for _ in range(repeats)])
            self._order = self.indices[order.numpy()]
        return self._order

    def next(self) -> tuple[np.ndarray, bool]:
        """The next global batch, and whether it was the last of its epoch."""
        order = self._epoch_order()
        start = self.batch * self.batch_size
        batch = order[start : start + self.batch_size]
        self.batch += 1
        epoch_ended = self.batch == self.batches_per_epoch
        if epoch_ended:
            self.epoch += 1
            self.batch = 0
            self._order = None
        return batch, epoch_ended

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._order = None

"""Everything a stage's training loop changes, as one object with a ``state_dict``.

A stage checkpoints its :class:`StageState` in ``last.safetensors`` at every
validation and restores it on resume: the networks, the optimiser's moments,
the gradient scaler, the strategy's own tensors (momentum copies, stored
labels), the augmentation and data-order generators, the global random state
and the open log window, so a stage killed at any point and restarted finishes
with the same weights and logs the same records as one that never stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pseudoseg.data.augment import BatchAugmenter
from pseudoseg.engine.checkpoint import flatten_optimizer, prefixed, unflatten_optimizer, unprefixed
from pseudoseg.engine.streams import IndexStream
from pseudoseg.engine.strategy import Strategy


@dataclass
class StageState:
    """The loop's state: what it trains and with what, where it is, and what it has found so far."""

    student: nn.Module
    extras: dict[str, nn.Module]
    """The strategy's other networks (trained or not), by name."""
    strategy: Strategy
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    augmenter: BatchAugmenter
    labeled_stream: IndexStream
    unlabeled_stream: IndexStream | None
    partner_stream: IndexStream | None = None
    """The second unlabeled batches that fill CutMix boxes (``Views.partner_batch``)."""
    step: int = 0
    best: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Each network's best checkpoint so far (``done.json``'s ``best``)."""
    running: dict[str, torch.Tensor] = field(default_factory=dict)
    """The open log window's running sums, and how many steps they hold."""
    window_steps: int = 0

    @property
    def networks(self) -> dict[str, nn.Module]:
        """Every network the stage validates: the student (``raw``) and the strategy's others."""
        return {"raw": self.student, **self.extras}

    def state_dict(self, window: dict[str, torch.Tensor], *, cuda: bool) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and metadata of a checkpoint; ``window``: the open log window's sums, as a mean
        over processes (the first record after a resume then covers the same steps, with the same
        mean, as in a run that never stopped)."""
        optim_tensors, optim_meta = flatten_optimizer(self.optimizer.state_dict())
        tensors = {
            **prefixed("student", self.student.state_dict()),
            **prefixed("optim", optim_tensors),
            **prefixed("strategy", self.strategy.state_tensors()),
            **{f"network.{name}.{key}": value for name, net in self.extras.items() for key, value in net.state_dict().items()},
            **prefixed("augment", self.augmenter.state_dict()),
            **prefixed("log_window", window),
            "rng.torch": torch.get_rng_state(),
        }
        if cuda:
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
        meta = {
            "step": self.step,
            "best": self.best,
            "log_window_steps": self.window_steps,
            "optimizer": optim_meta,
            "scaler": {k: (float(v) if isinstance(v, torch.Tensor) else v) for k, v in self.scaler.state_dict().items()},
            "labeled_stream": self.labeled_stream.state_dict(),
            "unlabeled_stream": self.unlabeled_stream.state_dict() if self.unlabeled_stream is not None else None,
            **({"partner_stream": self.partner_stream.state_dict()} if self.partner_stream is not None else {}),
        }
        return tensors, meta

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device) -> None:
        """Restore a checkpoint of :meth:`state_dict`. Every process restarts its log window from the
        saved mean over processes: the mean over processes at the next log then adds it once."""
        self.student.load_state_dict(unprefixed("student", tensors))
        for name, network in self.extras.items():
            network.load_state_dict(unprefixed(f"network.{name}", tensors))
        self.strategy.load_state_tensors(unprefixed("strategy", tensors))
        self.optimizer.load_state_dict(unflatten_optimizer(unprefixed("optim", tensors), meta["optimizer"]))
        if meta["scaler"]:
            self.scaler.load_state_dict(meta["scaler"])
        self.augmenter.load_state_dict(unprefixed("augment", tensors))
        torch.set_rng_state(tensors["rng.torch"])
        if "rng.cuda" in tensors and device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"])
        self.labeled_stream.load_state_dict(meta["labeled_stream"])
        if self.unlabeled_stream is not None:
            self.unlabeled_stream.load_state_dict(meta["unlabeled_stream"])
        if self.partner_stream is not None:
            self.partner_stream.load_state_dict(meta["partner_stream"])
        self.step, self.best = int(meta["step"]), meta["best"]
        self.running = {key: value.to(device) for key, value in unprefixed("log_window", tensors).items()}
        self.window_steps = int(meta.get("log_window_steps", 0))


__all__ = ["StageState"]

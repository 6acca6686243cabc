"""The plug-in interface of the training loop: a method's strategy.

A strategy states only what differs from supervised training: where the
targets of unlabeled images come from, what the loss adds, and when which
extra network (teacher, momentum copy) is updated. The loop itself (data,
mixed precision, optimiser, validation, checkpoints, resume, several
processes) lives in :class:`pseudoseg.engine.trainer.Trainer`.

This module is the whole contract between the two: the strategy, the
batch it is handed, the stage it trains in (:class:`StageSpec`) and what it
may use from the loop (:class:`StageContext`). It imports nothing of the
loop, so methods and the loop depend on it, never the other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from pseudoseg.engine.labels import probabilities

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig
    from pseudoseg.data.augment import CutMix
    from pseudoseg.engine.distributed import DistInfo
    from pseudoseg.engine.losses import SegmentationLoss


class StoredLabels(Protocol):
    """Pseudo labels on disk, read by pool index (:class:`pseudoseg.methods.label_store.PseudoLabelStore`)."""

    def targets(self, pool_indices: np.ndarray, device: torch.device) -> torch.Tensor:
        """Training targets ``float [n, K, S, S]`` of the given pool indices."""
        ...


@dataclass(frozen=True)
class Views:
    """The views of the unlabeled images a strategy asks the batch assembler for.

    The weak view (``Batch.unlabeled``: the geometric augmentation alone) is always
    there; every other view shares its geometry, so a prediction on one view is
    aligned pixel for pixel with the others. Random parameters are drawn for the
    global batch from the stage's augmenter (whose generator is checkpointed), in
    this order: geometry, photometry, then each strong view's parameters and its
    CutMix; so a resumed run, or one on several processes, sees the same views.
    """

    photometric: bool = False
    """``Batch.unlabeled_strong``: brightness, contrast, colour shift and noise
    (``train.augment``; the momentum method's and Mean Teacher's strong view)."""
    strong: int = 0
    """``Batch.strong``: this many views with the strong augmentation of weak-to-strong
    methods (colour jitter, greyscale, blur: ``train.augment.strong``), each drawn anew."""
    cutmix: bool = False
    """Each strong view CutMix-mixed within this process's share of the batch
    (``train.augment.cutmix``); ``Batch.mixes`` says how, to mix targets alike."""
    strong_augment: bool = True
    """``False``: the strong views keep the weak view's pixels and are only CutMix-mixed
    (CPS + CutMix); their augmentation parameters are drawn all the same, so the random
    stream does not depend on it."""
    partner_batch: bool = False
    """With ``cutmix``: the boxes are filled from a second unlabeled batch, drawn from its own
    stream (the same row, its own geometry and strong augmentation), whose weak view is
    ``Batch.partner_unlabeled`` (the official UniMatch code); otherwise from another image of
    the same batch."""
    stored_labels: StoredLabels | None = None
    """``Batch.unlabeled_targets``: pseudo labels on disk (indexed by pool index),
    read for each unlabeled batch and warped with the images."""

    def __post_init__(self) -> None:
        if self.strong < 0:
            raise ValueError(f"strong views: expected a count >= 0, got {self.strong}")
        if self.cutmix and not self.strong:
            raise ValueError("cutmix mixes strong views: ask for at least one (strong >= 1)")
        if self.partner_batch and not self.cutmix:
            raise ValueError("partner_batch fills CutMix boxes: ask for cutmix too")


@dataclass
class Batch:
    """One training step's data on the device, already augmented and normalised."""

    images: torch.Tensor
    """Labeled images [b, C, S, S] (this process's share)."""
    masks: torch.Tensor
    """Their targets [b, K, S, S] (one-hot; the foreground indicator for one class)."""
    unlabeled: torch.Tensor | None = None
    """Unlabeled images, weak view [u, C, S, S]."""
    unlabeled_strong: torch.Tensor | None = None
    """The same images and geometry, photometrically strong (``Views.photometric``)."""
    unlabeled_targets: torch.Tensor | None = None
    """Stored pseudo labels [u, K, S, S] in [0, 1], geometry applied (``Views.stored_labels``)."""
    unlabeled_index: np.ndarray | None = None
    """Pool indices of the unlabeled images."""
    strong: tuple[torch.Tensor, ...] = ()
    """The strong views of the same images and geometry (``Views.strong``), CutMix-mixed
    when ``Views.cutmix``."""
    mixes: tuple[CutMix | None, ...] = ()
    """For each strong view, how it was mixed (``None``: not mixed); ``mix.apply(x)`` mixes
    a target, confidence map or prediction of the weak view the same way (``mix.apply(x,
    partner)`` with the second batch's values under ``Views.partner_batch``)."""
    partner_unlabeled: torch.Tensor | None = None
    """``Views.partner_batch``: the weak view of the second unlabeled batch [u, C, S, S],
    whose pixels fill the CutMix boxes (through its own strong views)."""


class Forward(Protocol):
    """The loop's forward pass: ``forward(images)`` runs the student, ``forward(images,
    network=name)`` one of the strategy's other trainable networks; each with the
    memory format and the wrapping (several processes) of the training loop, inside
    its mixed precision."""

    def __call__(self, images: torch.Tensor, network: str | None = None) -> torch.Tensor: ...


class Strategy:
    """Supervised training; subclasses override what they change."""

    uses_unlabeled: bool = False
    """Draw unlabeled batches (and count epochs over the unlabeled set)."""
    views: Views = Views()
    """The views of the unlabeled images the batch carries besides the weak one."""
    renders_pseudo_labels: bool = False
    """:meth:`pseudo_labels` is implemented: its quality on U is logged at every validation."""

    def setup(self, context: StageContext) -> None:
        """Called once the student network exists (before resume); builds the strategy's
        other networks (``context.build_network()``)."""
        self.context = context

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss to minimise and tensors to log (never synchronised here)."""
        logits = forward(batch.images)
        loss = self.context.criterion(logits, batch.masks)
        return loss, {"loss_sup": loss.detach()}

    def after_step(self, step: int, epoch_ended: bool) -> None:
        """After each optimiser step: momentum updates and the like."""

    def after_validation(self, record: dict[str, Any]) -> dict[str, Any]:
        """After each validation (``record``: ``"<network>/dice"`` and the like, equal on every
        process): decisions taken on the validation split; returns fields to log with it."""
        return {}

    def trainable(self) -> dict[str, nn.Module]:
        """Networks trained with the student, by name (built in :meth:`setup`): the loop puts
        their parameters in the one optimiser, wraps each for several processes, clips the
        gradient over all of them, runs them through ``forward(images, network=name)``,
        and validates, checkpoints and resumes each like the student."""
        return {}

    def networks(self) -> dict[str, nn.Module]:
        """Extra networks that are not trained by the optimiser (momentum copies, teachers),
        by name, to validate and checkpoint (the student is always there, as ``raw``)."""
        return {}

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """Probabilities the strategy would use as targets for ``images`` now (diagnostics)."""
        raise NotImplementedError(f"{type(self).__name__} renders no pseudo labels")

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything beyond the networks that an exact resume needs (random generators, ...)."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass


@dataclass
class StageSpec:
    """One training stage: what trains, on which samples, for how long."""

    name: str
    strategy: Strategy
    steps: int
    batch_size: int
    labeled: np.ndarray
    validation: np.ndarray
    unlabeled: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    unlabeled_batch_size: int = 0
    init_weights: Path | None = None
    """Start the student from these weights (default: fresh initialisation)."""
    baseline: Path | None = None
    """The model the stage must beat on V, when it is not the one the student starts from:
    the labeled-only model M0 of a fresh student, of an ATSO round from the initial weights,
    or of a student started from M0's raw network while the run's M0 is its momentum copy.
    Without it, a stage that starts from trained weights (``init_weights``) must beat them."""
    init_seed: int | None = None
    """Seed of a fresh initialisation (default: the run's, :func:`network_seed`), so
    every stage of a run that starts fresh starts from the same weights."""
    describe: dict[str, Any] = field(default_factory=dict)
    """Settings that define the stage; a resume with other settings is refused."""

    def starting_from(self, init_weights: Path | None, *, baseline: Path | None = None, init_seed: int | None = None) -> StageSpec:
        """The same stage, its student started from ``init_weights`` (None: a fresh initialisation,
        drawn with ``init_seed``) and released only above ``baseline`` (see the fields)."""
        return replace(self, init_weights=init_weights, baseline=baseline, init_seed=init_seed)

    @property
    def fine_tunes(self) -> bool:
        """Whether the stage starts from trained weights (``train.finetune`` sets its learning rate)."""
        return self.init_weights is not None

    @property
    def start(self) -> Path | None:
        """The model validated at step 0 as every network's first candidate (its ``baseline``,
        else the trained weights it starts from): it stays a network's best until one of
        its checkpoints scores higher, so the stage never releases a model below it."""
        return self.baseline if self.baseline is not None else self.init_weights


@dataclass
class StageContext:
    """What a strategy may use from the loop it is plugged into."""

    config: RunConfig
    spec: StageSpec
    device: torch.device
    dist: DistInfo
    student: nn.Module
    criterion: SegmentationLoss
    build_network: Callable[[], nn.Module]
    """A new network of the run's architecture, on the device (for teachers and copies)."""
    steps_per_epoch: int
    stage_dir: Path

    @torch.no_grad()
    def frozen_forward(self, network: nn.Module, images: torch.Tensor, *, batch_statistics: bool = False) -> torch.Tensor:
        """``network``'s logits on ``images`` as a network that does not learn from them sees them:
        eval mode (batch-norm running statistics, dropout off; its mode restored afterwards), the
        loop's memory format, no gradients. Teachers, peers' labels and diagnostics go through here.
        ``batch_statistics``: train mode instead, batch norm normalising with the statistics of
        ``images`` (and moving its running statistics), as some published teachers label."""
        was_training = network.training
        network.train(batch_statistics)
        if self.config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = network(images)
        network.train(was_training)
        return logits


def partner_predictions(context: StageContext, batch: Batch) -> torch.Tensor | None:
    """The student's logits on the second unlabeled batch that fills CutMix boxes
    (``Views.partner_batch``), in eval mode as the official UniMatch code; None without one."""
    return context.frozen_forward(context.student, batch.partner_unlabeled) if batch.partner_unlabeled is not None else None


def student_predictions(context: StageContext, images: torch.Tensor) -> torch.Tensor:
    """The student's probabilities on ``images`` in eval mode (the diagnostics' pseudo labels), its mode restored."""
    return probabilities(context.frozen_forward(context.student, images))


__all__ = ["Batch", "Forward", "StageContext", "StageSpec", "Strategy", "Views", "partner_predictions", "student_predictions"]

"""Stages shared between methods' recipes: reusing a finished supervised stage of another run,
and the labeled-only start of the single-stage baselines (FixMatch, UniMatch, CPS, BCP)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import Field, model_validator
from torch import nn

from pseudoseg.config import MethodSection
from pseudoseg.engine.ema import ModelEMA, update_momentum
from pseudoseg.engine.strategy import StageContext, Strategy, Views
from pseudoseg.engine.trainer import StageResult, stage_result_from_done
from pseudoseg.errors import UserError
from pseudoseg.methods.registry import GridRow, LabeledStage, Rows
from pseudoseg.methods.session import RunSession

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig, TrainConfig

SUPERVISED_STAGE_NAMES: tuple[str, ...] = ("supervised", "teacher", "round_0")
"""Stage folders that hold a supervised stage on the labeled split (searched in this order)."""


@dataclass(frozen=True)
class EmaSettings:
    """How a momentum copy is kept: ``copy <- m * copy + (1 - m) * network``."""

    momentum: float
    unit: str = "step"
    """What ``momentum`` means: the share kept over one ``step`` or over one ``epoch``."""
    schedule: str = "step"
    """When the copy is updated: after every ``step`` or at the end of every ``epoch``."""
    buffers: str = "average"
    """Batch-norm running statistics: ``average`` (like the weights) or ``copy``."""

    def describe(self) -> dict[str, Any]:
        """The keys a stage records (a resume with other settings is refused)."""
        return {"momentum": self.momentum, "momentum_unit": self.unit, "schedule": self.schedule, "buffers": self.buffers}


@dataclass(frozen=True)
class LabeledStart:
    """A labeled-only stage: supervised training on L, keeping a momentum copy (every method's start)."""

    ema: EmaSettings
    steps: int
    batch_size: int

    def as_grid_row(self) -> LabeledStage:
        """The same stage as the grid's ``supervised`` row, which the semi-supervised rows reuse."""
        supervised = SupervisedConfig(ema_momentum=self.ema.momentum, momentum_unit=self.ema.unit, ema_schedule=self.ema.schedule, ema_buffers=self.ema.buffers)
        return LabeledStage(supervised.model_dump(mode="json"), self.steps, self.batch_size)


class EmaSection(MethodSection):
    """The keys of a method that keeps momentum copies: what its momenta mean and how the copies follow."""

    momentum_unit: Literal["step", "epoch"] = "step"
    """What the momenta mean: the share of a copy kept over one step or over one epoch (the
    momentum paper's numbers). Converted to the update rate of ``ema_schedule`` (per-epoch m
    over E steps is m^(1/E) per step), so a recipe means the same at any batch and data set size."""
    ema_schedule: Literal["step", "epoch"] = "step"
    """Momentum updates after every step, or once per epoch (the momentum authors' code)."""
    ema_buffers: Literal["average", "copy"] = "average"
    """Batch-norm running statistics of the copies: averaged like parameters, or copied."""

    def ema(self, momentum: float) -> EmaSettings:
        """A copy of ``momentum`` kept by this section's rules."""
        return EmaSettings(momentum, self.momentum_unit, self.ema_schedule, self.ema_buffers)


class SupervisedConfig(EmaSection):
    """Train on the labeled split only (``data.labeled_fraction: 1.0`` for the
    fully supervised upper bound), keeping a momentum copy."""

    name: Literal["supervised"] = "supervised"
    uses_unlabeled: ClassVar[bool] = False
    ema_momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum of the kept copy: ema <- m * ema + (1 - m) * network, per ``momentum_unit``."""

    def labeled_start(self, train: TrainConfig) -> LabeledStart:
        """The stage this section trains: ``train.steps`` steps of ``train.batch_size``."""
        return LabeledStart(self.ema(self.ema_momentum), train.steps, train.batch_size)


class SupervisedStrategy(Strategy):
    """Supervised training on L, keeping a momentum copy of the network (``ema``)."""

    def __init__(self, ema: EmaSettings) -> None:
        self.settings = ema

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        ema = self.settings
        momentum = update_momentum(ema.momentum, unit=ema.unit, schedule=ema.schedule, steps_per_epoch=context.steps_per_epoch)
        self.ema = ModelEMA(context.student, momentum, buffers=ema.buffers)

    def after_step(self, step: int, epoch_ended: bool) -> None:
        if self.settings.schedule == "step" or epoch_ended:
            self.ema.update()

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.ema.module}


def train_labeled_stage(
    session: RunSession,
    name: str,
    start: LabeledStart,
    *,
    strategy: Callable[..., SupervisedStrategy] = SupervisedStrategy,
    settings: Mapping[str, Any] | None = None,
) -> StageResult:
    """The labeled-only stage every method starts from, trained in ``<run_dir>/<name>``.

    ``strategy``: a variant of supervised training on L (BCP's copy-paste pre-training),
    built with the copy's settings and ``settings``, which also define the stage (a resume
    with other settings is refused)."""
    settings = dict(settings or {})
    describe = {"strategy": "supervised", **start.ema.describe(), **settings}
    return session.fit(session.labeled_stage(name, strategy(start.ema, **settings), steps=start.steps, batch_size=start.batch_size, describe=describe))


def finished_stage(run_dir: Path, session: RunSession) -> StageResult:
    """The supervised stage of an earlier run, checked to share this run's split.

    Used by ``method.teacher_run``: a semi-supervised run may start from the
    labeled-only model of another run (the grid's supervised variant) instead
    of training its own, provided that model saw only this run's labeled
    images and was selected on this run's validation images.
    """
    run_dir = Path(run_dir)
    for stage in SUPERVISED_STAGE_NAMES:
        done = run_dir / stage / "done.json"
        if done.is_file():
            break
    else:
        raise UserError(f"method.teacher_run: {run_dir} holds no finished supervised stage (no supervised/done.json)")
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise UserError(f"method.teacher_run: {split_file} not found")
    theirs = json.loads(split_file.read_text())
    if sorted(theirs.get("labeled", [])) != sorted(session.split.labeled) or sorted(theirs.get("validation", [])) != sorted(session.split.validation):
        raise UserError(f"method.teacher_run: {split_file} is another split than this run's; the teacher must have seen only this run's labeled images")
    result = stage_result_from_done(done.parent, json.loads(done.read_text()))
    if session.weights_meta(result.weights("raw")).get("preprocessing") != session.preprocessing:
        raise UserError(f"method.teacher_run: {result.weights('raw')} was trained with another preprocessing than this run's")
    session.adopt(result)  # its steps count towards this run's budget
    return result


class LabeledStageKeys(MethodSection):
    """The keys of the labeled-only stage a semi-supervised method trains first (in
    ``<run_dir>/teacher``) or takes from another run, declared once for every such method."""

    teacher_run: Path | None = None
    """A finished supervised run to take the labeled-only stage from instead of training it
    (the grids' rows take the seed's supervised run)."""
    teacher_steps: int | None = Field(None, ge=1)
    """Steps of the labeled-only stage (default: ``train.steps``)."""
    teacher_batch_size: int | None = Field(None, ge=1)
    """Batch of the labeled-only stage (default: the labeled + unlabeled batch of the semi-supervised
    stage, so that both see as many images per step)."""
    teacher_stage_momentum: float = Field(SupervisedConfig.model_fields["ema_momentum"].default, ge=0, lt=1)
    """Momentum of the labeled-only stage's copy (the semi-supervised stage's start or teacher):
    supervised training's ``ema_momentum``, per the method's ``momentum_unit`` (per step where the
    method has none)."""


class LabeledStartSection(LabeledStageKeys):
    """Keys of a one-stage semi-supervised method that starts from a labeled-only model
    (the grid's rows start from the seed's supervised run through ``teacher_run``)."""

    steps: int | None = Field(None, ge=1)
    """Steps of the semi-supervised stage (default: ``train.steps``)."""
    student_init: Literal["labeled", "fresh"] = "labeled"
    """``labeled``: the stage starts from the momentum copy of a labeled-only stage (trained in
    ``<run_dir>/teacher``, or ``teacher_run``), as every row of the grids; ``fresh``: from the
    run's initialisation (the papers' recipe, with pretrained encoders)."""

    def start_ema(self) -> EmaSettings:
        """How the labeled-only stage keeps its copy (per step, updated every step)."""
        return EmaSettings(self.teacher_stage_momentum)

    def labeled_start(self, train: TrainConfig) -> LabeledStart:
        """The labeled-only stage: ``teacher_steps`` (default ``train.steps``) of ``teacher_batch_size``
        (default the labeled + unlabeled batch of the semi-supervised stage)."""
        return LabeledStart(self.start_ema(), self.teacher_steps or train.steps, self.teacher_batch_size or (train.batch_size + train.unlabeled_batch_size))

    @model_validator(mode="after")
    def _teacher_run_needs_a_labeled_start(self) -> LabeledStartSection:
        if self.teacher_run is not None and self.student_init != "labeled":
            raise ValueError("teacher_run: a fresh start uses no labeled-only stage; set student_init: labeled or drop teacher_run")
        return self


class WeakToStrongSection(LabeledStartSection):
    """Keys of the weak-to-strong methods (FixMatch, UniMatch): the confidence a weak-view decision
    needs, and how the views go through the network."""

    threshold: float = Field(0.95, ge=0, lt=1)
    """Confidence (probability of the decided class) a weak-view pixel needs to count."""
    passes: Literal["joint", "official"] = "joint"
    """``joint``: labeled, weak and strong images in one training-mode pass (batch-norm statistics
    over all of them); ``official``: labeled and weak images in one pass, the strong views in a
    second, as the official UniMatch code (and its FixMatch), so the weak view's pseudo labels do
    not depend on the strong views in the batch."""
    cutmix_partner: Literal["same_batch", "second_batch"] = "same_batch"
    """Where a strong view's CutMix box comes from: another image of the same unlabeled batch, or
    the same row of a second unlabeled batch drawn for the purpose, its pseudo labels predicted
    in eval mode (the official UniMatch code, which also runs its FixMatch)."""

    def views(self, strong: int, *, cutmix: bool = True) -> Views:
        """The unlabeled views of ``strong`` strong views, CutMix-mixed as this section says."""
        return Views(strong=strong, cutmix=cutmix, partner_batch=cutmix and self.cutmix_partner == "second_batch")


def labeled_start(
    session: RunSession, method: LabeledStartSection, *, strategy: Callable[..., SupervisedStrategy] = SupervisedStrategy, settings: Mapping[str, Any] | None = None
) -> StageResult | None:
    """The labeled-only stage a :class:`LabeledStartSection` method starts from (``teacher_run``'s,
    or trained in ``<run_dir>/teacher``), or None for a fresh start. ``strategy`` and
    ``settings``: a variant of supervised training for a stage trained here
    (:func:`~pseudoseg.methods.supervised.train_labeled_stage`)."""
    if method.student_init == "fresh":
        return None
    if method.teacher_run is not None:
        return finished_stage(method.teacher_run, session)
    return train_labeled_stage(session, "teacher", method.labeled_start(session.config.train), strategy=strategy, settings=settings)


def fit_one_stage(session: RunSession, method: MethodSection, strategy: Strategy, init: Path | None, **describe: Any) -> StageResult:
    """The one semi-supervised stage of a baseline (``student``): ``strategy`` on L and U for
    ``method.steps`` steps (default ``train.steps``), the student started from ``init``
    (None: fresh); ``describe`` adds settings that define the stage beyond the method section."""
    spec = session.semi_supervised_stage("student", strategy, steps=method.steps or session.config.train.steps, describe={"init_weights": str(init), **describe})
    return session.fit(spec.starting_from(init))


def baseline_rows(row: str, section: dict[str, Any]) -> dict[str, Rows]:
    """The grid rows of a one-stage baseline (a :class:`LabeledStartSection` method), by family.

    Both start from the seed's supervised run (the grid sets ``teacher_run``). In the
    ``momentum`` family the stage runs the base configuration's ``train.steps``, as the
    momentum student does; in the ``rounds`` family it runs ``rounds x round_steps``
    steps, so that after the shared labeled-only model its whole run and its released
    model have had TSO's steps.
    """

    def momentum(base: RunConfig) -> list[GridRow]:
        return [GridRow(row, lambda raw, _: dict(section))]

    def rounds(base: RunConfig) -> list[GridRow]:
        steps = base.method.rounds * base.method.round_steps
        return [GridRow(row, lambda raw, _: {**section, "steps": steps})]

    return {"momentum": momentum, "rounds": rounds}


__all__ = [
    "SUPERVISED_STAGE_NAMES",
    "EmaSection",
    "EmaSettings",
    "LabeledStart",
    "LabeledStartSection",
    "WeakToStrongSection",
    "SupervisedConfig",
    "SupervisedStrategy",
    "baseline_rows",
    "finished_stage",
    "fit_one_stage",
    "labeled_start",
    "train_labeled_stage",
]

"""Online pseudo labeling with momentum networks (Pham Van et al., 2022).

Two stages. The teacher stage trains on the labeled split only and keeps a
momentum copy; either the raw network ("original teacher") or the copy
("momentum teacher") becomes the teacher. The student stage trains a student
on labeled + unlabeled batches::

    loss = L_sup(student(x_l), y_l) + beta * L_unsup(student(x_u'), teacher(x_u))

where the teacher renders its labels without gradients, in eval mode and in
the same mixed precision. *Offline*, the teacher is frozen; *online*, it
starts as the trained teacher and is then a momentum copy of the student, so
its labels improve as the student does (a student that does not start from the
teacher is first given time to catch up on validation: ``teacher_follows``).
The student keeps its own momentum copy, which is the released model. Momenta
are stated per epoch or per step (``momentum_unit``) and converted to the rate
of the updates.

With ``student_init: teacher`` and equal teacher and student momenta the online
teacher and the student's copy are one network: Mean Teacher, which has its own
method (:mod:`pseudoseg.methods.mean_teacher`); the settings stay expressible
here, are detected (:func:`networks_coincide`) and reported.

This module also defines the ``momentum`` experiment grid (:data:`MOMENTUM_GRID`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from pseudoseg.config import TrainConfig
from pseudoseg.engine.checkpoint import load_weights_file
from pseudoseg.engine.ema import ModelEMA, retained_share, update_momentum
from pseudoseg.engine.labels import probabilities, pseudo_targets
from pseudoseg.engine.losses import probability_mse, sigmoid_rampup
from pseudoseg.engine.streams import batches_per_epoch
from pseudoseg.engine.strategy import Batch, Forward, StageContext, Strategy, Views
from pseudoseg.engine.trainer import stage_seed
from pseudoseg.errors import UserError
from pseudoseg.methods.registry import GridFamily, GridRow, LabeledStage, register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import EmaSection, LabeledStageKeys, LabeledStart, finished_stage, train_labeled_stage

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig


class MomentumConfig(LabeledStageKeys, EmaSection):
    """Online pseudo labeling with momentum networks (Method A)."""

    name: Literal["momentum"] = "momentum"
    mode: Literal["online", "offline"] = "online"
    """``offline``: the teacher is frozen; ``online``: the teacher is updated
    during the student stage as a momentum copy of the student."""
    teacher: Literal["momentum", "original"] = "momentum"
    """Which network of the teacher stage becomes the teacher."""
    teacher_momentum: float = Field(0.99, ge=0, lt=1)
    """Online teacher update: teacher <- m * teacher + (1 - m) * student, per ``momentum_unit``."""
    student_momentum: float = Field(0.99, ge=0, lt=1)
    """Momentum of the student's own copy (the released model), per ``momentum_unit``."""
    momentum_unit: Literal["step", "epoch"] = "epoch"
    """What the three momenta mean: the share kept over one epoch (the default here: the
    paper's numbers, 0.95 / 0.99 / 0.99) or over one step. They are converted to the update
    rate of ``ema_schedule`` (per-epoch m over E steps is m^(1/E) per step), so a recipe means
    the same at any batch size and data set size."""
    teacher_follows: Literal["auto", "from_start", "once_caught_up"] = "auto"
    """``mode: online``: when the online teacher starts following the student.
    ``from_start`` (the paper); ``once_caught_up``: from the first validation at which the
    student's momentum copy scores at least the teacher (until then the teacher is frozen,
    as offline), so a student that starts far from the teacher is not averaged into it
    while it is still worse; ``auto``: ``from_start`` when the student starts from the
    teacher (``student_init: teacher``), ``once_caught_up`` otherwise."""
    beta: float = Field(0.3, ge=0)
    """Weight of the loss against the teacher's pseudo labels."""
    unlabeled_loss: Literal["segmentation", "mse"] = "segmentation"
    """Loss against the pseudo labels: the training loss (``train.loss``), or the
    mean squared error between probabilities (Mean Teacher's consistency)."""
    beta_rampup_steps: int = Field(0, ge=0)
    """Sigmoid ramp-up of beta over this many steps (0: constant)."""
    labels: Literal["soft", "hard"] = "soft"
    """``soft``: the teacher's probabilities; ``hard``: thresholded at 0.5."""
    confidence: float = Field(0.0, ge=0, lt=1)
    """Hard labels only: ignore pixels whose teacher confidence max(p, 1-p) is below."""
    views: Literal["weak_strong", "same"] = "weak_strong"
    """``weak_strong``: the teacher labels the weak view, the student sees a
    photometrically strong view of the same geometry; ``same``: both see the
    same augmented image (the authors' code)."""
    student_init: Literal["fresh", "teacher", "random"] = "fresh"
    """``fresh``: the student starts from the weights the teacher stage started from
    (``model.weights`` / ``model.encoder_weights`` if set, else the run's seeded
    initialisation): the paper's fresh student, which shares its ImageNet start with the
    teacher. ``teacher``: from the teacher's trained weights (measured better without
    pretrained weights, see docs/methods.md; with ``mode: online`` and equal teacher and
    student momenta the online teacher and the student's copy are then one network: Mean
    Teacher). ``random``: an unrelated initialisation (an ablation: averaged into a
    trained teacher, it destroys it)."""

    teacher_batch_norm: Literal["running", "batch"] = "running"
    """How the teacher normalises the images it labels: with its running batch-norm statistics
    (eval mode), or with the statistics of the unlabeled batch itself (train mode, the authors'
    code, where that forward also moves the teacher's running statistics)."""
    passes: Literal["joint", "separate"] = "joint"
    """The student's forward passes: labeled and unlabeled images in one, batch norm
    normalising them together, or one pass each (the authors' code)."""

    @model_validator(mode="after")
    def _confidence_needs_hard(self) -> MomentumConfig:
        if self.confidence > 0 and self.labels != "hard":
            raise ValueError("confidence applies to hard labels only: set labels: hard")
        return self


def networks_coincide(method: MomentumConfig) -> bool:
    """Whether the online teacher and the student's momentum copy are provably one network.

    Both are momentum copies of the student with one schedule and buffer rule; they
    coincide when they also start from the same weights (the student starts from the
    teacher) and forget at the same rate. That is Mean Teacher.
    """
    return method.mode == "online" and method.student_init == "teacher" and method.teacher_momentum == method.student_momentum


def teacher_waits_for_student(method: MomentumConfig) -> bool:
    """Whether the online teacher is frozen until the student's copy scores at least the teacher on V."""
    if method.mode != "online" or method.teacher_follows == "from_start" or networks_coincide(method):
        return False
    return method.teacher_follows == "once_caught_up" or method.student_init != "teacher"


class MomentumStudentStrategy(Strategy):
    """The student stage: offline (frozen teacher) or online (momentum teacher)."""

    uses_unlabeled = True
    renders_pseudo_labels = True

    def __init__(self, method: MomentumConfig, teacher_weights: Path) -> None:
        self.method = method
        self.teacher_weights = Path(teacher_weights)
        self.coincide = networks_coincide(method)
        self.gated = teacher_waits_for_student(method)
        self.following = not self.gated
        """Whether the online teacher follows the student yet (set at a validation)."""

    # Both view choices need the photometric draw: "same" feeds the strong view to both networks.
    views = Views(photometric=True)

    def update_momenta(self, steps_per_epoch: int) -> tuple[float, float]:
        """(teacher, student) momentum of one update, converted from ``momentum_unit``."""
        method = self.method
        convert = lambda m: update_momentum(m, unit=method.momentum_unit, schedule=method.ema_schedule, steps_per_epoch=steps_per_epoch)  # noqa: E731
        return convert(method.teacher_momentum), convert(method.student_momentum)

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        method = self.method
        teacher_rate, student_rate = self.update_momenta(context.steps_per_epoch)
        self.student_ema = ModelEMA(context.student, student_rate, buffers=method.ema_buffers)
        if self.coincide:
            self.teacher_ema: ModelEMA | None = None
            self.teacher = self.student_ema.module
            return
        tensors, _ = load_weights_file(self.teacher_weights)
        teacher = context.build_network()
        try:
            teacher.load_state_dict(tensors)
        except RuntimeError as exc:  # a teacher_run trained with another model section
            first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
            raise UserError(f"method.teacher_run: {self.teacher_weights} does not fit this run's model ({first})") from None
        if method.mode == "online":
            self.teacher_ema = ModelEMA(context.student, teacher_rate, buffers=method.ema_buffers, init=teacher)
            self.teacher = self.teacher_ema.module
        else:
            self.teacher_ema = None
            self.teacher = teacher.eval().requires_grad_(False)

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        method = self.method
        teacher_view = batch.unlabeled if method.views == "weak_strong" else batch.unlabeled_strong
        student_view = batch.unlabeled_strong
        teacher_logits = self.context.frozen_forward(self.teacher, teacher_view, batch_statistics=method.teacher_batch_norm == "batch")
        target, valid = pseudo_targets(probabilities(teacher_logits), method.labels, method.confidence)  # in float32, not bf16 steps
        if method.passes == "joint":
            logits = forward(torch.cat([batch.images, student_view]))
            labeled_logits, unlabeled_logits = logits[: batch.images.shape[0]], logits[batch.images.shape[0] :]
        else:  # each part normalised by its own batch statistics
            labeled_logits, unlabeled_logits = forward(batch.images), forward(student_view)
        criterion = self.context.criterion
        loss_sup = criterion(labeled_logits, batch.masks)
        if method.unlabeled_loss == "mse":  # Mean Teacher's consistency between probabilities
            loss_unsup = probability_mse(unlabeled_logits, target, valid)
        else:
            loss_unsup = criterion(unlabeled_logits, target, valid)
        beta = method.beta * sigmoid_rampup(step, method.beta_rampup_steps)
        loss = loss_sup + beta * loss_unsup
        return loss, {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach()}

    def after_step(self, step: int, epoch_ended: bool) -> None:
        if self.method.ema_schedule == "step" or epoch_ended:
            self.student_ema.update()
            if self.teacher_ema is not None and self.following:
                self.teacher_ema.update()

    def after_validation(self, record: dict[str, Any]) -> dict[str, Any]:
        if not self.gated:
            return {}
        metric = self.context.config.train.selection_metric
        # a collapsed copy (empty or full everywhere) never counts as caught up
        caught_up = record.get("ema/collapse") is None and record[f"ema/{metric}"] >= record[f"teacher/{metric}"]
        self.following = self.following or caught_up
        return {"teacher/following": self.following}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"following": torch.tensor(self.following)}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if "following" in tensors:
            self.following = bool(tensors["following"])

    def networks(self) -> dict[str, nn.Module]:
        if self.coincide:  # one network: validated, checkpointed and reported once
            return {"ema": self.student_ema.module}
        return {"ema": self.student_ema.module, "teacher": self.teacher}

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        return probabilities(self.context.frozen_forward(self.teacher, images))


def teacher_start(method: MomentumConfig, train: TrainConfig) -> LabeledStart:
    """The teacher stage: ``teacher_steps`` (default ``train.steps``) of ``teacher_batch_size``
    (default the student's labeled + unlabeled batch), its copy kept at ``teacher_stage_momentum``
    (the grid's supervised row is exactly this stage, shared by the semi-supervised rows)."""
    steps, batch_size = method.teacher_steps or train.steps, method.teacher_batch_size or (train.batch_size + train.unlabeled_batch_size)
    return LabeledStart(method.ema(method.teacher_stage_momentum), steps, batch_size)


def _labeled_stage(base: RunConfig) -> LabeledStage:
    return teacher_start(base.method, base.train).as_grid_row()


def _momentum_rows(base: RunConfig) -> list[GridRow]:
    return [
        GridRow.settings("offline-original", mode="offline", teacher="original"),
        GridRow.settings("offline-momentum", mode="offline", teacher="momentum"),
        GridRow.settings("online-original", mode="online", teacher="original"),
        GridRow.settings("online-momentum", mode="online", teacher="momentum"),
        # weak-to-strong with a confidence threshold is FixMatch's row (pseudoseg/methods/fixmatch.py)
    ]


def _rounds_row(base: RunConfig) -> list[GridRow]:
    """Online pseudo labeling in the rounds grid, as the paper runs it: a fresh student for the
    labeled stage's steps (``train.steps``), taught by the seed's labeled-only model's momentum
    copy, which follows the student (``teacher_follows: auto``: once the student's copy has
    caught up, since without a pretrained start a fresh student is a random network)."""
    section = {"name": "momentum", "mode": "online", "teacher": "momentum", "student_init": "fresh"}
    return [GridRow("online-momentum", lambda raw, _: dict(section))]


MOMENTUM_GRID = GridFamily(
    name="momentum",
    summary="Method A's grid: offline and online pseudo labeling with either teacher, and the rows other methods add (Mean Teacher, FixMatch, UniMatch, CPS)",
    methods=("momentum",),
    labeled_stage=_labeled_stage,
    rows=(_momentum_rows,),
)
"""The paper's grid: supervised on the labeled split (which is also the teacher stage),
offline and online pseudo labeling with the original and the momentum teacher, the
rows of other methods (Mean Teacher, FixMatch, UniMatch, CPS), and supervised on
100 % of the labels."""


@register(
    "momentum",
    section=MomentumConfig,
    summary="Online pseudo labeling with momentum networks (Pham Van et al., 2022): the teacher follows the student as its momentum copy.",
    families=(MOMENTUM_GRID,),
    rows={"rounds": _rounds_row},
    recipes=("polyp_momentum_synthetic.yaml", "polyp_momentum_cvc.yaml", "polyp_momentum_pranet.yaml", "polyp_momentum_lite.yaml"),
)
def run_momentum(session: RunSession) -> RecipeOutcome:
    method: MomentumConfig = session.config.method
    train = session.config.train
    session.require_unlabeled()
    if method.teacher_run is not None:
        teacher_stage = finished_stage(method.teacher_run, session)
    else:
        teacher_stage = train_labeled_stage(session, "teacher", teacher_start(method, train))
    teacher_weights = teacher_stage.weights("ema" if method.teacher == "momentum" else "raw")
    strategy = MomentumStudentStrategy(method, teacher_weights)
    _explain_teacher(session, strategy)
    spec = session.semi_supervised_stage("student", strategy, steps=train.steps, describe={"teacher_weights": str(teacher_weights)})
    student = session.fit(
        spec.starting_from(
            teacher_weights if method.student_init == "teacher" else None,
            # M0, the labeled-only model the supervised row reports: the student stage releases
            # nothing below it on V, whatever the student started from
            baseline=teacher_stage.weights("ema"),
            # fresh: the run's initialisation, the one the teacher stage started from;
            # random: another draw
            init_seed=stage_seed(session.config.seed, "random-student") if method.student_init == "random" else None,
        )
    )
    if method.student_init == "fresh" and teacher_stage.init_digest and student.init_digest != teacher_stage.init_digest:
        session.log(
            f"method.student_init: fresh, but the student did not start from the teacher stage's initial weights "
            f"({teacher_stage.stage_dir} was trained with another seed or model.weights)"
        )
    networks = {"ema": student.weights("ema"), "raw": student.weights("raw")}
    if not strategy.coincide:
        networks["teacher"] = student.weights("teacher")
    return RecipeOutcome("ema", networks)


def _explain_teacher(session: RunSession, strategy: MomentumStudentStrategy) -> None:
    """One line on what the teacher will be, and warnings where the settings defeat the method."""
    method = strategy.method
    train = session.config.train
    steps_per_epoch = batches_per_epoch(len(session.unlabeled), train.unlabeled_batch_size)
    teacher_rate, student_rate = strategy.update_momenta(steps_per_epoch)

    def kept(rate: float) -> float:
        return retained_share(rate, schedule=method.ema_schedule, steps=train.steps, steps_per_epoch=steps_per_epoch)

    # the released model is the student's copy: it must have left its starting weights behind
    if kept(student_rate) > 0.25:  # the PraNet recipe, the paper's numbers: 0.99^153 = 21 %
        session.log(
            f"warning: the student's momentum copy (the released model) keeps {kept(student_rate):.0%} of its starting "
            f"weights after {train.steps} steps (momentum {method.student_momentum} per {method.momentum_unit}, "
            f"{steps_per_epoch} steps per epoch); train longer or state the momenta per step (method.momentum_unit: step)"
        )
    if strategy.coincide:
        session.log(
            "momentum: student_init: teacher with equal teacher and student momenta makes the online teacher and the "
            "student's momentum copy one network (Mean Teacher), which method.name: mean_teacher runs on its own; "
            "it is validated, saved and reported once, as ema"
        )
        return
    if method.mode != "online":
        return
    waits = " once the student's copy scores at least the teacher on validation" if strategy.gated else ""
    session.log(
        f"momentum: the online teacher follows the student{waits}; it keeps at least {kept(teacher_rate):.1%} of the trained "
        f"teacher after {train.steps} steps (momentum {method.teacher_momentum} per {method.momentum_unit}, updated every {method.ema_schedule})"
    )
    if method.student_init == "random":
        session.log(
            "warning: method.student_init: random averages an unrelated network into the trained teacher, which "
            "destroys it; use fresh (the teacher stage's initial weights) or teacher"
        )


__all__ = ["MOMENTUM_GRID", "MomentumConfig", "MomentumStudentStrategy", "networks_coincide", "pseudo_targets", "run_momentum", "sigmoid_rampup", "teacher_start", "teacher_waits_for_student"]

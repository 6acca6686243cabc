"""Mean Teacher (Tarvainen & Valpola, 2017): the student's own momentum copy is its teacher.

One student stage; the teacher is the exponential moving average of the
student's weights (``momentum``, per step or per epoch, as every momentum in
pseudoseg) and is never trained itself. Each step::

    loss = L_sup(student(x_l), y_l) + beta * ramp(step) * mean_pixels sum_k (p_student(x_u')_k - p_teacher(x_u)_k)^2

where the consistency is the squared error between the two networks'
probabilities (summed over the classes of a pixel, averaged per image), the
teacher sees the weak view ``x_u`` and the student a photometrically strong
view ``x_u'`` of the same geometry (``views: weak_strong``) or the same view
(``views: same``), and ``ramp`` is the sigmoid ramp-up exp(-5 (1 - t)^2) over
``rampup_steps``. The teacher is the released model (``ema``).

By default the student starts from the momentum copy of a labeled-only stage
(``<run_dir>/teacher``, or a finished supervised run given as ``teacher_run``):
the same harness as the momentum method's student, so the two compare methods,
not starts. ``student_init: fresh`` is the original recipe, from the run's
initialisation, where the ramp-up keeps the consistency from pulling a random
student towards its random copy.

Mean Teacher is also a setting of the momentum method (``student_init:
teacher`` with equal teacher and student momenta, ``unlabeled_loss: mse``); on
the same seed and data both train the same weights (tests/test_mean_teacher.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field
from torch import nn

from pseudoseg.engine.ema import ModelEMA, update_momentum
from pseudoseg.engine.labels import probabilities
from pseudoseg.engine.losses import probability_mse, sigmoid_rampup
from pseudoseg.engine.strategy import Batch, Forward, StageContext, Strategy, Views
from pseudoseg.methods.registry import GridRow, register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import EmaSection, EmaSettings, LabeledStartSection, baseline_rows, fit_one_stage, labeled_start

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig


class MeanTeacherConfig(LabeledStartSection, EmaSection):
    """Mean Teacher: consistency with the student's own momentum copy, ramped up.

    The keys of the labeled-only start (``steps``, ``student_init``, ``teacher_run``,
    ``teacher_steps``, ``teacher_batch_size``) are those of every one-stage baseline."""

    name: Literal["mean_teacher"] = "mean_teacher"
    momentum: float = Field(0.99, ge=0, lt=1)
    """The teacher: teacher <- m * teacher + (1 - m) * student, per ``momentum_unit``."""
    beta: float = Field(1.0, ge=0)
    """Weight of the consistency loss (after the ramp-up). The common medical implementations
    (SSL4MIS) use 0.1 with ``consistency_channels: mean``, a tenth of the default's weight for one
    class and less for several."""
    consistency_channels: Literal["sum", "mean"] = "sum"
    """The squared error of a pixel's probabilities summed over its channels, or averaged (SSL4MIS);
    the same for one class (one sigmoid channel)."""
    rampup_steps: int | None = Field(None, ge=0)
    """Sigmoid ramp-up of ``beta`` over this many steps (0: none); None: a quarter of the stage."""
    views: Literal["weak_strong", "same"] = "weak_strong"
    """``weak_strong``: the teacher sees the weak view, the student a photometrically strong
    view of the same geometry; ``same``: both see the strong view."""
    def start_ema(self) -> EmaSettings:
        """The labeled-only stage keeps its copy by the same rules as the teacher (``momentum_unit``, ...)."""
        return self.ema(self.teacher_stage_momentum)

    def rampup(self, steps: int) -> int:
        """The ramp-up length in steps, for a stage of ``steps`` steps."""
        return steps // 4 if self.rampup_steps is None else self.rampup_steps


class MeanTeacherStrategy(Strategy):
    """The student stage: supervised loss plus the ramped consistency with its momentum copy."""

    uses_unlabeled = True
    renders_pseudo_labels = True
    # both view choices draw the photometric parameters: "same" feeds the strong view to both networks
    views = Views(photometric=True)

    def __init__(self, method: MeanTeacherConfig, rampup_steps: int) -> None:
        self.method = method
        self.rampup_steps = rampup_steps

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        method = self.method
        rate = update_momentum(method.momentum, unit=method.momentum_unit, schedule=method.ema_schedule, steps_per_epoch=context.steps_per_epoch)
        self.teacher = ModelEMA(context.student, rate, buffers=method.ema_buffers)

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        teacher_view = batch.unlabeled if self.method.views == "weak_strong" else batch.unlabeled_strong
        target = self.pseudo_labels(teacher_view)
        logits = forward(torch.cat([batch.images, batch.unlabeled_strong]))
        labeled = batch.images.shape[0]
        loss_sup = self.context.criterion(logits[:labeled], batch.masks)
        loss_unsup = probability_mse(logits[labeled:], target, channels=self.method.consistency_channels)
        weight = self.method.beta * sigmoid_rampup(step, self.rampup_steps)
        return loss_sup + weight * loss_unsup, {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach()}

    def after_step(self, step: int, epoch_ended: bool) -> None:
        if self.method.ema_schedule == "step" or epoch_ended:
            self.teacher.update()

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.teacher.module}

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's probabilities (float32), in eval mode, in the student's memory format."""
        return probabilities(self.context.frozen_forward(self.teacher.module, images))


def _momentum_grid_row(base: RunConfig) -> list[GridRow]:
    """Mean Teacher in the momentum grid: the student starts from the seed's labeled-only model
    and its copy forgets at the rate of the base configuration's student copy; consistency
    weight 1, ramped up over the first quarter of the stage."""
    method = base.method

    def section(raw: dict[str, Any], _: Path) -> dict[str, Any]:
        return {
            "name": "mean_teacher",
            "momentum": method.student_momentum,
            "momentum_unit": method.momentum_unit,
            "ema_schedule": method.ema_schedule,
            "ema_buffers": method.ema_buffers,
            "beta": 1.0,
            "rampup_steps": base.train.steps // 4,
            "views": method.views,
            "student_init": "labeled",
            "teacher_steps": method.teacher_steps,
            "teacher_batch_size": method.teacher_batch_size,
            "teacher_stage_momentum": method.teacher_stage_momentum,
        }

    return [GridRow("mean-teacher", section)]


@register(
    "mean_teacher",
    section=MeanTeacherConfig,
    summary="Mean Teacher (Tarvainen & Valpola, 2017): consistency with the student's own momentum copy, on probabilities, ramped up.",
    # the rounds grid: from M0's momentum copy, as many steps as TSO's rounds; a per-step copy
    # of 0.99 and the ramp-up over the first quarter of the stage (the defaults)
    rows={"momentum": _momentum_grid_row, "rounds": baseline_rows("mean-teacher", {"name": "mean_teacher"})["rounds"]},
)
def run_mean_teacher(session: RunSession) -> RecipeOutcome:
    method: MeanTeacherConfig = session.config.method
    train = session.config.train
    session.require_unlabeled()
    labeled_stage = labeled_start(session, method)
    start = labeled_stage.weights("ema") if labeled_stage is not None else None
    rampup = method.rampup(method.steps or train.steps)
    student = fit_one_stage(session, method, MeanTeacherStrategy(method, rampup), start, rampup=rampup)
    return RecipeOutcome("ema", {"ema": student.weights("ema"), "raw": student.weights("raw")})


__all__ = ["MeanTeacherConfig", "MeanTeacherStrategy", "run_mean_teacher"]

"""Supervised training on the labeled split, keeping a momentum copy.

This is the teacher stage of the momentum method (the "original" network and
its "momentum" copy), the labeled-only baseline, and, with
``data.labeled_fraction: 1.0``, the fully supervised upper bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import Field
from torch import nn

from pseudoseg.config import MethodSection
from pseudoseg.engine.ema import ModelEMA, update_momentum
from pseudoseg.engine.strategy import StageContext, StageSpec, Strategy
from pseudoseg.engine.trainer import StageResult
from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession


class SupervisedConfig(MethodSection):
    """Train on the labeled split only (``data.labeled_fraction: 1.0`` for the
    fully supervised upper bound), keeping a momentum copy."""

    name: Literal["supervised"] = "supervised"
    ema_momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum of the kept copy: ema <- m * ema + (1 - m) * network, per ``momentum_unit``."""
    momentum_unit: Literal["step", "epoch"] = "step"
    """What the momentum means: the share of the copy kept over one step (default:
    a copy of the last ~1/(1-m) steps, whatever the data set's size) or over one epoch
    (the momentum paper's numbers, for its teacher stage). Converted to the update rate
    of ``ema_schedule``: per-epoch m over E steps is m^(1/E) per step."""
    ema_schedule: Literal["step", "epoch"] = "step"
    """Update the momentum copy after every step or at the end of every epoch."""
    ema_buffers: Literal["average", "copy"] = "average"
    """Batch-norm running statistics: averaged like parameters, or copied."""


class SupervisedStrategy(Strategy):
    def __init__(self, momentum: float, *, unit: str = "epoch", schedule: str = "step", buffers: str = "average") -> None:
        self.momentum = momentum
        self.unit = unit
        self.schedule = schedule
        self.buffers = buffers

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        momentum = update_momentum(self.momentum, unit=self.unit, schedule=self.schedule, steps_per_epoch=context.steps_per_epoch)
        self.ema = ModelEMA(context.student, momentum, buffers=self.buffers)

    def after_step(self, step: int, epoch_ended: bool) -> None:
        if self.schedule == "step" or epoch_ended:
            self.ema.update()

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.ema.module}


def train_labeled_stage(
    session: RunSession,
    name: str,
    *,
    momentum: float,
    unit: str,
    schedule: str,
    buffers: str,
    steps: int,
    batch_size: int,
    strategy: type[SupervisedStrategy] = SupervisedStrategy,
    settings: Mapping[str, Any] | None = None,
) -> StageResult:
    """A supervised stage on L (shared by every method that starts from a labeled-only model).

    ``strategy``: a variant of supervised training on L (BCP's copy-paste pre-training),
    built with the momentum keys and ``settings``, which also define the stage (a resume
    with other settings is refused)."""
    settings = dict(settings or {})
    spec = StageSpec(
        name=name,
        strategy=strategy(momentum, unit=unit, schedule=schedule, buffers=buffers, **settings),
        steps=steps,
        batch_size=batch_size,
        labeled=session.labeled,
        validation=session.validation,
        describe={"strategy": "supervised", "momentum": momentum, "momentum_unit": unit, "schedule": schedule, "buffers": buffers, **settings},
    )
    return session.trainer.fit(spec)


@register(
    "supervised",
    section=SupervisedConfig,
    summary="Supervised training on the labeled split only, keeping a momentum copy (the baseline; with all labels, the upper bound).",
    uses_unlabeled=False,
)
def run_supervised(session: RunSession) -> RecipeOutcome:
    method: SupervisedConfig = session.config.method
    train = session.config.train
    result = train_labeled_stage(
        session,
        "supervised",
        momentum=method.ema_momentum,
        unit=method.momentum_unit,
        schedule=method.ema_schedule,
        buffers=method.ema_buffers,
        steps=train.steps,
        batch_size=train.batch_size,
    )
    return RecipeOutcome("ema", {"ema": result.weights("ema"), "raw": result.weights("raw")})


__all__ = ["SupervisedConfig", "SupervisedStrategy", "run_supervised", "train_labeled_stage"]

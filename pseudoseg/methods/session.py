"""What a method's recipe works with: the run's configuration, data split and trainer."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pseudoseg.errors import UserError
from pseudoseg.progress import console_print

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig
    from pseudoseg.data.pool import SamplePool
    from pseudoseg.data.splits import Split
    from pseudoseg.engine.trainer import Trainer


@dataclass(frozen=True)
class RecipeOutcome:
    """What a method's recipe trained: its networks' best weights, and which is released."""

    released: str
    networks: dict[str, Path]
    ensemble: list[Path] | None = None
    """Weights whose mean prediction is the released model (ATSO's ``final: ensemble``)."""


@dataclass
class RunSession:
    config: RunConfig
    run_dir: Path
    pool: SamplePool
    split: Split
    trainer: Trainer
    labeled: np.ndarray
    unlabeled: np.ndarray
    validation: np.ndarray
    """Pool indices of L, U and V."""
    log: Callable[[Any], None] = console_print
    """Where a recipe says what it decided (one line each)."""

    def require_unlabeled(self) -> None:
        """A semi-supervised method needs images without (used) masks: say how to get some."""
        if len(self.unlabeled):
            return
        name = self.config.method.name
        if self.split.labels == "given":
            raise UserError(
                f"data: {name} needs unlabeled images, and every image has a mask; add images without masks "
                "(data.unlabeled) or hide some with data.labels: simulated and a data.labeled_fraction below 1"
            )
        raise UserError(f"data.labeled_fraction: {name} needs unlabeled images; use a fraction below 1")

"""Training methods: each a recipe of stages, each stage a small strategy in the one loop.

``RECIPES`` maps ``method.name`` in the configuration to the function that
runs it. To add a method: write a :class:`~pseudoseg.engine.strategy.Strategy`
for what differs from supervised training, a recipe that arranges its stages,
a configuration section in :mod:`pseudoseg.config`, and register it here.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType

from pseudoseg.engine.strategy import Batch, Strategy
from pseudoseg.methods.momentum import MomentumStudentStrategy, run_momentum
from pseudoseg.methods.rounds import RoundStrategy, run_atso, run_tso
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.supervised import SupervisedStrategy, run_supervised

RECIPES: MappingProxyType[str, Callable[[RunSession], RecipeOutcome]] = MappingProxyType(
    {
        "supervised": run_supervised,
        "momentum": run_momentum,
        "atso": run_atso,
        "tso": run_tso,
    }
)

__all__ = ["RECIPES", "Batch", "MomentumStudentStrategy", "RecipeOutcome", "RoundStrategy", "RunSession", "Strategy", "SupervisedStrategy"]

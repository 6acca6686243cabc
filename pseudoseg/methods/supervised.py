"""Supervised training on the labeled split, keeping a momentum copy.

This is the teacher stage of the momentum method (the "original" network and
its "momentum" copy), the labeled-only baseline, and, with
``data.labeled_fraction: 1.0``, the fully supervised upper bound. It releases
the momentum copy (``ema``).
"""

from __future__ import annotations

from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import SupervisedConfig, train_labeled_stage


@register(
    "supervised",
    section=SupervisedConfig,
    summary="Supervised training on the labeled split only, keeping a momentum copy (the baseline; with all labels, the upper bound).",
)
def run_supervised(session: RunSession) -> RecipeOutcome:
    method: SupervisedConfig = session.config.method
    result = train_labeled_stage(session, "supervised", method.labeled_start(session.config.train))
    return RecipeOutcome("ema", {"ema": result.weights("ema"), "raw": result.weights("raw")})


__all__ = ["run_supervised"]

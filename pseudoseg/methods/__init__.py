"""Training methods: each one module, found by name in the method registry.

A method states only what differs from supervised training: a configuration
section, a :class:`~pseudoseg.engine.strategy.Strategy` for its stages in the
one training loop, and a recipe that arranges the stages, registered with
:func:`register`. Methods of other distributions register through the
``pseudoseg.methods`` entry-point group. See docs/adding_a_method.md.

Importing this package is cheap: the registry imports the method modules
when it is first asked (:func:`list_methods`, :func:`get_method`).
"""

from __future__ import annotations

from typing import Any

from pseudoseg.methods.registry import GridFamily, GridRow, LabeledStage, MethodInfo, get_method, grid_families, list_methods, register

# What a method module needs, importable from here (loaded on first use: they import torch).
_LAZY = {
    "MethodSection": "pseudoseg.config",
    "Batch": "pseudoseg.engine.strategy",
    "Forward": "pseudoseg.engine.strategy",
    "StageContext": "pseudoseg.engine.strategy",
    "StageSpec": "pseudoseg.engine.strategy",
    "Strategy": "pseudoseg.engine.strategy",
    "Views": "pseudoseg.engine.strategy",
    "RecipeOutcome": "pseudoseg.methods.session",
    "RunSession": "pseudoseg.methods.session",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "Batch",
    "Forward",
    "GridFamily",
    "GridRow",
    "LabeledStage",
    "MethodInfo",
    "MethodSection",
    "RecipeOutcome",
    "RunSession",
    "StageContext",
    "StageSpec",
    "Strategy",
    "Views",
    "get_method",
    "grid_families",
    "list_methods",
    "register",
]

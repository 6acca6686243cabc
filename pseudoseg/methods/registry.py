"""The method registry: every training method pseudoseg can run, found by its ``method.name``.

A method is one module holding its configuration section, its strategy and
its recipe; the recipe is registered with the :func:`register` decorator::

    from pseudoseg.methods import register

    @register("mean_teacher", section=MeanTeacherConfig, summary="Mean Teacher: ...")
    def run_mean_teacher(session: RunSession) -> RecipeOutcome:
        ...

Everything else derives from the registry: the configuration's ``method``
section (a union of the registered sections, chosen by ``name``), the
configuration reference in docs/configuration.md, the experiment grids (families and rows a
method contributes), ``pseudoseg methods`` and the runner.

The registry is built once, the first time it is asked (:func:`list_methods`,
:func:`get_method`, :func:`grid_families`, or loading a configuration): it
imports every module of this package (the built-in methods: a new file here is
found without being listed anywhere) and then every plug-in of the
``pseudoseg.methods`` entry-point group (each entry names a module holding
registered recipes, or one registered recipe). ``register`` only marks a
recipe; nothing is added to shared state at import time, so importing a
method module twice, or a module that imports another's recipe, registers
nothing twice. A plug-in that fails to import or to register is a one-line
error naming it.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from pseudoseg.errors import UserError
from pseudoseg.plugins import load_plugins

if TYPE_CHECKING:
    from pseudoseg.config import MethodSection, RunConfig
    from pseudoseg.methods.session import RecipeOutcome, RunSession

ENTRY_POINT_GROUP = "pseudoseg.methods"
"""The entry-point group through which installed distributions add methods."""

DEFAULT_METHOD = "supervised"
"""The method of a configuration without a ``method`` section."""

BUILT_IN = "built in"
"""The source of a method shipped with pseudoseg (a plug-in's is its distribution)."""

Recipe = Callable[["RunSession"], "RecipeOutcome"]


# --------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class GridRow:
    """One row of an experiment grid: a semi-supervised variant that starts from the seed's supervised run."""

    name: str
    """The row's name (its folder under ``<out>/seed<k>/`` and its label in the tables)."""
    method: Callable[[dict[str, Any], Path], dict[str, Any]]
    """(the base configuration's method section as written, the seed's supervised run
    directory) -> the row's method section. The grid sets its ``teacher_run`` to that
    run, so every section used in a grid has the key."""

    @classmethod
    def settings(cls, row: str, /, **settings: Any) -> GridRow:
        """The row ``row`` that sets keys of the base configuration's method section
        (``name`` among them to switch to another method of the same section)."""

        def method(raw: dict[str, Any], _: Path) -> dict[str, Any]:
            return {**raw, **settings}

        return cls(row, method)


@dataclass(frozen=True)
class LabeledStage:
    """A family's labeled-only stage as a supervised run: the grid's ``supervised`` row, which
    every semi-supervised row of a seed reuses as its teacher (``method.teacher_run``)."""

    method: dict[str, Any]
    """The supervised method section that trains it."""
    steps: int
    batch_size: int


Rows = Callable[["RunConfig"], Sequence[GridRow]]
"""The rows a method adds to a grid family, given the grid's base configuration."""


@dataclass(frozen=True)
class GridFamily:
    """An experiment grid: a method's variants side by side (``pseudoseg grid --family NAME``).

    Its rows are the labeled-only ``supervised`` row, the family's own rows, the rows
    other methods contribute to it (in the order the methods are listed), and the
    ``supervised-100%`` upper bound.
    """

    name: str
    summary: str
    """One line: what the family compares."""
    methods: tuple[str, ...]
    """The ``method.name`` values a base configuration of this family may have."""
    labeled_stage: Callable[[RunConfig], LabeledStage]
    """The labeled-only stage of the base configuration (its teacher stage, or M0)."""
    rows: tuple[Rows, ...] = ()
    """The family's semi-supervised rows (contributions of other methods are appended)."""
    reference: str = "supervised"
    """The row the paired per-seed differences are taken from."""
    plots: Callable[[Path, dict[str, dict[str, str]]], None] | None = None
    """Further plots of the grid's folder, given the runs (row -> seed -> run directory)."""

    def rows_for(self, base: RunConfig) -> list[GridRow]:
        return [row for rows in self.rows for row in rows(base)]


# --------------------------------------------------------------------------- methods


@dataclass(frozen=True)
class MethodInfo:
    """A registered method."""

    name: str
    """Its ``method.name``."""
    section: type[MethodSection]
    """Its configuration section (a pydantic model whose ``name`` field is a ``Literal`` holding ``name``)."""
    recipe: Recipe
    """Runs the method on a prepared run: ``RunSession -> RecipeOutcome``."""
    summary: str
    """One line, as ``pseudoseg methods`` lists it."""
    uses_unlabeled: bool = True
    """Whether it trains on unlabeled images (its section's ``uses_unlabeled``)."""
    families: tuple[GridFamily, ...] = ()
    """Experiment grids it defines."""
    rows: Mapping[str, Rows] = field(default_factory=dict)
    """Rows it adds to grid families (defined by it or by other methods), by family name."""
    recipes: tuple[str, ...] = ()
    """Its YAML recipes, in the ``configs/`` folder of the package that holds the method."""
    module: str = ""
    """The module that registers it."""
    source: str = BUILT_IN
    """``built in``, or the distribution (name and version) of the plug-in that provides it."""

    def recipe_files(self) -> list[Path]:
        """The recipes as paths (``<package>/configs/<name>``)."""
        package = self.module.split(".", 1)[0]
        return [Path(str(resources.files(package) / "configs" / name)) for name in self.recipes]


_MARK = "__pseudoseg_methods__"
"""The attribute of a recipe function holding the registrations :func:`register` made."""


def register(
    name: str,
    *,
    section: type[MethodSection],
    summary: str,
    families: Sequence[GridFamily] = (),
    rows: Mapping[str, Rows] | None = None,
    recipes: Sequence[str] = (),
) -> Callable[[Recipe], Recipe]:
    """Register the decorated recipe as the method ``name`` (``method.name`` in a configuration).

    Args:
        name: the method's name; one of the words of ``section``'s ``name`` field
            (a section may serve several methods, as ATSO and TSO share one).
        section: its configuration section, a subclass of
            :class:`pseudoseg.config.MethodSection` with ``name: Literal[...]``.
        summary: one line, listed by ``pseudoseg methods``.
        families: experiment grids the method defines.
        rows: grid rows it adds to families, by family name.
        recipes: its YAML recipes (file names in the package's ``configs/``).

    The recipe is returned unchanged; the registry finds it when it is built.

    Example:
        >>> from pseudoseg.methods import register
        >>> @register("my_method", section=MyConfig, summary="What it does, in one line.")
        ... def run_my_method(session):
        ...     ...
    """
    from pseudoseg.config import MethodSection

    if not (isinstance(section, type) and issubclass(section, MethodSection)):
        raise TypeError(f"method {name!r}: section must be a subclass of pseudoseg.config.MethodSection, got {section!r}")
    words = _name_words(section)
    if name not in words:
        raise TypeError(f"method {name!r}: {section.__name__}.name must be a Literal holding {name!r} (it holds {', '.join(map(repr, words)) or 'none'})")
    if not summary.strip() or "\n" in summary.strip():
        raise TypeError(f"method {name!r}: the summary must be one line")
    for family in families:
        if not set(family.methods) & set(words):
            raise TypeError(f"method {name!r}: grid family {family.name!r} takes none of {section.__name__}'s methods")

    def decorate(recipe: Recipe) -> Recipe:
        info = MethodInfo(
            name=name,
            section=section,
            recipe=recipe,
            summary=summary.strip(),
            uses_unlabeled=section.uses_unlabeled,
            families=tuple(families),
            rows=types.MappingProxyType(dict(rows or {})),
            recipes=tuple(recipes),
            module=getattr(recipe, "__module__", ""),
        )
        setattr(recipe, _MARK, (*getattr(recipe, _MARK, ()), info))
        return recipe

    return decorate


def _name_words(section: type) -> tuple[str, ...]:
    field_info = getattr(section, "model_fields", {}).get("name")
    annotation = field_info.annotation if field_info is not None else None
    return tuple(arg for arg in get_args(annotation) if isinstance(arg, str)) if get_origin(annotation) is Literal else ()


# --------------------------------------------------------------------------- the registry


@dataclass(frozen=True)
class _Registry:
    methods: Mapping[str, MethodInfo]
    families: Mapping[str, GridFamily]


def _registrations(found: Any) -> list[MethodInfo]:
    """The methods registered by a module (its own recipes, in definition order) or by one recipe."""
    if isinstance(found, types.ModuleType):
        recipes = [value for value in vars(found).values() if callable(value) and getattr(value, "__module__", None) == found.__name__]
        return [info for recipe in recipes for info in getattr(recipe, _MARK, ())]
    return list(getattr(found, _MARK, ()))


def _built_in_modules() -> list[str]:
    """The modules of this package, the default method's first, then by name (the order methods are listed in)."""
    package = __name__.rsplit(".", 1)[0]
    names = sorted(f"{package}.{module.name}" for module in pkgutil.iter_modules(importlib.import_module(package).__path__))
    return sorted(names, key=lambda name: name != f"{package}.{DEFAULT_METHOD}")


@functools.cache
def _registry() -> _Registry:
    """Built once: the built-in methods, then the plug-ins (by entry-point name)."""
    methods: dict[str, MethodInfo] = {}

    def add(infos: list[MethodInfo], source: str) -> None:
        for info in infos:
            if info.name in methods:
                raise ValueError(f"method {info.name!r} is already registered ({methods[info.name].module}, {methods[info.name].source})")
            methods[info.name] = replace(info, source=source)

    for module in _built_in_modules():
        add(_registrations(importlib.import_module(module)), BUILT_IN)

    def add_plugin(found: Any, source: str) -> int:
        infos = _registrations(found)
        add(infos, source)
        return len(infos)

    load_plugins(ENTRY_POINT_GROUP, "method", add_plugin, hint="decorate a recipe with pseudoseg.methods.register")
    families: dict[str, GridFamily] = {}
    for info in methods.values():
        for family in info.families:
            if family.name in families:
                raise UserError(f"grid family {family.name!r} is defined twice (method {info.name}, {info.source})")
            missing = [name for name in family.methods if name not in methods]
            if missing:
                raise UserError(f"grid family {family.name!r} of method {info.name} ({info.source}) takes unregistered methods: {', '.join(missing)}")
            families[family.name] = family
    for info in methods.values():
        for family_name, rows in info.rows.items():
            if family_name not in families:
                raise UserError(f"method {info.name} ({info.source}) adds grid rows to {family_name!r}, which no method defines")
            families[family_name] = replace(families[family_name], rows=(*families[family_name].rows, rows))
    return _Registry(types.MappingProxyType(methods), types.MappingProxyType(families))


def list_methods() -> tuple[MethodInfo, ...]:
    """Every registered method: the built-in ones, then the plug-ins."""
    return tuple(_registry().methods.values())


def get_method(name: str) -> MethodInfo:
    """The method registered as ``name``.

    Raises:
        UserError: no method has that name (the message lists those that exist).
    """
    methods = _registry().methods
    if name not in methods:
        raise UserError(f"method.name: no method {name!r}; registered: {', '.join(methods)} (pseudoseg methods lists them)")
    return methods[name]


def method_sections(*, built_in_only: bool = False) -> tuple[type[MethodSection], ...]:
    """The configuration sections of the registered methods, each once, in the methods' order
    (``built_in_only``: of the methods shipped with pseudoseg)."""
    return tuple(dict.fromkeys(info.section for info in list_methods() if info.source == BUILT_IN or not built_in_only))


def grid_families() -> Mapping[str, GridFamily]:
    """Every grid family by name, with the rows other methods contribute to it."""
    return _registry().families


def grid_family(name: str | None, base: RunConfig) -> GridFamily:
    """The family ``name``, or with ``None`` the one the base configuration's method belongs to,
    checked to take the base configuration's method.

    Raises:
        UserError: an unknown family, a base method the family does not take, or
            (``name`` None) a base method of no family or of several.
    """
    families = grid_families()
    method = base.method.name
    if name is None:
        own = [family for family in families.values() if method in family.methods]
        if len(own) != 1:
            listed = "; ".join(f"{family.name} ({', '.join(family.methods)})" for family in families.values())
            raise UserError(f"--family: method {method} belongs to {'no grid family' if not own else 'several grid families'}; choose one of: {listed}")
        return own[0]
    if name not in families:
        names = list(families)
        expected = " or ".join(names) if len(names) <= 2 else f"{', '.join(names[:-1])} or {names[-1]}"
        raise UserError(f"--family: expected {expected}, got {name!r}")
    family = families[name]
    if method not in family.methods:
        raise UserError(f"grid --family {name}: the base configuration's method.name must be {' or '.join(family.methods)}")
    return family


__all__ = [
    "BUILT_IN",
    "DEFAULT_METHOD",
    "ENTRY_POINT_GROUP",
    "GridFamily",
    "GridRow",
    "LabeledStage",
    "MethodInfo",
    "Rows",
    "get_method",
    "grid_families",
    "grid_family",
    "list_methods",
    "method_sections",
    "register",
]

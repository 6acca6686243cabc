"""The data-source registry: every data format pseudoseg reads, found by its ``data.kind``.

A data format is one class (a :class:`~pseudoseg.data.sources.DataSource`)
marked with :func:`register_source`::

    from pseudoseg.data.registry import register_source
    from pseudoseg.data.sources import ImageSource

    @register_source("npz")
    class NpzSource(ImageSource):
        ...

The registry is built once, the first time it is asked (:func:`registered_source`,
:func:`source_names`, or loading a configuration): the built-in formats
(``folders``: 2-D images and masks, PraNet or nnU-Net layout; ``volumes``:
NIfTI volumes, Decathlon or nnU-Net layout), then every plug-in of the
``pseudoseg.data_sources`` entry-point group (each entry names a module holding
registered sources, or one registered source). ``register_source`` only marks
a class; nothing is added to shared state at import time. A plug-in that fails
to import or to register is a one-line error naming it.

This module imports none of pseudoseg's readers (only its errors and plug-in
loader), so the configuration can validate ``data.kind`` against it without
importing the readers (which import the configuration); :func:`pseudoseg.data.sources.data_source` is the typed way in.
"""

from __future__ import annotations

import functools
import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from pseudoseg.errors import UserError
from pseudoseg.plugins import load_plugins

ENTRY_POINT_GROUP = "pseudoseg.data_sources"
"""The entry-point group through which installed distributions add data formats."""

BUILT_IN_MODULES = ("pseudoseg.data.folders", "pseudoseg.data.volumes")
"""The modules of the built-in formats, in the order they are listed."""

GEOMETRIES = ("images", "volumes")
"""What a sample is: a 2-D image, or a slice of a volume scored per case (:mod:`pseudoseg.data.sources`)."""

_MARK = "__pseudoseg_data_source__"

SourceClass = TypeVar("SourceClass", bound=type)


def register_source(name: str) -> Callable[[SourceClass], SourceClass]:
    """Mark a :class:`~pseudoseg.data.sources.DataSource` subclass as the format ``data.kind: <name>``."""
    if not name or not name.replace("-", "_").isidentifier():
        raise ValueError(f"data source name {name!r}: use letters, digits, '_' and '-'")

    def mark(cls: SourceClass) -> SourceClass:
        cls.name = name
        setattr(cls, _MARK, name)
        return cls

    return mark


def registered_source(name: str) -> Any:
    """The registered format ``name`` (``data.kind``), a :class:`~pseudoseg.data.sources.DataSource`
    (typed there: :func:`pseudoseg.data.sources.data_source`).

    Raises:
        UserError: naming the registered formats when ``name`` is not one of them.
    """
    sources = _registry()
    if name not in sources:
        raise UserError(f"data.kind: unknown data format {name!r}; registered: {', '.join(sources)}")
    return sources[name]


def geometry_of(name: str) -> str:
    """``images`` or ``volumes``: the geometry of format ``name`` (:mod:`pseudoseg.data.sources`)."""
    return registered_source(name).geometry


def source_names() -> tuple[str, ...]:
    """Every registered format, the built-in ones first."""
    return tuple(_registry())


def source_origin(name: str) -> str:
    """Where format ``name`` comes from: ``built in``, or the plug-in's distribution."""
    return _origins()[name]


def _marked(module: types.ModuleType | type) -> list[type]:
    if isinstance(module, type):
        return [module] if getattr(module, _MARK, None) else []
    return [value for value in vars(module).values() if isinstance(value, type) and vars(value).get(_MARK) and value.__module__ == module.__name__]


@functools.cache
def _build() -> tuple[Mapping[str, Any], Mapping[str, str]]:
    sources: dict[str, Any] = {}
    origins: dict[str, str] = {}

    def add(classes: list[type], origin: str) -> None:
        for cls in classes:
            # not imported here, so that the configuration can ask this module without the readers
            if getattr(cls, "geometry", None) not in GEOMETRIES or getattr(cls, "__abstractmethods__", None):
                raise TypeError(f"{cls.__name__} is not a complete pseudoseg.data.sources.DataSource (geometry images or volumes, every abstract method)")
            if cls.name in sources:
                raise ValueError(f"data source {cls.name!r} is already registered ({origins[cls.name]})")
            sources[cls.name], origins[cls.name] = cls(), origin

    for module in BUILT_IN_MODULES:
        add(_marked(importlib.import_module(module)), "built in")

    def add_plugin(found: Any, origin: str) -> int:
        classes = _marked(found)
        add(classes, origin)
        return len(classes)

    load_plugins(ENTRY_POINT_GROUP, "data source", add_plugin, hint="decorate a DataSource subclass with pseudoseg.data.registry.register_source")
    return types.MappingProxyType(sources), types.MappingProxyType(origins)


def _registry() -> Mapping[str, Any]:
    return _build()[0]


def _origins() -> Mapping[str, str]:
    return _build()[1]

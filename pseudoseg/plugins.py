"""Loading plug-ins: the modules installed distributions name in an entry-point group.

The method registry (``pseudoseg.methods``) and the data-format registry
(``pseudoseg.data_sources``) load their plug-ins the same way: in the order of
the entry points' names, each module or object handed to the registry, and
whatever a plug-in raises while it loads or registers turned into one line
naming it (its entry point, its value and its distribution).
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import metadata
from typing import Any

from pseudoseg.errors import UserError


def load_plugins(group: str, noun: str, register: Callable[[Any, str], int], *, hint: str) -> None:
    """Hand every entry point of ``group`` to ``register(loaded object, origin)``, which returns how
    many things it registered; none is an error saying ``hint`` (how to register one).

    Raises:
        UserError: ``plug-in <noun> '<name>' (<value>, from <distribution>): <error>``, one line.
    """
    for entry in sorted(metadata.entry_points(group=group), key=lambda entry: entry.name):
        dist = entry.dist
        origin = f"{dist.name} {dist.version}" if dist is not None else "plug-in"
        try:
            if not register(entry.load(), origin):
                raise ValueError(f"registers no {noun} ({hint})")
        except Exception as exc:  # whatever a plug-in raises, the user reads which one broke
            raise UserError(f"plug-in {noun} {entry.name!r} ({entry.value}, from {origin}): {one_line(exc)}") from None


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__

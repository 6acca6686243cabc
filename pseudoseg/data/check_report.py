"""What ``pseudoseg data check`` found in a data set: counts, sizes, classes, problems.

Every data format (:mod:`pseudoseg.data.sources`) records into a
:class:`CheckReport` as it reads its files the way training does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pseudoseg.data.classes import ClassSet
from pseudoseg.errors import UserError

VALUES_SHOWN = 12
"""Mask values listed in a report (four times as many are kept per file while counting)."""


@dataclass
class CheckReport:
    """What a data check found."""

    path: Path
    kind: str
    layout: str
    geometry: str = "images"
    """The format's geometry (:mod:`pseudoseg.data.sources`): ``images`` count pixels and masks, ``volumes`` voxels and labels."""
    labeled: int = 0
    unlabeled: int = 0
    test: int = 0
    sizes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    mask_values: set = field(default_factory=set)
    foreground_pixels: int = 0
    mask_pixels: int = 0
    empty_masks: int = 0
    classes: ClassSet = field(default_factory=ClassSet.binary)
    classes_source: str = "binary default"
    """Where the classes came from: ``data.classes``, ``dataset.json`` or ``binary default``."""
    class_pixels: list[int] = field(default_factory=lambda: [0])
    """Pixels (voxels) of each class, in class order."""
    masks_with_class: list[int] = field(default_factory=lambda: [0])
    """Masks (label volumes) holding at least one pixel of each class."""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    unreadable_masks: int = 0
    """Masks (label volumes) that exist but could not be read as training would (each a problem)."""

    def use_classes(self, classes: ClassSet, source: str) -> None:
        """Read the masks with ``classes`` (before any is counted)."""
        self.classes, self.classes_source = classes, source
        self.class_pixels = [0] * classes.count
        self.masks_with_class = [0] * classes.count

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "kind": self.kind,
            "layout": self.layout,
            "counts": {"labeled": self.labeled, "unlabeled": self.unlabeled, "test": self.test},
            "sizes": {"x".join(map(str, size)): n for size, n in self.sizes.most_common()},
            "channels": {str(c): n for c, n in sorted(self.channels.items())},
            "mask_values": sorted(int(v) for v in self.mask_values),
            "foreground_fraction": self.foreground_fraction,
            "empty_masks": self.empty_masks,
            "classes": {**self.classes.to_json(), "source": self.classes_source},
            "class_fractions": dict(zip(self.classes.names, self.class_fractions)),
            "masks_with_class": dict(zip(self.classes.names, self.masks_with_class)),
            "notes": self.notes,
            "problems": self.problems,
            "ok": self.ok,
        }

    @property
    def foreground_fraction(self) -> float | None:
        return self.foreground_pixels / self.mask_pixels if self.mask_pixels else None

    @property
    def class_fractions(self) -> list[float | None]:
        """Each class's share of all mask pixels (voxels), in class order."""
        return [n / self.mask_pixels if self.mask_pixels else None for n in self.class_pixels]

    def add_mask(self, index: np.ndarray) -> None:
        """Count one mask of class indices (0 background, 1..C)."""
        counts = np.bincount(index.ravel(), minlength=self.classes.count + 1)[1:]
        self.class_pixels = [total + int(n) for total, n in zip(self.class_pixels, counts)]
        self.masks_with_class = [total + int(n > 0) for total, n in zip(self.masks_with_class, counts)]
        foreground = int(counts.sum())
        self.labeled += 1
        self.foreground_pixels += foreground
        self.mask_pixels += index.size
        self.empty_masks += foreground == 0

    def class_lines(self) -> list[str]:
        """The classes, where they came from and (label maps) the balance of each."""
        if self.classes.values is None:
            return [f"  classes: one foreground class ({self.classes_source}: {'0/255 or 0/1 masks' if self.geometry == 'images' else 'every non-zero label'})"]
        named = ", ".join(f"{name}={'/'.join(map(str, values))}" for name, values in zip(self.classes.names, self.classes.values))
        out = [f"  classes: {named} (from {self.classes_source})"]
        if self.mask_pixels:
            unit, holders = ("pixels", "masks") if self.geometry == "images" else ("voxels", "labels")
            shares = ", ".join(
                f"{name} {100 * fraction:.2f} % in {held} {holders}"
                for name, fraction, held in zip(self.classes.names, self.class_fractions, self.masks_with_class)
            )
            out.append(f"  per class ({unit}): {shares}")
        return out

    def lines(self) -> list[str]:
        unit = "cases" if self.geometry == "volumes" else "images"
        sizes = ", ".join(f"{'x'.join(map(str, size))} ({n})" for size, n in self.sizes.most_common(5))
        if len(self.sizes) > 5:
            sizes += f", ... ({len(self.sizes) - 5} more sizes)"
        values = sorted(int(v) for v in self.mask_values)
        shown = ", ".join(map(str, values[:VALUES_SHOWN])) + (", ..." if len(values) > VALUES_SHOWN else "")
        balance = "n/a" if self.foreground_fraction is None else f"{100 * self.foreground_fraction:.2f} % foreground pixels, {self.empty_masks} {'masks' if self.geometry == 'images' else 'labels'} without foreground"
        out = [
            f"{self.path} ({self.kind}, {self.layout})",
            f"  {unit}: {self.labeled} labeled, {self.unlabeled} unlabeled, {self.test} test",
            f"  sizes: {sizes or 'n/a'}",
            f"  channels: {', '.join(f'{c} ({n})' for c, n in sorted(self.channels.items())) or 'n/a'}",
            f"  mask values: {shown or 'n/a'}",
            *self.class_lines(),
            f"  class balance: {balance}",
        ]
        out += [f"  note: {note}" for note in self.notes]
        if self.problems:
            grouped = group_problems(self.problems)
            out.append(f"{len(grouped)} problem{'s' if len(grouped) > 1 else ''}: it would not train")
            out += [f"  - {problem}" for problem in grouped]
        else:
            out.append("no problems: it would train")
        return out


_FILES_SHOWN = 3


def group_problems(problems: list[str]) -> list[str]:
    """The problems with those that differ only by their file (``<file>: <sentence>``) said once,
    with their count and the first files: ``48 files: <sentence> (a.png, b.png, c.png, ...)``."""
    groups: dict[str, list[str]] = {}
    for problem in problems:
        where, sep, sentence = problem.partition(": ")
        named_file = sep and " " not in where and Path(where).suffix
        groups.setdefault(sentence if named_file else problem, []).append(where if named_file else "")
    out = []
    for sentence, files in groups.items():
        if len(files) == 1:
            out.append(f"{files[0]}: {sentence}" if files[0] else sentence)
        else:
            shown = ", ".join(files[:_FILES_SHOWN]) + (", ..." if len(files) > _FILES_SHOWN else "")
            out.append(f"{len(files)} files: {sentence} ({shown})")
    return out




def attempt(report: CheckReport, action: Callable[[], Any]) -> Any:
    """``action()``, or ``None`` with its error recorded as a problem: a check goes on."""
    try:
        return action()
    except UserError as exc:
        report.problems.append(str(exc))
        return None


def note_labels(report: CheckReport, dataset) -> None:
    names = dataset.foreground_labels
    report.notes.append(f"{dataset.path}: channels {', '.join(dataset.channel_names)}; labels {', '.join(f'{n}={dataset.labels[n]}' for n in names)}")


def check_label_values(report: CheckReport, dataset, found: set) -> None:
    unknown = sorted(int(v) for v in found if int(v) not in set(dataset.labels.values()))
    if unknown:
        report.problems.append(f"{dataset.path}: label files hold values {', '.join(map(str, unknown[:VALUES_SHOWN]))} that 'labels' does not name")

"""The classes a run segments, and the label values of the files that stand for each.

A run segments either one foreground class (binary: a sigmoid output, masks
decoded by the encoding rules of :func:`pseudoseg.data.folders.read_mask`, or
"every non-zero voxel" for label volumes) or ``C >= 2`` foreground classes
(a softmax over ``C + 1`` channels, channel 0 the background). Inside the
project a class is an *index*: 0 is the background, ``i`` (1..C) the i-th
foreground class, whatever values the files use; masks and stored pseudo
labels hold indices. The values come from, in this order:

* ``data.classes`` in the configuration: ``{name: value}`` or ``{name: [values]}``
  (several values make one class, e.g. ``{hippocampus: [1, 2]}`` segments the
  union of two labelled parts as one);
* the ``labels`` of a ``dataset.json`` beside the training data, in the Medical
  Segmentation Decathlon form (``{"0": "background", "1": "liver"}``) or the
  nnU-Net v2 form (``{"background": 0, "liver": 1}``);
* otherwise one foreground class decoded by the binary rules.

A value found in a file that no class names is an error naming the file and
the value (:meth:`ClassSet.index_map`), never silently background.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pseudoseg.errors import UserError

BINARY_NAME = "foreground"


@dataclass(frozen=True)
class ClassSet:
    """Foreground classes in index order (index ``i + 1`` is ``names[i]``)."""

    names: tuple[str, ...]
    values: tuple[tuple[int, ...], ...] | None = None
    """Label values of each class in the files; ``None``: one class decoded by the binary rules."""

    def __post_init__(self) -> None:
        if not self.names:
            raise ValueError("a class set needs at least one foreground class")
        if self.values is not None and len(self.values) != len(self.names):
            raise ValueError("one tuple of label values per class")

    @classmethod
    def binary(cls) -> ClassSet:
        """One foreground class, read by the binary decoding rules (today's masks)."""
        return cls((BINARY_NAME,), None)

    @property
    def count(self) -> int:
        """Number C of foreground classes."""
        return len(self.names)

    @property
    def is_binary(self) -> bool:
        return self.count == 1

    @property
    def channels(self) -> int:
        """Network output channels: 1 (sigmoid) for one class, C + 1 (softmax) for several."""
        return 1 if self.is_binary else self.count + 1

    def index_map(self, array: np.ndarray, source: Path | str) -> np.ndarray:
        """Class indices (``uint8``) of a label array holding the files' values.

        Raises:
            UserError: naming ``source`` and the first value that no class names.
        """
        if self.values is None:
            raise ValueError("binary class sets decode masks by the binary rules, not by values")
        array = np.asarray(array)
        if array.dtype.kind == "f":
            rounded = np.rint(array)
            if not np.array_equal(rounded, array):
                raise UserError(f"{source}: label values must be whole numbers (found {array[rounded != array].flat[0]!r})")
            array = rounded.astype(np.int64)
        table = {0: 0, **{value: index + 1 for index, values in enumerate(self.values) for value in values}}
        small = array.dtype.kind == "u" and array.dtype.itemsize <= 2  # uint8/uint16 label files: count, do not sort
        found = np.flatnonzero(np.bincount(array.ravel())) if small and array.size else np.unique(array)
        unknown = [int(v) for v in found if int(v) not in table]
        if unknown:
            known = ", ".join(str(v) for v in sorted(table))
            raise UserError(f"{source}: label value {unknown[0]} is not one of the classes' values ({known}); name it in data.classes")
        lookup = np.zeros(int(found.max()) + 1 if found.size else 1, dtype=np.uint8)
        for value, index in table.items():
            if value < lookup.size:
                lookup[value] = index
        return lookup[array if small else array.astype(np.int64)]

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "values": None if self.values is None else [list(v) for v in self.values]}

    @classmethod
    def from_json(cls, payload: Mapping[str, Any] | None) -> ClassSet:
        """The class set a model or cache recorded (``None``: written before classes existed: binary)."""
        if payload is None:
            return cls.binary()
        values = payload.get("values")
        return cls(tuple(payload["names"]), None if values is None else tuple(tuple(int(x) for x in v) for v in values))


def class_set_from_mapping(mapping: Mapping[str, Any], source: str) -> ClassSet:
    """``{name: value or [values]}`` (background excluded) as a class set, checked.

    Raises:
        UserError: naming ``source`` for a value that is not a positive integer,
            a value given to two classes (overlapping regions are not supported),
            or an empty mapping.
    """
    names: list[str] = []
    values: list[tuple[int, ...]] = []
    owner: dict[int, str] = {}
    for name, raw in mapping.items():
        entries = raw if isinstance(raw, (list, tuple)) else [raw]
        parsed = []
        for entry in entries:
            if isinstance(entry, bool) or not isinstance(entry, int) or entry <= 0:
                raise UserError(f"{source}: class {name!r}: label values must be positive integers (0 is the background), got {entry!r}")
            if entry in owner:
                raise UserError(f"{source}: label value {entry} belongs to both {owner[entry]!r} and {name!r}; overlapping classes are not supported")
            owner[entry] = str(name)
            parsed.append(entry)
        if not parsed:
            raise UserError(f"{source}: class {name!r} has no label value")
        names.append(str(name))
        values.append(tuple(parsed))
    if not names:
        raise UserError(f"{source}: no foreground class")
    return ClassSet(tuple(names), tuple(values))


def classes_from_dataset_json(root: Path) -> ClassSet | None:
    """The foreground classes named by ``root/dataset.json`` ``labels`` (Decathlon or nnU-Net v2 form), if any."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        labels = json.loads(path.read_text()).get("labels")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON object ({exc.__class__.__name__})") from None
    if not labels:
        return None
    if not isinstance(labels, dict):
        raise UserError(f"{path}: labels must be an object")
    if all(isinstance(key, str) and key.strip().isdigit() for key in labels):  # Decathlon: {"0": "background", ...}
        mapping = {str(name): int(key) for key, name in sorted(labels.items(), key=lambda item: int(item[0])) if int(key) != 0}
    else:  # nnU-Net v2: {"background": 0, "liver": 1, "region": [1, 2]}
        mapping = {name: value for name, value in labels.items() if value != 0}
    return class_set_from_mapping(mapping, f"{path}: labels")


def resize_class_indices(index: np.ndarray, resize: Callable[[np.ndarray], np.ndarray], full: float) -> np.ndarray:
    """Resize a map of class indices by resizing each class's indicator and taking the argmax.

    ``resize`` maps a boolean indicator (the shape of ``index``) to scores in
    ``[0, full]`` at the new size (the way a binary mask is resized); the
    background's score is ``full`` minus the resized union of the classes
    (the resized background indicator), and every pixel takes the class of
    the largest score, ties going to the lower index (background first). For
    one class this is exactly the binary rule "foreground where the resized
    mask exceeds ``full / 2``". Classes absent from ``index`` are not resized.

    Returns:
        ``uint8`` class indices at the new size.
    """
    index = np.asarray(index)
    if index.dtype == np.bool_:
        index = index.astype(np.uint8)
    present = np.unique(index)
    present = present[present != 0]
    union = np.asarray(resize(index != 0), dtype=np.float32)
    best = np.zeros(union.shape, dtype=np.uint8)
    best_score = np.float32(full) - union
    for value in present:
        score = union if present.size == 1 else np.asarray(resize(index == value), dtype=np.float32)
        better = score > best_score
        best[better] = value
        best_score = np.where(better, score, best_score)
    return best


__all__ = ["BINARY_NAME", "ClassSet", "class_set_from_mapping", "classes_from_dataset_json", "resize_class_indices"]

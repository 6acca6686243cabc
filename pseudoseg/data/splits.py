"""Seeded labeled / unlabeled / validation splits and their JSON manifests.

Vocabulary: **L** labeled, **U** unlabeled (masks never used for training),
**V** validation (used only to pick checkpoints). A split is drawn over
*groups*: for 2-D photographs every image is its own group; for CT volumes a
group is a patient case, so that the slices of one case never straddle two
parts of the split.

A split is either drawn at random (:func:`make_split`) or read from
user-supplied lists of stems (:func:`split_from_lists`, to reproduce a
published split). Either way it is saved as a JSON manifest beside the run
(:func:`save_split`), and that manifest, not the seed, is what makes a run
reproducible on another machine or NumPy version.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import numpy as np

from pseudoseg.data.folders import IMAGE_SUFFIXES
from pseudoseg.errors import UserError
from pseudoseg.fileio import write_json

MANIFEST_FORMAT = "pseudoseg-split"
MANIFEST_VERSION = 3
_SOURCES = ("random", "lists")
VALIDATION_FROM = ("from_labeled", "extra")
"""Where a split's validation set comes from: out of the masks counted as labeled (the
labeled budget, or the masks the user has), or drawn beside them."""
# Suffixes tolerated (and stripped) in list files, beyond the 2-D image ones.
_LIST_SUFFIXES = (".nii.gz", ".nii", ".npy", ".npz", ".h5", ".mha", ".nrrd", *sorted(IMAGE_SUFFIXES))


@dataclass(frozen=True)
class Split:
    """A partition of ids into labeled (L), unlabeled (U) and validation (V) parts.

    The three tuples are sorted and pairwise disjoint. ``seed``,
    ``val_fraction`` and ``labeled_fraction`` record how a random split was
    drawn and are ``None`` for a split read from lists (``source="lists"``).
    """

    labeled: tuple[str, ...]
    unlabeled: tuple[str, ...]
    validation: tuple[str, ...]
    seed: int | None
    val_fraction: float | None
    labeled_fraction: float | None
    source: str
    without_mask: tuple[str, ...] = ()
    """Ids of U that have no true mask at all (given unlabeled); the other ids of U
    have a mask that the split hides (simulated)."""
    sources: dict[str, tuple[str, ...]] = field(default_factory=dict)
    """The folder each id was read from: folder -> ids (empty when not recorded)."""
    validation_from: str = "extra"
    """``from_labeled``: V was carved out of the masks the run counts as labeled (``labeled_fraction``
    is the share of masks used in all); ``extra``: V was drawn beside them (lists, and
    manifests before version 3)."""

    def __post_init__(self) -> None:
        for name in ("labeled", "unlabeled", "validation", "without_mask"):
            object.__setattr__(self, name, tuple(sorted(getattr(self, name))))
        object.__setattr__(self, "sources", {folder: tuple(sorted(ids)) for folder, ids in self.sources.items()})
        if not set(self.without_mask) <= set(self.unlabeled):
            raise ValueError("ids without a mask can only be unlabeled")
        if self.source not in _SOURCES:
            raise ValueError(f"source must be one of {_SOURCES}, got {self.source!r}")
        if self.validation_from not in VALIDATION_FROM:
            raise ValueError(f"validation_from must be one of {VALIDATION_FROM}, got {self.validation_from!r}")
        overlap = _first_overlap(self.labeled, self.unlabeled, self.validation)
        if overlap is not None:
            raise ValueError(f"id {overlap!r} is in two parts of the split")

    @property
    def labels(self) -> str:
        """``given``: the data decided (U is exactly the images without a mask, no fraction was
        drawn); ``simulated``: a seeded fraction decided which masks to use (at 1.0, all)."""
        given = self.labeled_fraction is None and set(self.unlabeled) == set(self.without_mask)
        return "given" if given else "simulated"

    @property
    def hidden_masks(self) -> tuple[str, ...]:
        """Ids of U whose true mask exists (hidden from training; diagnostics may use it)."""
        missing = set(self.without_mask)
        return tuple(item for item in self.unlabeled if item not in missing)

    @property
    def masks_used(self) -> dict[str, int]:
        """The masks the run uses: labeled (trained on) + validation (choose checkpoints)."""
        return {"labeled": len(self.labeled), "validation": len(self.validation), "total": len(self.labeled) + len(self.validation)}

    def masks_line(self) -> str:
        """``masks used: 17 labeled + 4 validation = 21 (validation from the labeled budget)``."""
        used = self.masks_used
        where = "from the labeled budget" if self.validation_from == "from_labeled" else "beside the labeled set"
        return f"masks used: {used['labeled']} labeled + {used['validation']} validation = {used['total']} (validation {where})"

    def to_json(self) -> dict[str, Any]:
        """The manifest payload: parameters, counts (for people reading it) and the ids."""
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "source": self.source,
            "labels": self.labels,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "labeled_fraction": self.labeled_fraction,
            "validation_from": self.validation_from,
            "counts": {
                "labeled": len(self.labeled),
                "unlabeled": len(self.unlabeled),
                "validation": len(self.validation),
            },
            "masks_used": self.masks_used,
            "labeled": list(self.labeled),
            "unlabeled": list(self.unlabeled),
            "validation": list(self.validation),
            "without_mask": list(self.without_mask),
            "sources": {folder: list(ids) for folder, ids in self.sources.items()},
        }

    @classmethod
    def from_json(cls, payload: Any, *, origin: str) -> Split:
        """Rebuild a split from :meth:`to_json` output; ``origin`` names the source in errors.

        Raises:
            UserError: naming ``origin`` for a payload that is not a split
                manifest, lacks a key, has a value of the wrong type, or lists
                an id in two parts.
        """
        if not isinstance(payload, dict):
            raise UserError(f"{origin}: split manifest must be a JSON object")
        if payload.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise UserError(f"{origin}: not a split manifest (format {payload.get('format')!r})")
        required = ("labeled", "unlabeled", "validation", "source", "seed", "val_fraction", "labeled_fraction")
        missing = [key for key in required if key not in payload]
        if missing:
            raise UserError(f"{origin}: split manifest is missing key '{missing[0]}'")
        parts = {key: _id_list(payload, key, origin) for key in ("labeled", "unlabeled", "validation")}
        source = payload["source"]
        if source not in _SOURCES:
            raise UserError(f"{origin}: 'source' must be one of {', '.join(_SOURCES)}, got {source!r}")
        seed = payload["seed"]
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise UserError(f"{origin}: 'seed' must be an integer or null, got {seed!r}")
        fractions = {key: _fraction_or_none(payload, key, origin) for key in ("val_fraction", "labeled_fraction")}
        overlap = _first_overlap(parts["labeled"], parts["unlabeled"], parts["validation"])
        if overlap is not None:
            raise UserError(f"{origin}: id '{overlap}' is in two parts of the split")
        if not parts["labeled"]:
            raise UserError(f"{origin}: the labeled list is empty")
        # Manifests before version 2 record neither; their U had hidden masks only.
        without_mask = payload.get("without_mask", [])
        sources = payload.get("sources", {})
        if not isinstance(without_mask, list) or not set(without_mask) <= set(parts["unlabeled"]):
            raise UserError(f"{origin}: 'without_mask' must list ids of the unlabeled part")
        if not isinstance(sources, dict) or not all(isinstance(ids, list) for ids in sources.values()):
            raise UserError(f"{origin}: 'sources' must map folders to lists of ids")
        validation_from = payload.get("validation_from", "extra")  # manifests before version 3 drew V beside L
        if validation_from not in VALIDATION_FROM:
            raise UserError(f"{origin}: 'validation_from' must be one of {', '.join(VALIDATION_FROM)}, got {validation_from!r}")
        return cls(
            labeled=parts["labeled"],
            unlabeled=parts["unlabeled"],
            validation=parts["validation"],
            seed=seed,
            val_fraction=fractions["val_fraction"],
            labeled_fraction=fractions["labeled_fraction"],
            source=source,
            without_mask=tuple(without_mask),
            sources={str(folder): tuple(ids) for folder, ids in sources.items()},
            validation_from=validation_from,
        )


def _id_list(payload: dict[str, Any], key: str, origin: str) -> tuple[str, ...]:
    """A split manifest's list of ids ``key``: strings, each once."""
    value = payload[key]
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{origin}: '{key}' must be a list of strings")
    if len(set(value)) != len(value):
        raise UserError(f"{origin}: '{key}' lists an id twice")
    return tuple(value)


def _fraction_or_none(payload: dict[str, Any], key: str, origin: str) -> float | None:
    value = payload[key]
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise UserError(f"{origin}: '{key}' must be a number or null, got {value!r}")
    return None if value is None else float(value)


def _units(ids: Sequence[str], groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    """The ids of each unit a split draws: each group's (``groups`` maps an id to its group), or each id alone."""
    if groups is None:
        return {item: [item] for item in ids}
    members: dict[str, list[str]] = {}
    for item in ids:
        if item not in groups:
            raise UserError(f"groups: id '{item}' has no group")
        members.setdefault(str(groups[item]), []).append(item)
    return members


def _part_sizes(n_units: int, labeled_fraction: float, val_fraction: float, validation: str) -> tuple[int, int]:
    """How many of ``n_units`` validate and how many are labeled, the rest being unlabeled.

    ``extra``: ``round(val_fraction * n)`` validate (at least one when ``val_fraction > 0``
    and there are two units or more, always leaving one for training); of the rest,
    ``round(labeled_fraction * rest)`` are labeled (at least one). ``from_labeled``:
    ``round(labeled_fraction * n)`` are the masks the run uses (at least two when
    ``val_fraction > 0``); ``round(val_fraction * budget)`` of them validate (at least one,
    leaving at least one labeled), the rest of the budget is labeled. Rounding is half-up.
    """
    if validation not in VALIDATION_FROM:
        raise ValueError(f"validation must be one of {VALIDATION_FROM}, got {validation!r}")
    validates = val_fraction > 0 and n_units > 1  # a single unit must stay in training
    if validation == "extra":
        n_val = min(max(1, _round_half_up(val_fraction, n_units)), n_units - 1) if validates else 0
        rest = n_units - n_val
        return n_val, min(max(1, _round_half_up(labeled_fraction, rest)), rest)
    budget = min(max(2 if validates else 1, _round_half_up(labeled_fraction, n_units)), n_units)
    n_val = min(max(1, _round_half_up(val_fraction, budget)), budget - 1) if validates else 0
    return n_val, budget - n_val


def make_split(
    ids: Sequence[str],
    *,
    labeled_fraction: float = 0.2,
    val_fraction: float = 0.1,
    seed: int = 0,
    groups: Mapping[str, str] | None = None,
    validation: str = "extra",
) -> Split:
    """Draw a seeded labeled / unlabeled / validation split.

    The units drawn are the groups (``groups`` maps each id to its group, e.g.
    a CT slice to its patient case) or, without ``groups``, the ids themselves.
    Units are sorted first, so the result does not depend on the order of
    ``ids``. One permutation is drawn from ``numpy.random.default_rng(seed)``; its
    first units validate, the next are labeled, the rest unlabeled, in the sizes
    :func:`_part_sizes` gives for ``validation`` (``extra``: validation drawn beside
    the labeled set, the same images whatever ``labeled_fraction``; ``from_labeled``:
    carved out of the labeled budget). docs/data.md (Splits) works both through.

    Raises:
        UserError: for a fraction out of range (``labeled_fraction`` in (0, 1],
            ``val_fraction`` in [0, 1)), no ids, duplicate ids, or an id
            missing from ``groups``.
    """
    labeled_fraction = _check_fraction("labeled_fraction", labeled_fraction, low_open=True, high_open=False)
    val_fraction = _check_fraction("val_fraction", val_fraction, low_open=False, high_open=True)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f"seed must be an integer, got {seed!r}")
    pool = _check_ids(ids)

    members = _units(pool, groups)
    units = sorted(members)
    order = np.random.default_rng(int(seed)).permutation(len(units))
    n_val, n_labeled = _part_sizes(len(units), labeled_fraction, val_fraction, validation)
    rest = order[n_val:]

    def expand(indices: np.ndarray) -> tuple[str, ...]:
        return tuple(sorted(item for i in indices for item in members[units[i]]))

    return Split(
        labeled=expand(rest[:n_labeled]),
        unlabeled=expand(rest[n_labeled:]),
        validation=expand(order[:n_val]),
        seed=int(seed),
        val_fraction=val_fraction,
        labeled_fraction=labeled_fraction,
        source="random",
        validation_from=validation,
    )


def split_from_lists(
    ids: Sequence[str],
    *,
    labeled: Path,
    unlabeled: Path | None = None,
    validation: Path | None = None,
) -> Split:
    """Build a split from text files of stems, e.g. to reproduce a published split.

    Each file lists one stem per line; blank lines and ``#`` comments are
    ignored, and a directory prefix or a file suffix (``images/a.jpg``,
    ``case_01.nii.gz``) is tolerated and stripped when the bare stem is in
    ``ids``. A stem listed twice in the same file counts once. Without an
    ``unlabeled`` file, every id not listed as labeled or validation is
    unlabeled; with one, ids in no file are left out of the split.

    Raises:
        UserError: naming the file for an unreadable file, a stem not in
            ``ids``, a stem listed in two files, or an empty labeled list.
    """
    pool = _check_ids(ids)
    known = set(pool)
    lists: dict[str, tuple[Path, list[str]]] = {}
    for role, path in (("labeled", labeled), ("validation", validation), ("unlabeled", unlabeled)):
        if path is not None:
            lists[role] = (Path(path), _read_list(Path(path), known))

    labeled_path, labeled_ids = lists["labeled"]
    if not labeled_ids:
        raise UserError(f"{labeled_path}: the labeled list is empty")
    seen: dict[str, Path] = {}
    for path, stems in lists.values():
        for stem in stems:
            if stem in seen:
                where = f"{seen[stem]} and {path}" if seen[stem] != path else str(path)
                raise UserError(f"stem '{stem}' is listed in both {where}")
            seen[stem] = path
    validation_ids = lists["validation"][1] if "validation" in lists else []
    if "unlabeled" in lists:
        unlabeled_ids = lists["unlabeled"][1]
    else:
        unlabeled_ids = [item for item in pool if item not in seen]
    return Split(
        labeled=tuple(labeled_ids),
        unlabeled=tuple(unlabeled_ids),
        validation=tuple(validation_ids),
        seed=None,
        val_fraction=None,
        labeled_fraction=None,
        source="lists",
    )


def save_split(split: Split, path: Path) -> None:
    """Write ``split`` as a JSON manifest (atomically: never half-written)."""
    write_json(path, split.to_json())


def load_split(path: Path, *, ids: Sequence[str] | None = None) -> Split:
    """Read a manifest written by :func:`save_split`.

    Args:
        ids: the ids available now (e.g. the stems found on disk). When given,
            every id in the manifest must be among them. Ids on disk that the
            manifest does not mention are simply not used.

    Raises:
        UserError: naming ``path`` for a missing or unreadable file, invalid
            JSON, a missing key, or ids absent from ``ids``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"split manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read split manifest ({exc})") from exc
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: invalid JSON in split manifest (line {exc.lineno}: {exc.msg})") from exc
    split = Split.from_json(payload, origin=str(path))
    if ids is not None:
        available = set(ids)
        listed = (*split.labeled, *split.unlabeled, *split.validation)
        absent = [item for item in listed if item not in available]
        if absent:
            raise UserError(
                f"{path}: {len(absent)} id{'' if len(absent) == 1 else 's'} in the split "
                f"{'is' if len(absent) == 1 else 'are'} not in the data set, e.g. '{absent[0]}'"
            )
    return split


# --------------------------------------------------------------------------- helpers


def _check_fraction(key: str, value: float, *, low_open: bool, high_open: bool) -> float:
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise UserError(f"{key} must be a number in {interval}, got {value!r}")
    number = float(value)
    too_low = number <= 0 if low_open else number < 0
    too_high = number >= 1 if high_open else number > 1
    if math.isnan(number) or too_low or too_high:
        raise UserError(f"{key} must be in {interval}, got {value!r}")
    return number


def _check_ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a sequence of strings, not a single string")
    pool = [str(item) for item in ids]
    if not pool:
        raise UserError("cannot split an empty data set (no ids)")
    if len(set(pool)) != len(pool):
        duplicate = sorted(item for item, count in Counter(pool).items() if count > 1)[0]
        raise UserError(f"id '{duplicate}' appears more than once in the data set")
    return sorted(pool)


def _round_half_up(fraction: float, n: int) -> int:
    # Decimal(str(...)) so that 0.15 * 10 is 1.5 exactly and rounds to 2.
    return int((Decimal(str(fraction)) * n).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _first_overlap(*parts: Sequence[str]) -> str | None:
    seen: set[str] = set()
    for part in parts:
        for item in part:
            if item in seen:
                return item
            seen.add(item)
    return None


def _read_list(path: Path, known: set[str]) -> list[str]:
    """Read one list file; entries are resolved against the ``known`` ids."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # tolerate a byte-order mark
    except FileNotFoundError:
        raise UserError(f"split list not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read split list ({exc})") from exc
    stems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        stem = _resolve_entry(entry, known)
        if stem is None:
            raise UserError(f"{path}, line {number}: '{entry}' is not in the data set")
        if stem not in stems:
            stems.append(stem)
    return stems


def _resolve_entry(entry: str, known: set[str]) -> str | None:
    # Try the entry as written first, so stems that contain dots are never mangled.
    name = entry.replace("\\", "/").rsplit("/", 1)[-1]
    for candidate in (entry, name):
        if candidate in known:
            return candidate
        lowered = candidate.lower()
        for suffix in _LIST_SUFFIXES:
            if lowered.endswith(suffix) and candidate[: -len(suffix)] in known:
                return candidate[: -len(suffix)]
    return None

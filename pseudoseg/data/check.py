"""``pseudoseg data check``: read a data set as training would, and report every problem.

Every file is listed and decoded with the same functions training uses
(pairing, image and mask decoding, the nnU-Net ``dataset.json`` checks), but a
problem is recorded and the check goes on, so that one pass names all of them.
Masks are read with the classes training would use (``--classes`` as
``data.classes``, else the ``dataset.json`` labels, else one binary class), and
the balance is reported per class. Nothing is written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pseudoseg.data.classes import ClassSet, class_set_from_mapping, classes_from_dataset_json
from pseudoseg.errors import UserError

_VALUES_SHOWN = 12


@dataclass
class CheckReport:
    """What a data check found."""

    path: Path
    kind: str
    layout: str
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
            return [f"  classes: one foreground class ({self.classes_source}: {'0/255 or 0/1 masks' if self.kind == 'folders' else 'every non-zero label'})"]
        named = ", ".join(f"{name}={'/'.join(map(str, values))}" for name, values in zip(self.classes.names, self.classes.values))
        out = [f"  classes: {named} (from {self.classes_source})"]
        if self.mask_pixels:
            unit, holders = ("pixels", "masks") if self.kind == "folders" else ("voxels", "labels")
            shares = ", ".join(
                f"{name} {100 * fraction:.2f} % in {held} {holders}"
                for name, fraction, held in zip(self.classes.names, self.class_fractions, self.masks_with_class)
            )
            out.append(f"  per class ({unit}): {shares}")
        return out

    def lines(self) -> list[str]:
        unit = "cases" if self.kind == "volumes" else "images"
        sizes = ", ".join(f"{'x'.join(map(str, size))} ({n})" for size, n in self.sizes.most_common(5))
        if len(self.sizes) > 5:
            sizes += f", ... ({len(self.sizes) - 5} more sizes)"
        values = sorted(int(v) for v in self.mask_values)
        shown = ", ".join(map(str, values[:_VALUES_SHOWN])) + (", ..." if len(values) > _VALUES_SHOWN else "")
        balance = "n/a" if self.foreground_fraction is None else f"{100 * self.foreground_fraction:.2f} % foreground pixels, {self.empty_masks} {'masks' if self.kind == 'folders' else 'labels'} without foreground"
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


def detect_kind(path: Path) -> str:
    """``volumes`` for NIfTI data sets (nnU-Net with a NIfTI ``file_ending``, or ``imagesTr/``), else ``folders``."""
    from pseudoseg.data.nnunet import read_dataset_json
    from pseudoseg.data.volumes import NIFTI_SUFFIXES

    try:
        dataset = read_dataset_json(path)
    except UserError:
        dataset = None
    if dataset is not None:
        return "volumes" if dataset.file_ending.lower().endswith(NIFTI_SUFFIXES) else "folders"
    return "volumes" if (Path(path) / "imagesTr").is_dir() else "folders"


def check_dataset(
    path: Path,
    *,
    kind: str | None = None,
    images_dir: str = "images",
    masks_dir: str = "masks",
    unlabeled: tuple[Path, ...] = (),
    test: Path | None = None,
    classes: Mapping[str, Any] | None = None,
) -> CheckReport:
    """Read the data set at ``path`` as ``pseudoseg train`` would and report on it.

    ``classes`` is a ``data.classes`` mapping (``{name: value or [values]}``);
    without it the classes come from ``path/dataset.json``, else one binary class.
    """
    from pseudoseg.data.nnunet import read_dataset_json

    path = Path(path)
    kind = kind or detect_kind(path)
    if kind not in ("folders", "volumes"):
        raise UserError(f"--kind: expected folders or volumes, got {kind!r}")
    configured = class_set_from_mapping(classes, "data.classes") if classes else None
    report = CheckReport(path, kind, layout="")
    if not path.is_dir():
        report.layout = "missing"
        report.problems.append(f"data set folder not found: {path}")
        return report
    try:
        dataset = read_dataset_json(path)
    except UserError as exc:
        report.layout = "nnU-Net"
        report.problems.append(str(exc))
        return report
    report.layout = "nnU-Net raw" if dataset is not None else ("PraNet (images/, masks/)" if kind == "folders" else "Decathlon (imagesTr/, labelsTr/)")
    if configured is not None:
        report.use_classes(configured, "data.classes")
    else:
        _attempt(report, _classes_of_dataset, report)
    if kind == "folders":
        _check_folders(report, dataset, images_dir, masks_dir, unlabeled, test)
    else:
        _check_volumes(report, dataset, unlabeled, test)
    # masks that exist but cannot be read are problems of their own, not "nothing is labeled"
    if report.labeled == 0 and report.unreadable_masks == 0 and not any("nothing is labeled" in p for p in report.problems):
        report.problems.append(f"{path}: nothing is labeled (no {'image has a mask' if kind == 'folders' else 'case has a label'}); pseudoseg needs some")
    return report


def parse_classes_option(text: str) -> dict[str, Any]:
    """``--classes '{anterior: 1, posterior: 2}'`` (YAML or JSON, as ``data.classes``) as a mapping.

    Raises:
        UserError: when the text is not a mapping.
    """
    import yaml

    try:
        mapping = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"--classes: not YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(mapping, dict) or not mapping:
        raise UserError(f"--classes: expected a mapping of class names to label values, e.g. '{{anterior: 1, posterior: 2}}', got {text!r}")
    return mapping


def _classes_of_dataset(report: CheckReport) -> None:
    """Without ``data.classes``: the ``dataset.json`` labels, as training resolves them; else binary."""
    found = classes_from_dataset_json(report.path)
    if found is not None:
        report.use_classes(found, "dataset.json")


def _attempt(report: CheckReport, action, *args):
    try:
        return action(*args)
    except UserError as exc:
        report.problems.append(str(exc))
        return None


# --------------------------------------------------------------------------- 2-D


def _check_folders(report: CheckReport, dataset, images_dir: str, masks_dir: str, unlabeled: tuple[Path, ...], test: Path | None) -> None:
    from pseudoseg.data.folders import ImagePair, discover_test_sets, find_pairs, find_unlabeled_images, shared_images
    from pseudoseg.data.nnunet import check_num_training, list_cases
    from pseudoseg.data.pool import overlap_line

    if dataset is not None:
        cases = list_cases(dataset, "imagesTr", "labelsTr", report.problems)
        if cases:
            check_num_training(dataset, cases, report.problems)
        pairs = [ImagePair(case.case_id, case.channels[0], case.label, case.channels) for case in cases]
        if (report.path / "imagesTs").is_dir():
            report.test = len(list_cases(dataset, "imagesTs", "labelsTs", report.problems))
        _note_labels(report, dataset)
    else:
        pairs = _attempt(report, lambda: find_pairs(report.path, images_dir=images_dir, masks_dir=masks_dir, require_masks=False)) or []
    for pair in pairs:
        _check_pair(report, pair)
    if dataset is not None and report.classes.values is None:  # with values, every file is checked against them
        _check_label_values(report, dataset, report.mask_values)
    pool = [pair.image for pair in pairs]
    for folder in unlabeled:
        for pair in _attempt(report, lambda folder=folder: find_unlabeled_images(folder, images_dir=images_dir)) or []:
            _check_pair(report, pair)
            pool.append(pair.image)
    if test is not None:
        sets = _attempt(report, lambda: discover_test_sets(test, images_dir=images_dir, masks_dir=masks_dir)) or {}
        report.test += sum(len(pairs) for pairs in sets.values())
        shared = shared_images([pair.image for found in sets.values() for pair in found], pool)
        if shared:
            report.problems.append(f"{test}: {overlap_line(shared, 'image')}")


def _check_pair(report: CheckReport, pair) -> None:
    from pseudoseg.data.folders import _read_array, check_pair_shapes, read_mask, read_pair_image

    try:
        raw = _read_array(pair.image)
        image = read_pair_image(pair)
    except UserError as exc:
        report.problems.append(str(exc))
        return
    report.sizes[image.shape[:2]] += 1
    report.channels[len(pair.channels) if len(pair.channels) > 1 else (1 if raw.ndim == 2 else raw.shape[2])] += 1
    if pair.mask is None:
        report.unlabeled += 1
        return
    try:
        raw_mask = _read_array(pair.mask, palette_indices=report.classes.values is not None)
        report.mask_values.update(np.unique(raw_mask).tolist()[: 4 * _VALUES_SHOWN])
        mask = read_mask(pair.mask, report.classes)
        check_pair_shapes(pair, image, mask)
    except UserError as exc:
        report.problems.append(str(exc))
        report.unreadable_masks += 1
        return
    report.add_mask(mask)


# --------------------------------------------------------------------------- volumes


def _check_volumes(report: CheckReport, dataset, unlabeled: tuple[Path, ...], test: Path | None) -> None:
    from pseudoseg.data.nnunet import check_num_training, list_cases
    from pseudoseg.data.pool import _unlabeled_cases, overlap_line, shared_volumes
    from pseudoseg.data.volumes import VolumeCase, discover_cases

    if dataset is not None:
        raw = list_cases(dataset, "imagesTr", "labelsTr", report.problems)
        if raw:
            check_num_training(dataset, raw, report.problems)
        cases = [VolumeCase(case.case_id, case.channels[0], case.label, case.channels[1:]) for case in raw]
        if (report.path / "imagesTs").is_dir():
            report.test = len(list_cases(dataset, "imagesTs", "labelsTs", report.problems))
        _note_labels(report, dataset)
    else:
        cases = _attempt(report, lambda: discover_cases(report.path, require_labels=False)) or []
        if (report.path / "imagesTs").is_dir():
            report.test = len(_attempt(report, lambda: discover_cases(report.path, images_dir="imagesTs", labels_dir="labelsTs", require_labels=False)) or [])
    for folder in unlabeled:
        cases += _attempt(report, lambda folder=folder: _unlabeled_cases(Path(folder))) or []
    # data.test is often the training folder itself (imagesTs/ beside imagesTr/): counted above already
    if test is not None and not (test / "imagesTs").is_dir():  # imagesTr/ holds training cases: never a test set
        report.problems.append(f"{test}: no imagesTs/ folder; a test set of volumes is imagesTs/ + labelsTs/ (imagesTr/ holds training cases)")
    elif test is not None and Path(test).resolve() != report.path.resolve():
        report.test += len(_attempt(report, lambda: discover_cases(test, images_dir="imagesTs", labels_dir="labelsTs", require_labels=True)) or [])
    try:
        shared = shared_volumes(report.path, Path(test if test is not None else report.path), unlabeled)
    except UserError:  # a case that cannot be listed is reported above already
        shared = []
    if shared:
        report.problems.append(f"{test if test is not None else report.path}: {overlap_line(shared, 'volume')}")
    label_values: set[int] = set()
    for case in cases:
        _check_case(report, case, label_values)
    if dataset is not None and report.classes.values is None:  # with values, every file is checked against them
        _check_label_values(report, dataset, label_values)
    foreground = sorted(v for v in label_values if v != 0)
    if len(foreground) > 1 and report.classes.values is None:
        report.notes.append(f"label values {', '.join(map(str, foreground))} are trained as one foreground (their union); name them in data.classes to train them as classes")


def _check_case(report: CheckReport, case, label_values: set[int]) -> None:
    from pseudoseg.data.volumes import _as_3d, label_indices, load_volume

    try:
        image = _as_3d(load_volume(case.image_path), case.image_path)
        for path in case.extra_channels:
            channel = _as_3d(load_volume(path, read_data=False), path)
            if channel.shape != image.shape:
                raise UserError(f"{path}: channel shape {channel.shape} differs from {case.image_path} {image.shape}")
    except UserError as exc:
        report.problems.append(str(exc))
        return
    report.sizes[tuple(int(n) for n in image.shape)] += 1
    report.channels[len(case.channel_paths)] += 1
    if case.label_path is None:
        report.unlabeled += 1
        return
    try:
        label = _as_3d(load_volume(case.label_path), case.label_path)
        if label.shape != image.shape:
            raise UserError(f"{case.label_path}: label shape {label.shape} differs from image shape {image.shape} of {case.image_path}")
        data = np.asanyarray(label.dataobj)
        mask = label_indices(data, case.label_path, classes=report.classes)
    except UserError as exc:
        report.problems.append(str(exc))
        report.unreadable_masks += 1
        return
    values = np.unique(data).tolist()
    report.mask_values.update(values[: 4 * _VALUES_SHOWN])
    label_values.update(int(v) for v in values)
    report.add_mask(mask)


def _note_labels(report: CheckReport, dataset) -> None:
    names = dataset.foreground_labels
    report.notes.append(f"{dataset.path}: channels {', '.join(dataset.channel_names)}; labels {', '.join(f'{n}={dataset.labels[n]}' for n in names)}")


def _check_label_values(report: CheckReport, dataset, found: set) -> None:
    unknown = sorted(int(v) for v in found if int(v) not in set(dataset.labels.values()))
    if unknown:
        report.problems.append(f"{dataset.path}: label files hold values {', '.join(map(str, unknown[:_VALUES_SHOWN]))} that 'labels' does not name")

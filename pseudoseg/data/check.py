"""``pseudoseg data check``: read a data set as training would, and report every problem.

Every file is listed and decoded with the same functions training uses
(pairing, image and mask decoding, the nnU-Net ``dataset.json`` checks), but a
problem is recorded and the check goes on, so that one pass names all of them.
Masks are read with the classes training would use (``--classes`` as
``data.classes``, else the ``dataset.json`` labels, else one binary class), and
the balance is reported per class. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

from pseudoseg.data.check_report import CheckReport, attempt
from pseudoseg.data.classes import class_set_from_mapping, classes_from_dataset_json
from pseudoseg.data.registry import source_names
from pseudoseg.data.sources import data_source
from pseudoseg.errors import UserError


def detect_kind(path: Path) -> str:
    """The first registered format that recognises the data set at ``path``; ``folders`` when none does."""
    return next((name for name in source_names() if data_source(name).recognises(Path(path))), "folders")


class FolderNames(NamedTuple):
    """The sub-folders of a 2-D data set in the folder layout (``data.images_dir``, ``data.masks_dir``)."""

    images: str = "images"
    masks: str = "masks"


def check_dataset(
    path: Path,
    *,
    kind: str | None = None,
    folders: FolderNames = FolderNames(),
    unlabeled: tuple[Path, ...] = (),
    test: Path | None = None,
    classes: Mapping[str, Any] | None = None,
) -> CheckReport:
    """Read the data set at ``path`` as ``pseudoseg train`` would and report on it.

    ``classes`` is a ``data.classes`` mapping (``{name: value or [values]}``);
    without it the classes come from ``path/dataset.json``, else one binary class. ``folders``:
    the sub-folder names of the folder layout (other formats ignore them).
    """
    from pseudoseg.config import DataConfig
    from pseudoseg.data.nnunet import read_dataset_json

    path = Path(path)
    kind = kind or detect_kind(path)
    if kind not in source_names():
        raise UserError(f"--kind: expected one of {', '.join(source_names())}, got {kind!r}")
    format_ = data_source(kind)
    configured = class_set_from_mapping(classes, "data.classes") if classes else None
    report = CheckReport(path, kind, layout="", geometry=format_.geometry)
    if not path.is_dir():
        report.layout = "missing"
        report.problems.append(f"data set folder not found: {path}")
        return report
    try:
        read_dataset_json(path)
    except UserError as exc:
        report.layout = "nnU-Net"
        report.problems.append(str(exc))
        return report
    report.layout = format_.layout(path)
    if configured is not None:
        report.use_classes(configured, "data.classes")
    else:
        attempt(report, lambda: _classes_of_dataset(report))
    data = DataConfig(kind=kind, train=path, images_dir=folders.images, masks_dir=folders.masks, unlabeled=tuple(unlabeled), test=test, classes=dict(classes) if classes else None)
    format_.check(report, data)
    # masks that exist but cannot be read are problems of their own, not "nothing is labeled"
    if report.labeled == 0 and report.unreadable_masks == 0 and not any("nothing is labeled" in p for p in report.problems):
        held = "image has a mask" if format_.geometry == "images" else "case has a label"
        report.problems.append(f"{path}: nothing is labeled (no {held}); pseudoseg needs some")
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



"""The nnU-Net v2 raw data set format, read as it is.

An nnU-Net data set is a folder ``DatasetXXX_Name/`` holding::

    dataset.json                      channel_names, labels, numTraining, file_ending
    imagesTr/<case>_0000<ending>      one file per channel: _0000, _0001, ...
    labelsTr/<case><ending>           the label map of a case (may be absent: unlabeled)
    imagesTs/<case>_0000<ending>      test images (usually without labels)

``file_ending`` is ``.nii.gz`` (volumes, ``data.kind: volumes``) or an image
suffix such as ``.png`` (2-D data sets, ``data.kind: folders``). Cases whose
label file is missing are unlabeled cases. A Decathlon ``dataset.json``
(``modality``, ``training``) is not an nnU-Net one: that layout is read by
:func:`pseudoseg.data.volumes.discover_cases`.

Listing a data set collects every disagreement between ``dataset.json`` and
the files (``pseudoseg data check`` prints them all; training stops at the
first).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pseudoseg.errors import UserError

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


@dataclass(frozen=True)
class NnUNetDataset:
    """The parts of an nnU-Net v2 ``dataset.json`` that reading the files needs."""

    path: Path
    channel_names: tuple[str, ...]
    labels: dict[str, Any]
    num_training: int
    file_ending: str

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def foreground_labels(self) -> list[str]:
        return [name for name, value in self.labels.items() if value != 0]


@dataclass(frozen=True)
class RawCase:
    """One case: its channel files (channel 0 first) and its label file, if any."""

    case_id: str
    channels: tuple[Path, ...]
    label: Path | None


def read_dataset_json(root: Path) -> NnUNetDataset | None:
    """The nnU-Net description of the data set in ``root``; ``None`` if it has none.

    A ``dataset.json`` without ``file_ending`` and ``channel_names`` (the
    Decathlon's, or a synthetic data set's summary) is not an nnU-Net one.

    Raises:
        UserError: naming the file when it is not valid JSON or a key has the wrong form.
    """
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not readable as JSON ({type(exc).__name__})") from None
    if not isinstance(payload, dict) or ("file_ending" not in payload and "channel_names" not in payload):
        return None
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in payload:
            raise UserError(f"{path}: nnU-Net dataset.json is missing '{key}'")
    names = payload["channel_names"]
    if not isinstance(names, dict) or not names:
        raise UserError(f"{path}: 'channel_names' must map channel numbers to names, e.g. {{\"0\": \"CT\"}}")
    if sorted(names, key=lambda k: (len(str(k)), str(k))) != [str(i) for i in range(len(names))]:
        raise UserError(f"{path}: 'channel_names' keys must be \"0\" .. \"{len(names) - 1}\", got {sorted(names)}")
    labels = payload["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0:
        raise UserError(f"{path}: 'labels' must map names to values, with \"background\": 0")
    if any(not isinstance(value, int) or isinstance(value, bool) for value in labels.values()):
        raise UserError(f"{path}: 'labels' values must be integers (region-based labels are not supported)")
    count = payload["numTraining"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise UserError(f"{path}: 'numTraining' must be a non-negative integer, got {count!r}")
    ending = payload["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        raise UserError(f"{path}: 'file_ending' must look like \".nii.gz\" or \".png\", got {ending!r}")
    return NnUNetDataset(path, tuple(str(names[str(i)]) for i in range(len(names))), dict(labels), count, ending)


def list_cases(dataset: NnUNetDataset, images_dir: str, labels_dir: str | None, problems: list[str]) -> list[RawCase]:
    """The cases of ``images_dir`` (with labels from ``labels_dir``), sorted by case id.

    Every disagreement with ``dataset.json`` is appended to ``problems`` (one
    line each, naming the file); the cases that are complete are returned.
    """
    ending = dataset.file_ending.lower()
    images_folder = dataset.root / images_dir
    if not images_folder.is_dir():
        problems.append(f"{images_folder}: image folder not found")
        return []
    n_channels = len(dataset.channel_names)
    by_case: dict[str, dict[int, Path]] = {}
    other_suffixes: set[str] = set()
    for path in sorted(images_folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if not path.name.lower().endswith(ending):
            other_suffixes.add("".join(path.suffixes[-2:]) if path.name.lower().endswith(".gz") else path.suffix)
            continue
        match = _CHANNEL_SUFFIX.match(path.name[: -len(ending)])
        if match is None:
            problems.append(f"{path}: not named <case>_XXXX{dataset.file_ending} (nnU-Net channel number)")
            continue
        channel = int(match["channel"])
        if channel >= n_channels:
            problems.append(f"{path}: channel {channel} but {dataset.path} names {n_channels} channel{'s' if n_channels > 1 else ''}")
            continue
        by_case.setdefault(match["case"], {})[channel] = path
    if not by_case:
        if other_suffixes:
            problems.append(
                f"{images_folder}: no {dataset.file_ending} images but {', '.join(sorted(other_suffixes))} files: "
                f"file_ending in {dataset.path} disagrees with the files"
            )
        else:
            problems.append(f"{images_folder}: no {dataset.file_ending} images")
        return []

    labels = _labels_by_case(dataset, labels_dir, images_folder, set(by_case), problems)
    cases = []
    for case_id in sorted(by_case):
        channels = by_case[case_id]
        missing = [c for c in range(n_channels) if c not in channels]
        if missing:
            absent = images_folder / f"{case_id}_{missing[0]:04d}{dataset.file_ending}"
            problems.append(f"{absent}: missing ({dataset.path} names {n_channels} channels: {', '.join(dataset.channel_names)})")
            continue
        cases.append(RawCase(case_id, tuple(channels[c] for c in range(n_channels)), labels.get(case_id)))
    return cases


def _labels_by_case(dataset: NnUNetDataset, labels_dir: str | None, images_folder: Path, cases: set[str], problems: list[str]) -> dict[str, Path]:
    """Case id -> label file of ``labels_dir``; a label of no case in ``cases`` (the images of ``images_folder``) is a problem."""
    ending = dataset.file_ending.lower()
    labels_folder = dataset.root / labels_dir if labels_dir else None
    if labels_folder is None or not labels_folder.is_dir():
        return {}
    labels: dict[str, Path] = {}
    for path in sorted(labels_folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(ending):
            continue
        case_id = path.name[: -len(ending)]
        if case_id not in cases:
            problems.append(f"{path}: label has no image in {images_folder}")
            continue
        labels[case_id] = path
    return labels


def check_num_training(dataset: NnUNetDataset, cases: list[RawCase], problems: list[str]) -> None:
    """``numTraining`` must count the training cases, or the labeled ones among them."""
    labeled = sum(case.label is not None for case in cases)
    if dataset.num_training not in (len(cases), labeled):
        problems.append(
            f"{dataset.path}: numTraining is {dataset.num_training} but imagesTr holds {len(cases)} cases ({labeled} with a label)"
        )


def training_cases(root: Path, dataset: NnUNetDataset) -> list[RawCase]:
    """The training cases (``imagesTr`` / ``labelsTr``) of an nnU-Net data set.

    Raises:
        UserError: for the first disagreement between ``dataset.json`` and the
            files (with the number of further ones).
    """
    problems: list[str] = []
    cases = list_cases(dataset, "imagesTr", "labelsTr", problems)
    if cases:
        check_num_training(dataset, cases, problems)
    raise_first(problems)
    return cases


def raise_first(problems: list[str]) -> None:
    """Raise the first of ``problems`` as a one-line :class:`UserError`, if there is one."""
    if problems:
        more = f" (and {len(problems) - 1} more problems: pseudoseg data check lists them)" if len(problems) > 1 else ""
        raise UserError(problems[0] + more)


def channel_count(root: Path) -> int | None:
    """Channels per case named by ``root/dataset.json``; ``None`` without an nnU-Net one or when unreadable."""
    try:
        dataset = read_dataset_json(root)
    except UserError:
        return None  # reported, with the file, when the data are read
    return None if dataset is None else len(dataset.channel_names)

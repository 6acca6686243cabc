"""The training pool: decoded, resized samples cached on disk, and its split.

Decoding JPEGs or NIfTI volumes and resizing them every epoch is wasted work,
so each source is decoded once into two record files (see
:mod:`pseudoseg.data.store`): images ``uint8 [N, C, S, S]`` and masks
``uint8 [N, S, S]`` of class indices (0 background, 1..C the classes of
``data.classes``; {0, 1} for one class). The cache is keyed by the files'
paths, sizes and modification times, by the preprocessing settings and by the
class set, so it is rebuilt whenever the data, the settings or the classes
change and shared between runs otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pseudoseg.config import DataConfig
from pseudoseg.data.classes import resize_class_indices
from pseudoseg.data.store import ArrayStore
from pseudoseg.errors import UserError
from pseudoseg.fileio import TEMPORARY_SUFFIX, disk_errors, write_json

CACHE_FORMAT = 2


@dataclass(frozen=True)
class SamplePool:
    """All samples of a training pool, at the working resolution.

    A sample without a true mask (an image of ``data.unlabeled``, an image of
    the training folder without a mask, a case without a label file) holds an
    all-zero record in ``masks`` that must never be read: ``has_mask`` says
    which records are real, and only units with a mask can be labeled or
    validation (see :func:`pseudoseg.runner.choose_split`).
    """

    ids: tuple[str, ...]
    groups: tuple[str, ...]
    """The unit a split keeps together: the image itself, or the patient case of a slice."""
    images: ArrayStore
    masks: ArrayStore
    has_mask: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    """bool [N]: whether sample ``i`` has a true mask (an empty array: all have)."""
    sources: tuple[str, ...] = ()
    """The folder each sample was read from (empty: all from ``data.train``)."""

    def __len__(self) -> int:
        return len(self.ids)

    def mask_flags(self) -> np.ndarray:
        return self.has_mask if len(self.has_mask) else np.ones(len(self.ids), dtype=bool)

    def units(self) -> list[str]:
        return sorted(set(self.groups))

    def units_with_mask(self) -> list[str]:
        return sorted({group for group, flag in zip(self.groups, self.mask_flags()) if flag})

    def with_true_masks(self, indices: np.ndarray) -> np.ndarray:
        """The members of ``indices`` whose true mask is known (for diagnostics on U)."""
        indices = np.asarray(indices, dtype=np.int64)
        return indices[self.mask_flags()[indices]]

    def unit_sources(self) -> dict[str, list[str]]:
        """Folder -> the units read from it, sorted."""
        found: dict[str, set[str]] = {}
        for group, source in zip(self.groups, self.sources or [""] * len(self.groups)):
            found.setdefault(source, set()).add(group)
        return {source: sorted(units) for source, units in found.items()}


@dataclass(frozen=True)
class _Source:
    """What decoding a pool needs: its sample ids and groups, and how to read them."""

    ids: list[str]
    groups: list[str]
    has_mask: list[bool]
    sources: list[str]
    fingerprint: list
    samples: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [C, size, size], bilinear (area-like when shrinking)."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8).reshape(size, size, -1).transpose(2, 0, 1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Class indices [H, W] (bool: one class) -> uint8 [size, size] class indices.

    Each class's indicator is resized bilinearly as a 0/255 image and each
    pixel takes the class of the largest value, the background's being 255
    minus the resized union of the classes (ties: the lower index). For one
    class: bilinear then 0.5 (``>= 128``), smoother than nearest.
    """
    return resize_class_indices(mask, lambda indicator: _resize_indicator(indicator, size), 255.0)


def _resize_indicator(indicator: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> uint8 [size, size] in 0..255, bilinear."""
    resized = Image.fromarray(indicator.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(resized)


def _file_fingerprint(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _extra_prefixes(folders: tuple[Path, ...]) -> list[str]:
    """Id prefixes of the ``data.unlabeled`` folders: their names, numbered where two share one."""
    names = [Path(folder).name or "unlabeled" for folder in folders]
    return [name if names.count(name) == 1 else f"{name}{k + 1}" for k, name in enumerate(names)]


def check_test_apart(data: DataConfig) -> None:
    """Refuse a test set (``data.test``) that holds an image or a volume of the training pool.

    Files are compared by content (a hash of the file's bytes, so a copy under another
    name is found too); a test image the network trained on, with or without its mask,
    would inflate every test score. A volume test set is its ``imagesTs/``; one without it
    is refused when it is evaluated.

    Raises:
        UserError: naming the first test files found in the pool and their twins.
    """
    from pseudoseg.data.folders import discover_test_sets, shared_images

    if data.test is None:
        return
    if data.kind == "volumes":
        shared = shared_volumes(Path(data.train), Path(data.test), data.unlabeled)
        noun = "volume"
    else:
        pairs, _, _ = _training_pairs(data)
        tests = [pair for found in discover_test_sets(data.test, images_dir=data.images_dir, masks_dir=data.masks_dir).values() for pair in found]
        shared = shared_images([pair.image for pair in tests], [pair.image for pair in pairs])
        noun = "image"
    if shared:
        raise UserError(f"data.test: {overlap_line(shared, noun)}")


def shared_volumes(train: Path, test: Path, unlabeled: Sequence[Path] = ()) -> list[tuple[Path, Path]]:
    """(test file, its twin) for every image file of the volume test set ``test/imagesTs`` (every
    channel) whose bytes equal a file of the training pool: ``train``'s cases and ``unlabeled``'s."""
    from pseudoseg.data.folders import shared_images
    from pseudoseg.data.volumes import volume_cases

    if not (test / "imagesTs").is_dir():
        return []
    tests = volume_cases(test, images_dir="imagesTs", labels_dir="labelsTs", require_labels=False)
    pool = volume_cases(train, require_labels=False) + [case for folder in unlabeled for case in _unlabeled_cases(Path(folder))]
    return shared_images([path for case in tests for path in case.channel_paths], [path for case in pool for path in case.channel_paths])


def overlap_line(shared: Sequence[tuple[Path, Path]], noun: str) -> str:
    """``"N test <noun>s are also in the training pool (same content): a = b, ..."`` (the first three pairs)."""
    shown = ", ".join(f"{test} = {train}" for test, train in shared[:3])
    more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
    return f"{len(shared)} test {noun}{'s are' if len(shared) > 1 else ' is'} also in the training pool (same content): {shown}{more}"


def _training_pairs(data: DataConfig) -> tuple[list, list[str], list[str]]:
    """The 2-D training pool as (image pairs, ids, source folder of each): ``data.train``, then ``data.unlabeled``."""
    from pseudoseg.data.folders import ImagePair, find_pairs, find_unlabeled_images
    from pseudoseg.data.nnunet import read_dataset_json, training_cases

    dataset = read_dataset_json(data.train)
    if dataset is not None:
        if dataset.file_ending.lower() in (".nii", ".nii.gz"):
            raise UserError(f"{dataset.path}: file_ending {dataset.file_ending} holds volumes; set data.kind: volumes")
        pairs = [ImagePair(case.case_id, case.channels[0], case.label, case.channels) for case in training_cases(data.train, dataset)]
        masks_where = data.train / "labelsTr"
    else:
        pairs = find_pairs(data.train, images_dir=data.images_dir, masks_dir=data.masks_dir, require_masks=False)
        masks_where = data.train / data.masks_dir
    if not any(pair.mask is not None for pair in pairs):
        raise UserError(f"{data.train}: nothing is labeled (no image has a mask in {masks_where}); pseudoseg needs some masks")
    ids = [pair.stem for pair in pairs]
    sources = [str(data.train)] * len(pairs)
    for folder, prefix in zip(data.unlabeled, _extra_prefixes(data.unlabeled)):
        extra = find_unlabeled_images(folder, images_dir=data.images_dir)
        pairs += extra
        ids += [f"{prefix}/{pair.stem}" for pair in extra]
        sources += [str(folder)] * len(extra)
    return pairs, ids, sources


def _folder_source(data: DataConfig) -> _Source:
    from pseudoseg.data.folders import check_pair_shapes, read_mask, read_pair_image

    pairs, ids, sources = _training_pairs(data)
    fingerprint = [[_file_fingerprint(path) for path in (pair.channels or (pair.image,))] + ([_file_fingerprint(pair.mask)] if pair.mask else []) for pair in pairs]
    empty = np.zeros((1, data.image_size, data.image_size), dtype=np.uint8)
    classes = data.class_set

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for pair in pairs:
            image = read_pair_image(pair)
            if pair.mask is None:
                yield resize_image(image, data.image_size)[None], empty
                continue
            mask = read_mask(pair.mask, classes)
            check_pair_shapes(pair, image, mask)
            yield resize_image(image, data.image_size)[None], resize_mask(mask, data.image_size)[None]

    return _Source(ids, list(ids), [pair.mask is not None for pair in pairs], sources, fingerprint, samples)


def _volume_source(data: DataConfig) -> _Source:
    import nibabel as nib

    from pseudoseg.data.preprocessing import Preprocessing
    from pseudoseg.data.volumes import VolumeCase, load_volume, volume_cases

    cases = volume_cases(data.train, require_labels=False)
    if not any(case.label_path is not None for case in cases):
        raise UserError(f"{data.train}: nothing is labeled (no case has a label in {data.train / 'labelsTr'}); pseudoseg needs some labels")
    case_ids = [case.case_id for case in cases]
    sources = [str(data.train)] * len(cases)
    for folder, prefix in zip(data.unlabeled, _extra_prefixes(data.unlabeled)):
        extra = _unlabeled_cases(Path(folder))
        cases += [VolumeCase(f"{prefix}/{case.case_id}", case.image_path, None, case.extra_channels) for case in extra]
        case_ids += [f"{prefix}/{case.case_id}" for case in extra]
        sources += [str(folder)] * len(extra)
    for case in cases:
        if len(case.channel_paths) != (data.channels or 1):
            raise UserError(f"{case.image_path}: case {case.case_id!r} has {len(case.channel_paths)} channel(s) but data.channels is {data.channels}")
    ids: list[str] = []
    groups: list[str] = []
    has_mask: list[bool] = []
    sample_sources: list[str] = []
    for case, case_id, source in zip(cases, case_ids, sources):
        image = load_volume(case.image_path)
        orientation = nib.io_orientation(image.affine)
        # The axis that becomes the canonical third (axial) axis holds the slices.
        axial = int(np.nonzero(orientation[:, 0] == 2)[0][0])
        n_slices = image.shape[axial]
        ids.extend(f"{case_id}:{z:04d}" for z in range(n_slices))
        groups.extend([case_id] * n_slices)
        has_mask.extend([case.label_path is not None] * n_slices)
        sample_sources.extend([source] * n_slices)
    fingerprint = [[_file_fingerprint(path) for path in case.channel_paths] + ([_file_fingerprint(case.label_path)] if case.label_path else []) for case in cases]

    preprocessing = Preprocessing.from_data(data)

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for case in cases:
            labeled = case.label_path is not None
            images, labels = preprocessing.volume_slices(case, with_labels=labeled)
            yield images, labels if labeled else np.zeros((len(images), data.image_size, data.image_size), dtype=np.uint8)

    return _Source(ids, groups, has_mask, sample_sources, fingerprint, samples)


def _unlabeled_cases(folder: Path) -> list:
    """The cases of an image-only NIfTI folder (``data.unlabeled``), refused when it holds label maps."""
    from pseudoseg.data.volumes import discover_cases, load_volume

    if not folder.is_dir():
        raise UserError(f"unlabeled folder not found: {folder} (data.unlabeled)")
    parent, name = (folder, "imagesTr") if (folder / "imagesTr").is_dir() else (folder.parent, folder.name)
    cases = discover_cases(parent, images_dir=name, labels_dir=f"{name}.no-labels", require_labels=False)
    data = np.asarray(load_volume(cases[0].image_path).dataobj)
    if data.dtype.kind in "iub" and np.unique(data).size <= 17 and data.max(initial=0) <= 16:
        raise UserError(f"{cases[0].image_path}: holds a label map, not an image; data.unlabeled takes folders of images without labels")
    return cases


def load_pool(data: DataConfig, cache_root: Path, *, progress: Callable[[int, int], None] | None = None) -> SamplePool:
    """Decode the training pool once into ``cache_root/<key>/`` and open it."""
    source = (_folder_source if data.kind == "folders" else _volume_source)(data)
    settings = {
        "format": CACHE_FORMAT,
        "kind": data.kind,
        "size": data.image_size,
        "window": list(data.window) if data.kind == "volumes" and data.intensity == "window" else None,
        "context": data.context if data.kind == "volumes" else None,
        "ids": source.ids,
        "files": source.fingerprint,
    }
    if data.kind == "volumes" and data.intensity != "window":
        # Only here, so that caches written with the window before this setting existed keep their key.
        settings["intensity"] = [data.intensity, *data.percentiles]
    classes = data.class_set
    if classes.values is not None:
        # Masks hold class indices: other classes, other masks. Only here, so that the
        # binary caches written before classes existed keep their key.
        settings["classes"] = classes.to_json()
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    folder = Path(cache_root) / key
    if not (folder / "index.json").is_file():
        with disk_errors(folder):
            _build_cache(folder, source, data, progress)
    return SamplePool(
        tuple(source.ids),
        tuple(source.groups),
        ArrayStore(folder / "images.npy"),
        ArrayStore(folder / "masks.npy"),
        has_mask=np.asarray(source.has_mask, dtype=bool),
        sources=tuple(source.sources),
    )


def _build_cache(folder: Path, source: _Source, data: DataConfig, progress) -> None:
    ids = source.ids
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name, so a restarted run removes what a killed build left in its cache
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMPORARY_SUFFIX, dir=folder.parent))
    try:
        size = data.image_size
        images = ArrayStore.create(staging / "images.npy", len(ids), (data.in_channels, size, size))
        masks = ArrayStore.create(staging / "masks.npy", len(ids), (size, size))
        written = 0
        for image_block, mask_block in source.samples():
            if image_block.shape[1] != data.in_channels:
                raise UserError(f"{data.train}: images have {image_block.shape[1]} channels but the network expects {data.in_channels}")
            images.write(written, image_block)
            masks.write(written, mask_block)
            written += len(image_block)
            if progress is not None:
                progress(written, len(ids))
        if written != len(ids):
            raise UserError(f"{data.train}: expected {len(ids)} samples, decoded {written}")
        images.close()
        masks.close()
        write_json(staging / "index.json", {"ids": ids, "groups": source.groups, "has_mask": source.has_mask, "sources": source.sources, "source": str(data.train)})
        if folder.exists():  # a concurrent build finished first; its result is equivalent
            shutil.rmtree(staging)
        else:
            staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

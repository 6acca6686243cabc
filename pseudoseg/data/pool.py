"""The training pool: decoded, resized samples cached on disk, and its split.

Decoding JPEGs or NIfTI volumes and resizing them every epoch is wasted work,
so each source is decoded once into two record files (see
:mod:`pseudoseg.data.store`): images ``uint8 [N, C, S, S]`` and masks
``uint8 [N, S, S]`` in {0, 1}. The cache is keyed by the files' paths, sizes
and modification times and by the preprocessing settings, so it is rebuilt
whenever the data or the settings change and shared between runs otherwise.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pseudoseg.config import DataConfig
from pseudoseg.data.store import ArrayStore
from pseudoseg.errors import UserError
from pseudoseg.fileio import TEMPORARY_SUFFIX, write_json

CACHE_FORMAT = 1


@dataclass(frozen=True)
class SamplePool:
    """All samples of a training pool, at the working resolution."""

    ids: tuple[str, ...]
    groups: tuple[str, ...]
    """The unit a split keeps together: the image itself, or the patient case of a slice."""
    images: ArrayStore
    masks: ArrayStore

    def __len__(self) -> int:
        return len(self.ids)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [H, W, C] -> uint8 [C, size, size], bilinear (area-like when shrinking)."""
    resized = Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8).reshape(size, size, -1).transpose(2, 0, 1)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """bool [H, W] -> uint8 [size, size] in {0, 1}; bilinear then 0.5, smoother than nearest."""
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized) >= 128).astype(np.uint8)


def _file_fingerprint(path: Path) -> list:
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def _folder_source(data: DataConfig) -> tuple[list[str], list[str], list, Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]]:
    from pseudoseg.data.folders import check_pair_shapes, find_pairs, read_image, read_mask

    pairs = find_pairs(data.train, images_dir=data.images_dir, masks_dir=data.masks_dir, require_masks=True)
    ids = [pair.stem for pair in pairs]
    fingerprint = [_file_fingerprint(pair.image) + _file_fingerprint(pair.mask) for pair in pairs]

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for pair in pairs:
            image, mask = read_image(pair.image), read_mask(pair.mask)
            check_pair_shapes(pair, image, mask)
            yield resize_image(image, data.image_size)[None], resize_mask(mask, data.image_size)[None]

    return ids, list(ids), fingerprint, samples


def _volume_source(data: DataConfig) -> tuple[list[str], list[str], list, Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]]:
    import nibabel as nib

    from pseudoseg.data.volumes import case_slices, discover_cases, load_volume

    cases = discover_cases(data.train, require_labels=True)
    ids: list[str] = []
    groups: list[str] = []
    for case in cases:
        image = load_volume(case.image_path)
        orientation = nib.io_orientation(image.affine)
        # The axis that becomes the canonical third (axial) axis holds the slices.
        axial = int(np.nonzero(orientation[:, 0] == 2)[0][0])
        n_slices = image.shape[axial]
        ids.extend(f"{case.case_id}:{z:04d}" for z in range(n_slices))
        groups.extend([case.case_id] * n_slices)
    fingerprint = [_file_fingerprint(case.image_path) + _file_fingerprint(case.label_path) for case in cases]

    def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for case in cases:
            images, labels = case_slices(case, window=data.window, size=data.image_size, context=data.context)
            yield images, labels

    return ids, groups, fingerprint, samples


def load_pool(data: DataConfig, cache_root: Path, *, progress: Callable[[int, int], None] | None = None) -> SamplePool:
    """Decode the training pool once into ``cache_root/<key>/`` and open it."""
    source = _folder_source if data.kind == "folders" else _volume_source
    ids, groups, fingerprint, samples = source(data)
    settings = {
        "format": CACHE_FORMAT,
        "kind": data.kind,
        "size": data.image_size,
        "window": list(data.window) if data.kind == "volumes" else None,
        "context": data.context if data.kind == "volumes" else None,
        "files": fingerprint,
    }
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    folder = Path(cache_root) / key
    if not (folder / "index.json").is_file():
        _build_cache(folder, ids, groups, data, samples, progress)
    return SamplePool(tuple(ids), tuple(groups), ArrayStore(folder / "images.npy"), ArrayStore(folder / "masks.npy"))


def _build_cache(folder: Path, ids: list[str], groups: list[str], data: DataConfig, samples, progress) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    # a temporary name, so a restarted run removes what a killed build left in its cache
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=TEMPORARY_SUFFIX, dir=folder.parent))
    try:
        size = data.image_size
        images = ArrayStore.create(staging / "images.npy", len(ids), (data.in_channels, size, size))
        masks = ArrayStore.create(staging / "masks.npy", len(ids), (size, size))
        written = 0
        for image_block, mask_block in samples():
            images.write(written, image_block)
            masks.write(written, mask_block)
            written += len(image_block)
            if progress is not None:
                progress(written, len(ids))
        if written != len(ids):
            raise UserError(f"{data.train}: expected {len(ids)} samples, decoded {written}")
        images.close()
        masks.close()
        write_json(staging / "index.json", {"ids": ids, "groups": groups, "source": str(data.train)})
        if folder.exists():  # a concurrent build finished first; its result is equivalent
            shutil.rmtree(staging)
        else:
            staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)

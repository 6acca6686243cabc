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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pseudoseg.config import DataConfig
from pseudoseg.data.sources import data_source
from pseudoseg.data.sources import PoolSource, overlap_line
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


def check_test_apart(data: DataConfig) -> None:
    """Refuse a test set (``data.test``) that holds an image or a volume of the training pool.

    Files are compared by content (a hash of the file's bytes, so a copy under another
    name is found too); a test image the network trained on, with or without its mask,
    would inflate every test score. A volume test set is its ``imagesTs/``; one without it
    is refused when it is evaluated.

    Raises:
        UserError: naming the first test files found in the pool and their twins.
    """
    if data.test is None:
        return
    format_ = data_source(data.kind)
    shared = format_.shared_with_pool(data)
    if shared:
        raise UserError(f"data.test: {overlap_line(shared, format_.unit)}")


def load_pool(data: DataConfig, cache_root: Path, *, progress: Callable[[int, int], None] | None = None) -> SamplePool:
    """Decode the training pool once into ``cache_root/<key>/`` and open it."""
    format_ = data_source(data.kind)
    source = format_.training_pool(data)
    settings = {"format": CACHE_FORMAT, "kind": data.kind, "size": data.image_size, "window": None, "context": None, "ids": source.ids, "files": source.fingerprint}
    # a format's own settings take their keys' places (window, context), or follow (the caches
    # written before such a setting existed keep their key)
    settings.update(format_.cache_settings(data))
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


def _build_cache(folder: Path, source: PoolSource, data: DataConfig, progress) -> None:
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

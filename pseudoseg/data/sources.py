"""Data sources: what a data format must say so that pseudoseg can train on it.

A format says where a data set's images are and how to decode one; caching,
splitting, training, validation, evaluation and prediction are shared by every
format of its *geometry*:

- ``images`` (:class:`ImageSource`): 2-D images, one sample each, validated and
  scored per image (Dice at 0.5 at the working size, and PraNet's metrics at
  the mask's resolution), predictions written as PNG label maps;
- ``volumes`` (:class:`~pseudoseg.data.volumes.VolumeSource`): NIfTI volumes,
  trained slice by slice, validated and scored per case in 3-D (Dice, HD95 in
  mm), predictions written as NIfTI in the input's geometry.

Built in: ``folders`` (:mod:`pseudoseg.data.folders`) and ``volumes``
(:mod:`pseudoseg.data.volumes`), each reading its classic layout and nnU-Net's.
A new 2-D format is one file: a subclass of :class:`ImageSource` with its five
``find_*`` / ``read_*`` methods, marked with
:func:`~pseudoseg.data.registry.register_source` and installed through the
``pseudoseg.data_sources`` entry-point group (docs/data.md shows one).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from pseudoseg.data.check_report import VALUES_SHOWN, attempt
from pseudoseg.data.classes import ClassSet
from pseudoseg.data.registry import registered_source
from pseudoseg.data.resize import resize_image, resize_mask
from pseudoseg.errors import UserError

if TYPE_CHECKING:
    from pseudoseg.config import DataConfig
    from pseudoseg.data.check_report import CheckReport


@dataclass(frozen=True)
class ImagePair:
    """One image and, when known, its mask, identified by their shared file stem."""

    stem: str
    image: Path
    mask: Path | None
    channels: tuple[Path, ...] = ()
    """nnU-Net data sets: one file per channel (``<case>_0000.png``, ``_0001``, ...),
    ``image`` being the first; empty for an ordinary image file."""


@dataclass(frozen=True)
class PoolSource:
    """What decoding a training pool needs: its sample ids and groups, and how to read them."""

    ids: list[str]
    groups: list[str]
    """The unit a split keeps together: the image itself, or the patient case of a slice."""
    has_mask: list[bool]
    sources: list[str]
    """The folder each sample was read from."""
    fingerprint: list
    """Per unit, :func:`file_fingerprint` of each of its files (the cache is keyed by it)."""
    samples: Callable[[], Iterator[tuple[np.ndarray, np.ndarray]]]
    """Yields blocks of (images ``uint8 [n, C, S, S]``, masks ``uint8 [n, S, S]``), in ``ids`` order."""


def data_source(name: str) -> DataSource:
    """The registered format ``name`` (``data.kind``).

    Raises:
        UserError: naming the registered formats when ``name`` is not one of them.
    """
    return registered_source(name)


def check_pair_shapes(pair: ImagePair, image: np.ndarray, mask: np.ndarray) -> None:
    """Raise a :class:`UserError` naming both files if image and mask sizes differ."""
    if tuple(image.shape[:2]) != tuple(mask.shape[:2]):
        raise UserError(
            f"image {pair.image} is {image.shape[0]}x{image.shape[1]} (HxW) but its mask "
            f"{pair.mask} is {mask.shape[0]}x{mask.shape[1]}"
        )


def file_fingerprint(path: Path) -> list:
    """Path, size and modification time: a changed file is a new cache."""
    stat = path.stat()
    return [str(path.resolve()), stat.st_size, stat.st_mtime_ns]


def extra_prefixes(folders: Sequence[Path]) -> list[str]:
    """Id prefixes of the ``data.unlabeled`` folders: their names, numbered where two share one."""
    names = [Path(folder).name or "unlabeled" for folder in folders]
    return [name if names.count(name) == 1 else f"{name}{k + 1}" for k, name in enumerate(names)]


def shared_images(candidates: Sequence[Path], pool: Sequence[Path]) -> list[tuple[Path, Path]]:
    """(candidate, its twin in ``pool``) for every candidate whose bytes equal a pool file's.

    Files are compared by a SHA-256 of their contents, so a copy under another name or
    folder is found; a re-encoded copy is not.
    """

    def digest(path: Path) -> str:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()

    # only files whose size a file of the other side has can be equal: the rest are not hashed
    candidate_sizes = {path: path.stat().st_size for path in candidates}
    pool_sizes = {path: path.stat().st_size for path in pool}
    in_candidates, in_pool = set(candidate_sizes.values()), set(pool_sizes.values())
    known = {digest(path): path for path, size in pool_sizes.items() if size in in_candidates}
    return [(path, known[found]) for path, size in candidate_sizes.items() if size in in_pool and (found := digest(path)) in known]


def overlap_line(shared: Sequence[tuple[Path, Path]], noun: str) -> str:
    """``"N test <noun>s are also in the training pool (same content): a = b, ..."`` (the first three pairs)."""
    shown = ", ".join(f"{test} = {train}" for test, train in shared[:3])
    more = f" and {len(shared) - 3} more" if len(shared) > 3 else ""
    return f"{len(shared)} test {noun}{'s are' if len(shared) > 1 else ' is'} also in the training pool (same content): {shown}{more}"


class DataSource(ABC):
    """A data format: where a data set's cases are, and how a training pool is decoded from them."""

    name: ClassVar[str] = ""
    """``data.kind``; set by :func:`~pseudoseg.data.registry.register_source`."""
    geometry: ClassVar[Literal["images", "volumes"]]
    """What a sample is and how runs are validated, scored and predicted (see the module)."""
    colour: ClassVar[bool]
    """Whether the input channels are colours (colour jitter applies) rather than slices or modalities."""
    unit: ClassVar[str]
    """What one test item is called in messages (``image``, ``volume``)."""

    @abstractmethod
    def training_pool(self, data: DataConfig) -> PoolSource:
        """The pool of ``data.train`` and ``data.unlabeled``: ids, groups, masks known, and its decoder."""

    def cache_settings(self, data: DataConfig) -> dict[str, Any]:
        """Settings besides the working size and the classes that change the decoded pool."""
        return {}

    @abstractmethod
    def shared_with_pool(self, data: DataConfig) -> list[tuple[Path, Path]]:
        """(test file, its twin) for every file of ``data.test`` whose bytes equal a file of the training pool."""

    def recognises(self, path: Path) -> bool:
        """Whether the data set at ``path`` is in this format (``pseudoseg data check`` without ``--kind``)."""
        return False

    @abstractmethod
    def check(self, report: CheckReport, data: DataConfig) -> None:
        """Read every file of ``data`` as training would, recording counts and problems in ``report``."""

    def layout(self, path: Path) -> str:
        """The layout found at ``path``, for ``pseudoseg data check``."""
        return self.name


class ImageSource(DataSource):
    """A 2-D format: a set of images, some with masks.

    A subclass says where the images are (``find_training``, ``find_unlabeled``,
    ``find_test_sets``) and how to decode one (``read_image``, ``read_mask``);
    this class decodes and resizes the pool, checks test sets against it, and
    ``pseudoseg data check`` reads every file through the same two readers.
    ``data`` is ``None`` where no configuration is at hand (evaluating or
    predicting with a saved model): a format's defaults apply then.
    """

    geometry = "images"
    colour = True
    unit = "image"

    @abstractmethod
    def find_training(self, data: DataConfig) -> list[ImagePair]:
        """The images of ``data.train``, sorted, each with its mask or ``None`` (unlabeled)."""

    @abstractmethod
    def find_unlabeled(self, folder: Path, data: DataConfig | None) -> list[ImagePair]:
        """The images of a folder of images without masks (``data.unlabeled``, or inputs to predict)."""

    @abstractmethod
    def find_test_sets(self, root: Path, data: DataConfig | None) -> dict[str, list[ImagePair]]:
        """The test sets under ``root`` by name, every image with its mask."""

    @abstractmethod
    def read_image(self, pair: ImagePair) -> np.ndarray:
        """The image as ``uint8 [H, W, 3]`` (grayscale repeated)."""

    @abstractmethod
    def read_mask(self, pair: ImagePair, classes: ClassSet) -> np.ndarray:
        """The mask as class indices ``uint8 [H, W]`` (0 background, 1..C), the image's height and width."""

    def find_inputs(self, path: Path) -> list[ImagePair]:
        """The images to predict: ``path`` itself, or the images of the folder ``path``."""
        return [ImagePair(path.stem, path, None)] if path.is_file() else self.find_unlabeled(path, None)

    def read_pair(self, pair: ImagePair, classes: ClassSet) -> tuple[np.ndarray, np.ndarray]:
        """Image and mask of a labeled pair, refused (naming both files) when their sizes differ."""
        image, mask = self.read_image(pair), self.read_mask(pair, classes)
        check_pair_shapes(pair, image, mask)
        return image, mask

    def pool_pairs(self, data: DataConfig) -> tuple[list[ImagePair], list[str], list[str]]:
        """The pool as (pairs, ids, source folder of each): ``data.train``, then ``data.unlabeled``."""
        pairs = self.find_training(data)
        if not any(pair.mask is not None for pair in pairs):
            raise UserError(f"{data.train}: nothing is labeled (no image has a mask); pseudoseg needs some masks")
        ids = [pair.stem for pair in pairs]
        sources = [str(data.train)] * len(pairs)
        for folder, prefix in zip(data.unlabeled, extra_prefixes(data.unlabeled)):
            extra = self.find_unlabeled(Path(folder), data)
            pairs += extra
            ids += [f"{prefix}/{pair.stem}" for pair in extra]
            sources += [str(folder)] * len(extra)
        return pairs, ids, sources

    def training_pool(self, data: DataConfig) -> PoolSource:
        pairs, ids, sources = self.pool_pairs(data)
        fingerprint = [[file_fingerprint(path) for path in (pair.channels or (pair.image,))] + ([file_fingerprint(pair.mask)] if pair.mask else []) for pair in pairs]
        empty = np.zeros((1, data.image_size, data.image_size), dtype=np.uint8)
        classes = data.class_set

        def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for pair in pairs:
                if pair.mask is None:
                    yield resize_image(self.read_image(pair), data.image_size)[None], empty
                    continue
                image, mask = self.read_pair(pair, classes)
                yield resize_image(image, data.image_size)[None], resize_mask(mask, data.image_size)[None]

        return PoolSource(ids, list(ids), [pair.mask is not None for pair in pairs], sources, fingerprint, samples)

    def shared_with_pool(self, data: DataConfig) -> list[tuple[Path, Path]]:
        pairs, _, _ = self.pool_pairs(data)
        tests = [pair for found in self.find_test_sets(Path(data.test), data).values() for pair in found]
        return shared_images([pair.image for pair in tests], [pair.image for pair in pairs])

    def check(self, report: CheckReport, data: DataConfig) -> None:
        pairs = attempt(report, lambda: self.find_training(data)) or []
        for pair in pairs:
            self.check_pair(report, pair)
        self.check_unlabeled_and_test(report, data, [pair.image for pair in pairs])

    def check_unlabeled_and_test(self, report: CheckReport, data: DataConfig, pool: list[Path]) -> None:
        """Check the ``data.unlabeled`` folders, and the test sets against the pool's files (``pool``: those of ``data.train``)."""
        for folder in data.unlabeled:
            for pair in attempt(report, lambda folder=folder: self.find_unlabeled(Path(folder), data)) or []:
                self.check_pair(report, pair)
                pool.append(pair.image)
        if data.test is None:
            return
        sets = attempt(report, lambda: self.find_test_sets(Path(data.test), data)) or {}
        report.test += sum(len(pairs) for pairs in sets.values())
        shared = shared_images([pair.image for found in sets.values() for pair in found], pool)
        if shared:
            report.problems.append(f"{data.test}: {overlap_line(shared, self.unit)}")

    def stored_channels(self, pair: ImagePair, image: np.ndarray) -> int:
        """The image's channels as stored, for ``pseudoseg data check`` (``image``: as decoded)."""
        return image.shape[2]

    def stored_values(self, pair: ImagePair, classes: ClassSet) -> list[int] | None:
        """The mask's values as stored, for ``pseudoseg data check``; None: its decoded class indices."""
        return None

    def check_pair(self, report: CheckReport, pair: ImagePair) -> None:
        """Record one image (and its mask) as training reads it."""
        try:
            image = self.read_image(pair)
            channels = self.stored_channels(pair, image)
        except UserError as exc:
            report.problems.append(str(exc))
            return
        report.sizes[image.shape[:2]] += 1
        report.channels[channels] += 1
        if pair.mask is None:
            report.unlabeled += 1
            return
        try:
            # the stored values first: those of a mask that then fails to decode are reported too
            stored = self.stored_values(pair, report.classes)
            report.mask_values.update((stored or [])[: 4 * VALUES_SHOWN])
            mask = self.read_mask(pair, report.classes)
            check_pair_shapes(pair, image, mask)
        except UserError as exc:
            report.problems.append(str(exc))
            report.unreadable_masks += 1
            return
        if stored is None:
            report.mask_values.update(np.unique(mask).tolist())
        report.add_mask(mask)

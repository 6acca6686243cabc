"""Reading 2-D image/mask folders: decoding files and pairing images with masks.

The polyp benchmarks (PraNet's ``TrainDataset`` / ``TestDataset``, Kvasir-SEG as
released) all use the same layout::

    <set>/images/<stem>.<ext>
    <set>/masks/<stem>.<ext>

An image and its mask share a file stem; their suffixes may differ
(``a.jpg`` <-> ``a.png``). Pairs are always returned sorted by stem, never in
directory order, because directory order differs between file systems and a
split drawn from it would not be reproducible.

Masks come in many encodings (0/255 and 0/1 PNGs, 1-bit PNGs, 16-bit PNG/TIFF,
RGB JPEGs with compression noise); :func:`read_mask` turns all of them into the
same boolean array so that nothing downstream has to care.

:class:`FolderSource` is the data format ``data.kind: folders``
(:mod:`pseudoseg.data.sources`): this layout, or an nnU-Net raw data set of images.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import tifffile
from PIL import Image

from pseudoseg.data.check_report import CheckReport, attempt, check_label_values, note_labels
from pseudoseg.data.classes import ClassSet
from pseudoseg.data.registry import register_source
from pseudoseg.data.sources import ImagePair, ImageSource
from pseudoseg.errors import UserError

if TYPE_CHECKING:
    from pseudoseg.config import DataConfig

IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
"""File suffixes read as images or masks (compared case-insensitively)."""

_TIFF_SUFFIXES = frozenset({".tif", ".tiff"})


def read_pair_image(pair: ImagePair) -> np.ndarray:
    """The image of ``pair`` as ``uint8 [H, W, 3]``, its channel files stacked when it has several.

    An nnU-Net case of one channel file reads like any image (grayscale is
    repeated, RGB kept); three channel files (R, G, B) are stacked.

    Raises:
        UserError: naming the file for channel files of different sizes, or a
            case of two or more than three channels.
    """
    if len(pair.channels) <= 1:
        return read_image(pair.image)
    if len(pair.channels) != 3:
        raise UserError(f"{pair.image}: 2-D images with {len(pair.channels)} channels are not supported (1, or 3 as R, G, B)")
    planes = [read_image(path)[:, :, 0] for path in pair.channels]
    for path, plane in zip(pair.channels[1:], planes[1:]):
        if plane.shape != planes[0].shape:
            raise UserError(f"{path}: channel is {plane.shape[0]}x{plane.shape[1]} but {pair.channels[0]} is {planes[0].shape[0]}x{planes[0].shape[1]}")
    return np.stack(planes, axis=2)


def looks_like_mask(array: np.ndarray) -> bool:
    """Whether a decoded file holds a segmentation mask rather than an image.

    True for grayscale data (or colour with equal channels) that is binary
    (two values or fewer) or a small-integer label map (values up to 16).
    """
    if array.ndim == 3:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]
        if not (colour == colour[:, :, :1]).all():
            return False
        array = colour[:, :, 0]
    if array.dtype == np.bool_:
        return True
    values = np.unique(array)
    if values.size <= 2:
        return True
    return bool(np.issubdtype(array.dtype, np.integer) and values.max() <= 16)


def find_unlabeled_images(folder: Path, *, images_dir: str = "images", checked: int = 8) -> list[ImagePair]:
    """The images of an image-only folder (``data.unlabeled``), sorted by stem, without masks.

    ``folder`` holds the image files, or an ``images_dir`` sub-folder that does.
    Up to ``checked`` files spread over the folder are decoded: if every one
    of them looks like a mask (:func:`looks_like_mask`), the folder is refused,
    since masks trained on as images would teach the network nothing useful.

    Raises:
        UserError: naming the folder if it is missing, holds no images, or holds masks.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"unlabeled folder not found: {folder} (data.unlabeled)")
    images = folder / images_dir if (folder / images_dir).is_dir() else folder
    files = _list_image_files(images)
    if not files:
        raise UserError(
            f"{images}: no images found for data.unlabeled (accepted suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    pairs = [ImagePair(stem, files[stem], None) for stem in sorted(files)]
    picks = sorted({round(i * (len(pairs) - 1) / max(checked - 1, 1)) for i in range(min(checked, len(pairs)))})
    if all(looks_like_mask(_read_array(pairs[i].image)) for i in picks):
        raise UserError(
            f"{images}: holds masks, not images (all {len(picks)} files checked are binary or label maps); "
            "data.unlabeled takes folders of images without masks"
        )
    return pairs


# --------------------------------------------------------------------------- decoding


def read_image(path: Path) -> np.ndarray:
    """Read an image file as ``uint8`` RGB of shape ``[H, W, 3]``.

    Grayscale is repeated over three channels, an alpha channel is dropped, and
    16-bit data is mapped onto 8 bits over the full range (``round(v / 257)``,
    so 65535 -> 255) rather than stretched per image, so that the same pixel
    value always gives the same intensity. TIFF files are read with tifffile,
    which copes with the 16-bit and planar variants Pillow reads badly.

    Raises:
        UserError: naming ``path`` if the file is missing, empty, corrupt or of
            an unsupported pixel type.
    """
    path = Path(path)
    array = _read_array(path)
    array = _to_uint8(array, path)
    if array.ndim == 2:
        return np.repeat(array[:, :, None], 3, axis=2)
    channels = array.shape[2]
    if channels == 1:
        return np.repeat(array, 3, axis=2)
    if channels == 2:  # gray + alpha
        return np.repeat(array[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(array[:, :, :3])  # RGB, or RGBA with alpha dropped


def read_mask(path: Path, classes: ClassSet | None = None) -> np.ndarray:
    """Read a segmentation mask: a ``bool [H, W]`` binary mask, or ``uint8 [H, W]`` class indices.

    Without ``classes``, the binary mask by the rules of :func:`_read_binary_mask`.
    With ``classes``, the class indices (0 background, ``i`` the i-th class):
    a class set with label values (``data.classes`` or ``dataset.json``) reads
    the file as a label map (:func:`_read_label_map`), one without values by
    the binary rules (0/1).

    Raises:
        UserError: naming ``path`` if the file is missing, empty, corrupt, of
            an unsupported pixel type, or (label maps) in colour, lossy, or
            holding a value no class names.
    """
    path = Path(path)
    if classes is None:
        return _read_binary_mask(path)
    if classes.values is None:
        return _read_binary_mask(path).astype(np.uint8)
    return _read_label_map(path, classes)


def _read_label_map(path: Path, classes: ClassSet) -> np.ndarray:
    """The class indices (``uint8 [H, W]``) of a label map file holding the classes' values.

    8- and 16-bit PNG and integer (or whole-valued float) TIFF files hold the
    values as grey levels; a palette PNG holds them as palette indices (the
    colours are only how viewers show them). An alpha channel is ignored, and
    a colour file whose channels are all equal is read as grey.

    Raises:
        UserError: naming ``path`` for a JPEG file (lossy compression changes
            the values), a colour label map, or a value no class names.
    """
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise UserError(f"{path}: label maps must be stored losslessly (PNG or TIFF); JPEG compression changes the label values")
    array = _read_array(path, palette_indices=True)
    if array.ndim == 3:
        grey = array[:, :, :1] if array.shape[2] <= 2 else array[:, :, :3]  # drop alpha
        if not (grey == grey[:, :, :1]).all():
            raise UserError(f"{path}: label map is a colour image; save the class values as a single-channel (greyscale or palette) image")
        array = grey[:, :, 0]
    if array.size == 0:
        raise UserError(f"{path}: mask has no pixels")
    return classes.index_map(array, path)


def _read_binary_mask(path: Path) -> np.ndarray:
    """Read a binary segmentation mask as a ``bool`` array of shape ``[H, W]``.

    Encodings handled, decided from the file's data type and maximum value:

    * boolean / 1-bit files: used as they are;
    * any integer mask whose maximum is 1 (0/1 PNG, 0/1 16-bit): foreground is 1;
    * 8-bit masks (0/255, and JPEG masks with compression noise such as
      Kvasir-SEG's): foreground is ``> 128``, the PraNet evaluation convention;
    * 16-bit masks with values above 255 (0/65535): mapped to 8 bits as in
      :func:`read_image`, then ``> 128``; 16-bit files whose values stay within
      0..255 are taken as 8-bit data stored in a wider type;
    * floating-point masks with values in [0, 1]: foreground is ``> 0.5``;
    * colour masks (RGB, palette, with or without alpha): the maximum over the
      colour channels is thresholded as above, so a mask drawn in any bright
      colour counts as foreground. The alpha channel is ignored.

    An all-zero mask is valid (an image without foreground). A small-integer
    label map of several classes (0/1/2, ...) is refused, saying how to name
    its classes in ``data.classes``.

    Raises:
        UserError: naming ``path`` if the file is missing, empty, corrupt or of
            an unsupported pixel type.
    """
    array = _read_array(path)
    if array.ndim == 3:
        colour = array[:, :, :1] if array.shape[2] <= 2 else array[:, :, :3]  # drop alpha
        array = colour.max(axis=2)
    if array.dtype == np.bool_:
        return array.copy()
    if array.size == 0:
        raise UserError(f"{path}: mask has no pixels")
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError(f"{path}: floating-point mask must hold values in [0, 1]")
        return array > 0.5
    if not np.issubdtype(array.dtype, np.integer):
        raise UserError(f"{path}: unsupported mask pixel type {array.dtype}")
    if array.min() < 0:
        raise UserError(f"{path}: mask has negative values")
    peak = int(array.max())
    if peak <= 1:
        return array == 1
    if peak <= 255:
        lossy = path.suffix.lower() in (".jpg", ".jpeg")  # JPEG noise on an empty mask is not a label map
        if not lossy and peak <= 16 and np.unique(array).size > 2:
            # 0/1/2/... is a label map of several classes, which would all read as
            # background under the > 128 rule: refuse rather than lose the foreground.
            raise UserError(f"{path}: mask looks like a multi-class label map (values 0..{peak}); {_declare_classes_hint(array)}")
        return array > 128
    if peak <= 65535:
        return _scale_16_to_8(array) > 128
    raise UserError(f"{path}: mask values exceed the 16-bit range (max {peak})")


def _declare_classes_hint(label_map: np.ndarray) -> str:
    """How to train on a label map the binary rules refuse: name its classes."""
    values = [int(v) for v in np.unique(label_map) if v != 0]
    example = ", ".join(f"class_{v}: {v}" for v in values)
    union = ", ".join(map(str, values))
    return f"name its classes in data.classes with their real names, e.g. {{{example}}}, or {{foreground: [{union}]}} for one class, or convert it to 0/255"


def _read_array(path: Path, *, palette_indices: bool = False) -> np.ndarray:
    """Decode ``path`` to a channel-last array in its stored data type.

    A palette image is decoded to its colours, or with ``palette_indices`` to
    the palette indices it stores (the values of a label map).
    """
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise UserError(f"{path}: file is empty")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            array = _read_tiff(path, palette_indices)
        else:
            array = _read_pillow(path, palette_indices)
    except UserError:
        raise
    except Exception as exc:  # decoders raise OSError, ValueError, SyntaxError, ...
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: cannot read image ({reason})") from exc
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] > 4) or 0 in array.shape:
        raise UserError(f"{path}: unsupported image shape {array.shape}")
    return array


def _read_pillow(path: Path, palette_indices: bool = False) -> np.ndarray:
    with Image.open(path) as img:
        img.load()  # decode now so that truncated files fail here
        if palette_indices and img.mode in ("P", "PA"):
            return np.array(img)
        if img.mode == "P":
            # Palette indices are not intensities: look the colours up.
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        elif img.mode == "PA":
            img = img.convert("RGBA")
        elif img.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            img = img.convert("RGB")
        return np.array(img)


def _read_tiff(path: Path, palette_indices: bool = False) -> np.ndarray:
    # Only the first page: a multi-page TIFF is not a 2-D image.
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        array = page.asarray()
        axes = page.axes
        photometric = page.photometric
        colormap = page.colormap
    if "S" in axes:  # samples (channels) last, whatever the planar configuration
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    extra = tuple(i for i, ax in enumerate(axes) if ax not in "YXS")
    if extra:
        if any(array.shape[i] != 1 for i in extra):
            raise UserError(f"{path}: TIFF page has axes {axes}; expected a 2-D image")
        array = array.squeeze(axis=extra)
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None and not palette_indices:
        array = np.moveaxis(np.asarray(colormap)[:, array], 0, -1)
    return array


def _scale_16_to_8(array: np.ndarray) -> np.ndarray:
    # 257 = 65535 / 255: maps 0 -> 0 and 65535 -> 255 exactly.
    return np.rint(array.astype(np.float64) / 257.0).astype(np.uint8)


def _to_uint8(array: np.ndarray, path: Path) -> np.ndarray:
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_:
        return array.astype(np.uint8) * 255
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise UserError(
                f"{path}: floating-point image must hold values in [0, 1]; save it as 8- or 16-bit"
            )
        return np.rint(array * 255.0).astype(np.uint8)
    if np.issubdtype(array.dtype, np.integer):
        if array.min() < 0 or array.max() > 65535:
            raise UserError(f"{path}: image values outside the 16-bit range are not supported")
        if array.dtype.itemsize == 1:  # int8 within range
            return array.astype(np.uint8)
        return _scale_16_to_8(array)
    raise UserError(f"{path}: unsupported image pixel type {array.dtype}")


# --------------------------------------------------------------------------- pairing


def find_pairs(
    folder: Path,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    require_masks: bool = True,
) -> list[ImagePair]:
    """Pair the images in ``folder/images_dir`` with the masks in ``folder/masks_dir``.

    This is the PraNet layout; Kvasir-SEG as released has the same layout (its
    ``kavsir_bboxes.json`` beside the two folders is ignored). When
    ``require_masks`` is false the masks folder may be missing altogether
    (an unlabeled pool) and images without a mask get ``mask=None``.

    Returns:
        One :class:`ImagePair` per image, sorted by stem.

    Raises:
        UserError: if ``folder`` or its images folder is missing; otherwise as
            :func:`find_pairs_in`.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"dataset folder not found: {folder}")
    images = folder / images_dir
    if not images.is_dir():
        raise UserError(
            f"{folder} has no '{images_dir}' folder (expected {folder / images_dir} "
            f"and {folder / masks_dir})"
        )
    masks: Path | None = folder / masks_dir
    if not require_masks and not masks.is_dir():
        masks = None
    return find_pairs_in(images, masks, require_masks=require_masks)


def find_pairs_in(images: Path, masks: Path | None, require_masks: bool = True) -> list[ImagePair]:
    """Pair the image files in ``images`` with the mask files in ``masks`` by file stem.

    Only files with a suffix in :data:`IMAGE_SUFFIXES` count; hidden files
    (including macOS ``._*`` files), sub-folders and other files (``.json``,
    ``Thumbs.db``) are ignored.

    Returns:
        One :class:`ImagePair` per image, sorted by stem.

    Raises:
        UserError: if a folder is missing, ``images`` holds no image files,
            a stem appears twice in one folder with different suffixes, a mask
            has no image, or (when ``require_masks``) an image has no mask or
            ``masks`` is ``None``.
    """
    images = Path(images)
    if not images.is_dir():
        raise UserError(f"images folder not found: {images}")
    image_files = _list_image_files(images)
    if not image_files:
        raise UserError(
            f"no images found in {images} (accepted suffixes: {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    if masks is None:
        if require_masks:
            raise UserError(f"no masks folder given for the images in {images}")
        return [ImagePair(stem, image_files[stem], None) for stem in sorted(image_files)]

    masks = Path(masks)
    if not masks.is_dir():
        raise UserError(f"masks folder not found: {masks}")
    mask_files = _list_image_files(masks)
    if mask_files and not set(mask_files) & set(image_files):
        raise UserError(
            f"no mask in {masks} matches an image in {images} by file stem "
            f"(masks like '{min(mask_files)}', images like '{min(image_files)}')"
        )
    orphan_masks = sorted(set(mask_files) - set(image_files))
    if orphan_masks:
        raise UserError(
            f"{_count(orphan_masks, 'mask')} in {masks} {'has' if len(orphan_masks) == 1 else 'have'} "
            f"no image in {images}: {_examples(orphan_masks)}"
        )
    unmasked = sorted(set(image_files) - set(mask_files))
    if unmasked and require_masks:
        raise UserError(
            f"{_count(unmasked, 'image')} in {images} {'has' if len(unmasked) == 1 else 'have'} "
            f"no mask in {masks}: {_examples(unmasked)}"
        )
    return [ImagePair(stem, image_files[stem], mask_files.get(stem)) for stem in sorted(image_files)]


def discover_test_sets(
    parent: Path,
    *,
    images_dir: str = "images",
    masks_dir: str = "masks",
    require_masks: bool = True,
) -> dict[str, list[ImagePair]]:
    """Find every test set under ``parent`` (PraNet's ``TestDataset/<name>/{images,masks}``).

    Each sub-folder of ``parent`` holding an ``images_dir`` folder is one set,
    keyed by the sub-folder's name; the dict is ordered by name. If ``parent``
    itself holds ``images_dir`` it is a single set named after ``parent``.

    Raises:
        UserError: if ``parent`` is missing or holds no test set, or as
            :func:`find_pairs` for a set that is malformed.
    """
    parent = Path(parent)
    if not parent.is_dir():
        raise UserError(f"test set folder not found: {parent}")
    options = {"images_dir": images_dir, "masks_dir": masks_dir, "require_masks": require_masks}
    if (parent / images_dir).is_dir():
        return {parent.name: find_pairs(parent, **options)}
    children = sorted(
        child
        for child in parent.iterdir()
        if child.is_dir() and not child.name.startswith(".") and (child / images_dir).is_dir()
    )
    if not children:
        raise UserError(
            f"no test sets found in {parent}: expected {parent}/<name>/{images_dir}/ "
            f"(or {parent}/{images_dir}/)"
        )
    return {child.name: find_pairs(child, **options) for child in children}


def _list_image_files(folder: Path) -> dict[str, Path]:
    """Map stem -> file for the image files directly inside ``folder``."""
    by_stem: dict[str, list[Path]] = {}
    for entry in folder.iterdir():
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue  # hidden files, macOS "._*" resource forks, .json, Thumbs.db, ...
        if not entry.is_file():
            continue
        by_stem.setdefault(entry.stem, []).append(entry)
    clashes = sorted(stem for stem, files in by_stem.items() if len(files) > 1)
    if clashes:
        names = ", ".join(sorted(p.name for p in by_stem[clashes[0]]))
        more = f" (and {len(clashes) - 1} more stems)" if len(clashes) > 1 else ""
        raise UserError(
            f"{folder} has several files with the stem '{clashes[0]}': {names}{more}; keep one"
        )
    return {stem: files[0] for stem, files in by_stem.items()}


def _count(items: Iterable[str], noun: str) -> str:
    n = len(list(items))
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _examples(stems: list[str], limit: int = 5) -> str:
    shown = ", ".join(stems[:limit])
    return shown + (f", ... ({len(stems) - limit} more)" if len(stems) > limit else "")


# --------------------------------------------------------------------------- the format


@register_source("folders")
class FolderSource(ImageSource):
    """2-D images and masks: the PraNet layout (``images/``, ``masks/``), or an nnU-Net v2 raw data set of images."""

    def find_training(self, data: DataConfig) -> list[ImagePair]:
        from pseudoseg.data.nnunet import read_dataset_json, training_cases

        dataset = read_dataset_json(data.train)
        if dataset is None:
            pairs = find_pairs(data.train, images_dir=data.images_dir, masks_dir=data.masks_dir, require_masks=False)
            masks_where = data.train / data.masks_dir
        else:
            if dataset.file_ending.lower() in (".nii", ".nii.gz"):
                raise UserError(f"{dataset.path}: file_ending {dataset.file_ending} holds volumes; set data.kind: volumes")
            pairs = [ImagePair(case.case_id, case.channels[0], case.label, case.channels) for case in training_cases(data.train, dataset)]
            masks_where = data.train / "labelsTr"
        if not any(pair.mask is not None for pair in pairs):
            raise UserError(f"{data.train}: nothing is labeled (no image has a mask in {masks_where}); pseudoseg needs some masks")
        return pairs

    def find_unlabeled(self, folder: Path, data: DataConfig | None) -> list[ImagePair]:
        return find_unlabeled_images(folder, images_dir=data.images_dir if data is not None else "images")

    def find_test_sets(self, root: Path, data: DataConfig | None) -> dict[str, list[ImagePair]]:
        if data is None:
            return discover_test_sets(root)
        return discover_test_sets(root, images_dir=data.images_dir, masks_dir=data.masks_dir)

    def find_inputs(self, path: Path) -> list[ImagePair]:
        if path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise UserError(f"{path}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
            return [ImagePair(path.stem, path, None)]
        return find_pairs_in(path, None, require_masks=False)

    def read_image(self, pair: ImagePair) -> np.ndarray:
        return read_pair_image(pair)

    def read_mask(self, pair: ImagePair, classes: ClassSet) -> np.ndarray:
        return read_mask(pair.mask, classes)

    def layout(self, path: Path) -> str:
        return "nnU-Net raw" if (Path(path) / "dataset.json").is_file() else "PraNet (images/, masks/)"

    def check(self, report: CheckReport, data: DataConfig) -> None:
        from pseudoseg.data.nnunet import check_num_training, list_cases, read_dataset_json

        dataset = read_dataset_json(data.train)
        if dataset is not None:
            cases = list_cases(dataset, "imagesTr", "labelsTr", report.problems)
            if cases:
                check_num_training(dataset, cases, report.problems)
            pairs = [ImagePair(case.case_id, case.channels[0], case.label, case.channels) for case in cases]
            if (report.path / "imagesTs").is_dir():
                report.test = len(list_cases(dataset, "imagesTs", "labelsTs", report.problems))
            note_labels(report, dataset)
        else:
            pairs = attempt(report, lambda: find_pairs(report.path, images_dir=data.images_dir, masks_dir=data.masks_dir, require_masks=False)) or []
        for pair in pairs:
            self.check_pair(report, pair)
        if dataset is not None and report.classes.values is None:  # with values, every file is checked against them
            check_label_values(report, dataset, report.mask_values)
        self.check_unlabeled_and_test(report, data, [pair.image for pair in pairs])

    def stored_channels(self, pair: ImagePair, image: np.ndarray) -> int:
        # the file's own channels, before decoding repeats grayscale
        if len(pair.channels) > 1:
            return len(pair.channels)
        raw = _read_array(pair.image)
        return 1 if raw.ndim == 2 else raw.shape[2]

    def stored_values(self, pair: ImagePair, classes: ClassSet) -> list[int] | None:
        # the file's own values, before they are mapped to classes (palette indices for label maps)
        return np.unique(_read_array(pair.mask, palette_indices=classes.values is not None)).tolist()

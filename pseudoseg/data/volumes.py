"""CT and MRI volumes in NIfTI: finding cases, reading them as 2-D slices, writing predictions back.

Networks in pseudoseg are 2-D; CT and MRI data sets are 3-D. This module is the bridge:

* :func:`discover_cases` pairs images with label volumes in the Medical
  Segmentation Decathlon layout (``imagesTr/<case>.nii.gz`` with
  ``labelsTr/<case>.nii.gz``), also accepting the nnU-Net channel suffix
  (``<case>_0000.nii.gz``).
* :func:`case_slices` turns one case into axial ``uint8`` slices at a fixed
  working size, exactly the kind of array the 2-D training pipeline consumes
  for photographs.
* :func:`slices_to_volume` undoes that geometry for a stack of predicted
  probability maps, and :func:`write_label_volume` stores the thresholded result
  with the header of the input file, so the prediction overlays the scan in any
  viewer.
* :class:`VolumeSource` is the data format ``data.kind: volumes``
  (:mod:`pseudoseg.data.sources`): the training pool of slices, the leak check
  of the test volumes and ``pseudoseg data check``.

Orientation convention: slices are taken along the last axis of the volume
reoriented to the closest canonical (RAS+) orientation, so "axial" means the
same thing whatever orientation the file was written in (scanner LPS, RAS,
flipped, permuted axes). Everything handed back to the user (predicted volumes,
label files) is in the *original* array order of the input file.
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from pseudoseg.data.check_report import VALUES_SHOWN, CheckReport, attempt, check_label_values, note_labels
from pseudoseg.data.classes import ClassSet, resize_class_indices
from pseudoseg.data.registry import register_source
from pseudoseg.data.sources import DataSource, PoolSource, extra_prefixes, file_fingerprint, overlap_line, shared_images
from pseudoseg.errors import UserError
from pseudoseg.fileio import write_bytes

if TYPE_CHECKING:
    from pseudoseg.config import DataConfig

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
"""File name endings read as NIfTI volumes (compared case-insensitively)."""

INTENSITY_METHODS: tuple[str, ...] = ("window", "percentile")
"""How :func:`case_slices` maps intensities onto 0..255 (``data.intensity``)."""

_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")

# Resizing is done in blocks of slices so that a 512 x 512 x 900 scan never
# needs a second full-size float copy in memory.
_SLICE_BLOCK = 64


@dataclass(frozen=True)
class VolumeCase:
    """One CT case: an image volume and, when known, its label volume."""

    case_id: str
    image_path: Path
    label_path: Path | None
    extra_channels: tuple[Path, ...] = ()
    """Further channels of a multi-channel case (nnU-Net ``_0001``, ...); ``image_path`` is channel 0."""

    @property
    def channel_paths(self) -> tuple[Path, ...]:
        return (self.image_path, *self.extra_channels)


# --------------------------------------------------------------------------- discovery


def discover_cases(
    root: Path,
    *,
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    require_labels: bool = True,
) -> list[VolumeCase]:
    """Find the cases of a Decathlon-style data set, sorted by case id.

    Images are ``root/<images_dir>/<case>.nii[.gz]``; labels are
    ``root/<labels_dir>/<case>.nii[.gz]``. An image named ``<case>_0000`` (the
    nnU-Net convention for channel 0) is paired with the label ``<case>``,
    unless a label called ``<case>_0000`` itself exists. Hidden files, macOS
    ``._*`` resource forks and files that are not NIfTI are ignored.

    Args:
        root: the data set folder.
        images_dir: sub-folder holding the image volumes.
        labels_dir: sub-folder holding the label volumes.
        require_labels: when true, every image needs a label and the label
            folder must exist; when false, cases without a label get
            ``label_path=None`` (the label folder may then be missing).

    Raises:
        UserError: naming the folder or file when a folder is missing, holds
            no volumes, an image has no label (if required), a label has no
            image, two files claim the same case, or an image is a further
            channel of a multi-channel (nnU-Net ``_0001``) case.
    """
    root = Path(root)
    images_folder = root / images_dir
    labels_folder = root / labels_dir
    if not images_folder.is_dir():
        raise UserError(f"{images_folder}: image folder not found")
    if require_labels and not labels_folder.is_dir():
        raise UserError(f"{labels_folder}: label folder not found")

    labels = _list_volumes(labels_folder) if labels_folder.is_dir() else {}
    images = _images_by_case(images_folder, labels)
    for case_id, path in labels.items():
        if case_id not in images:
            raise UserError(f"{path}: label has no image in {images_folder}")
    cases = []
    for case_id in sorted(images):
        label = labels.get(case_id)
        if label is None and require_labels:
            raise UserError(f"{images[case_id]}: image has no label in {labels_folder}")
        cases.append(VolumeCase(case_id=case_id, image_path=images[case_id], label_path=label))
    return cases


def _images_by_case(images_folder: Path, labels: dict[str, Path]) -> dict[str, Path]:
    """Case id -> image file of ``images_folder``; ``<case>_0000`` counts as ``<case>`` unless a label of
    that very name exists. Refuses duplicate cases, an empty folder and further channels (``_0001``)."""
    images: dict[str, Path] = {}
    channel_zero: set[str] = set()  # case ids that came from an nnU-Net "_0000" name
    for stem, path in _list_volumes(images_folder).items():
        case_id = stem
        match = _CHANNEL_SUFFIX.match(stem)
        if match and match["channel"] == "0000" and stem not in labels:
            case_id = match["case"]
            channel_zero.add(case_id)
        if case_id in images:
            raise UserError(f"{path}: case {case_id!r} is already given by {images[case_id]}")
        images[case_id] = path
    if not images:
        raise UserError(f"{images_folder}: no NIfTI volumes (.nii, .nii.gz) found")
    for case_id, path in images.items():
        match = _CHANNEL_SUFFIX.match(case_id)
        if match and match["case"] in channel_zero and case_id not in labels:
            raise UserError(f"{path}: multi-channel images (nnU-Net channel _{match['channel']}) are not supported")
    return images


def volume_cases(
    root: Path,
    *,
    images_dir: str = "imagesTr",
    labels_dir: str = "labelsTr",
    require_labels: bool = True,
) -> list[VolumeCase]:
    """The cases of ``root``: an nnU-Net v2 raw data set when its ``dataset.json``
    says so (several channels allowed), the Decathlon layout otherwise.

    Raises:
        UserError: as :func:`discover_cases`, or for the first disagreement
            between an nnU-Net ``dataset.json`` and the files.
    """
    from pseudoseg.data.nnunet import check_num_training, list_cases, raise_first, read_dataset_json

    dataset = read_dataset_json(root)
    if dataset is None:
        return discover_cases(root, images_dir=images_dir, labels_dir=labels_dir, require_labels=require_labels)
    if not dataset.file_ending.lower().endswith(NIFTI_SUFFIXES):
        raise UserError(f"{dataset.path}: file_ending {dataset.file_ending} is not NIfTI; read it with data.kind: folders")
    problems: list[str] = []
    raw = list_cases(dataset, images_dir, labels_dir, problems)
    if raw and images_dir == "imagesTr":
        check_num_training(dataset, raw, problems)
    if require_labels:
        problems += [f"{case.channels[0]}: image has no label in {root / labels_dir}" for case in raw if case.label is None]
    raise_first(problems)
    return [VolumeCase(case.case_id, case.channels[0], case.label, case.channels[1:]) for case in raw]


def _list_volumes(folder: Path) -> dict[str, Path]:
    """Map file stem (suffix removed) to path for the NIfTI files in ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():  # also catches macOS "._*" files
            continue
        stem = _nifti_stem(path)
        if stem is None:
            continue
        if stem in found:
            raise UserError(f"{path}: case {stem!r} is already given by {found[stem]}")
        found[stem] = path
    return found


def _nifti_stem(path: Path) -> str | None:
    lower = path.name.lower()
    for suffix in NIFTI_SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return path.name[: -len(suffix)]
    return None


# --------------------------------------------------------------------------- reading


def load_volume(path: Path, *, read_data: bool = True) -> nib.Nifti1Image:
    """Read a NIfTI file.

    By default the voxel data is read at once (scaled to float32 when the file
    stores a slope/intercept, kept in its stored integer type otherwise), so
    a truncated or corrupt file fails here, with its name, rather than deep in
    a training loop. The returned image keeps the file's header and affine.

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        read_data: set to false to read the header only (for geometry, e.g. as
            the ``reference`` of :func:`slices_to_volume`); voxel data is then
            read lazily and read errors surface where it is first used.

    Raises:
        UserError: naming ``path`` if it is missing or not a readable NIfTI file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        img = nib.load(path)
    except Exception as exc:  # nibabel raises many types (ImageFileError, EOFError, zlib.error, ...)
        raise UserError(f"{path}: not a readable NIfTI volume ({_reason(exc)})") from exc
    if not isinstance(img, nib.Nifti1Image):
        raise UserError(f"{path}: not a NIfTI-1/2 volume (got {type(img).__name__})")
    if not read_data:
        return img
    data = _read_data(img, path)
    loaded = nib.Nifti1Image(data, img.affine, img.header)
    loaded.set_data_dtype(data.dtype)
    return loaded


def _read_data(img: nib.Nifti1Image, path: Path) -> np.ndarray:
    proxy = img.dataobj
    try:
        if nib.is_proxy(proxy) and (proxy.slope != 1 or proxy.inter != 0):
            # nibabel would scale to float64; float32 is ample for HU and halves memory.
            return img.get_fdata(dtype=np.float32, caching="unchanged")
        return np.asarray(proxy)
    except (OSError, EOFError, ValueError, zlib.error) as exc:
        raise UserError(f"{path}: cannot read voxel data ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def voxel_spacing(img: nib.Nifti1Image) -> tuple[float, float, float]:
    """Voxel size in millimetres along the first three axes of the image's array.

    Taken from the affine (the geometry nibabel and viewers actually use), not
    from ``pixdim``, which may disagree with an sform. The order is that of the
    file's array, i.e. the order of arrays returned by :func:`slices_to_volume`.
    """
    sizes = nib.affines.voxel_sizes(img.affine)
    return (float(sizes[0]), float(sizes[1]), float(sizes[2]))


def window_to_uint8(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip intensities to ``window = (low, high)`` (in HU) and map it linearly onto 0..255.

    ``low`` becomes 0, ``high`` becomes 255, values in between are rounded to
    the nearest integer. NaN voxels become 0.

    Raises:
        UserError: if ``high <= low``.
    """
    return _to_uint8(_window_unit(volume, window))


def percentile_bounds(volume: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    """The intensities of ``volume`` at its own ``percentiles = (low, high)`` (in %).

    Every voxel counts (background included), NaN and infinite voxels do not;
    between voxel values the percentile is interpolated linearly (NumPy's
    default). A volume without a finite voxel gives ``(0, 0)``.
    """
    values = np.asarray(volume)
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        if not finite.all():
            values = values[finite]
    if values.size == 0:
        return 0.0, 0.0
    low, high = np.percentile(values, [float(percentiles[0]), float(percentiles[1])])
    return float(low), float(high)


def percentile_to_uint8(volume: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)) -> np.ndarray:
    """Clip intensities to the volume's own ``percentiles`` and map that range linearly onto 0..255.

    See :func:`percentile_bounds`. A constant volume (both percentiles equal)
    maps to 0 everywhere; NaN voxels become 0.
    """
    return _to_uint8(_rescale_unit(volume, percentile_bounds(volume, percentiles)))


def _window_unit(volume: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Clip to the window and rescale to float32 in [0, 1]."""
    return _rescale_unit(volume, _checked_window(window))


def _checked_window(window: tuple[float, float]) -> tuple[float, float]:
    low, high = float(window[0]), float(window[1])
    if not high > low:
        raise UserError(f"window: upper bound must exceed lower bound, got ({low}, {high})")
    return low, high


def _rescale_unit(volume: np.ndarray, bounds: tuple[float, float]) -> np.ndarray:
    """Map ``bounds = (low, high)`` linearly onto [0, 1] (clipped, float32); all 0 when ``high <= low``."""
    low, high = float(bounds[0]), float(bounds[1])
    if not high > low:  # a constant case: no contrast to keep, and no division by zero
        return np.zeros(np.shape(volume), dtype=np.float32)
    unit = (np.asarray(volume, dtype=np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(np.nan_to_num(unit, nan=0.0), 0.0, 1.0)


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(unit, 0.0, 1.0) * 255.0).astype(np.uint8)


@dataclass(frozen=True)
class SliceSettings:
    """How :func:`case_slices` turns a case into a 2-D network's input (``data.*`` of volumes)."""

    window: tuple[float, float] = (-100.0, 240.0)
    """``intensity="window"``: the intensity window in HU (abdominal soft tissue by default)."""
    intensity: str = "window"
    """``"window"`` (CT: a fixed window in physical units) or ``"percentile"`` (MRI and other
    unitless scales: per case and channel)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    """``intensity="percentile"``: the low and high percentiles (in %) clipped to and mapped onto 0 and 255."""
    size: int = 128
    """Working size of the network."""
    context: int = 0
    """Neighbouring slices on each side given as extra channels (2.5-D input); at the first and
    last slice the edge slice is repeated."""
    classes: ClassSet | None = None
    """The run's classes; with label values, each voxel's value is mapped to its class index, an
    unknown value being an error."""


def case_slices(
    case: VolumeCase,
    settings: SliceSettings = SliceSettings(),
    *,
    with_labels: bool = True,
    foreground: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """All axial slices of a case, normalised and resized for a 2-D network (``settings``).

    The volume is reoriented to the closest canonical (RAS+) orientation and
    sliced along its last (superior) axis. Intensities are mapped onto 0..255,
    by a fixed window (see :func:`window_to_uint8`) or by the case's own
    percentiles (see :func:`percentile_to_uint8`, computed over the whole
    volume, each channel separately), and every slice is resized to
    ``size x size`` with bilinear interpolation (antialiased when shrinking).
    Labels become class indices (:func:`label_indices`) and are resized class
    by class with nearest-neighbour interpolation, each pixel taking the class
    of the largest resized indicator
    (:func:`pseudoseg.data.classes.resize_class_indices`; for one class: the
    resized indicator > 0.5). ``with_labels``: read the label volume too (the
    case must have one); ``foreground``: label values that count as the one
    foreground class (default every non-zero value; not with a ``classes`` that
    has values).

    Returns:
        ``(images, labels)``: ``uint8 [Z, C*(2*context+1), size, size]`` for a
        case of ``C`` channels (channel by channel, each with the centre slice
        at ``context``), and ``uint8 [Z, size, size]`` class indices, {0, 1}
        for one class (``None`` when ``with_labels`` is false).

    Raises:
        UserError: naming the files when a volume cannot be read, is not 3-D,
            image and label shapes or orientations differ, or label values are
            not integer classes or not values of ``classes``; naming the window
            when its bounds are reversed.
    """
    window, intensity, percentiles = settings.window, settings.intensity, settings.percentiles
    size, context, classes = settings.size, settings.context, settings.classes
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if context < 0:
        raise ValueError(f"context must be non-negative, got {context}")
    if intensity not in INTENSITY_METHODS:
        raise ValueError(f"intensity must be one of {INTENSITY_METHODS}, got {intensity!r}")
    fixed = _checked_window(window) if intensity == "window" else None

    def bounds(data: np.ndarray) -> tuple[float, float]:
        return fixed if fixed is not None else percentile_bounds(data, percentiles)

    image = _as_3d(load_volume(case.image_path), case.image_path)
    images = _case_images(case, image, bounds, size, context)
    if not with_labels:
        return images, None
    return images, _case_labels(case, image, size, foreground=foreground, classes=classes)


def _case_images(case: VolumeCase, image: nib.Nifti1Image, bounds: Callable[[np.ndarray], tuple[float, float]], size: int, context: int) -> np.ndarray:
    """Every channel of the case (``image`` and its extra channels, checked against it), sliced (:func:`case_slices`)."""
    stacks = [_channel_slices(image, bounds, size, context)]
    for path in case.extra_channels:
        channel = _as_3d(load_volume(path), path)
        if channel.shape != image.shape or nib.aff2axcodes(channel.affine) != nib.aff2axcodes(image.affine):
            raise UserError(f"{path}: channel shape {channel.shape} or orientation differs from {case.image_path} {image.shape}")
        stacks.append(_channel_slices(channel, bounds, size, context))
    return stacks[0] if len(stacks) == 1 else np.concatenate(stacks, axis=1)


def _case_labels(case: VolumeCase, image: nib.Nifti1Image, size: int, *, foreground: Sequence[int] | None, classes: ClassSet | None) -> np.ndarray:
    """The case's label volume as ``uint8 [Z, size, size]`` class indices (:func:`case_slices`), checked
    against its image's shape and orientation."""
    if case.label_path is None:
        raise UserError(f"{case.image_path}: case {case.case_id!r} has no label volume")
    label_img = _as_3d(load_volume(case.label_path), case.label_path)
    if label_img.shape != image.shape:
        raise UserError(f"{case.label_path}: label shape {label_img.shape} differs from image shape {image.shape} of {case.image_path}")
    if nib.aff2axcodes(label_img.affine) != nib.aff2axcodes(image.affine):
        raise UserError(
            f"{case.label_path}: label orientation {''.join(nib.aff2axcodes(label_img.affine))} differs from "
            f"{''.join(nib.aff2axcodes(image.affine))} of {case.image_path}"
        )
    label_data = np.asanyarray(nib.as_closest_canonical(label_img).dataobj)
    index = label_indices(label_data, case.label_path, classes=classes, foreground=foreground)
    depth = index.shape[2]
    labels = np.empty((depth, size, size), dtype=np.uint8)
    for start in range(0, depth, _SLICE_BLOCK):
        block = np.moveaxis(index[:, :, start : start + _SLICE_BLOCK], 2, 0)
        labels[start : start + block.shape[0]] = resize_class_indices(block, lambda indicator: _resize(indicator, (size, size), mode="nearest-exact"), 1.0)
    return labels


def _channel_slices(image: nib.Nifti1Image, bounds: Callable[[np.ndarray], tuple[float, float]], size: int, context: int) -> np.ndarray:
    """One channel's axial slices, normalised and resized, with ``context`` neighbours: ``uint8 [Z, 2*context+1, S, S]``.

    ``bounds(data)`` gives the intensities that become 0 and 255, from the
    channel's whole volume (so a percentile is the case's, not a slice's).
    """
    data = np.asanyarray(nib.as_closest_canonical(image).dataobj)
    low_high = bounds(data)
    windowed = np.empty((data.shape[2], size, size), dtype=np.uint8)
    for start in range(0, data.shape[2], _SLICE_BLOCK):
        block = np.moveaxis(data[:, :, start : start + _SLICE_BLOCK], 2, 0)  # [z, x, y]
        unit = _resize(_rescale_unit(block, low_high), (size, size), mode="bilinear")
        windowed[start : start + block.shape[0]] = _to_uint8(unit)
    depth = windowed.shape[0]
    offsets = np.arange(-context, context + 1)
    neighbours = np.clip(np.arange(depth)[:, None] + offsets[None, :], 0, depth - 1)
    return windowed[neighbours]


def _as_3d(img: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    if img.ndim == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if img.ndim != 3:
        raise UserError(f"{path}: expected a 3-D volume, got shape {img.shape}")
    return img


def label_indices(
    labels: np.ndarray,
    path: Path,
    *,
    classes: ClassSet | None = None,
    foreground: Sequence[int] | None = None,
) -> np.ndarray:
    """The class indices (``uint8``, same shape) of a label volume.

    With ``classes`` holding label values, each value maps to its class index
    (:meth:`ClassSet.index_map`); otherwise one class: ``foreground`` values,
    or every non-zero value.

    Raises:
        UserError: naming ``path`` for values that are not non-negative
            integers, or (with ``classes``) a value no class names.
    """
    if classes is not None and classes.values is not None:
        if foreground is not None:
            raise ValueError("give foreground values or a class set with values, not both")
        _check_integer_labels(labels, path)
        return classes.index_map(labels, path)
    return _foreground(labels, foreground, path).astype(np.uint8)


def _foreground(labels: np.ndarray, foreground: Sequence[int] | None, path: Path) -> np.ndarray:
    _check_integer_labels(labels, path)
    if foreground is None:
        return labels > 0
    return np.isin(labels, np.asarray(list(foreground)))


def _check_integer_labels(labels: np.ndarray, path: Path) -> None:
    if labels.dtype.kind == "f":
        finite = np.isfinite(labels)
        bad = ~finite | (labels != np.round(np.where(finite, labels, 0)))
        if bad.any():
            raise UserError(
                f"{path}: label values are not integer classes (found {labels[bad].flat[0]!r})"
            )
    elif labels.dtype.kind not in "iub":
        raise UserError(f"{path}: label values are not integer classes (data type {labels.dtype})")
    if labels.dtype.kind != "b" and labels.min(initial=0) < 0:
        raise UserError(f"{path}: label values are not integer classes (found {labels.min()!r} < 0)")


def _resize(stack: np.ndarray, shape: tuple[int, int], *, mode: str) -> np.ndarray:
    """Resize a float32 stack ``[N, H, W]`` to ``[N, *shape]`` (pixel-centre convention)."""
    if stack.shape[1:] == tuple(shape):
        return np.array(stack, dtype=np.float32)
    tensor = torch.from_numpy(np.ascontiguousarray(stack, dtype=np.float32))[:, None]
    if mode == "bilinear":
        out = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)
    else:
        out = F.interpolate(tensor, size=shape, mode=mode)
    return out[:, 0].numpy()


# --------------------------------------------------------------------------- writing back


def slices_to_volume(prob_slices: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
    """Put per-slice predictions back into the voxel grid of ``reference``.

    Inverse of the geometry of :func:`case_slices`: each ``size x size`` map is
    resized (bilinear, pixel-centre aligned) to the in-plane shape of the
    canonically oriented reference, the slices are stacked along the axial
    axis, and the stack is reoriented back to the reference's original array
    order. Element ``[i, j, k]`` of the result therefore belongs to voxel
    ``[i, j, k]`` of the reference file.

    Args:
        prob_slices: ``[Z, size, size]`` probabilities (or any real-valued map).
        reference: the image the slices were cut from (its header is enough,
            see ``load_volume(..., read_data=False)``).

    Returns:
        float32 array with the shape of the reference volume.
    """
    probs = np.asarray(prob_slices, dtype=np.float32)
    shape = _spatial_shape(reference)
    ornt = io_orientation(reference.affine)
    canonical_shape = tuple(int(n) for n in np.asarray(shape)[np.argsort(ornt[:, 0])])
    if probs.ndim != 3 or probs.shape[0] != canonical_shape[2]:
        raise ValueError(
            f"expected [Z={canonical_shape[2]}, H, W] slices for a volume of shape {shape}, got {probs.shape}"
        )
    canonical = np.empty(canonical_shape, dtype=np.float32)
    for start in range(0, probs.shape[0], _SLICE_BLOCK):
        block = _resize(probs[start : start + _SLICE_BLOCK], canonical_shape[:2], mode="bilinear")
        canonical[:, :, start : start + block.shape[0]] = np.moveaxis(block, 0, 2)
    back = ornt_transform(axcodes2ornt(("R", "A", "S")), ornt)
    restored = np.ascontiguousarray(apply_orientation(canonical, back))
    assert restored.shape == shape, (restored.shape, shape)
    return restored


def _spatial_shape(img: nib.Nifti1Image) -> tuple[int, int, int]:
    shape = tuple(int(n) for n in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise ValueError(f"reference must be a 3-D volume, got shape {img.shape}")
    return shape  # type: ignore[return-value]


def write_label_volume(path: Path, labels: np.ndarray, reference: nib.Nifti1Image) -> None:
    """Write a label map aligned with ``reference`` as a ``uint8`` NIfTI file.

    The reference's affine and header are kept (qform and sform with their
    codes, units, description), the data type is set to ``uint8`` and the
    intensity scaling is reset, so viewers overlay the labels on the scan
    exactly. The file is written atomically.

    Args:
        path: output file ending in ``.nii`` or ``.nii.gz``.
        labels: integer label map (0..255) with the reference's 3-D shape, in
            the reference's array order (as returned by :func:`slices_to_volume`
            after thresholding).
        reference: the image the labels belong to.
    """
    array = np.asarray(labels)
    shape = _spatial_shape(reference)
    if array.shape != shape:
        raise ValueError(f"labels of shape {array.shape} do not match the reference shape {shape}")
    if array.dtype.kind == "f" and not np.array_equal(array, np.round(array)):
        raise ValueError("labels must be integer classes; threshold probabilities first")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"labels must lie in 0..255 to be stored as uint8, got {array.min()}..{array.max()}")
    header = nib.Nifti1Header.from_header(reference.header)
    img = nib.Nifti1Image(array.astype(np.uint8), reference.affine, header)
    img.set_data_dtype(np.uint8)
    img.header["cal_min"] = 0
    img.header["cal_max"] = 0
    save_volume(path, img)


def save_volume(path: Path, img: nib.Nifti1Image) -> None:
    """Write a NIfTI image atomically; ``.nii.gz`` is gzip-compressed, ``.nii`` is not.

    The file is serialised in memory and handed to :func:`pseudoseg.fileio.write_bytes`,
    so the temporary name never has to carry the suffix nibabel would read the
    format from.
    """
    path = Path(path)
    lower = path.name.lower()
    if not lower.endswith(NIFTI_SUFFIXES):
        raise UserError(f"{path}: NIfTI output must end in .nii or .nii.gz")
    payload = img.to_bytes()
    if lower.endswith(".gz"):
        payload = gzip.compress(payload, compresslevel=6, mtime=0)  # mtime=0: same data, same bytes
    write_bytes(path, payload)


# --------------------------------------------------------------------------- the format


@register_source("volumes")
class VolumeSource(DataSource):
    """NIfTI volumes: the Decathlon layout (``imagesTr/``, ``labelsTr/``, ``imagesTs/``), or an nnU-Net v2 raw data set.

    Trained as axial slices (with ``data.context`` neighbours as channels), validated
    and scored per case in 3-D.
    """

    geometry = "volumes"
    colour = False  # channels are slices or modalities
    unit = "volume"

    def recognises(self, path: Path) -> bool:
        from pseudoseg.data.nnunet import read_dataset_json

        try:
            dataset = read_dataset_json(path)
        except UserError:
            dataset = None
        if dataset is not None:
            return dataset.file_ending.lower().endswith(NIFTI_SUFFIXES)
        return (Path(path) / "imagesTr").is_dir()

    def layout(self, path: Path) -> str:
        return "nnU-Net raw" if (Path(path) / "dataset.json").is_file() else "Decathlon (imagesTr/, labelsTr/)"

    def cache_settings(self, data: DataConfig) -> dict[str, Any]:
        settings: dict[str, Any] = {"window": list(data.window) if data.intensity == "window" else None, "context": data.context}
        if data.intensity != "window":
            settings["intensity"] = [data.intensity, *data.percentiles]
        return settings

    def training_pool(self, data: DataConfig) -> PoolSource:
        cases = volume_cases(data.train, require_labels=False)
        if not any(case.label_path is not None for case in cases):
            raise UserError(f"{data.train}: nothing is labeled (no case has a label in {data.train / 'labelsTr'}); pseudoseg needs some labels")
        case_sources = [str(data.train)] * len(cases)
        for folder, prefix in zip(data.unlabeled, extra_prefixes(data.unlabeled)):
            extra = unlabeled_cases(Path(folder))
            cases += [VolumeCase(f"{prefix}/{case.case_id}", case.image_path, None, case.extra_channels) for case in extra]
            case_sources += [str(folder)] * len(extra)
        for case in cases:
            if len(case.channel_paths) != (data.channels or 1):
                raise UserError(f"{case.image_path}: case {case.case_id!r} has {len(case.channel_paths)} channel(s) but data.channels is {data.channels}")
        ids: list[str] = []
        groups: list[str] = []
        for case in cases:
            image = load_volume(case.image_path)
            # The axis that becomes the canonical third (axial) axis holds the slices.
            n_slices = image.shape[int(np.nonzero(io_orientation(image.affine)[:, 0] == 2)[0][0])]
            ids.extend(f"{case.case_id}:{z:04d}" for z in range(n_slices))
            groups.extend([case.case_id] * n_slices)
        labeled = {case.case_id: case.label_path is not None for case in cases}
        folder_of = dict(zip((case.case_id for case in cases), case_sources))
        fingerprint = [[file_fingerprint(path) for path in case.channel_paths] + ([file_fingerprint(case.label_path)] if case.label_path else []) for case in cases]

        settings = SliceSettings(tuple(data.window), data.intensity, tuple(data.percentiles), data.image_size, data.context, data.class_set)

        def samples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for case in cases:
                images, labels = case_slices(case, settings, with_labels=labeled[case.case_id])
                yield images, labels if labeled[case.case_id] else np.zeros((len(images), data.image_size, data.image_size), dtype=np.uint8)

        return PoolSource(ids, groups, [labeled[group] for group in groups], [folder_of[group] for group in groups], fingerprint, samples)

    def shared_with_pool(self, data: DataConfig) -> list[tuple[Path, Path]]:
        return shared_volumes(Path(data.train), Path(data.test), data.unlabeled)

    def check(self, report: CheckReport, data: DataConfig) -> None:
        from pseudoseg.data.nnunet import check_num_training, list_cases, read_dataset_json

        dataset = read_dataset_json(data.train)
        unlabeled, test = data.unlabeled, data.test
        if dataset is not None:
            raw = list_cases(dataset, "imagesTr", "labelsTr", report.problems)
            if raw:
                check_num_training(dataset, raw, report.problems)
            cases = [VolumeCase(case.case_id, case.channels[0], case.label, case.channels[1:]) for case in raw]
            if (report.path / "imagesTs").is_dir():
                report.test = len(list_cases(dataset, "imagesTs", "labelsTs", report.problems))
            note_labels(report, dataset)
        else:
            cases = attempt(report, lambda: discover_cases(report.path, require_labels=False)) or []
            if (report.path / "imagesTs").is_dir():
                report.test = len(attempt(report, lambda: discover_cases(report.path, images_dir="imagesTs", labels_dir="labelsTs", require_labels=False)) or [])
        for folder in unlabeled:
            cases += attempt(report, lambda folder=folder: unlabeled_cases(Path(folder))) or []
        # data.test is often the training folder itself (imagesTs/ beside imagesTr/): counted above already
        if test is not None and not (test / "imagesTs").is_dir():  # imagesTr/ holds training cases: never a test set
            report.problems.append(f"{test}: no imagesTs/ folder; a test set of volumes is imagesTs/ + labelsTs/ (imagesTr/ holds training cases)")
        elif test is not None and Path(test).resolve() != report.path.resolve():
            report.test += len(attempt(report, lambda: discover_cases(test, images_dir="imagesTs", labels_dir="labelsTs", require_labels=True)) or [])
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
            check_label_values(report, dataset, label_values)
        foreground = sorted(v for v in label_values if v != 0)
        if len(foreground) > 1 and report.classes.values is None:
            report.notes.append(f"label values {', '.join(map(str, foreground))} are trained as one foreground (their union); name them in data.classes to train them as classes")


def _check_case(report: CheckReport, case, label_values: set[int]) -> None:
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
    report.mask_values.update(values[: 4 * VALUES_SHOWN])
    label_values.update(int(v) for v in values)
    report.add_mask(mask)


def unlabeled_cases(folder: Path) -> list[VolumeCase]:
    """The cases of an image-only NIfTI folder (``data.unlabeled``), refused when it holds label maps."""
    if not folder.is_dir():
        raise UserError(f"unlabeled folder not found: {folder} (data.unlabeled)")
    parent, name = (folder, "imagesTr") if (folder / "imagesTr").is_dir() else (folder.parent, folder.name)
    cases = discover_cases(parent, images_dir=name, labels_dir=f"{name}.no-labels", require_labels=False)
    data = np.asarray(load_volume(cases[0].image_path).dataobj)
    if data.dtype.kind in "iub" and np.unique(data).size <= 17 and data.max(initial=0) <= 16:
        raise UserError(f"{cases[0].image_path}: holds a label map, not an image; data.unlabeled takes folders of images without labels")
    return cases


def shared_volumes(train: Path, test: Path, unlabeled: Sequence[Path] = ()) -> list[tuple[Path, Path]]:
    """(test file, its twin) for every image file of the volume test set ``test/imagesTs`` (every
    channel) whose bytes equal a file of the training pool: ``train``'s cases and ``unlabeled``'s."""
    if not (test / "imagesTs").is_dir():
        return []
    tests = volume_cases(test, images_dir="imagesTs", labels_dir="labelsTs", require_labels=False)
    pool = volume_cases(train, require_labels=False) + [case for folder in unlabeled for case in unlabeled_cases(Path(folder))]
    return shared_images([path for case in tests for path in case.channel_paths], [path for case in pool for path in case.channel_paths])

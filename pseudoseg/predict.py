"""Predict masks for new images or CT volumes, at their native size.

One class: a binary mask (PNG 0/255, or NIfTI 0/1; a class set with label
values writes its value instead of 255/1). Several classes: a label map of the
classes' values (the first value of each class, 0 the background), as 8-bit
PNG for images and as NIfTI with the input's affine and header for volumes.
Outputs go to a separate folder and inputs are only ever read: a run that
would write over an input file is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from pseudoseg.data.classes import ClassSet
from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import resize_bilinear
from pseudoseg.fileio import atomic_path
from pseudoseg.inference import Predictor

_BATCH = 16

CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (255, 225, 25), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212),
    (0, 128, 128), (220, 190, 255), (170, 110, 40), (255, 250, 200), (128, 0, 0),
    (170, 255, 195), (128, 128, 0), (255, 215, 180), (0, 0, 128), (128, 128, 128),
)  # fmt: skip
"""Overlay colour of class ``i`` (1-based): ``CLASS_COLOURS[(i - 1) % 20]``, twenty well-separated colours."""


def label_values(classes: ClassSet, *, foreground: int) -> np.ndarray:
    """``uint8`` lookup from class index to the value a label file holds: 0, then each class's first value.

    A class set without label values (one class, binary rules) writes ``foreground``.

    Raises:
        UserError: for a class value that does not fit an 8-bit label map.
    """
    if classes.values is None:
        return np.array([0, foreground], dtype=np.uint8)
    for name, values in zip(classes.names, classes.values):
        if not 0 < values[0] <= 255:
            raise UserError(f"class {name!r}: label value {values[0]} does not fit an 8-bit label map (1..255)")
    return np.array([0, *(values[0] for values in classes.values)], dtype=np.uint8)


def _file_name(name: str) -> str:
    """A class name as a folder name (path separators replaced)."""
    return "".join("_" if ch in "/\\" else ch for ch in name) or "_"


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _edge(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it."""
    return mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted green and its outline in yellow."""
    out = image.astype(np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * np.array([0, 255, 0], dtype=np.float32)
    out[_edge(mask)] = (255, 255, 0)
    return out.astype(np.uint8)


def _class_overlay(image: np.ndarray, index: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """The image with each class tinted and outlined in its colour, above a legend naming the classes."""
    out = image.astype(np.float32)
    for number, name in enumerate(names, 1):
        mask = index == number
        colour = np.array(CLASS_COLOURS[(number - 1) % len(CLASS_COLOURS)], dtype=np.float32)
        out[mask] = 0.55 * out[mask] + 0.45 * colour
        out[_edge(mask)] = colour
    return _with_legend(out.astype(np.uint8), names)


def _with_legend(image: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    """``image`` above a dark panel with one row per class: its colour swatch and its name."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    boxes = [measure.textbbox((0, 0), name, font=font) for name in names]
    row = max(12, max(box[3] - box[1] for box in boxes) + 4)
    swatch = row - 4
    width = max(image.shape[1], 4 + swatch + 4 + max(box[2] - box[0] for box in boxes) + 4)
    canvas = Image.new("RGB", (width, image.shape[0] + row * len(names) + 2), (24, 24, 24))
    canvas.paste(Image.fromarray(image), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for number, (name, box) in enumerate(zip(names, boxes)):
        top = image.shape[0] + 1 + number * row
        draw.rectangle((4, top + 2, 4 + swatch - 1, top + 2 + swatch - 1), fill=CLASS_COLOURS[number % len(CLASS_COLOURS)])
        draw.text((4 + swatch + 4, top + 2 - box[1]), name, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


def _check_disjoint(inputs: list[Path], outputs: list[Path]) -> None:
    sources = {path.resolve() for path in inputs}
    for path in outputs:
        if path.resolve() in sources:
            raise UserError(f"{path}: output would overwrite an input; choose another output folder")


def predict_paths(predictor: Predictor, inputs: Path, out: Path, *, threshold: float = 0.5, probabilities: bool = False, overlay: bool = False) -> list[Path]:
    """Predict every image (or volume) in ``inputs`` (a file or a folder); return the mask (label map) files.

    ``threshold`` decides one class; several are decided by the argmax.
    ``probabilities`` writes 8-bit maps: ``probabilities/<name>.png`` for one
    class, ``probabilities/<class>/<name>.png`` per channel (``background``
    first) for several. ``overlay`` writes ``overlays/<name>.png``: the mask in
    green for one class, each class in its colour above a legend for several.
    """
    inputs, out = Path(inputs), Path(out)
    if not inputs.exists():
        raise UserError(f"{inputs}: not found")
    source_folder = inputs if inputs.is_dir() else inputs.parent
    if out.resolve() == source_folder.resolve():
        # Masks would land among the images (a.jpg -> a.png) and be read as images next time.
        raise UserError(f"{out}: the output folder is the input folder (predictions would overwrite an input or land among them); choose another output folder")
    if predictor.preprocessing.geometry == "volumes":
        if probabilities or overlay:
            raise UserError("--probabilities/--overlay: not available for CT volumes; the label map is written")
        return _predict_volumes(predictor, inputs, out, threshold)
    return _predict_images(predictor, inputs, out, threshold, probabilities, overlay)


def _predict_images(predictor: Predictor, inputs: Path, out: Path, threshold: float, probabilities: bool, overlay: bool) -> list[Path]:
    from pseudoseg.data.sources import data_source
    from pseudoseg.data.resize import resize_image

    format_ = data_source(predictor.preprocessing.kind)
    pairs = format_.find_inputs(inputs)
    files = [pair.image for pair in pairs]
    classes = predictor.preprocessing.classes
    values = label_values(classes, foreground=255)
    # several classes: one probability map per channel, background first, in a folder per class
    channel_dirs = ["probabilities"] if classes.is_binary else [f"probabilities/{_file_name(name)}" for name in ("background", *classes.names)]
    targets = [out / f"{pair.stem}.png" for pair in pairs]
    extra = [out / folder / f"{pair.stem}.png" for pair in pairs for folder, on in ((d, probabilities) for d in channel_dirs) if on]
    extra += [out / "overlays" / f"{pair.stem}.png" for pair in pairs] if overlay else []
    _check_disjoint(files, targets + extra)
    size = predictor.preprocessing.image_size
    for start in range(0, len(pairs), _BATCH):
        images = [format_.read_image(pair) for pair in pairs[start : start + _BATCH]]
        prob = predictor.probabilities(np.stack([resize_image(image, size) for image in images])).float().cpu()
        for image, small, target in zip(images, prob, targets[start : start + _BATCH]):
            native = resize_bilinear(small, image.shape[:2]).clamp_(0, 1)
            index = predictor.labels(native[None], threshold)[0].numpy()
            _save_png(target, values[index])
            if probabilities:
                for folder, channel in zip(channel_dirs, native.numpy()):
                    _save_png(out / folder / target.name, np.rint(channel * 255).astype(np.uint8))
            if overlay:
                picture = _overlay(image, index == 1) if classes.is_binary else _class_overlay(image, index, classes.names)
                _save_png(out / "overlays" / target.name, picture)
    return targets


def _predict_volumes(predictor: Predictor, inputs: Path, out: Path, threshold: float) -> list[Path]:
    from pseudoseg.data.volumes import NIFTI_SUFFIXES, VolumeCase, load_volume, write_label_volume
    from pseudoseg.evaluation.evaluate import predict_slices, restore_volume

    def is_nifti(path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")

    files = [inputs] if inputs.is_file() else sorted(p for p in inputs.iterdir() if is_nifti(p))
    if not files or not all(is_nifti(p) for p in files):
        raise UserError(f"{inputs}: no NIfTI volumes (.nii, .nii.gz) found")

    def case_id(path: Path) -> str:
        name = path.name
        return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]

    pre = predictor.preprocessing
    values = label_values(pre.classes, foreground=1)
    channels = pre.in_channels // (2 * pre.context + 1)
    if channels == 1:
        cases = [VolumeCase(case_id(path), path, None) for path in files]
    else:  # nnU-Net naming: <case>_0000, <case>_0001, ... one file per channel
        by_case: dict[str, dict[int, Path]] = {}
        for path in files:
            stem, _, number = case_id(path).rpartition("_")
            if not (stem and number.isdigit() and len(number) == 4):
                raise UserError(f"{path}: the model takes {channels} channels; name the files <case>_0000 .. <case>_{channels - 1:04d}")
            by_case.setdefault(stem, {})[int(number)] = path
        cases = []
        for name, found in sorted(by_case.items()):
            if sorted(found) != list(range(channels)):
                raise UserError(f"{inputs}: case {name!r} has channels {sorted(found)}; the model takes {channels} (_0000 .. _{channels - 1:04d})")
            cases.append(VolumeCase(name, found[0], None, tuple(found[c] for c in range(1, channels))))
    targets = [out / f"{case.case_id}.nii.gz" for case in cases]
    _check_disjoint(files, targets)
    for case, target in zip(cases, targets):
        path = case.image_path
        slices, _ = pre.volume_slices(case, with_labels=False)
        reference = load_volume(path, read_data=False)
        prob = restore_volume(predict_slices(predictor, slices, _BATCH), reference)
        write_label_volume(target, values[predictor.labels(torch.from_numpy(prob)[None], threshold)[0].numpy()], reference)
    return targets

"""Predict masks for new images or CT volumes, at their native size.

Outputs go to a separate folder and inputs are only ever read: a run that
would write over an input file is refused before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import resize_bilinear
from pseudoseg.fileio import atomic_path
from pseudoseg.inference import Predictor

_BATCH = 16


def _save_png(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def _overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with the mask tinted green and its outline in yellow."""
    out = image.astype(np.float32)
    out[mask] = 0.6 * out[mask] + 0.4 * np.array([0, 255, 0], dtype=np.float32)
    edge = mask & ~(np.roll(mask, 1, 0) & np.roll(mask, -1, 0) & np.roll(mask, 1, 1) & np.roll(mask, -1, 1))
    out[edge] = (255, 255, 0)
    return out.astype(np.uint8)


def _check_disjoint(inputs: list[Path], outputs: list[Path]) -> None:
    sources = {path.resolve() for path in inputs}
    for path in outputs:
        if path.resolve() in sources:
            raise UserError(f"{path}: output would overwrite an input; choose another output folder")


def predict_paths(predictor: Predictor, inputs: Path, out: Path, *, threshold: float = 0.5, probabilities: bool = False, overlay: bool = False) -> list[Path]:
    """Predict every image (or volume) in ``inputs`` (a file or a folder); return the mask files."""
    inputs, out = Path(inputs), Path(out)
    if not inputs.exists():
        raise UserError(f"{inputs}: not found")
    source_folder = inputs if inputs.is_dir() else inputs.parent
    if out.resolve() == source_folder.resolve():
        # Masks would land among the images (a.jpg -> a.png) and be read as images next time.
        raise UserError(f"{out}: the output folder is the input folder (predictions would overwrite an input or land among them); choose another output folder")
    if predictor.preprocessing.kind == "volumes":
        if probabilities or overlay:
            raise UserError("--probabilities/--overlay: not available for CT volumes; the label map is written")
        return _predict_volumes(predictor, inputs, out, threshold)
    return _predict_images(predictor, inputs, out, threshold, probabilities, overlay)


def _predict_images(predictor: Predictor, inputs: Path, out: Path, threshold: float, probabilities: bool, overlay: bool) -> list[Path]:
    from pseudoseg.data.folders import IMAGE_SUFFIXES, find_pairs_in, read_image
    from pseudoseg.data.pool import resize_image

    if inputs.is_file():
        if inputs.suffix.lower() not in IMAGE_SUFFIXES:
            raise UserError(f"{inputs}: not an image ({', '.join(sorted(IMAGE_SUFFIXES))})")
        files = [inputs]
    else:
        files = [pair.image for pair in find_pairs_in(inputs, None, require_masks=False)]
    targets = [out / f"{path.stem}.png" for path in files]
    extra = [out / kind / f"{path.stem}.png" for path in files for kind, on in (("probabilities", probabilities), ("overlays", overlay)) if on]
    _check_disjoint(files, targets + extra)
    size = predictor.preprocessing.image_size
    for start in range(0, len(files), _BATCH):
        chunk = files[start : start + _BATCH]
        images = [read_image(path) for path in chunk]
        prob = predictor.probabilities(np.stack([resize_image(image, size) for image in images])).float().cpu()
        for image, small, target in zip(images, prob, targets[start : start + _BATCH]):
            native = resize_bilinear(small, image.shape[:2])[0].clamp_(0, 1).numpy()
            mask = native >= threshold
            _save_png(target, (mask * 255).astype(np.uint8))
            if probabilities:
                _save_png(out / "probabilities" / target.name, np.rint(native * 255).astype(np.uint8))
            if overlay:
                _save_png(out / "overlays" / target.name, _overlay(image, mask))
    return targets


def _predict_volumes(predictor: Predictor, inputs: Path, out: Path, threshold: float) -> list[Path]:
    from pseudoseg.data.volumes import NIFTI_SUFFIXES, VolumeCase, load_volume, slices_to_volume, write_label_volume
    from pseudoseg.evaluation.evaluate import predict_slices

    def is_nifti(path: Path) -> bool:
        return path.is_file() and path.name.lower().endswith(NIFTI_SUFFIXES) and not path.name.startswith(".")

    files = [inputs] if inputs.is_file() else sorted(p for p in inputs.iterdir() if is_nifti(p))
    if not files or not all(is_nifti(p) for p in files):
        raise UserError(f"{inputs}: no NIfTI volumes (.nii, .nii.gz) found")

    def case_id(path: Path) -> str:
        name = path.name
        return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else name[: -len(".nii")]

    pre = predictor.preprocessing
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
        prob = slices_to_volume(predict_slices(predictor, slices, _BATCH), reference)
        write_label_volume(target, (prob >= threshold).astype(np.uint8), reference)
    return targets

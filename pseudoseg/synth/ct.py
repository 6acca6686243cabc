"""A synthetic abdominal CT data set in the Medical Segmentation Decathlon layout.

Real CT data sets need registration and a download; this generator gives a
small, fully reproducible stand-in for tests, tutorials and smoke runs of the
CT pipeline (the ATSO setting: one organ, 2-D networks on axial slices, 3-D
evaluation). Each case is an int16 volume in Hounsfield units holding

* air (-1000 HU) around an elliptical body cross-section whose size changes
  along the body axis,
* a rim of subcutaneous fat (about -100 HU) and fat pockets between organs,
* soft tissue (about 40 HU) with slow intensity drift,
* a vertebral column (cortical shell 600-900 HU, cancellous bone about
  300 HU, intervertebral discs) and an enhanced aorta in front of it,
* the **organ** (label 1): a deformed ellipsoid with low-frequency shape noise,
  60-160 HU, so some cases are low-contrast against 40 HU surroundings,
* a **distractor** organ of nearly the same intensity on the other side of the
  body, so intensity thresholding alone does not solve the task,
* optionally (``lesions=True``) one to three **lesions** (label 2) inside the
  organ, 25-60 HU darker than it, like tumours in a liver (the organ keeps
  label 1 around them): a three-class task,
* partial-volume blur and spatially correlated Gaussian noise (std 10-40 HU).

Voxel spacing varies per case (in-plane 0.7-1.0 mm, slices 2-3 mm) and is
stored in the affine, which uses the orientation of DICOM-converted scans
(first two axes flipped, "LPS"-like), so readers must honour it. Case ``i``
depends only on ``(seed, i)``; the lesions are drawn from a stream of their
own, so a case with lesions is the case without them but in and around its
lesions.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from monai.transforms import GaussianSmooth

from pseudoseg.data.volumes import save_volume
from pseudoseg.errors import UserError
from pseudoseg.synth import require_integer
from pseudoseg.fileio import atomic_folder, write_json

__all__ = ["GENERATOR_VERSION", "CtSetSpec", "generate_ct_dataset", "render_ct_case"]

GENERATOR_VERSION = 1
"""Bumped whenever the rendering changes, so a cached data set can be recognised as stale."""

_MIN_SHAPE = (16, 16, 8)


def render_ct_case(
    seed_seq: np.random.SeedSequence,
    shape: tuple[int, int, int] = (96, 96, 40),
    *,
    lesions: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Render one synthetic case.

    Args:
        seed_seq: the case's seed sequence (everything random is drawn from it).
        shape: array shape ``(x, y, z)``; ``z`` is the body (slice) axis.
        lesions: add lesions inside the organ (label 2).

    Returns:
        ``(image, label, affine, info)``: int16 HU volume, uint8 label volume in
        {0, 1} ({0, 1, 2} with lesions), the 4 x 4 voxel-to-mm affine, and a
        dictionary of the drawn parameters (spacing, organ intensity, noise
        level, ...).
    """
    rng = np.random.default_rng(seed_seq)
    nx, ny, nz = shape
    spacing = (float(rng.uniform(0.7, 1.0)),) * 2 + (float(rng.uniform(2.0, 3.0)),)

    # Normalised coordinates: u, v in [-1, 1] across the field of view (v grows
    # towards the back), w in [-1, 1] along the body; z_mm for features with a
    # physical period.
    u = ((np.arange(nx) + 0.5) / nx * 2.0 - 1.0).astype(np.float32)[:, None, None]
    v = ((np.arange(ny) + 0.5) / ny * 2.0 - 1.0).astype(np.float32)[None, :, None]
    w = ((np.arange(nz) + 0.5) / nz * 2.0 - 1.0).astype(np.float32)[None, None, :]
    z_mm = (np.arange(nz, dtype=np.float32) * spacing[2])[None, None, :]

    # Body cross-section: an ellipse that swells and narrows along the body.
    swell = 1.0 + rng.uniform(0.03, 0.08) * np.sin(math.pi * rng.uniform(0.5, 1.5) * w + rng.uniform(0, 2 * math.pi))
    body_a, body_b = rng.uniform(0.78, 0.9) * swell, rng.uniform(0.58, 0.7) * swell
    body_r = (u / body_a) ** 2 + ((v - rng.uniform(-0.05, 0.05)) / body_b) ** 2
    body = body_r < 1.0
    inner = body_r < (1.0 - rng.uniform(0.08, 0.18)) ** 2

    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[body] = rng.uniform(-115.0, -85.0)  # subcutaneous fat
    soft = 40.0 + 8.0 * _smooth_field(rng, shape, (4, 4, 3))
    hu[inner] = soft[inner]
    pockets = inner & (_smooth_field(rng, shape, (7, 7, 4)) > rng.uniform(1.3, 1.7))
    hu[pockets] = rng.uniform(-100.0, -70.0)

    # Vertebral column behind the abdomen, with discs every 25-32 mm.
    spine_v = float(np.mean(body_b)) * rng.uniform(0.48, 0.6)
    spine_r = rng.uniform(0.09, 0.13)
    spine_d = np.broadcast_to(np.sqrt(u**2 + (v - spine_v) ** 2), shape)
    spine = spine_d < spine_r
    shell = spine & (spine_d > spine_r * 0.78)
    period = rng.uniform(25.0, 32.0)
    discs = spine & (np.mod(z_mm + rng.uniform(0, period), period) < rng.uniform(4.0, 6.0))
    hu[spine] = rng.uniform(250.0, 350.0)
    hu[shell] = rng.uniform(600.0, 900.0)
    hu[discs] = rng.uniform(70.0, 100.0)
    canal = np.broadcast_to(np.sqrt(u**2 + (v - spine_v - spine_r * 1.45) ** 2) < spine_r * 0.45, shape)
    hu[canal & inner] = 20.0

    # Organ and distractor, on opposite sides of the midline, in front of the
    # spine. With the affine below, growing u points to the patient's left:
    # the organ sits on the right, like a liver, the distractor on the left.
    organ_hu = float(rng.uniform(60.0, 160.0))
    organ_q = _blob(
        rng,
        shape,
        (u, v, w),
        centre=(-rng.uniform(0.12, 0.32), rng.uniform(-0.3, 0.05), rng.uniform(-0.25, 0.25)),
        radii=(rng.uniform(0.2, 0.34), rng.uniform(0.16, 0.26), rng.uniform(0.35, 0.6)),
        roughness=rng.uniform(0.15, 0.35),
    )
    organ = (organ_q < 1.0) & inner & ~spine & ~canal
    distractor_q = _blob(
        rng,
        shape,
        (u, v, w),
        centre=(rng.uniform(0.3, 0.42), rng.uniform(-0.1, 0.25), rng.uniform(-0.35, 0.35)),
        radii=(rng.uniform(0.09, 0.15), rng.uniform(0.09, 0.15), rng.uniform(0.2, 0.35)),
        roughness=rng.uniform(0.1, 0.2),
    )
    distractor = (distractor_q < 1.0) & inner & ~spine & (organ_q > 1.3)
    aorta_d = np.sqrt((u - rng.uniform(-0.08, 0.08)) ** 2 + (v - spine_v + spine_r * 1.6) ** 2)
    aorta = np.broadcast_to(aorta_d < 0.06, shape) & inner
    aorta &= ~organ & ~distractor
    texture = 6.0 * _smooth_field(rng, shape, (9, 9, 5))
    hu[aorta] = organ_hu + rng.uniform(0.0, 60.0)
    hu[distractor] = organ_hu + rng.uniform(-15.0, 15.0) + texture[distractor]
    hu[organ] = organ_hu + texture[organ]
    lesion = np.zeros(shape, dtype=bool)
    if lesions:
        lesion, lesion_hu = _lesions(seed_seq, shape, (u, v, w), organ, organ_hu)
        hu[lesion] = lesion_hu + texture[lesion]

    # Partial-volume blur, then correlated noise of the drawn strength.
    # (The filter pads with zeros: blur HU + 1000 so that the padding is air.)
    blur = GaussianSmooth(sigma=(0.7, 0.7, 0.4))
    hu = np.asarray(torch.as_tensor(blur(hu[None] + 1000.0))[0]) - 1000.0
    noise_std = float(rng.uniform(10.0, 40.0))
    noise = rng.standard_normal(shape, dtype=np.float32)
    noise = np.asarray(torch.as_tensor(GaussianSmooth(sigma=(0.6, 0.6, 0.3))(noise[None]))[0])
    hu = hu + noise * (noise_std / max(float(noise.std()), 1e-6))
    image = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    affine[:3, 3] = [spacing[0] * (nx - 1) / 2.0, spacing[1] * (ny - 1) / 2.0, -spacing[2] * (nz - 1) / 2.0]
    info = {
        "spacing_mm": [round(s, 4) for s in spacing],
        "organ_hu": round(organ_hu, 1),
        "noise_std_hu": round(noise_std, 1),
        "organ_voxels": int(organ.sum()),
        "organ_slices": int(organ.any(axis=(0, 1)).sum()),
    }
    label = organ.astype(np.uint8)
    if lesions:
        label[lesion] = 2
        info.update(lesion_hu=round(lesion_hu, 1), lesion_voxels=int(lesion.sum()))
    return image, label, affine, info


def _lesions(
    seed_seq: np.random.SeedSequence,
    shape: tuple[int, int, int],
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    organ: np.ndarray,
    organ_hu: float,
) -> tuple[np.ndarray, float]:
    """One to three hypodense blobs inside ``organ`` and their intensity.

    Drawn from a stream of the case's own (spawn key + 0), so the rest of the
    case is the same with or without lesions. Each blob is centred on an organ
    voxel, which it always contains.
    """
    rng = np.random.default_rng(np.random.SeedSequence(seed_seq.entropy, spawn_key=(*seed_seq.spawn_key, 0)))
    lesion_hu = organ_hu - float(rng.uniform(25.0, 60.0))
    lesion = np.zeros(shape, dtype=bool)
    inside = np.argwhere(organ)
    if not len(inside):
        return lesion, lesion_hu
    extent = (inside.max(axis=0) - inside.min(axis=0) + 1) / np.asarray(shape) * 2.0  # organ size in normalised units
    for _ in range(int(rng.integers(1, 4))):
        centre = inside[rng.integers(len(inside))]
        middle = tuple(float((c + 0.5) / n * 2.0 - 1.0) for c, n in zip(centre, shape))
        radii = tuple(float(e * rng.uniform(0.12, 0.22)) for e in extent)
        q = _blob(rng, shape, coords, centre=middle, radii=radii, roughness=rng.uniform(0.05, 0.15))  # type: ignore[arg-type]
        lesion |= q < 1.0
        lesion[tuple(centre)] = True
    return lesion & organ, lesion_hu


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int, int], grid: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field of unit standard deviation: a coarse Gaussian grid, upsampled trilinearly."""
    coarse = torch.from_numpy(rng.standard_normal(grid, dtype=np.float32))[None, None]
    field = F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _blob(
    rng: np.random.Generator,
    shape: tuple[int, int, int],
    coords: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    centre: tuple[float, float, float],
    radii: tuple[float, float, float],
    roughness: float,
) -> np.ndarray:
    """Quadratic form of an in-plane rotated ellipsoid plus low-frequency noise; the blob is ``q < 1``."""
    u, v, w = coords
    angle = rng.uniform(0.0, math.pi)
    du, dv, dw = u - centre[0], v - centre[1], w - centre[2]
    a = du * math.cos(angle) + dv * math.sin(angle)
    b = -du * math.sin(angle) + dv * math.cos(angle)
    q = (a / radii[0]) ** 2 + (b / radii[1]) ** 2 + (dw / radii[2]) ** 2
    return q + roughness * _smooth_field(rng, shape, (5, 5, 4))


def _case_seed(seed: int, index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=(index,))


def _nifti(data: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)  # scanner coordinates, as converters write them
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


@dataclass(frozen=True)
class CtSetSpec:
    """What :func:`generate_ct_dataset` writes: case counts, volume shape, seed and classes.

    Invalid values raise :class:`~pseudoseg.errors.UserError` on construction.
    """

    n_train: int = 24
    """Number of training cases."""
    n_test: int = 8
    """Number of test cases (may be 0)."""
    shape: tuple[int, int, int] = (96, 96, 40)
    """Array shape ``(x, y, z)`` of every case, at least ``(16, 16, 8)`` (any sequence of three
    integers is stored as a tuple of ints)."""
    seed: int = 0
    """Case ``i`` depends only on ``(seed, i)``."""
    lesions: bool = False
    """Add lesions inside the organ: labels 1 organ, 2 lesion (``dataset.json`` names both), a
    three-class task."""

    def __post_init__(self) -> None:
        require_integer("n_train", self.n_train, minimum=1)
        require_integer("n_test", self.n_test, minimum=0)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        shape = tuple(self.shape)
        if len(shape) != 3 or any(
            isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < low for n, low in zip(shape, _MIN_SHAPE)
        ):
            raise UserError(f"shape must be three integers (x, y, z) of at least {_MIN_SHAPE}, got {shape!r}")
        # The dataclass is frozen: normalising a field goes through object.__setattr__.
        object.__setattr__(self, "shape", tuple(int(n) for n in shape))


def generate_ct_dataset(
    out: str | os.PathLike,
    spec: CtSetSpec = CtSetSpec(),
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a synthetic CT data set in the Medical Segmentation Decathlon layout.

    ::

        OUT/imagesTr/case_000.nii.gz   OUT/labelsTr/case_000.nii.gz   (spec.n_train cases)
        OUT/imagesTs/case_024.nii.gz   OUT/labelsTs/case_024.nii.gz   (spec.n_test cases)
        OUT/dataset.json

    Test cases continue the numbering of the training cases. Unlike the
    Decathlon releases, test labels are included (for evaluation). The folder
    is built beside ``out`` under a temporary name and renamed into place when
    complete (with ``overwrite=True`` the old folder is replaced only then).

    Args:
        out: the folder to create.
        spec: the case counts, volume shape, seed and whether to add lesions.
        overwrite: replace ``out`` if it exists and is not empty.
        progress: called as ``progress(done, total)`` after every case.

    Returns:
        The content written to ``OUT/dataset.json``.

    Raises:
        UserError: when ``out`` is a file or a non-empty folder and
            ``overwrite`` is false.
    """
    out = Path(out)
    total = spec.n_train + spec.n_test
    with atomic_folder(out, overwrite=overwrite) as building:
        training: list[dict[str, str]] = []
        test: list[str] = []
        cases: dict[str, dict[str, Any]] = {}
        for index in range(total):
            case_id = f"case_{index:03d}"
            split = "Tr" if index < spec.n_train else "Ts"
            image, label, affine, info = render_ct_case(_case_seed(int(spec.seed), index), spec.shape, lesions=spec.lesions)
            save_volume(building / f"images{split}" / f"{case_id}.nii.gz", _nifti(image, affine))
            save_volume(building / f"labels{split}" / f"{case_id}.nii.gz", _nifti(label, affine))
            entry = {"image": f"./images{split}/{case_id}.nii.gz", "label": f"./labels{split}/{case_id}.nii.gz"}
            if split == "Tr":
                training.append(entry)
            else:
                test.append(entry["image"])
            cases[case_id] = {"split": "train" if split == "Tr" else "test", **info}
            if progress is not None:
                progress(index + 1, total)
        summary: dict[str, Any] = {
            "name": "SyntheticCT",
            "description": "Synthetic abdominal CT, one organ" + (" with lesions" if spec.lesions else "") + " against a same-intensity distractor",
            "licence": "CC0-1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": {"0": "background", "1": "organ", **({"2": "lesion"} if spec.lesions else {})},
            "numTraining": spec.n_train,
            "numTest": spec.n_test,
            "training": training,
            "test": test,
            "generator": "pseudoseg.synth.ct",
            "generator_version": GENERATOR_VERSION,
            "seed": int(spec.seed),
            **({"lesions": True} if spec.lesions else {}),
            "shape": list(spec.shape),
            "cases": cases,
        }
        write_json(building / "dataset.json", summary)
    return summary

"""Synthetic polyp-like endoscopy images with exact masks.

The generator exists so that the whole pipeline (training, pseudo labelling,
evaluation across test domains) can be run and tested without downloading a
clinical data set. The images imitate the properties of colonoscopy frames
that make polyp segmentation hard for a small network:

* textured pinkish-red mucosa (smooth noise at several scales), darker
  blood-vessel-like lines, haustral folds (dark bands with a lit crest) around
  a dark lumen, vignetting and a circular field of view;
* specular highlights everywhere, including on the lesions, so that "white
  blob" is no cue for "lesion";
* lesions (polyps) with irregular boundaries (a perturbed ellipse), shaded
  like a dome lit from the camera, with a colour and texture only subtly
  different from the mucosa; their size spans roughly 2 % to 25 % of the
  image, and some images show two (the mask is the union);
* shading-only bumps of mucosa that look like flat lesions but are not.

Test domains change a named set of parameters (:class:`PolypDomain`), the way
public polyp test sets differ from each other: smaller lesions, lower
contrast, another white balance, or blur and sensor noise.

Determinism: every random quantity is drawn from a :class:`numpy.random.SeedSequence`
that depends only on ``(seed, split, index)``, so the first ten images of a
set are the same whether ten or a thousand are generated. Within one sample,
the scene, the lesions, the colour response and the degradations each draw
from their own child stream and always draw the same number of values, so a
given seed renders the *same scene* under every domain, only with that
domain's parameters (useful to look at a domain shift in isolation).
"""

from __future__ import annotations

import io
import math
import os
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage

from pseudoseg.errors import UserError
from pseudoseg.synth import require_integer
from pseudoseg.fileio import atomic_folder, write_bytes, write_json

__all__ = [
    "DEFAULT_DOMAINS",
    "GENERATOR_VERSION",
    "PolypDomain",
    "PolypSetSpec",
    "generate_polyp_dataset",
    "polyp_domain",
    "render_polyp_sample",
    "sample_seed",
]

#: Bumped whenever a change to the generator changes the pixels it produces.
GENERATOR_VERSION = 1

Range = tuple[float, float]


@dataclass(frozen=True)
class PolypDomain:
    """Parameters of one image distribution.

    Ranges are ``(low, high)`` and sampled uniformly per image (lesion areas
    log-uniformly). Lengths are fractions of the image side, so the same
    domain looks the same at every resolution.
    """

    name: str
    description: str
    #: Nominal area of each lesion as a fraction of the image (log-uniform).
    lesion_area: Range = (0.02, 0.25)
    #: Probability that an image shows a second lesion.
    p_second_lesion: float = 0.25
    #: Scales every appearance difference between lesion and mucosa
    #: (colour tint, granular texture, the shadow along the base); 0 leaves
    #: only the dome shading.
    lesion_contrast: Range = (0.6, 1.2)
    #: Per-channel (R, G, B) white-balance gains.
    white_balance: tuple[Range, Range, Range] = ((0.96, 1.04), (0.96, 1.04), (0.96, 1.04))
    brightness: Range = (0.88, 1.08)
    gamma: Range = (0.92, 1.08)
    #: Probability of defocus or motion blur; of those, the share that is motion.
    p_blur: float = 0.2
    p_motion_blur: float = 0.3
    #: Gaussian defocus sigma and motion-blur length, fractions of the side.
    blur_sigma: Range = (0.002, 0.006)
    motion_length: Range = (0.01, 0.03)
    #: Standard deviation of additive sensor noise (intensity in [0, 1]).
    noise_std: Range = (0.003, 0.012)


_DOMAINS: Mapping[str, PolypDomain] = MappingProxyType(
    {
        "in_domain": PolypDomain(
            name="in_domain",
            description="same distribution as the training images",
        ),
        "small_lesions": PolypDomain(
            name="small_lesions",
            description="mostly small lesions (about 0.8 % to 4 % of the image), more often two",
            lesion_area=(0.008, 0.04),
            p_second_lesion=0.4,
        ),
        "low_contrast": PolypDomain(
            name="low_contrast",
            description="lesion colour and texture closer to the mucosa",
            lesion_contrast=(0.1, 0.35),
        ),
        "colour_shift": PolypDomain(
            name="colour_shift",
            description="another white balance (cooler, less red) and a wider brightness range",
            white_balance=((0.72, 0.86), (0.98, 1.12), (1.12, 1.38)),
            brightness=(0.65, 1.2),
            gamma=(0.8, 1.2),
        ),
        "blur_noise": PolypDomain(
            name="blur_noise",
            description="defocus or motion blur on every image, and strong sensor noise",
            p_blur=1.0,
            p_motion_blur=0.5,
            blur_sigma=(0.01, 0.022),
            motion_length=(0.05, 0.1),
            noise_std=(0.03, 0.06),
        ),
    }
)

#: Names of the test domains, in the order they are generated.
DEFAULT_DOMAINS: tuple[str, ...] = tuple(_DOMAINS)


def polyp_domain(name: str) -> PolypDomain:
    """Return the parameters of the domain called ``name``."""
    try:
        return _DOMAINS[name]
    except KeyError:
        raise UserError(
            f"unknown synthetic polyp domain {name!r}; known domains: {', '.join(DEFAULT_DOMAINS)}"
        ) from None


def sample_seed(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of sample ``index`` of ``split`` (``"train"`` or ``"test/<domain>"``).

    A CRC of the split name goes into the spawn key (Python's ``hash`` of a
    string changes between runs), so that every split draws from its own
    stream and no test image can repeat a training image.
    """
    return np.random.SeedSequence(seed, spawn_key=(zlib.crc32(split.encode("utf-8")), index))


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def render_polyp_sample(
    seed: int | np.random.SeedSequence, size: int, domain: str = "in_domain"
) -> tuple[np.ndarray, np.ndarray]:
    """Render one synthetic endoscopy frame and its lesion mask.

    Args:
        seed: an integer or a :class:`numpy.random.SeedSequence`; the result
            depends on nothing else (besides ``size`` and ``domain``).
        size: side length in pixels (at least 32).
        domain: one of :data:`DEFAULT_DOMAINS`.

    Returns:
        ``(image, mask)``: a ``uint8`` RGB image of shape ``(size, size, 3)``
        and a ``uint8`` mask of shape ``(size, size)`` with values 0 and 255.
    """
    params = polyp_domain(domain)
    require_integer("size", size, minimum=32)
    if isinstance(seed, np.random.SeedSequence):
        root = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0:
        root = np.random.SeedSequence(int(seed))
    else:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    # Child keys are built explicitly rather than with ``root.spawn`` because
    # spawn() advances a counter on ``root``: a second call with the same
    # SeedSequence object would then render a different image.
    scene, lesions, colour, degrade = (
        np.random.default_rng(
            np.random.SeedSequence(root.entropy, spawn_key=(*root.spawn_key, k), pool_size=root.pool_size)
        )
        for k in range(4)
    )
    return _render(size, params, scene, lesions, colour, degrade)


def _render(
    size: int,
    params: PolypDomain,
    scene_rng: np.random.Generator,
    lesion_rng: np.random.Generator,
    colour_rng: np.random.Generator,
    degrade_rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    # Normalised coordinates: the image spans [-1, 1] on both axes, so one
    # pixel is 2 / size units and every length below is resolution-free.
    coords = np.linspace(-1.0, 1.0, size, dtype=np.float64)
    y, x = np.meshgrid(coords, coords, indexing="ij")
    grid = _PixelGrid(x, y)
    r = np.hypot(x, y)
    px = 2.0 / size

    # --- field of view, lumen, illumination ---------------------------------
    fov_radius = scene_rng.uniform(1.0, 1.22)
    fov = _smoothstep(fov_radius, fov_radius - 1.5 * px, r)

    lumen_angle = scene_rng.uniform(0.0, 2.0 * math.pi)
    lumen_dist = scene_rng.uniform(0.3, 1.8)  # beyond ~1.2 the lumen is out of view
    lumen_x, lumen_y = lumen_dist * math.cos(lumen_angle), lumen_dist * math.sin(lumen_angle)
    lumen_radius = scene_rng.uniform(0.15, 0.4)
    warp = 0.13 * _smooth_noise(scene_rng, size, 3) + 0.04 * _smooth_noise(scene_rng, size, 7)
    lumen_d = np.hypot(x - lumen_x, y - lumen_y) + warp * np.minimum(1.0, np.hypot(x - lumen_x, y - lumen_y))
    illumination = (1.0 - 0.85 * np.exp(-((lumen_d / lumen_radius) ** 2))) * (
        1.0 - 0.4 * np.exp(-((lumen_d / (3.0 * lumen_radius)) ** 2))
    )
    vignetting = scene_rng.uniform(0.3, 0.6)
    illumination *= 1.0 - vignetting * np.clip(r / fov_radius, 0.0, 1.0) ** 2.2
    illumination *= 1.0 + 0.12 * _smooth_noise(scene_rng, size, 2)

    # --- folds: rings around the lumen, dark on the lumen side, lit crest ----
    n_folds = 6
    fold_on = scene_rng.random(n_folds) < scene_rng.uniform(0.35, 0.85)
    fold_radius = lumen_radius + np.sort(scene_rng.uniform(0.15, 2.3, n_folds))
    fold_width = scene_rng.uniform(0.07, 0.2, n_folds)
    fold_dark = scene_rng.uniform(0.2, 0.5, n_folds) * fold_on
    fold_lit = scene_rng.uniform(0.05, 0.22, n_folds) * fold_on
    presence = _smoothstep(-0.7, 0.3, _smooth_noise(scene_rng, size, 3))  # folds come and go
    shadow = np.zeros((size, size))
    crest = np.zeros((size, size))
    for k in np.flatnonzero(fold_on):
        s = (lumen_d - fold_radius[k]) / fold_width[k]  # across the fold, away from the lumen
        shadow += fold_dark[k] * np.exp(-(((s + 0.5) / 0.75) ** 2))
        crest += fold_lit[k] * np.exp(-(((s - 0.35) / 0.28) ** 2))
    fold_shade = 1.0 - presence * np.minimum(shadow, 0.75) + presence * crest
    crest_sparkle = presence * crest * (_smooth_noise(scene_rng, size, 18) > 1.3)

    # --- mucosa albedo: colour, multi-scale texture, vessels -----------------
    base = np.array(
        [scene_rng.uniform(0.78, 0.93), scene_rng.uniform(0.40, 0.55), scene_rng.uniform(0.33, 0.46)]
    )
    texture = _fbm(scene_rng, size, 5, octaves=4)
    hue = _fbm(scene_rng, size, 3, octaves=3)
    fine = _smooth_noise(scene_rng, size, max(8, min(48, size // 4)))
    albedo = base * (1.0 + 0.09 * texture + 0.035 * fine)[..., None]
    albedo[..., 1] *= 1.0 + 0.08 * hue
    albedo[..., 2] *= 1.0 + 0.06 * hue

    vessel_field = _smooth_noise(scene_rng, size, scene_rng.uniform(4.0, 8.0)) + 0.35 * _smooth_noise(
        scene_rng, size, 15
    )
    vessel_width = scene_rng.uniform(0.05, 0.1)
    vessel_patch = _smoothstep(-0.3, 0.9, _smooth_noise(scene_rng, size, 3))
    vessels = np.exp(-((vessel_field / vessel_width) ** 2)) * vessel_patch * scene_rng.uniform(0.12, 0.35)
    capillary_field = _smooth_noise(scene_rng, size, 12)
    vessels += 0.5 * np.exp(-((capillary_field / 0.06) ** 2)) * vessel_patch * scene_rng.uniform(0.05, 0.2)

    # --- distractors: mucosal bumps with shading but no change of colour -----
    # They catch reflections like lesions do, so a highlight is no lesion cue.
    bump_height = np.zeros((size, size))
    bump_highlight = np.zeros((size, size))
    n_bumps = 2
    bump_on = scene_rng.random(n_bumps) < 0.4
    for k in range(n_bumps):
        radius = scene_rng.uniform(0.08, 0.3)
        rho, centre = _blob_rho(
            scene_rng, grid, _BlobShape(radius_range=(radius, radius), centre_limit=0.8), render=bool(bump_on[k])
        )
        height = scene_rng.uniform(0.1, 0.4) * radius
        spots = _highlight_spots(
            scene_rng,
            grid,
            centre,
            _SpotSet(
                n=2,
                spread=0.45 * radius,
                sigma_range=(max(0.6 * px, 0.03 * radius), max(1.2 * px, 0.09 * radius)),
                p_each=0.4,
            ),
        )
        if rho is not None:
            bump_height = np.maximum(bump_height, height * np.clip(1.0 - rho**2, 0.0, None) ** 1.3)
            bump_highlight = np.maximum(bump_highlight, spots * (rho < 1.0))

    # --- lesions -------------------------------------------------------------
    mask = np.zeros((size, size), dtype=bool)
    alpha = np.zeros((size, size))  # soft lesion cover, for colour
    rim = np.zeros((size, size))  # shadow along the base, outside the lesion
    lesion_height = np.zeros((size, size))
    lesion_tint = np.ones((size, size, 3))
    lesion_texture = np.ones((size, size))
    highlight = np.zeros((size, size))
    second = lesion_rng.random() < params.p_second_lesion
    for k in range(2):
        area = _log_uniform(lesion_rng, *params.lesion_area)
        radius = math.sqrt(area * 4.0 / math.pi)  # the image has area 4
        rho, (cx, cy) = _blob_rho(
            lesion_rng,
            grid,
            _BlobShape(
                radius_range=(radius, radius),
                centre_limit=max(0.0, 0.82 * fov_radius - 0.5 * radius),
                irregularity=lesion_rng.uniform(0.04, 0.16),
            ),
            avoid=(lumen_x, lumen_y, lumen_radius),
            render=k == 0 or second,
        )
        contrast = _uniform(lesion_rng, params.lesion_contrast)
        height = lesion_rng.uniform(0.12, 0.55)  # dome height / lesion radius
        softness = lesion_rng.uniform(0.03, 0.12)
        pale = lesion_rng.random()  # pale/whitish vs. redder than the mucosa
        tint = 1.0 + contrast * (
            pale * np.array([0.03, 0.17, 0.17]) + (1.0 - pale) * np.array([0.04, -0.15, -0.11])
        )
        texture_amp = contrast * lesion_rng.uniform(0.05, 0.14)
        rim_amp = contrast * lesion_rng.uniform(0.0, 0.2)
        granules = _smooth_noise(lesion_rng, size, lesion_rng.uniform(18.0, 34.0))
        lobules = _smooth_noise(lesion_rng, size, lesion_rng.uniform(6.0, 10.0))
        spots = _highlight_spots(
            lesion_rng,
            grid,
            (cx, cy),
            _SpotSet(
                n=3,
                spread=0.45 * radius,
                sigma_range=(max(0.6 * px, 0.03 * radius), max(1.2 * px, 0.09 * radius)),
                p_each=0.4,
            ),
        )
        if rho is None:  # no second lesion in this image
            continue
        inside = rho < 1.0
        mask |= inside
        cover = _smoothstep(1.0 + softness, 1.0 - softness, rho)
        alpha = np.maximum(alpha, cover)
        lesion_height = np.maximum(lesion_height, height * radius * np.clip(1.0 - rho**2, 0.0, None) ** 1.1)
        lesion_tint = lesion_tint * (1.0 - cover[..., None]) + tint * cover[..., None]
        lesion_texture *= 1.0 + cover * texture_amp * (granules + 0.5 * lobules)
        rim = np.maximum(rim, rim_amp * np.exp(-(((rho - 1.08) / 0.1) ** 2)) * (rho > 1.0))
        highlight = np.maximum(highlight, spots * inside)
    mask &= fov > 0.5

    # --- compose -------------------------------------------------------------
    height = np.maximum(lesion_height, bump_height)
    gy, gx = np.gradient(height, px)
    # Light from (near) the camera: Lambertian shading of the height field.
    light = np.array([scene_rng.uniform(-0.25, 0.25), scene_rng.uniform(-0.25, 0.25), 1.0])
    light /= np.linalg.norm(light)
    shading = (light[2] - light[0] * gx - light[1] * gy) / np.sqrt(1.0 + gx**2 + gy**2)
    shading_strength = scene_rng.uniform(0.5, 0.9)
    shading = 1.0 - shading_strength * (1.0 - np.clip(shading, 0.0, 1.0))
    # Raised tissue is closer to the light and a little brighter.
    shading *= 1.0 + 0.08 * height / max(float(height.max()), 1e-6)
    # Lesions lie on top of folds and hide the vessel pattern underneath.
    covered_folds = fold_shade * (1.0 - alpha) + alpha
    vessel_dark = vessels * (1.0 - 0.7 * alpha)
    image = albedo * (1.0 - vessel_dark[..., None] * np.array([0.22, 0.6, 0.42]))
    image *= lesion_tint * lesion_texture[..., None]
    image *= (illumination * covered_folds * shading * (1.0 - rim))[..., None]

    # --- specular highlights: mucosa, fold crests and lesions ---------------
    highlight = np.maximum(
        highlight,
        _highlight_spots(
            scene_rng,
            grid,
            (0.0, 0.0),
            _SpotSet(
                n=10,
                spread=0.75 * fov_radius,
                sigma_range=(0.6 * px, max(1.5 * px, 0.03)),
                p_each=scene_rng.uniform(0.1, 0.6),
            ),
        ),
    )
    highlight = np.maximum(highlight, np.maximum(bump_highlight, np.clip(3.0 * crest_sparkle, 0.0, 1.0)))
    highlight *= illumination > 0.3  # no reflections from the dark lumen
    image = image * (1.0 - highlight[..., None]) + highlight[..., None] * np.array([1.0, 0.99, 0.96])

    # --- camera colour response ---------------------------------------------
    gains = np.array([_uniform(colour_rng, wb) for wb in params.white_balance])
    brightness = _uniform(colour_rng, params.brightness)
    gamma = _uniform(colour_rng, params.gamma)
    image = np.clip(image * gains * brightness, 0.0, 1.0) ** gamma
    image *= fov[..., None]

    # --- degradations: blur, then sensor noise ------------------------------
    blurred = degrade_rng.random() < params.p_blur
    motion = degrade_rng.random() < params.p_motion_blur
    sigma = _uniform(degrade_rng, params.blur_sigma) * size
    length = _uniform(degrade_rng, params.motion_length) * size
    angle = degrade_rng.uniform(0.0, math.pi)
    noise_std = _uniform(degrade_rng, params.noise_std)
    noise = degrade_rng.standard_normal((size, size, 3)).astype(np.float32)
    if blurred:
        if motion:
            kernel = _motion_kernel(length, angle)
            image = np.stack([ndimage.convolve(image[..., c], kernel, mode="reflect") for c in range(3)], -1)
        else:
            image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0.0), mode="reflect")
    # Shot noise grows with intensity; a floor keeps dark regions noisy too.
    image = image + noise * noise_std * np.sqrt(0.25 + image)

    image_u8 = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    mask_u8 = mask.astype(np.uint8) * 255
    return image_u8, mask_u8


class _PixelGrid(NamedTuple):
    """Normalised coordinates (in [-1, 1]) of every pixel of a square image."""

    x: np.ndarray
    y: np.ndarray

    @property
    def size(self) -> int:
        """Side length in pixels."""
        return self.x.shape[0]


@dataclass(frozen=True)
class _BlobShape:
    """How large, where and how irregular a blob of :func:`_blob_rho` may be."""

    radius_range: Range
    """Range of the radius of a circle of the same area, in normalised units."""
    centre_limit: float
    """The centre lies in the disc of this radius around the image centre."""
    irregularity: float = 0.1
    """Strength of the lobes and local bumps of the boundary (0: an ellipse)."""


@dataclass(frozen=True)
class _SpotSet:
    """A group of specular highlights for :func:`_highlight_spots`."""

    n: int
    """Number of candidate spots."""
    spread: float
    """Spots lie within this distance of the group's centre."""
    sigma_range: Range
    """Range of the spots' short-axis widths (log-uniform), in normalised units."""
    p_each: float
    """Probability that each candidate is shown."""


def _blob_rho(
    rng: np.random.Generator,
    grid: _PixelGrid,
    blob: _BlobShape,
    *,
    avoid: tuple[float, float, float] | None = None,
    render: bool = True,
) -> tuple[np.ndarray | None, tuple[float, float]]:
    """Normalised radius of an irregular blob: < 1 inside, 1 on the boundary.

    The boundary is an ellipse of area ``pi * radius**2`` whose radius is
    modulated by low harmonics of the angle (lobes) and by a smooth 2-D noise
    field (small local bumps). ``avoid`` is a disc ``(x, y, radius)`` the
    centre keeps away from if it can. Always draws the same number of values;
    with ``render=False`` it only draws them (the blob is not shown) and
    returns ``None`` instead of the image.
    """
    x, y = grid
    radius = rng.uniform(*blob.radius_range)
    aspect = rng.uniform(0.6, 1.0)
    angle = rng.uniform(0.0, math.pi)
    orders = np.arange(2, 8)
    amplitudes = blob.irregularity * rng.random(orders.size) / orders**0.9
    phases = rng.uniform(0.0, 2.0 * math.pi, orders.size)
    wobble = _smooth_noise(rng, grid.size, 10)
    # Centre: uniform in a disc, away from the lumen where a lesion would be
    # invisible. A fixed number of candidates keeps the draw count constant.
    candidates = rng.random((8, 2))
    cand_r = blob.centre_limit * np.sqrt(candidates[:, 0])
    cand_t = 2.0 * math.pi * candidates[:, 1]
    cand_x, cand_y = cand_r * np.cos(cand_t), cand_r * np.sin(cand_t)
    choice = 0
    if avoid is not None:
        ax, ay, ar = avoid
        ok = np.hypot(cand_x - ax, cand_y - ay) > ar + 0.6 * radius
        choice = int(np.argmax(ok)) if ok.any() else 0
    cx, cy = float(cand_x[choice]), float(cand_y[choice])
    if not render:
        return None, (cx, cy)

    a, b = radius / math.sqrt(aspect), radius * math.sqrt(aspect)
    dx, dy = x - cx, y - cy
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    # Lobes: sum of a_k cos(k theta + phi_k), evaluated as the real part of
    # powers of the unit complex number exp(i theta), which avoids arctan2
    # and one cosine image per harmonic.
    dist = np.hypot(u, v)
    unit = (u + 1j * v) / np.maximum(dist, 1e-12)
    power = unit * unit
    boundary = np.ones_like(u)
    for order, amplitude, phase in zip(orders, amplitudes, phases):
        boundary += amplitude * (power * complex(math.cos(phase), math.sin(phase))).real
        if order < orders[-1]:
            power = power * unit
    rho = np.hypot(u / a, v / b) / boundary
    rho *= 1.0 + 0.5 * blob.irregularity * wobble
    return rho, (cx, cy)


def _highlight_spots(
    rng: np.random.Generator, grid: _PixelGrid, centre: tuple[float, float], spots: _SpotSet
) -> np.ndarray:
    """Up to ``spots.n`` small, saturated, elongated reflections around ``centre``; values in [0, 1]."""
    x, y = grid
    n, spread, sigma_range = spots.n, spots.spread, spots.sigma_range
    on = rng.random(n) < spots.p_each
    pos_r = spread * np.sqrt(rng.random(n))
    pos_t = rng.uniform(0.0, 2.0 * math.pi, n)
    sigma = np.exp(rng.uniform(math.log(sigma_range[0]), math.log(max(sigma_range)), n))
    elongation = rng.uniform(1.0, 3.0, n)
    angle = rng.uniform(0.0, math.pi, n)
    gain = rng.uniform(1.5, 3.0, n)
    out = np.zeros_like(x)
    size = grid.size
    for k in np.flatnonzero(on):
        sx = centre[0] + pos_r[k] * math.cos(pos_t[k])
        sy = centre[1] + pos_r[k] * math.sin(pos_t[k])
        # Only a window of 4 sigma around the spot is evaluated: a spot is a
        # few pixels wide, the image is thousands.
        reach = 4.0 * sigma[k] * elongation[k]
        rows = _pixel_span(sy - reach, sy + reach, size)
        cols = _pixel_span(sx - reach, sx + reach, size)
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        dx = x[rows, cols] - sx
        dy = y[rows, cols] - sy
        u = dx * math.cos(angle[k]) + dy * math.sin(angle[k])
        v = -dx * math.sin(angle[k]) + dy * math.cos(angle[k])
        spot = np.exp(-0.5 * ((u / (sigma[k] * elongation[k])) ** 2 + (v / sigma[k]) ** 2))
        np.maximum(out[rows, cols], np.clip(gain[k] * spot, 0.0, 1.0), out=out[rows, cols])
    return out


def _pixel_span(low: float, high: float, size: int) -> slice:
    """Pixels whose normalised coordinate (``-1 + 2 i / (size - 1)``) lies in [low, high]."""
    scale = (size - 1) / 2.0
    return slice(max(0, int(math.floor((low + 1.0) * scale))), min(size, int(math.ceil((high + 1.0) * scale)) + 1))


def _smooth_noise(rng: np.random.Generator, size: int, cells: float) -> np.ndarray:
    """Smooth Gaussian noise with about ``cells`` features across the image.

    White noise on a coarse grid, interpolated to ``size`` pixels by a
    separable, truncated Gaussian kernel: cheaper than filtering a
    full-resolution noise image. Zero mean, unit standard deviation. Draws a
    number of values that depends on ``cells`` only, never on the domain.
    """
    n = int(math.ceil(cells)) + 4
    t = np.linspace(2.0, 2.0 + cells, size)
    grid = rng.standard_normal((n, n))
    field = _gauss_upsample(_gauss_upsample(grid, t).T, t).T
    field -= field.mean()
    return field / (field.std() + 1e-12)


def _gauss_upsample(grid: np.ndarray, t: np.ndarray, width: float = 0.8) -> np.ndarray:
    """Rows of ``grid`` interpolated at fractional row positions ``t``.

    The kernel is banded (six grid rows per output row), so it is applied
    as six weighted gathers rather than a dense matrix product: small dense
    products go through a multi-threaded BLAS whose start-up cost dominates
    at these sizes, badly so when the cores are busy with training.
    """
    base = np.floor(t).astype(np.intp)
    out = np.zeros((t.size, grid.shape[1]))
    for offset in range(-2, 4):
        rows = base + offset
        weight = np.exp(-0.5 * ((t - rows) / width) ** 2)
        out += weight[:, None] * grid[np.clip(rows, 0, grid.shape[0] - 1)]
    return out


def _fbm(rng: np.random.Generator, size: int, cells: float, *, octaves: int) -> np.ndarray:
    """Sum of smooth noise at ``octaves`` doubling frequencies, halving amplitudes."""
    field = sum(0.5**k * _smooth_noise(rng, size, cells * 2**k) for k in range(octaves))
    return field / (field.std() + 1e-12)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised line kernel of ``length`` pixels at ``angle`` (radians)."""
    half = max(1, int(math.ceil(length / 2.0)))
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    t = np.linspace(-length / 2.0, length / 2.0, max(2, int(4 * length)))
    rows = np.clip(np.round(half + t * math.sin(angle)).astype(int), 0, 2 * half)
    cols = np.clip(np.round(half + t * math.cos(angle)).astype(int), 0, 2 * half)
    np.add.at(kernel, (rows, cols), 1.0)
    return kernel / kernel.sum()


def _smoothstep(edge0: float, edge1: float, value: np.ndarray) -> np.ndarray:
    """0 at ``edge0``, 1 at ``edge1``, smooth in between (edges may be reversed)."""
    t = np.clip((value - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _uniform(rng: np.random.Generator, bounds: Range) -> float:
    # One draw mapped onto the range, so that domains with different ranges
    # consume the stream identically.
    return bounds[0] + (bounds[1] - bounds[0]) * rng.random()


def _log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
    return math.exp(math.log(low) + (math.log(high) - math.log(low)) * rng.random())


# ---------------------------------------------------------------------------
# Data set on disk
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PolypSetSpec:
    """What :func:`generate_polyp_dataset` writes: counts, image size, seed and test domains.

    Invalid values raise :class:`~pseudoseg.errors.UserError` on construction.
    """

    n_train: int = 600
    """Number of training images."""
    n_test: int = 80
    """Number of images per test domain."""
    size: int = 160
    """Image side in pixels (at least 32)."""
    seed: int = 0
    """Sample ``i`` of each split depends only on ``(seed, split, i)``."""
    domains: tuple[str, ...] = DEFAULT_DOMAINS
    """Test domains to write, names from :data:`DEFAULT_DOMAINS` (a single name or any sequence
    of names is stored as a tuple)."""

    def __post_init__(self) -> None:
        require_integer("n_train", self.n_train, minimum=1)
        require_integer("n_test", self.n_test, minimum=1)
        require_integer("size", self.size, minimum=32)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {self.seed!r}")
        domains = (self.domains,) if isinstance(self.domains, str) else tuple(self.domains)
        # The dataclass is frozen: normalising a field goes through object.__setattr__.
        object.__setattr__(self, "domains", domains)
        if not domains:
            raise UserError(f"no test domains given; known domains: {', '.join(DEFAULT_DOMAINS)}")
        if len(set(domains)) != len(domains):
            raise UserError(f"test domains are listed more than once: {', '.join(domains)}")
        for name in domains:
            polyp_domain(name)


def generate_polyp_dataset(
    out: str | os.PathLike,
    spec: PolypSetSpec = PolypSetSpec(),
    *,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Write a synthetic polyp data set in the PraNet folder layout.

    ::

        OUT/TrainDataset/images/train_00000.png   OUT/TrainDataset/masks/train_00000.png
        OUT/TestDataset/<domain>/images/<domain>_00000.png   (and masks/)
        OUT/dataset.json

    Images are RGB PNGs, masks single-channel PNGs with values 0 and 255; an
    image and its mask share the file name. The folder is built beside
    ``out`` under a temporary name and renamed into place when complete, so
    an interrupted run never leaves a half-written data set (with
    ``overwrite=True`` the old folder is replaced only at that point).

    Args:
        out: the folder to create.
        spec: the counts, image size, seed and test domains.
        overwrite: replace ``out`` if it exists and is not empty.
        progress: called as ``progress(done, total)`` after every sample.

    Returns:
        The summary also written to ``OUT/dataset.json``.
    """
    out = Path(out)
    with atomic_folder(out, overwrite=overwrite) as building:
        jobs: list[tuple[str, str, Path, int]] = [("train", "in_domain", building / "TrainDataset", i) for i in range(spec.n_train)]
        for name in spec.domains:
            jobs += [(f"test/{name}", name, building / "TestDataset" / name, i) for i in range(spec.n_test)]
        lesion_fraction: dict[str, list[float]] = {}
        for done, (split, domain, folder, index) in enumerate(jobs, start=1):
            image, mask = render_polyp_sample(sample_seed(int(spec.seed), split, index), spec.size, domain)
            stem = f"{'train' if split == 'train' else domain}_{index:05d}"
            write_bytes(folder / "images" / f"{stem}.png", _png_bytes(image))
            write_bytes(folder / "masks" / f"{stem}.png", _png_bytes(mask))
            lesion_fraction.setdefault(split, []).append(float(mask.mean() / 255.0))
            if progress is not None:
                progress(done, len(jobs))
        summary = {
            "generator": "pseudoseg.synth.polyp",
            "generator_version": GENERATOR_VERSION,
            "layout": "PraNet",
            "seed": int(spec.seed),
            "size": spec.size,
            "counts": {"train": spec.n_train, **{name: spec.n_test for name in spec.domains}},
            "domains": {name: asdict(polyp_domain(name)) for name in spec.domains},
            "mean_lesion_fraction": {
                ("train" if split == "train" else split.split("/", 1)[1]): round(float(np.mean(values)), 4)
                for split, values in lesion_fraction.items()
            },
        }
        write_json(building / "dataset.json", summary)
    return summary


def _png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # Level 1 is about 3x faster to write than the default 6 and only ~15 %
    # larger on these images; encoding otherwise costs a quarter of the time.
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()

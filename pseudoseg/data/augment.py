"""Batched, seeded data augmentation on the training device.

Random parameters are drawn for the *global* batch from one CPU generator
(whose state is checkpointed, so a resumed run draws the same numbers), then
each process applies its own slice. A run on several processes therefore sees
exactly the augmentations of a one-process run with the same global batch.

The transforms themselves run batched on the device (the GPU when there is
one), with no per-pixel Python work:

- geometry: the 8 flips/90-degree rotations of the square, and an optional
  shift-scale-rotate through ``affine_grid``/``grid_sample``; applied jointly to
  images and any aligned maps (masks, stored pseudo labels);
- photometry (the momentum method's strong view): brightness, contrast,
  per-channel colour shift and Gaussian noise, on images in [0, 1];
- the strong augmentation of weak-to-strong methods (FixMatch, UniMatch):
  colour jitter, random greyscale and Gaussian blur, each with a probability;
- CutMix: a box of each image replaced by the same box of a partner image.
  Boxes and partners are drawn for the global batch like everything else, but
  a partner is always an image of the same process's share (:meth:`CutMixDraw.select`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pseudoseg.config import AugmentConfig, CutMixConfig, StrongAugmentConfig


@dataclass(frozen=True)
class Geometry:
    dihedral: torch.Tensor  # [n] int64 in 0..7, on the CPU
    theta: torch.Tensor | None  # [n, 2, 3] affine matrices, or None

    def select(self, part: slice) -> Geometry:
        return Geometry(self.dihedral[part], None if self.theta is None else self.theta[part])


@dataclass(frozen=True)
class Photometry:
    gain: torch.Tensor  # [n] contrast
    bias: torch.Tensor  # [n] brightness
    shift: torch.Tensor  # [n, C] per-channel shift
    noise_seed: torch.Tensor  # [n] seeds for the noise, drawn even when unused

    def select(self, part: slice) -> Photometry:
        return Photometry(self.gain[part], self.bias[part], self.shift[part], self.noise_seed[part])


@dataclass(frozen=True)
class StrongPhotometry:
    """Per image: whether each transform applies, and its parameters (drawn even when unused)."""

    jitter: torch.Tensor  # [n] bool
    brightness: torch.Tensor  # [n] factors
    contrast: torch.Tensor  # [n] factors
    saturation: torch.Tensor  # [n] factors
    hue: torch.Tensor  # [n] fractions of a turn
    greyscale: torch.Tensor  # [n] bool
    blur: torch.Tensor  # [n] bool
    sigma: torch.Tensor  # [n] blur standard deviation in pixels

    def select(self, part: slice) -> StrongPhotometry:
        return StrongPhotometry(*(getattr(self, name)[part] for name in self.__dataclass_fields__))


@dataclass(frozen=True)
class CutMix:
    """How a view was CutMix-mixed: each image's box and the image it came from (a row of the same
    batch, or the same row of a second batch)."""

    box: torch.Tensor
    """``bool [u, 1, H, W]``: True inside the pasted box (all False where the image has none)."""
    partner: torch.Tensor | None
    """``long [u]``: the row of the batch whose pixels fill the box; None: the same row of a
    second batch (:meth:`apply`'s ``partner``)."""

    def apply(self, x: torch.Tensor, partner: torch.Tensor | None = None) -> torch.Tensor:
        """Mix ``x`` (``[u, K, H, W]``: images, targets, confidence masks) exactly as the view was mixed;
        ``partner``: the second batch's ``x``, when the boxes come from one."""
        if self.partner is None:
            if partner is None:
                raise ValueError("this view was mixed with a second batch: pass its values as partner")
            return torch.where(self.box, partner, x)
        return torch.where(self.box, x[self.partner], x)

    def from_second_batch(self) -> CutMix:
        """The same boxes, filled from the same rows of a second batch."""
        return CutMix(self.box, None)


@dataclass(frozen=True)
class CutMixDraw:
    """CutMix parameters of a global batch, as fractions of the image (the resolution comes later)."""

    apply: torch.Tensor  # [n] bool
    area: torch.Tensor  # [n] fraction of the image
    aspect: torch.Tensor  # [n] height / width
    position: torch.Tensor  # [n, 2] (row, column) in [0, 1): where among the valid positions
    order: torch.Tensor  # [n] random keys that pair the images

    def select(self, part: slice) -> CutMixDraw:
        return CutMixDraw(self.apply[part], self.area[part], self.aspect[part], self.position[part], self.order[part])

    def boxes(self, height: int, width: int, device: torch.device) -> CutMix:
        """The boxes and partners of these images (one process's share, after :meth:`select`).

        Each image's partner is the next one in the random order of the share's keys
        (a cycle: no image is its own partner unless the share holds one image). The
        partner is taken within the share, not the global batch, because the box is
        filled with the partner's pixels and its target with the partner's pseudo label,
        which only the process holding the partner has: mixing across processes would
        cost a gather of images and predictions every step. The draws themselves are
        the global batch's, so the generator advances alike for any number of processes.
        """
        n = len(self.apply)
        order = torch.argsort(self.order)
        partner = torch.empty(n, dtype=torch.long)
        partner[order] = order.roll(-1)
        pixels = self.area * height * width
        box_h = torch.sqrt(pixels * self.aspect).floor().clamp(0, height).long()
        box_w = torch.sqrt(pixels / self.aspect).floor().clamp(0, width).long()
        box_h, box_w = box_h * self.apply, box_w * self.apply
        top = (self.position[:, 0] * (height - box_h + 1)).floor().long()
        left = (self.position[:, 1] * (width - box_w + 1)).floor().long()
        rows = torch.arange(height).view(1, -1, 1)
        cols = torch.arange(width).view(1, 1, -1)
        inside = (rows >= top.view(-1, 1, 1)) & (rows < (top + box_h).view(-1, 1, 1)) & (cols >= left.view(-1, 1, 1)) & (cols < (left + box_w).view(-1, 1, 1))
        return CutMix(inside.unsqueeze(1).to(device, non_blocking=True), partner.to(device, non_blocking=True))


class BatchAugmenter:
    """Draws augmentation parameters from its own generator and applies them."""

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        self.generator = torch.Generator().manual_seed(seed)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def _uniform(self, *shape: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(*shape, generator=self.generator) * (high - low) + low

    def sample_geometry(self, n: int, *, affine: bool) -> Geometry:
        cfg = self.config
        choices = (4 if cfg.rot90 else 1) * (2 if cfg.flips else 1)
        dihedral = torch.randint(choices, (n,), generator=self.generator)
        if not cfg.rot90:  # only flips: map 0/1 onto identity / horizontal flip
            dihedral = dihedral * 4
        theta = None
        if affine:
            angle = self._uniform(n, low=-1.0, high=1.0) * math.radians(cfg.rotate_deg)
            scale = self._uniform(n, low=1.0 - cfg.scale, high=1.0 + cfg.scale)
            shift = self._uniform(n, 2, low=-2.0 * cfg.shift, high=2.0 * cfg.shift)  # grid spans [-1, 1]
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
        return Geometry(dihedral, theta)

    def sample_photometry(self, n: int, channels: int) -> Photometry:
        cfg = self.config
        return Photometry(
            gain=self._uniform(n, low=1.0 - cfg.contrast, high=1.0 + cfg.contrast),
            bias=self._uniform(n, low=-cfg.brightness, high=cfg.brightness),
            shift=self._uniform(n, channels, low=-cfg.color_shift, high=cfg.color_shift),
            noise_seed=torch.randint(2**62, (n,), generator=self.generator),
        )

    def sample_strong(self, n: int) -> StrongPhotometry:
        """The strong augmentation's parameters for ``n`` images (the same draws whatever applies)."""
        cfg: StrongAugmentConfig = self.config.strong

        def chance(p: float) -> torch.Tensor:
            return torch.rand(n, generator=self.generator) < p

        return StrongPhotometry(
            jitter=chance(cfg.jitter_probability),
            brightness=self._uniform(n, low=1.0 - cfg.brightness, high=1.0 + cfg.brightness),
            contrast=self._uniform(n, low=1.0 - cfg.contrast, high=1.0 + cfg.contrast),
            saturation=self._uniform(n, low=1.0 - cfg.saturation, high=1.0 + cfg.saturation),
            hue=self._uniform(n, low=-cfg.hue, high=cfg.hue),
            greyscale=chance(cfg.greyscale_probability),
            blur=chance(cfg.blur_probability),
            sigma=self._uniform(n, low=cfg.blur_sigma[0], high=cfg.blur_sigma[1]),
        )

    def sample_cutmix(self, n: int) -> CutMixDraw:
        """CutMix parameters for ``n`` images."""
        cfg: CutMixConfig = self.config.cutmix
        return CutMixDraw(
            apply=torch.rand(n, generator=self.generator) < cfg.probability,
            area=self._uniform(n, low=cfg.area[0], high=cfg.area[1]),
            aspect=self._uniform(n, low=cfg.aspect[0], high=cfg.aspect[1]),
            position=torch.rand(n, 2, generator=self.generator),
            order=torch.rand(n, generator=self.generator),
        )

    def strong(self, images: torch.Tensor, params: StrongPhotometry, *, colour: bool) -> torch.Tensor:
        """Strong view of ``images`` (``[B, C, H, W]`` in [0, 1]): colour jitter, greyscale, blur.

        ``colour``: the channels are RGB (saturation, hue and greyscale apply); otherwise
        they are slices or modalities, and brightness and contrast act on all alike.
        """
        cfg: StrongAugmentConfig = self.config.strong
        device = images.device
        colour = colour and images.shape[1] == 3

        def per_image(values: torch.Tensor, applies: torch.Tensor) -> torch.Tensor:
            # the factor where the transform applies, 1 (identity) elsewhere
            return torch.where(applies, values, torch.ones_like(values)).to(device).view(-1, 1, 1, 1)

        jitter = params.jitter
        out = (images * per_image(params.brightness, jitter)).clamp(0.0, 1.0)
        grey_mean = (_grey(out) if colour else out).mean(dim=(1, 2, 3), keepdim=True)
        out = _blend(out, grey_mean, per_image(params.contrast, jitter))
        if colour:
            out = _blend(out, _grey(out), per_image(params.saturation, jitter))
            if cfg.hue > 0 and bool(jitter.any()):  # images without jitter keep their exact values
                out = torch.where(jitter.to(device).view(-1, 1, 1, 1), _rotate_hue(out, params.hue.to(device)), out)
            grey = params.greyscale.to(device).view(-1, 1, 1, 1)
            out = torch.where(grey, _grey(out).expand_as(out), out)
        if bool(params.blur.any()):  # parameters live on the CPU: no device sync
            out = _gaussian_blur(out, torch.where(params.blur, params.sigma, torch.zeros_like(params.sigma)), radius=math.ceil(3 * cfg.blur_sigma[1]))
        return out

    def photometric(self, images: torch.Tensor, params: Photometry) -> torch.Tensor:
        """Strong view of ``images`` ([B, C, H, W] in [0, 1])."""
        device = images.device
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        out = (images - mean) * params.gain.to(device).view(-1, 1, 1, 1) + mean
        out = out + params.bias.to(device).view(-1, 1, 1, 1) + params.shift.to(device)[:, : images.shape[1], None, None]
        if self.config.noise_std > 0:
            # drawn on the device, one generator per image seeded from the global draw, so an
            # image gets the same noise whichever process holds it
            generator = torch.Generator(device=device)
            noise = torch.stack(
                [torch.randn(images.shape[1:], generator=generator.manual_seed(int(s)), device=device) for s in params.noise_seed.tolist()]
            )
            out = out + self.config.noise_std * noise
        return out.clamp_(0.0, 1.0)


def apply_geometry(images: torch.Tensor, maps: list[torch.Tensor], params: Geometry) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply the same geometric transform to ``images`` and every aligned map.

    Maps are float tensors ([B, 1, H, W]); hard masks stay binary by being
    thresholded after the affine resampling.
    """
    tensors = [images, *maps]
    if params.theta is not None:
        grid = F.affine_grid(params.theta.to(images.device, images.dtype), list(images.shape), align_corners=False)
        resampled = []
        for tensor in tensors:
            warped = F.grid_sample(tensor, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            resampled.append(warped)
        tensors = resampled
    if bool((params.dihedral != 0).any()):
        tensors = [_dihedral(tensor, params.dihedral) for tensor in tensors]
    return tensors[0], tensors[1:]


def _dihedral(x: torch.Tensor, dihedral: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    for code in dihedral.unique().tolist():  # at most 8 groups; indices live on the CPU
        if code == 0:
            continue
        index = (dihedral == code).nonzero().flatten().to(x.device)
        part = x.index_select(0, index)
        if code >= 4:
            part = part.flip(-1)
        out.index_copy_(0, index, torch.rot90(part, code % 4, dims=(-2, -1)))
    return out


_GREY = (0.299, 0.587, 0.114)
"""ITU-R 601 luma weights, as torchvision's greyscale."""


def _grey(images: torch.Tensor) -> torch.Tensor:
    """``[B, 1, H, W]`` luma of RGB images."""
    weights = torch.tensor(_GREY, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images * weights).sum(dim=1, keepdim=True)


def _blend(images: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """``factor * images + (1 - factor) * other``, clamped to [0, 1] (torchvision's blend)."""
    return (factor * images + (1.0 - factor) * other).clamp(0.0, 1.0)


# RGB -> YIQ; a hue shift is a rotation of the (I, Q) chroma plane
_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _rotate_hue(images: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate every image's chroma by ``turns`` (``[B]``, fractions of a full turn), keeping its luma."""
    to_yiq = torch.tensor(_YIQ, device=images.device, dtype=torch.float32)
    angle = turns.float() * (2.0 * math.pi)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    rotation = torch.stack([torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1), torch.stack([zero, sin, cos], 1)], 1)
    matrix = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # [B, 3, 3]
    out = torch.einsum("bij,bjhw->bihw", matrix.to(images.dtype), images)
    return out.clamp(0.0, 1.0)


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor, *, radius: int) -> torch.Tensor:
    """Blur each image with its own Gaussian (``sigma`` ``[B]`` in pixels, 0: unchanged), reflecting at the borders.

    Separable, as one grouped convolution per direction over all images and channels.
    """
    b, c, h, w = images.shape
    radius = max(1, min(radius, h - 1, w - 1))  # reflection needs a border smaller than the image
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    safe = sigma.float().clamp_min(1e-6).view(-1, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # sigma 0 -> the delta: the image unchanged
    kernel = kernel.to(images.device, images.dtype).repeat_interleave(c, dim=0)  # [B * C, k]
    flat = images.reshape(1, b * c, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)

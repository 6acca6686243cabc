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
- photometry (the "strong" view): brightness, contrast, per-channel colour
  shift and Gaussian noise, on images in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pseudoseg.config import AugmentConfig


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

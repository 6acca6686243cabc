"""How raw images become network inputs, recorded with every trained network.

The working size, normalisation, a volume's intensity normalisation (CT window
or per-case percentiles), slice context and the classes a network segments
(names and label values) travel in its weights' metadata, so prediction and
evaluation always preprocess exactly as training did and write the label
values the training masks used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pseudoseg.config import DataConfig
from pseudoseg.data.classes import ClassSet

if TYPE_CHECKING:
    from pseudoseg.data.volumes import VolumeCase

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    kind: str
    image_size: int
    normalize: str
    in_channels: int
    window: tuple[float, float]
    context: int
    intensity: str
    percentiles: tuple[float, float]
    classes: ClassSet = field(default_factory=ClassSet.binary)

    @classmethod
    def from_data(cls, data: DataConfig) -> Preprocessing:
        return cls(
            data.kind, data.image_size, data.normalize, data.in_channels, tuple(data.window), data.context, data.intensity, tuple(data.percentiles), data.class_set
        )

    @property
    def geometry(self) -> str:
        """``images`` or ``volumes`` (:mod:`pseudoseg.data.sources`): how this network's inputs are read and scored."""
        from pseudoseg.data.registry import geometry_of

        return geometry_of(self.kind)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "image_size": self.image_size,
            "normalize": self.normalize,
            "in_channels": self.in_channels,
            "window": list(self.window),
            "context": self.context,
            "intensity": self.intensity,
            "percentiles": list(self.percentiles),
            "classes": self.classes.to_json(),
        }

    @classmethod
    def from_json(cls, payload: dict[str, Any]) -> Preprocessing:
        # Networks saved before volumes could be normalised by percentiles carry
        # no "intensity": they were trained on the window (the percentiles are then
        # unused); those saved before classes were recorded segment one class.
        return cls(
            payload["kind"],
            payload["image_size"],
            payload["normalize"],
            payload["in_channels"],
            tuple(payload["window"]),
            payload["context"],
            payload.get("intensity", "window"),
            tuple(payload.get("percentiles", DataConfig.model_fields["percentiles"].default)),
            ClassSet.from_json(payload.get("classes")),
        )

    def volume_slices(self, case: VolumeCase, *, with_labels: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """A case's slices as this network takes them (see :func:`pseudoseg.data.volumes.case_slices`)."""
        from pseudoseg.data.volumes import SliceSettings, case_slices

        settings = SliceSettings(self.window, self.intensity, self.percentiles, self.image_size, self.context, self.classes)
        return case_slices(case, settings, with_labels=with_labels)


class InputNormalizer:
    """uint8 records -> float network input, on the device."""

    def __init__(self, kind: str, channels: int, device: torch.device) -> None:
        if kind == "imagenet" and channels == 3:
            mean, std = _IMAGENET_MEAN, _IMAGENET_STD
        else:  # "unit": [0, 1] -> [-1, 1]
            mean, std = (0.5,) * channels, (0.5,) * channels
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.device = device

    def to_unit(self, records: np.ndarray) -> torch.Tensor:
        """uint8 [B, C, H, W] -> float in [0, 1] on the device."""
        return torch.from_numpy(np.ascontiguousarray(records)).to(self.device, non_blocking=True).float().div_(255.0)

    def __call__(self, unit: torch.Tensor) -> torch.Tensor:
        return (unit - self.mean) / self.std

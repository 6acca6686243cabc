"""Trained models for inference: loading, preprocessing, probabilities.

A :class:`Predictor` is one network, or the mean of several (an ensemble of
ATSO's last round models), together with the preprocessing it was trained
with (working size, normalisation, intensity normalisation and slice context) and
the classes it segments (``predictor.preprocessing.classes``), read from the
weights' metadata. An ensemble averages the members' probabilities (sigmoid
for one class, softmax over the C + 1 channels for several), never logits.
It can be loaded from a weights file (``best_*.safetensors``), from a run
directory (its released model, named in ``<run_dir>/model.json``), from
such a ``model.json``, or from a model ``pseudoseg export`` wrote
(``<name>.onnx`` and its ``<name>.json``, run by ONNX Runtime). Test-time
augmentation (mirrored views) and largest-component post-processing are
options of a predictor (docs/deployment.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pseudoseg.data.preprocessing import InputNormalizer, Preprocessing
from pseudoseg.engine.checkpoint import load_network
from pseudoseg.engine.device import autocast, resolve_amp, resolve_device
from pseudoseg.engine import labels
from pseudoseg.errors import UserError
from pseudoseg.fileio import write_json


def write_model_manifest(run_dir: Path, released: str, networks: dict[str, Path], members: list[Path] | None = None) -> Path:
    """``<run_dir>/model.json``: which weights a run releases (paths relative to the run)."""
    run_dir = Path(run_dir)
    payload = {
        "released": released,
        "networks": {name: str(Path(path).resolve().relative_to(run_dir.resolve())) for name, path in networks.items()},
        "ensemble": [str(Path(p).resolve().relative_to(run_dir.resolve())) for p in members] if members else None,
    }
    path = run_dir / "model.json"
    write_json(path, payload)
    return path


class InferenceModel(nn.Module):
    """What a trained model computes from images scaled to [0, 1]: the input normalisation, the
    network (or the mean of an ensemble's members' probabilities) and the activation (sigmoid for
    one class, softmax over the C + 1 channels for several). ``pseudoseg export`` writes this module."""

    def __init__(self, networks: list[nn.Module], normalizer: InputNormalizer) -> None:
        super().__init__()
        self.members = nn.ModuleList(networks)
        self.register_buffer("mean", normalizer.mean.clone())
        self.register_buffer("std", normalizer.std.clone())

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        inputs = (unit - self.mean) / self.std
        probs = [labels.probabilities(network(inputs)) for network in self.members]
        return torch.stack(probs).mean(0) if len(probs) > 1 else probs[0]


def flip_views(spatial_dims: int) -> list[tuple[int, ...]]:
    """The axes of every mirrored view of test-time augmentation: none, each in-plane axis, both."""
    axes = [2 + axis for axis in range(spatial_dims)]
    return [tuple(axis for bit, axis in enumerate(axes) if view >> bit & 1) for view in range(2 ** len(axes))]


def keep_largest_components(index: torch.Tensor, classes: int) -> torch.Tensor:
    """Class indices ``[*spatial]`` (an image or a volume) keeping, for each class on its own,
    only its largest connected component (full connectivity); the rest becomes background."""
    from monai.transforms import KeepLargestConnectedComponent

    transform = KeepLargestConnectedComponent(applied_labels=list(range(1, classes + 1)), independent=True)
    return torch.as_tensor(transform(index[None]))[0]


@dataclass(frozen=True)
class PredictionOptions:
    """What a :class:`Predictor` does beyond one forward pass (``--tta``, ``--largest-component``)."""

    tta: bool = False
    """Average the probabilities of the image and its mirrored views (every combination of the
    in-plane flips; a volume's slices are flipped in-plane) after flipping them back."""
    largest_component: bool = False
    """Keep each class's largest connected component in the label maps (:meth:`Predictor.labels`),
    in 2-D for images and in 3-D for volumes."""


class Predictor:
    """Probabilities and label maps of a trained model, refined as ``options`` say."""

    def __init__(
        self,
        networks: list[nn.Module],
        preprocessing: Preprocessing,
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        name: str = "model",
        options: PredictionOptions = PredictionOptions(),
    ) -> None:
        self._settings(preprocessing, device, amp_dtype, name, options)
        self.model = InferenceModel(networks, self.normalizer).to(device).eval()

    def _settings(self, preprocessing: Preprocessing, device: torch.device, amp_dtype: torch.dtype | None, name: str, options: PredictionOptions) -> None:
        self.preprocessing = preprocessing
        self.device = device
        self.amp_dtype = amp_dtype
        self.name = name
        self.tta = options.tta
        self.largest_component = options.largest_component
        self.normalizer = InputNormalizer(preprocessing.normalize, preprocessing.in_channels, device)

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", amp: str = "auto", network: str | None = None, options: PredictionOptions = PredictionOptions()) -> Predictor:
        """From a weights file, a ``model.json``, a run directory (``network``: which of its networks)
        or an exported ONNX model (``<name>.onnx`` with its ``<name>.json``)."""
        path = Path(path)
        if path.suffix == ".onnx":
            if network is not None:
                raise UserError(f"{path}: an exported model holds one network; --network does not apply")
            return OnnxPredictor.open(path, device=device, options=options)
        torch_device = resolve_device(device)
        amp_dtype = resolve_amp(amp, torch_device)
        if path.is_dir():
            path = path / "model.json"
            if not path.is_file():
                raise UserError(f"{path.parent}: not a finished pseudoseg run (no model.json); pass a weights file instead")
        if not path.exists():
            raise UserError(f"{path}: model not found")
        if path.suffix == ".json":
            try:
                manifest = json.loads(path.read_text())
                chosen = network or manifest["released"]
                if chosen == "ensemble" or (network is None and manifest.get("ensemble")):
                    files = [path.parent / member for member in manifest["ensemble"]]
                    chosen = "ensemble"
                else:
                    files = [path.parent / manifest["networks"][chosen]]
            except KeyError as exc:
                raise UserError(f"{path}: no network {exc.args[0]!r} in this model manifest") from None
            except (json.JSONDecodeError, TypeError):
                raise UserError(f"{path}: not a model manifest") from None
        else:
            files, chosen = [path], path.stem
        loaded = [load_network(file) for file in files]
        preprocessings = {json.dumps(meta.get("preprocessing"), sort_keys=True) for _, meta in loaded}
        if len(preprocessings) != 1 or "null" in preprocessings:
            raise UserError(f"{path}: weights without (or with differing) preprocessing metadata")
        preprocessing = Preprocessing.from_json(loaded[0][1]["preprocessing"])
        return cls([net for net, _ in loaded], preprocessing, device=torch_device, amp_dtype=amp_dtype, name=chosen, options=options)

    @torch.no_grad()
    def probabilities(self, records: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 records [B, C, S, S] at the working size -> probabilities [B, K, S, S] (float32).

        ``K`` is the class set's ``channels``: 1 (the foreground probability)
        for one class, C + 1 (background first) for several.
        """
        unit = self.normalizer.to_unit(records) if isinstance(records, np.ndarray) else records.to(self.device).float().div(255.0)
        if not self.tta:
            return self.forward(unit)
        views = flip_views(unit.dim() - 2)
        total = self.forward(unit)
        for axes in views[1:]:
            total += self.forward(unit.flip(axes)).flip(axes)
        return total / len(views)

    @torch.no_grad()
    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        """Probabilities (float32) of images in [0, 1] on the device."""
        with autocast(self.device, self.amp_dtype):
            return self.model(unit).float()

    def labels(self, prob: torch.Tensor, threshold: float) -> torch.Tensor:
        """Class indices ``long [B, *spatial]`` of probabilities ``[B, K, *spatial]`` (2-D or 3-D):
        ``>= threshold`` for one class, the argmax for several; with ``largest_component``, each
        class's largest connected component only."""
        index = labels.decide(prob, threshold)
        if not self.largest_component:
            return index
        classes = len(self.preprocessing.classes.names)
        return torch.stack([keep_largest_components(single, classes) for single in index])

    def kept_probabilities(self, prob: torch.Tensor, threshold: float) -> torch.Tensor:
        """One class: ``prob`` set to 0 outside the label map :meth:`labels` keeps (unchanged
        without ``largest_component``), for metrics computed from probabilities."""
        if not self.largest_component:
            return prob
        return prob * (self.labels(prob, threshold) == 1)[:, None]


class OnnxPredictor(Predictor):
    """A model exported by ``pseudoseg export``, run by ONNX Runtime.

    The ONNX graph is :class:`InferenceModel` (images in [0, 1] -> probabilities); the JSON
    beside it (:func:`pseudoseg.export.read_sidecar`) holds the preprocessing and the classes.
    """

    def __init__(self, session, preprocessing: Preprocessing, *, name: str, options: PredictionOptions) -> None:
        self._settings(preprocessing, torch.device("cpu"), None, name, options)
        self.session = session
        self.input_name = session.get_inputs()[0].name

    @classmethod
    def open(cls, path: Path, *, device: str, options: PredictionOptions) -> OnnxPredictor:
        from pseudoseg.export import open_onnx_session, read_sidecar

        if device not in ("auto", "cpu"):
            raise UserError(f"--device {device}: an exported ONNX model runs on the CPU here (ONNX Runtime's CPU provider)")
        sidecar = read_sidecar(path)
        return cls(open_onnx_session(path), Preprocessing.from_json(sidecar["preprocessing"]), name=path.stem, options=options)

    def forward(self, unit: torch.Tensor) -> torch.Tensor:
        (prob,) = self.session.run(None, {self.input_name: unit.cpu().numpy().astype(np.float32)})
        return torch.from_numpy(prob)

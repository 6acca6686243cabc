"""Trained models for inference: loading, preprocessing, probabilities.

A :class:`Predictor` is one network, or the mean of several (an ensemble of
ATSO's last round models), together with the preprocessing it was trained
with (working size, normalisation, intensity normalisation and slice context) and
the classes it segments (``predictor.preprocessing.classes``), read from the
weights' metadata. An ensemble averages the members' probabilities (sigmoid
for one class, softmax over the C + 1 channels for several), never logits.
It can be loaded from a weights file (``best_*.safetensors``), from a run
directory (its released model, named in ``<run_dir>/model.json``) or from
such a ``model.json``.
"""

from __future__ import annotations

import json
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


class Predictor:
    def __init__(self, networks: list[nn.Module], preprocessing: Preprocessing, *, device: torch.device, amp_dtype: torch.dtype | None, name: str = "model") -> None:
        self.networks = [network.to(device).eval() for network in networks]
        self.preprocessing = preprocessing
        self.device = device
        self.amp_dtype = amp_dtype
        self.name = name
        self.normalizer = InputNormalizer(preprocessing.normalize, preprocessing.in_channels, device)

    @classmethod
    def load(cls, path: Path, *, device: str = "auto", amp: str = "auto", network: str | None = None) -> Predictor:
        """From a weights file, a ``model.json`` or a run directory (``network``: which of its networks)."""
        path = Path(path)
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
        return cls([net for net, _ in loaded], preprocessing, device=torch_device, amp_dtype=amp_dtype, name=chosen)

    @torch.no_grad()
    def probabilities(self, records: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 records [B, C, S, S] at the working size -> probabilities [B, K, S, S] (float32).

        ``K`` is the class set's ``channels``: 1 (the foreground probability)
        for one class, C + 1 (background first) for several.
        """
        unit = self.normalizer.to_unit(records) if isinstance(records, np.ndarray) else records.to(self.device).float().div(255.0)
        inputs = self.normalizer(unit)
        with autocast(self.device, self.amp_dtype):
            probs = [labels.probabilities(network(inputs)) for network in self.networks]
        return torch.stack(probs).mean(0) if len(probs) > 1 else probs[0]

"""Load local weights into a network, safely.

Weights are read from safetensors files or from PyTorch files with
``torch.load(weights_only=True)``, which cannot execute code. Networks are never
pickled whole. :func:`pseudoseg.models.factory.export_encoder_weights` writes
such a file from a back-end's published ImageNet weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from pseudoseg.errors import UserError

# Prefixes under which encoders live in the supported networks (MONAI
# FlexibleUNet, segmentation-models-pytorch) and in common checkpoint formats.
_ENCODER_PREFIXES = ("encoder.", "backbone.", "module.encoder.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: cannot read weights ({exc.__class__.__name__}: {str(exc).splitlines()[0][:200]})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(model: nn.Module, path: Path, *, scope: str = "full") -> None:
    """Load ``path`` into ``model``: every tensor (``full``) or the encoder's (``encoder``).

    ``encoder`` accepts either a file of encoder weights alone (keys as in the
    encoder module) or a full network's weights, of which the encoder part is
    taken. Shapes must match; missing or unexpected keys are an error naming
    the file, so a checkpoint of another architecture is never half-loaded.
    """
    if scope == "encoder" and not Path(path).is_file():
        raise UserError(
            f"{path}: weights file not found; `pseudoseg weights export --out {path}` (with --model and --encoder) "
            "writes an encoder's ImageNet weights, once, on a machine with internet"
        )
    state = read_state_dict(path)
    if scope == "full":
        target: nn.Module = model
    else:
        target = encoder_of(model, path)
        own = set(target.state_dict())
        if not own & set(state):
            for prefix in _ENCODER_PREFIXES:
                stripped = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
                if own & set(stripped):
                    state = stripped
                    break
    load_state_checked(target, state, path, f"{scope} network")


def load_state_checked(target: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Load ``state`` (read from ``path``) into ``target`` if it fits exactly: the same keys, the same shapes.

    Otherwise a :class:`UserError` names the file and ``what`` it did not fit, and nothing is loaded.
    """
    expected = target.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise UserError(f"{path}: weights do not fit this {what} ({len(missing)} missing, {len(unexpected)} unexpected keys; {detail})")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise UserError(f"{path}: weights do not fit this network: {key} has shape {tuple(tensor.shape)}, expected {tuple(expected[key].shape)}")
    target.load_state_dict(state)


def encoder_of(model: nn.Module, path: Path) -> nn.Module:
    for name in ("encoder", "backbone"):
        if isinstance(getattr(model, name, None), nn.Module):
            return getattr(model, name)
    raise UserError(f"{path}: model.weights_scope: encoder, but {type(model).__name__} has no separate encoder")

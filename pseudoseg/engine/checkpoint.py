"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

Two kinds of file:

- **weights** (``best_<network>.safetensors``): one network's state dict, with
  its architecture and provenance as JSON both in the safetensors header and in
  a ``.json`` file beside it (for people and scripts). This is what evaluation,
  prediction and the next stage of a method load.
- **training state** (``last.safetensors``): every tensor needed to resume a run
  exactly (network, optimiser moments, momentum copies, teachers, random
  generators) plus JSON metadata (step, data position, scheduler, best scores).

Nothing is pickled, so loading a checkpoint can never execute code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from pseudoseg.errors import UserError
from pseudoseg.fileio import atomic_path, write_json

_META_KEY = "pseudoseg"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` and JSON ``meta`` to one safetensors file, atomically."""
    cpu = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(cpu, str(tmp), metadata={_META_KEY: json.dumps(meta, default=str)})


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable checkpoint ({exc.__class__.__name__})") from None
    try:
        meta = json.loads(header.get(_META_KEY, "{}"))
    except json.JSONDecodeError:
        raise UserError(f"{path}: checkpoint metadata is corrupt") from None
    return tensors, meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{name}": tensor for name, tensor in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = prefix + "."
    return {name[len(start):]: tensor for name, tensor in tensors.items() if name.startswith(start)}


def flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimiser state dict into tensors and JSON-able metadata."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    for index, values in meta["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_weights(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """A released network: weights plus architecture/provenance (also as ``.json`` beside it)."""
    path = Path(path)
    save_tensors(path, model.state_dict(), meta)
    write_json(path.with_suffix(".json"), meta)


def load_weights_file(path: Path, *, expect: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a weights file.

    ``expect``: the architecture the caller needs; a file of another
    architecture is an error naming the file and the first differing key.
    """
    tensors, meta = load_tensors(path)
    if "architecture" not in meta:
        raise UserError(f"{path}: not a pseudoseg weights file (no architecture in its metadata)")
    arch = meta["architecture"]
    if expect is not None and arch != expect:
        key = sorted(k for k in set(arch) | set(expect) if arch.get(k) != expect.get(k))[0]
        raise UserError(
            f"{path}: checkpoint is for another architecture (model.{key}: checkpoint has {arch.get(key)!r}, "
            f"configuration has {expect.get(key)!r})"
        )
    return tensors, meta


def load_network(path: Path, *, expect: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the network stored in a weights file (``expect``: as :func:`load_weights_file`)."""
    from pseudoseg.config import ModelConfig
    from pseudoseg.models import build_model, describe_architecture

    tensors, meta = load_weights_file(path, expect=expect)
    arch = dict(meta["architecture"])
    in_channels = arch.pop("in_channels")
    out_channels = arch.pop("out_channels", 1)
    config = ModelConfig.model_validate(arch)
    model = build_model(config, in_channels, out_channels)
    assert describe_architecture(config, in_channels, out_channels) == meta["architecture"]
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise UserError(f"{path}: weights do not fit their recorded architecture ({str(exc).splitlines()[0]})") from None
    return model, meta

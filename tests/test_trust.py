"""A run never releases a model below its start, counts every mask it uses, and never tests on training data."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from pseudoseg.run_config import config_from_dict
from pseudoseg.data.splits import Split, make_split
from pseudoseg.engine.checkpoint import load_weights_file
from pseudoseg.engine.trainer import read_metrics, weights_digest
from pseudoseg.evaluation.volume_metrics import VolumeMetrics, volume_diagonal_mm
from pseudoseg.models import build_model
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config
from tests.test_errors import fails


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

    root = tmp_path_factory.mktemp("ct") / "data"
    generate_ct_dataset(root, CtSetSpec(n_train=8, n_test=1, shape=(16, 16, 8), seed=0))
    return root


def _digest(raw: dict, weights: Path) -> str:
    config = config_from_dict(raw)
    network = build_model(config.model, config.data.in_channels)
    network.load_state_dict(load_weights_file(weights)[0])
    return weights_digest(network)


def _rounds_config(run: Path, root: Path, **train) -> dict:
    return {
        "run_dir": str(run),
        "seed": 0,
        "data": {"kind": "volumes", "train": str(root), "normalize": "unit", "image_size": 16, "labeled_fraction": 0.5, "val_fraction": 0.5},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 40, "val_every": 10, "log_every": 10, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1, "loss": "dice_bce", "dice_smooth": 1.0, "optim": {"lr": 0.01}, **train},
        "eval": {"batch_size": 16},
        "method": {"name": "atso", "rounds": 2, "round_steps": 4},
    }


def test_a_round_that_only_gets_worse_releases_its_start(tiny_polyps: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    # fine-tuning at 10 000 x the learning rate wrecks every round's network from its first step
    raw = {
        "run_dir": str(run),
        "seed": 0,
        "data": {"train": str(tiny_polyps / "TrainDataset"), "image_size": 32, "labeled_fraction": 0.5},
        "model": {"name": "unet", "channels": [8, 16, 32], "num_res_units": 1},
        "train": {"steps": 40, "val_every": 10, "log_every": 10, "batch_size": 8, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1, "loss": "dice_bce", "optim": {"lr": 0.003}, "finetune": {"lr_factor": 1e4}},
        "eval": {"batch_size": 16},
        "method": {"name": "atso", "rounds": 2, "round_steps": 4},
    }
    logged: list[str] = []
    result = train(config_from_dict(raw), show_progress=False, log=lambda line: logged.append(str(line)))
    m0 = run / "round_0" / "best_ema.safetensors"  # the labeled-only model: its released network
    for round_ in (1, 2):
        done = json.loads((run / f"round_{round_}" / "done.json").read_text())
        assert done["best"]["raw"]["step"] == 0 and done["best"]["raw"]["start"] is True
        assert done["describe"]["start"] == "round_0/best_ema.safetensors" and done["describe"]["finetune"]["lr_factor"] == 1e4
        # the start was validated before any step, and that score is the stage's best
        first = read_metrics(run / f"round_{round_}" / "metrics.jsonl")[0]
        assert (first["kind"], first["step"]) == ("val", 0)
        assert first["start/dice"] == pytest.approx(done["best"]["raw"]["score"])
        later = [r["raw/dice"] for r in read_metrics(run / f"round_{round_}" / "metrics.jsonl") if r["kind"] == "val" and r["step"] > 0]
        assert later and all(not score > first["start/dice"] for score in later)
    released = run / json.loads((run / "model.json").read_text())["networks"]["last"]
    assert _digest(raw, released) == _digest(raw, m0)  # the run hands back M0 itself
    assert result.budget["kept_start"] is True
    # the released weights received M0's steps alone: the rounds' steps never reached them
    assert (result.budget["released_steps"], result.budget["released_stages"], result.budget["steps"]) == (40, ["round_0"], 48)
    assert json.loads((run / "budget.json").read_text())["kept_start"] is True
    assert sum("the released model is its stage's start" in line for line in logged) == 1
    # the rounds' own diagnostics read the kept start's validation score
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r.get("kept_start") for r in rounds] == [None, True, True]
    assert rounds[1]["val_dice"] == pytest.approx(rounds[0]["val_dice"]) == rounds[2]["val_dice"]


def test_fine_tuning_has_its_own_learning_rate_protocol(tiny_ct: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    finetune = {"lr_factor": 0.1, "warmup": 0.5, "schedule": "cosine"}
    raw = _rounds_config(run, tiny_ct, finetune=finetune, log_every=1)
    raw["method"]["round_steps"] = 4
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)
    supervised = [r["lr"] for r in read_metrics(run / "round_0" / "metrics.jsonl") if r["kind"] == "train"]
    assert set(supervised) == {0.01}  # the stage that starts fresh: optim's constant rate
    rates = [r["lr"] for r in read_metrics(run / "round_1" / "metrics.jsonl") if r["kind"] == "train"]
    # 0.1 x 0.01, warm-up over 2 of 4 steps, then cosine from the top
    assert rates == pytest.approx([0.0005, 0.001, 0.001, 0.001 * 0.5 * (1 + math.cos(math.pi / 2))])


def test_every_row_starts_from_the_supervised_rows_model(tiny_polyps: Path, tmp_path: Path) -> None:
    """One M0: the grid's semi-supervised rows start from (or must beat) the network the supervised row reports."""
    from pseudoseg.grid import GridRequest, run_grid

    config = write_config(
        tmp_path / "base.yaml",
        tiny_config(tmp_path, tiny_polyps, data={"image_size": 16}, train={"steps": 4, "val_every": 2, "num_threads": 1}, method={"name": "atso", "rounds": 1, "round_steps": 2}),
    )
    out = tmp_path / "grid"
    run_grid(GridRequest(config, out, seeds=(0,), family="rounds", variants=("tso", "atso", "atso-initial", "fixmatch", "mean-teacher")), log=lambda _: None)
    raw = tiny_config(tmp_path, tiny_polyps, data={"image_size": 16})
    supervised = out / "seed0" / "supervised"
    m0 = supervised / json.loads((supervised / "model.json").read_text())["networks"]["ema"]
    assert json.loads((supervised / "model.json").read_text())["released"] == "ema"
    expected = _digest(raw, m0)
    for row, stage in (("tso", "round_1"), ("atso", "round_1"), ("atso-initial", "round_1"), ("fixmatch", "student"), ("mean-teacher", "student")):
        done = json.loads((out / "seed0" / row / stage / "done.json").read_text())
        assert _digest(raw, out / "seed0" / row / done["describe"]["start"]) == expected, row
        if row != "atso-initial":  # which starts from M0's initial weights and must beat M0
            assert done["init_digest"] == expected, row
    grid = (out / "grid.md").read_text()
    assert "Masks (L+V)" in grid and "Kept start" in grid


def test_the_validation_set_is_carved_out_of_the_labeled_budget() -> None:
    ids = [f"case{i:03d}" for i in range(100)]
    carved = make_split(ids, labeled_fraction=0.2, val_fraction=0.2, seed=3, validation="from_labeled")
    assert carved.masks_used == {"labeled": 16, "validation": 4, "total": 20}
    assert len(carved.unlabeled) == 80
    extra = make_split(ids, labeled_fraction=0.2, val_fraction=0.1, seed=3, validation="extra")
    assert extra.masks_used == {"labeled": 18, "validation": 10, "total": 28}  # the authors' protocol
    assert carved.masks_line() == "masks used: 16 labeled + 4 validation = 20 (validation from the labeled budget)"
    # even the smallest budget keeps one mask for each part
    tiny = make_split(ids[:10], labeled_fraction=0.1, val_fraction=0.2, seed=0, validation="from_labeled")
    assert tiny.masks_used == {"labeled": 1, "validation": 1, "total": 2}
    # the manifest round-trips and says where V came from; older manifests drew it beside L
    payload = carved.to_json()
    assert payload["validation_from"] == "from_labeled" and payload["masks_used"]["total"] == 20
    assert Split.from_json(payload, origin="x").validation_from == "from_labeled"
    del payload["validation_from"]
    assert Split.from_json(payload, origin="x").validation_from == "extra"


def test_runs_use_the_labeled_budget_by_default_and_say_so(tiny_polyps: Path, tmp_path: Path) -> None:
    config = config_from_dict(tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 1, "val_every": 1}))
    assert (config.data.validation, config.data.val_fraction) == ("from_labeled", 0.2)
    logged: list[str] = []
    train(config, show_progress=False, log=lambda line: logged.append(str(line)))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    # 40 masked training images at 20 %: 8 masks in all, 2 of them validate
    assert split["masks_used"] == {"labeled": 6, "validation": 2, "total": 8}
    assert split["counts"]["unlabeled"] == 32 and split["validation_from"] == "from_labeled"
    assert "masks used: 6 labeled + 2 validation = 8 (validation from the labeled budget)" in logged[0]
    extra = config_from_dict(tiny_config(tmp_path, tiny_polyps, data={"validation": "extra"}))
    assert extra.data.val_fraction == 0.1


def test_hd95_penalises_a_missed_structure_with_the_diagonal() -> None:
    metrics = VolumeMetrics()
    target = np.zeros((10, 10, 4), dtype=bool)
    target[2:5, 2:5, 1:3] = True
    metrics.update("found", target.copy(), target, (1.0, 1.0, 2.5))
    metrics.update("missed", np.zeros_like(target), target, (1.0, 1.0, 2.5))
    summary = metrics.compute()
    diagonal = volume_diagonal_mm((10, 10, 4), (1.0, 1.0, 2.5))
    assert diagonal == pytest.approx(math.sqrt(10**2 + 10**2 + 10**2))
    assert summary["hd95_mm"] == 0.0 and summary["hd95_undefined"] == 1  # the miss left out
    assert summary["hd95_penalised_mm"] == pytest.approx(diagonal / 2)  # the miss counted
    classes = VolumeMetrics(["a", "b"])
    labels = np.zeros((10, 10, 4), dtype=np.uint8)
    labels[2:5, 2:5, 1:3] = 1
    labels[6:8, 6:8, 1:3] = 2
    prediction = np.where(labels == 2, 0, labels).astype(np.uint8)  # class b missed
    classes.update("case", prediction, labels, (1.0, 1.0, 2.5))
    scored = classes.compute()
    assert scored["hd95_penalised_mm/a"] == 0.0 and scored["hd95_penalised_mm/b"] == pytest.approx(diagonal)
    assert math.isnan(scored["hd95_mm/b"]) and scored["hd95_penalised_mm"] == pytest.approx(diagonal / 2)


def test_evaluate_refuses_a_decathlon_root_without_imagesTs(tiny_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    raw = _rounds_config(run, tiny_ct, steps=2, val_every=2)
    raw["method"] = {"name": "supervised"}
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)
    training_only = tmp_path / "decathlon"
    shutil.copytree(tiny_ct / "imagesTr", training_only / "imagesTr")
    shutil.copytree(tiny_ct / "labelsTr", training_only / "labelsTr")
    line = fails(capsys, "evaluate", str(run), "--test", str(training_only))
    assert line == f"pseudoseg: error: {training_only}: no imagesTs/ folder; a test set of volumes is imagesTs/ + labelsTs/ (imagesTr/ holds training cases)"


def test_a_test_set_that_shares_images_with_the_pool_is_refused(tiny_polyps: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_polyps, data)
    leaked = data / "TestDataset" / "in_domain"
    train_images = sorted((data / "TrainDataset" / "images").iterdir())
    for k, source in enumerate(train_images[:4]):  # copies under other names: found by content
        shutil.copy(source, leaked / "images" / f"leak{k}{source.suffix}")
        shutil.copy(data / "TrainDataset" / "masks" / source.name, leaked / "masks" / f"leak{k}{source.suffix}")
    config = write_config(tmp_path / "leak.yaml", tiny_config(tmp_path, data))
    line = fails(capsys, "train", "--config", str(config))
    assert line.startswith("pseudoseg: error: data.test: 4 test images are also in the training pool (same content): ")
    assert f"{leaked / 'images' / 'leak0'}" in line and "and 1 more" in line
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as exit_info:
        from pseudoseg.cli import main

        main(["data", "check", str(data / "TrainDataset"), "--test", str(data / "TestDataset")])
    assert exit_info.value.code != 0
    assert "4 test images are also in the training pool" in capsys.readouterr().out


def test_a_volume_test_set_that_shares_a_volume_with_the_pool_is_refused(tiny_ct: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_ct, data)
    source = sorted((data / "imagesTr").iterdir())[0]
    suffix = "".join(source.suffixes)
    shutil.copy(source, data / "imagesTs" / f"leak{suffix}")  # a training volume under another name: found by content
    shutil.copy(data / "labelsTr" / source.name, data / "labelsTs" / f"leak{suffix}")
    raw = _rounds_config(tmp_path / "run", data)
    raw["data"]["test"] = str(data)
    config = write_config(tmp_path / "leak.yaml", raw)
    line = fails(capsys, "train", "--config", str(config))
    assert line == f"pseudoseg: error: data.test: 1 test volume is also in the training pool (same content): {data / 'imagesTs' / f'leak{suffix}'} = {source}"
    assert not (tmp_path / "run").exists()  # refused before anything was written
    with pytest.raises(SystemExit) as exit_info:
        from pseudoseg.cli import main

        main(["data", "check", str(data)])
    assert exit_info.value.code != 0
    assert "1 test volume is also in the training pool (same content)" in capsys.readouterr().out

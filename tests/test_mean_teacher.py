"""Mean Teacher as its own method: the same weights and numbers as the momentum method's Mean Teacher settings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.checkpoint import load_tensors
from pseudoseg.errors import UserError
from pseudoseg.methods.mean_teacher import MeanTeacherConfig
from pseudoseg.methods.momentum import MomentumConfig, networks_coincide
from pseudoseg.runner import train


def run_config(run_dir: Path, dataset: Path, method: dict[str, Any]) -> dict[str, Any]:
    return {
        "run_dir": str(run_dir),
        "seed": 3,
        "data": {"train": str(dataset / "TrainDataset"), "test": str(dataset / "TestDataset"), "image_size": 32},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 8, "val_every": 4, "log_every": 2, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1},
        "eval": {"pranet_metrics": False},
        "method": method,
    }


# The labeled-only stage and the student stage, stated once for each method.
SHARED = {"momentum_unit": "step", "ema_schedule": "step", "teacher_steps": 6, "teacher_batch_size": 8, "teacher_stage_momentum": 0.9}
AS_MOMENTUM = {
    "name": "momentum",
    "mode": "online",
    "teacher": "momentum",
    "student_init": "teacher",
    "teacher_momentum": 0.8,
    "student_momentum": 0.8,
    "unlabeled_loss": "mse",
    "beta": 1.0,
    "beta_rampup_steps": 4,
    **SHARED,
}
AS_MEAN_TEACHER = {"name": "mean_teacher", "momentum": 0.8, "beta": 1.0, "rampup_steps": 4, **SHARED}


def quiet(config: dict[str, Any]):
    lines: list[str] = []
    result = train(config_from_dict(config), show_progress=False, log=lambda line: lines.append(str(line)))
    return result, lines


def records(stage: Path) -> list[dict[str, Any]]:
    keep = ("kind", "step", "ema/dice", "raw/dice", "pseudo/dice")
    return [{k: r[k] for k in keep if k in r} for r in map(json.loads, (stage / "metrics.jsonl").read_text().splitlines()) if r["kind"] == "val"]


def test_mean_teacher_equals_the_momentum_methods_mean_teacher_settings(tmp_path: Path, tiny_polyps: Path) -> None:
    assert networks_coincide(MomentumConfig(**{k: v for k, v in AS_MOMENTUM.items() if k != "name"}))
    old, old_lines = quiet(run_config(tmp_path / "momentum", tiny_polyps, AS_MOMENTUM))
    new, _ = quiet(run_config(tmp_path / "mean_teacher", tiny_polyps, AS_MEAN_TEACHER))
    assert sum("one network (Mean Teacher)" in line for line in old_lines) == 1
    assert (old.released, new.released) == ("ema", "ema") and set(old.networks) == set(new.networks) == {"ema", "raw"}
    # the same labeled-only stage, the same student: bit for bit
    for stage, network in (("teacher", "ema"), ("teacher", "raw"), ("student", "ema"), ("student", "raw")):
        a = load_tensors(tmp_path / "momentum" / stage / f"best_{network}.safetensors")[0]
        b = load_tensors(tmp_path / "mean_teacher" / stage / f"best_{network}.safetensors")[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{stage}/{network}"
    assert records(tmp_path / "momentum" / "student") == records(tmp_path / "mean_teacher" / "student")
    assert any("pseudo/dice" in r for r in records(tmp_path / "mean_teacher" / "student"))
    assert old.metrics["sets"] == new.metrics["sets"] and old.metrics["mean"] == new.metrics["mean"]
    assert new.metrics["method"] == "mean_teacher"
    assert old.budget["released_steps"] == new.budget["released_steps"] == 6 + 8


def test_a_fresh_mean_teacher_trains_no_labeled_stage(tmp_path: Path, tiny_polyps: Path) -> None:
    result, _ = quiet(run_config(tmp_path / "fresh", tiny_polyps, {"name": "mean_teacher", "student_init": "fresh", "rampup_steps": 0}))
    assert not (tmp_path / "fresh" / "teacher").exists()
    assert result.budget["steps"] == 8 and result.released == "ema"
    done = json.loads((tmp_path / "fresh" / "student" / "done.json").read_text())
    assert done["describe"]["rampup"] == 0 and done["describe"]["init_weights"] == "None"


def test_the_ramp_up_defaults_to_a_quarter_of_the_stage() -> None:
    assert MeanTeacherConfig().rampup(600) == 150
    assert MeanTeacherConfig(rampup_steps=0).rampup(600) == 0
    with pytest.raises(UserError, match=r"^configuration: method.teacher_run: a fresh start uses no labeled-only stage"):
        config_from_dict({"data": {"train": "x"}, "method": {"name": "mean_teacher", "student_init": "fresh", "teacher_run": "runs/s"}})


def test_steps_sets_the_stage_and_its_ramp_up(tmp_path: Path, tiny_polyps: Path) -> None:
    result, _ = quiet(run_config(tmp_path / "steps", tiny_polyps, {"name": "mean_teacher", "student_init": "fresh", "steps": 4}))
    done = json.loads((tmp_path / "steps" / "student" / "done.json").read_text())
    assert result.budget["steps"] == 4 and done["describe"]["rampup"] == 1  # a quarter of the 4-step stage, not of train.steps (8)


def test_mean_teacher_has_a_row_in_both_grids() -> None:
    from pseudoseg.methods.registry import grid_families

    rounds = config_from_dict({"data": {"train": "x", "kind": "volumes"}, "method": {"name": "atso", "rounds": 4, "round_steps": 150}})
    rows = {row.name: row for row in grid_families()["rounds"].rows_for(rounds)}
    section = rows["mean-teacher"].method({"name": "atso"}, Path("s"))
    assert section == {"name": "mean_teacher", "steps": 600}  # TSO's R x round_steps after M0
    assert MeanTeacherConfig(**{k: v for k, v in section.items() if k != "name"}).rampup(600) == 150
    momentum = config_from_dict({"data": {"train": "x"}, "train": {"steps": 600}, "method": {"name": "momentum"}})
    assert "mean-teacher" in {row.name for row in grid_families()["momentum"].rows_for(momentum)}

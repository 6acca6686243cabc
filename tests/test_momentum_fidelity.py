"""Method A as the paper describes it: distinct networks, one meaning of momentum, the
paper's fresh student, and the engine facts these rest on (stage seeds, budgets,
patience, per-image masked losses)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from pseudoseg.run_config import config_from_dict, load_config
from pseudoseg.engine.checkpoint import load_tensors
from pseudoseg.engine.ema import retained_share, update_momentum
from pseudoseg.engine.losses import SegmentationLoss, masked_mean_per_image
from pseudoseg.engine.trainer import Trainer, network_seed, stage_seed
from pseudoseg.errors import UserError
from pseudoseg.evaluation.report import GridTable, summarize_runs, write_grid_report
from pseudoseg.methods.momentum import MomentumConfig, networks_coincide, teacher_waits_for_student
from pseudoseg.runner import train
from tests.test_momentum import make_strategy
from tests.test_momentum import run_config as momentum_run_config

REPO = Path(__file__).resolve().parents[1]


def run_config(run_dir: Path, dataset: Path, *, method: dict[str, Any] | None = None, train_section: dict[str, Any] | None = None) -> dict[str, Any]:
    """test_momentum's tiny run, validated every 4 steps, with the momenta of the method's defaults."""
    config = momentum_run_config(run_dir, dataset, method=method, train_section={"val_every": 4, "log_every": 2, **(train_section or {})})
    if method is not None:
        config["method"] = {"name": "momentum", **method}
    return config


def quiet_train(config: dict[str, Any]):
    return train(config_from_dict(config), show_progress=False, log=lambda _: None)


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory: pytest.TempPathFactory, tiny_polyps: Path) -> Path:
    run_dir = tmp_path_factory.mktemp("fidelity") / "teacher"
    quiet_train(run_config(run_dir, tiny_polyps, train_section={"steps": 8}))
    return run_dir


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


# ------------------------------------------------------------------ momentum units


def test_per_epoch_momentum_applied_per_step_keeps_the_same_share_per_epoch() -> None:
    per_step = update_momentum(0.99, unit="epoch", schedule="step", steps_per_epoch=130)
    assert per_step == pytest.approx(0.99 ** (1 / 130))
    assert per_step**130 == pytest.approx(0.99)
    # and back: a per-step momentum applied once per epoch
    assert update_momentum(per_step, unit="step", schedule="epoch", steps_per_epoch=130) == pytest.approx(0.99)
    assert update_momentum(0.95, unit="step", schedule="step", steps_per_epoch=7) == 0.95
    assert update_momentum(0.95, unit="epoch", schedule="epoch", steps_per_epoch=7) == 0.95


def test_the_pranet_recipe_keeps_a_fifth_of_the_trained_teacher() -> None:
    """The authors update once per epoch (about 130 steps of 8 + 8 on the PraNet split)."""
    config = load_config(REPO / "configs" / "polyp_momentum_pranet.yaml")
    method = config.method
    assert (method.momentum_unit, method.ema_schedule, method.student_init) == ("epoch", "epoch", "fresh")
    unlabeled = round((1450 * 0.9) * 0.8)  # 10 % validation, 20 % of the rest labeled
    steps_per_epoch = unlabeled // config.train.unlabeled_batch_size
    assert 125 <= steps_per_epoch <= 135
    rate = update_momentum(method.teacher_momentum, unit=method.momentum_unit, schedule=method.ema_schedule, steps_per_epoch=steps_per_epoch)
    share = retained_share(rate, schedule=method.ema_schedule, steps=config.train.steps, steps_per_epoch=steps_per_epoch)
    assert share == pytest.approx(0.99 ** (config.train.steps // steps_per_epoch))
    assert share > 0.2
    # the same numbers read per step would wash the teacher out
    assert retained_share(0.99, schedule="step", steps=config.train.steps, steps_per_epoch=steps_per_epoch) < 1e-80


def test_measured_share_of_the_trained_teacher_matches_the_schedule(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    """With a student that stays where it started, teacher_end = s * teacher + (1 - s) * student."""
    steps = 12
    config = run_config(
        tmp_path / "share",
        tiny_polyps,
        method={
            "mode": "online",
            "teacher": "original",
            "teacher_momentum": 0.5,
            "momentum_unit": "epoch",
            "ema_schedule": "epoch",
            "teacher_follows": "from_start",
            "teacher_run": str(teacher_run),
        },
        train_section={"steps": steps, "val_every": steps, "optim": {"lr": 1e-12}},
    )
    quiet_train(config)
    split = json.loads((tmp_path / "share" / "split.json").read_text())
    per_epoch = max(1, split["counts"]["unlabeled"] // 4)
    expected = retained_share(0.5, schedule="epoch", steps=steps, steps_per_epoch=per_epoch)
    assert 0 < expected < 1
    teacher_start = weights(teacher_run / "supervised" / "best_raw.safetensors")
    teacher_end = load_tensors(tmp_path / "share" / "student" / "last.safetensors")[0]
    student = {k.removeprefix("student."): v for k, v in teacher_end.items() if k.startswith("student.")}
    name = next(key for key in teacher_start if key.endswith("conv.weight"))
    end = teacher_end[f"network.teacher.{name}"]
    measured = ((end - student[name]) / (teacher_start[name] - student[name])).median()
    assert float(measured) == pytest.approx(expected, abs=1e-4)


# ------------------------------------------------------------------ distinct networks


def test_default_online_teacher_and_student_copy_are_different_networks(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    assert not networks_coincide(MomentumConfig())
    quiet_train(run_config(tmp_path / "default", tiny_polyps, method={"teacher_run": str(teacher_run)}))
    stage = tmp_path / "default" / "student"
    teacher = load_tensors(stage / "last.safetensors")[0]
    ema = {k.removeprefix("network.ema."): v for k, v in teacher.items() if k.startswith("network.ema.")}
    online = {k.removeprefix("network.teacher."): v for k, v in teacher.items() if k.startswith("network.teacher.")}
    assert set(ema) == set(online)
    assert any(not torch.equal(ema[k], online[k]) for k in ema if ema[k].is_floating_point())
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    validation = [r for r in records if r["kind"] == "val" and r["step"] > 0]  # step 0: the start it must beat
    assert validation and all("teacher/dice" in r and "ema/dice" in r for r in validation)
    manifest = json.loads((tmp_path / "default" / "model.json").read_text())
    assert set(manifest["networks"]) == {"ema", "raw", "teacher"}


def test_fresh_student_starts_from_the_teacher_stages_initial_weights(tmp_path: Path, tiny_polyps: Path) -> None:
    """The paper's student shares its (ImageNet) start with the teacher; here: the run's seeded initialisation."""
    quiet_train(run_config(tmp_path / "run", tiny_polyps, method={"teacher_steps": 4}))
    teacher_done = json.loads((tmp_path / "run" / "teacher" / "done.json").read_text())
    student_done = json.loads((tmp_path / "run" / "student" / "done.json").read_text())
    assert teacher_done["init_digest"] == student_done["init_digest"]
    quiet_train(run_config(tmp_path / "random", tiny_polyps, method={"teacher_steps": 4, "student_init": "random"}))
    random_done = json.loads((tmp_path / "random" / "student" / "done.json").read_text())
    assert random_done["init_digest"] != teacher_done["init_digest"]


def test_teacher_init_with_equal_momenta_is_mean_teacher_and_says_so(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    method = {"student_init": "teacher", "teacher_momentum": 0.9, "student_momentum": 0.9, "teacher_run": str(teacher_run)}
    assert networks_coincide(MomentumConfig(**method))
    lines: list[str] = []
    train(config_from_dict(run_config(tmp_path / "mt", tiny_polyps, method=method)), show_progress=False, log=lambda line: lines.append(str(line)))
    assert sum("one network (Mean Teacher)" in line for line in lines) == 1
    stage = tmp_path / "mt" / "student"
    assert not (stage / "best_teacher.safetensors").exists()
    assert not any(key.startswith("network.teacher.") for key in load_tensors(stage / "last.safetensors")[0])
    records = [json.loads(line) for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert not any("teacher/dice" in r for r in records) and any("pseudo/dice" in r for r in records)
    assert set(json.loads((tmp_path / "mt" / "model.json").read_text())["networks"]) == {"ema", "raw"}
    # distinct momenta: two networks again
    assert not networks_coincide(MomentumConfig(**{**method, "teacher_momentum": 0.99}))


def test_a_random_student_in_an_online_run_is_warned_about(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    lines: list[str] = []
    config = run_config(tmp_path / "warn", tiny_polyps, method={"student_init": "random", "teacher_run": str(teacher_run)}, train_section={"steps": 4})
    train(config_from_dict(config), show_progress=False, log=lambda line: lines.append(str(line)))
    assert any(line.startswith("warning: method.student_init: random") for line in lines)
    assert any("the online teacher follows the student once the student's copy scores at least the teacher" in line for line in lines)


# ------------------------------------------------------------------ engine facts


def test_stage_seeds_differ_for_anagram_stage_names() -> None:
    assert stage_seed(0, "round_12") != stage_seed(0, "round_21")
    assert stage_seed(0, "teacher") != stage_seed(1, "teacher")
    assert stage_seed(3, "student") == stage_seed(3, "student")
    assert network_seed(0) == network_seed(0) != network_seed(1)
    assert 0 <= stage_seed(123, "x") < 2**31


def test_confidence_masked_losses_are_per_image_so_shards_average_to_the_batch() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 1, 8, 8, generator=generator)
    target = (torch.rand(4, 1, 8, 8, generator=generator) > 0.5).float()
    valid = torch.zeros(4, 1, 8, 8)
    valid[0, :, :2] = 1  # images count very different numbers of pixels
    valid[1:] = 1
    for loss in (SegmentationLoss("dice_bce"), lambda x, t, v: masked_mean_per_image((torch.sigmoid(x) - t) ** 2, v)):
        whole = loss(logits, target, valid)
        halves = (loss(logits[:2], target[:2], valid[:2]) + loss(logits[2:], target[2:], valid[2:])) / 2
        torch.testing.assert_close(whole, halves)


def test_patience_stops_a_stage_and_the_budget_records_it(tmp_path: Path, tiny_polyps: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scores = (1.0 / (2 + call) for call in itertools.count())  # every network's validation only gets worse

    def worsening(self: Trainer, indices: Any, predict: Any) -> dict[str, float]:
        value = next(scores)
        return {"dice": value, "iou": value, "collapse": None}

    monkeypatch.setattr(Trainer, "score", worsening)
    config = run_config(tmp_path / "patient", tiny_polyps, train_section={"steps": 40, "val_every": 2, "patience": 2})
    result = quiet_train(config)
    done = json.loads((tmp_path / "patient" / "supervised" / "done.json").read_text())
    assert (done["steps"], done["max_steps"], done["stopped_early"]) == (6, 40, True)
    assert {entry["step"] for entry in done["best"].values()} == {2}
    budget = json.loads((tmp_path / "patient" / "budget.json").read_text())
    assert budget["steps"] == 6 and budget["images"] == 6 * 4
    assert result.budget == budget


def test_budget_counts_a_reused_teacher_stage(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    result = quiet_train(run_config(tmp_path / "reuse", tiny_polyps, method={"teacher_run": str(teacher_run)}, train_section={"steps": 4}))
    stages = result.budget["stages"]
    assert stages["student"] == {"steps": 4, "max_steps": 4, "images": 4 * 8, "stopped_early": False, "lineage_steps": 4}
    teacher_stage = next(value for key, value in stages.items() if key.endswith("supervised"))
    assert teacher_stage["steps"] == 8 and teacher_stage["images"] == 8 * 4
    assert result.budget["steps"] == 12 and result.budget["images"] == 32 + 32
    # a fresh student's weights received its own steps only; the teacher's count in the total.
    # Where the student never beat M0 on validation, the run released M0 (its 8 steps)
    if result.budget["kept_start"]:
        assert result.budget["released_stages"][0].endswith("supervised") and result.budget["released_steps"] == 8
    else:
        assert (result.budget["released_steps"], result.budget["released_stages"]) == (4, ["student"])


def test_released_steps_of_a_student_started_from_the_teacher(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    result = quiet_train(run_config(tmp_path / "reuse", tiny_polyps, method={"teacher_run": str(teacher_run), "student_init": "teacher"}, train_section={"steps": 4}))
    assert result.budget["stages"]["student"]["lineage_steps"] == 8 + 4
    assert result.budget["steps"] == 12
    # the student's lineage, or M0's alone where the student kept it (no checkpoint beat it on V)
    assert result.budget["released_steps"] == (8 if result.budget["kept_start"] else 12)
    assert result.budget["released_stages"][0].endswith("supervised")
    assert (result.budget["released_stages"][-1] == "student") is not result.budget["kept_start"]


def test_grid_tables_carry_steps_and_images(tmp_path: Path) -> None:
    per_set = {"a": {"dice@0.5": 0.5, "n": 3}}
    summary = summarize_runs({"supervised": [per_set, per_set], "semi": [per_set, per_set]})
    budgets = {"supervised": [{"steps": 800, "images": 12800}] * 2, "semi": [{"steps": 1400, "images": 22400}, {"steps": 1500, "images": 24000}]}
    paths = write_grid_report(GridTable(summary, budgets=budgets), tmp_path)
    text = paths["md"].read_text()
    assert "| Steps | Images seen |" in text
    assert "| 800 | 12,800 |" in text and "| 1,400–1,500 | 22,400–24,000 |" in text
    assert json.loads(paths["json"].read_text())["budgets"]["semi"][1]["steps"] == 1500


# ------------------------------------------------------------------ a student that starts away from the teacher


@pytest.mark.parametrize(
    ("init", "follows", "gated"),
    [("fresh", "auto", True), ("random", "auto", True), ("teacher", "auto", False), ("teacher", "once_caught_up", True), ("fresh", "from_start", False)],
)
def test_which_online_teachers_wait_for_the_student(init: str, follows: str, gated: bool) -> None:
    assert teacher_waits_for_student(MomentumConfig(student_init=init, teacher_follows=follows, teacher_momentum=0.999)) is gated
    # one network (Mean Teacher) has no teacher to hold back
    assert not teacher_waits_for_student(MomentumConfig(student_init="teacher", teacher_follows="once_caught_up"))
    assert not teacher_waits_for_student(MomentumConfig(mode="offline", student_init=init, teacher_follows=follows))


def test_a_waiting_teacher_is_frozen_until_the_students_copy_catches_up(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="online", student_init="fresh", teacher_follows="auto", teacher_momentum=0.5)
    frozen = {k: v.clone() for k, v in strategy.teacher.state_dict().items()}
    with torch.no_grad():
        for parameter in strategy.context.student.parameters():
            parameter.add_(1.0)
    strategy.after_step(1, False)
    assert all(torch.equal(frozen[k], v) for k, v in strategy.teacher.state_dict().items())
    assert strategy.after_validation({"ema/dice": 0.4, "teacher/dice": 0.5}) == {"teacher/following": False}
    # a collapsed copy never counts as caught up, whatever its score
    assert strategy.after_validation({"ema/dice": 0.9, "teacher/dice": 0.5, "ema/collapse": "empty"}) == {"teacher/following": False}
    assert strategy.state_tensors()["following"].item() is False
    strategy.after_step(2, False)
    assert all(torch.equal(frozen[k], v) for k, v in strategy.teacher.state_dict().items())
    assert strategy.after_validation({"ema/dice": 0.5, "teacher/dice": 0.5}) == {"teacher/following": True}
    strategy.after_step(3, False)
    assert any(not torch.equal(frozen[k], v) for k, v in strategy.teacher.state_dict().items() if v.is_floating_point())
    # once following, always following; and the decision survives a resume
    assert strategy.after_validation({"ema/dice": 0.1, "teacher/dice": 0.9}) == {"teacher/following": True}
    resumed = make_strategy(tmp_path / "again", mode="online", student_init="fresh", teacher_follows="auto")
    assert resumed.following is False
    resumed.load_state_tensors(strategy.state_tensors())
    assert resumed.following is True


def test_given_labels_without_unlabeled_images_say_how_to_get_some(tmp_path: Path, tiny_polyps: Path) -> None:
    config = run_config(tmp_path / "all-labeled", tiny_polyps, method={})
    config["data"]["labels"] = "given"
    with pytest.raises(UserError, match=r"^data: momentum needs unlabeled images, and every image has a mask; add images without masks \(data.unlabeled\)"):
        quiet_train(config)


def test_a_released_copy_that_would_keep_its_start_is_warned_about(tmp_path: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    """0.99 per epoch over a stage of a few epochs leaves the student's copy mostly where it started."""
    lines: list[str] = []
    method = {"momentum_unit": "epoch", "student_momentum": 0.99, "teacher_momentum": 0.99, "teacher_run": str(teacher_run)}
    config = run_config(tmp_path / "slow", tiny_polyps, method=method, train_section={"steps": 4})
    train(config_from_dict(config), show_progress=False, log=lambda line: lines.append(str(line)))
    assert sum(line.startswith("warning: the student's momentum copy (the released model) keeps") for line in lines) == 1
    lines.clear()
    config = run_config(tmp_path / "fast", tiny_polyps, method={**method, "momentum_unit": "step", "student_momentum": 0.5}, train_section={"steps": 4})
    train(config_from_dict(config), show_progress=False, log=lambda line: lines.append(str(line)))
    assert not any("keeps" in line and "starting weights" in line for line in lines)


@pytest.mark.parametrize("recipe", ["polyp_momentum_synthetic.yaml", "polyp_momentum_cvc.yaml", "polyp_momentum_pranet.yaml", "polyp_momentum_lite.yaml"])
def test_no_shipped_polyp_recipe_is_mean_teacher_under_another_name(recipe: str) -> None:
    method = load_config(REPO / "configs" / recipe).method
    assert method.mode == "online" and not networks_coincide(method)


def test_the_pranet_recipe_runs_the_authors_teacher_schedule() -> None:
    """The paper's setting (an ImageNet encoder under a fresh student): the online teacher follows
    the student from the first epoch, not once the student has caught up."""
    method = load_config("polyp_momentum_pranet").method
    assert (method.mode, method.student_init, method.teacher_follows) == ("online", "fresh", "from_start")
    assert not teacher_waits_for_student(method)
    assert teacher_waits_for_student(method.model_copy(update={"teacher_follows": "auto"}))

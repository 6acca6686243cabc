"""The experiment grids: which variants they run, and how each differs from the base."""

from __future__ import annotations

from pathlib import Path

import pytest

from pseudoseg.run_config import config_from_dict
from pseudoseg.errors import UserError
from pseudoseg.grid import grid_variants
from pseudoseg.methods.momentum import networks_coincide

BASE = {
    "data": {"train": "pool", "test": "tests"},
    "train": {"steps": 600, "batch_size": 8, "unlabeled_batch_size": 8},
    "method": {"name": "momentum", "teacher_steps": 800, "teacher_batch_size": 16, "teacher_stage_momentum": 0.95},
}


def _variants(raw: dict, family: str) -> dict:
    base = config_from_dict(raw)
    teacher_run = Path("grid/seed0/supervised")
    return {name: config_from_dict(make(raw, teacher_run)) for name, make in grid_variants(base, family)}


def test_momentum_grid_is_the_papers_grid_plus_the_baselines() -> None:
    variants = _variants(BASE, "momentum")
    assert list(variants) == [
        "supervised",
        "offline-original",
        "offline-momentum",
        "online-original",
        "online-momentum",
        # added by the baselines' method files, after the family's own rows, in the order the methods are listed
        "bcp",
        "cps",
        "fixmatch",
        "mean-teacher",
        "unimatch",
        "supervised-100%",
    ]
    # the supervised variant is exactly the teacher stage the others reuse, trained until
    # validation stops improving
    supervised = variants["supervised"]
    assert supervised.method.name == "supervised" and supervised.method.ema_momentum == 0.95
    assert supervised.method.momentum_unit == "epoch"
    assert (supervised.train.steps, supervised.train.batch_size, supervised.train.patience) == (800, 16, 5)
    assert supervised.data.labeled_fraction == 0.2
    # the bound may run as many epochs on all labels as the labeled-only model ran on 20 %
    bound = variants["supervised-100%"]
    assert bound.data.labeled_fraction == 1.0
    assert (bound.train.steps, bound.train.patience) == (4000, 5)
    for name in ("offline-original", "offline-momentum", "online-original", "online-momentum"):
        method = variants[name].method
        mode, teacher = name.split("-")
        assert (method.name, method.mode, method.teacher) == ("momentum", mode, teacher)
        assert method.teacher_run == Path("grid/seed0/supervised")
        assert not networks_coincide(method)  # never Mean Teacher under another name
        assert variants[name].train.steps == 600 and variants[name].train.patience is None
    # Mean Teacher is its own method: the student starts from the seed's labeled-only model and
    # its teacher forgets at the rate of the base's student copy, ramped up over a quarter of the stage
    mean_teacher = variants["mean-teacher"].method
    base = config_from_dict(BASE).method
    assert (mean_teacher.name, mean_teacher.student_init, mean_teacher.beta, mean_teacher.rampup_steps) == ("mean_teacher", "labeled", 1.0, 150)
    assert (mean_teacher.momentum, mean_teacher.momentum_unit, mean_teacher.views) == (base.student_momentum, base.momentum_unit, base.views)
    assert (mean_teacher.teacher_steps, mean_teacher.teacher_batch_size, mean_teacher.teacher_stage_momentum) == (800, 16, 0.95)
    assert mean_teacher.teacher_run == Path("grid/seed0/supervised")
    # the one-stage baselines start from the seed's labeled-only model with the paper's defaults,
    # for the student stage's steps; FixMatch replaces the former weak-to-strong row
    for name in ("fixmatch", "unimatch", "cps", "bcp"):
        config = variants[name]
        assert (config.method.name, config.method.student_init, config.method.steps) == (name, "labeled", None)
        assert config.method.teacher_run == Path("grid/seed0/supervised") and config.train.steps == 600
    assert (variants["fixmatch"].method.threshold, variants["unimatch"].method.threshold, variants["cps"].method.cps_weight) == (0.95, 0.95, 1.5)


def test_grid_patience_is_an_option() -> None:
    base = config_from_dict(BASE)
    variants = dict(grid_variants(base, "momentum", patience=2))
    raw = variants["supervised-100%"](BASE, Path("grid/seed0/supervised"))
    assert raw["train"]["patience"] == 2


def _write_budget(run_dir: Path, steps: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "budget.json").write_text(f'{{"steps": {steps}, "images": {8 * steps}, "stages": {{}}}}')


def test_rounds_grid_holds_each_budget_against_tso(tmp_path: Path) -> None:
    raw = {**BASE, "data": {**BASE["data"], "kind": "volumes"}, "method": {"name": "atso", "teacher_steps": 400, "rounds": 4, "round_steps": 150}}
    teacher_run = tmp_path / "seed0" / "supervised"
    _write_budget(teacher_run, 350)  # M0 stopped early, at 350 of its 400 steps
    base = config_from_dict(raw)
    variants = {name: config_from_dict(make(raw, teacher_run)) for name, make in grid_variants(base, "rounds")}
    assert list(variants) == [
        "supervised",
        "tso",
        "atso",
        "atso-initial",
        "atso-continue",
        "atso-k3",
        "atso-ensemble",
        "atso-full",
        "atso-initial-full",
        "bcp",
        "cps",
        "fixmatch",
        "mean-teacher",
        "online-momentum",
        "unimatch",
        "supervised-100%",
    ]
    assert variants["supervised"].train.steps == 400
    assert variants["supervised-100%"].train.steps == 2000  # the same epochs on five times the cases
    # the supervised copy forgets per step: per epoch, a long epoch would leave it mostly its random start
    assert variants["supervised"].method.momentum_unit == "step" and variants["supervised"].method.ema_momentum == 0.95
    tso = variants["tso"].method
    assert (tso.name, tso.rounds, tso.round_steps, tso.final) == ("tso", 4, 150, "last")

    def settings(name: str) -> tuple:
        method = variants[name].method
        return (method.name, method.init, method.subsets, method.final, method.rounds, method.round_steps)

    # equal total steps (M0 + 4 x 150, as TSO): one row per start, K = 3, the ensemble
    assert settings("atso") == ("atso", "labeled", 2, "last", 4, 150)
    assert settings("atso-initial") == ("atso", "initial", 2, "last", 4, 150)
    assert settings("atso-continue") == ("atso", "continue", 2, "last", 4, 150)
    assert settings("atso-k3") == ("atso", "labeled", 3, "last", 4, 150)
    assert settings("atso-ensemble") == ("atso", "labeled", 2, "ensemble", 4, 150)
    # equal released-model steps (M0 + 600, as TSO's): from M0, every round trains 600 steps;
    # from the initial weights, M0's actual steps + 600
    assert settings("atso-full") == ("atso", "labeled", 2, "last", 4, 600)
    assert settings("atso-initial-full") == ("atso", "initial", 2, "last", 4, 350 + 600)
    # the baselines after the shared M0 spend TSO's R x round_steps
    assert [variants[name].method.steps for name in ("bcp", "cps", "fixmatch", "mean-teacher", "unimatch")] == [600, 600, 600, 600, 600]
    # online pseudo labeling as its paper: a fresh student taught by M0's momentum copy, which follows it
    momentum = variants["online-momentum"]
    assert (momentum.method.name, momentum.method.mode, momentum.method.teacher, momentum.method.student_init) == ("momentum", "online", "momentum", "fresh")
    assert momentum.train.steps == base.train.steps
    for name in variants:
        if not name.startswith("supervised"):
            assert variants[name].method.teacher_run == teacher_run


def test_rounds_grid_needs_the_supervised_budget_for_the_initial_full_row(tmp_path: Path) -> None:
    raw = {**BASE, "data": {**BASE["data"], "kind": "volumes"}, "method": {"name": "atso"}}
    make = dict(grid_variants(config_from_dict(raw), "rounds"))["atso-initial-full"]
    with pytest.raises(UserError, match="budget.json: not found"):
        make(raw, tmp_path / "seed0" / "supervised")


def test_family_must_match_the_base_method() -> None:
    with pytest.raises(UserError, match="--family rounds: the base configuration's method.name must be atso or tso"):
        grid_variants(config_from_dict(BASE), "rounds")
    with pytest.raises(UserError, match="--family: expected momentum or rounds"):
        grid_variants(config_from_dict(BASE), "other")


def test_the_family_defaults_to_the_base_methods_own() -> None:
    assert [name for name, _ in grid_variants(config_from_dict(BASE), None)] == [name for name, _ in grid_variants(config_from_dict(BASE), "momentum")]
    rounds = config_from_dict({**BASE, "method": {"name": "tso"}})
    assert [name for name, _ in grid_variants(rounds, None)][:2] == ["supervised", "tso"]
    with pytest.raises(UserError, match=r"^--family: method mean_teacher belongs to no grid family; choose one of: momentum \(momentum\); rounds \(atso, tso\)$"):
        grid_variants(config_from_dict({**BASE, "method": {"name": "mean_teacher"}}), None)

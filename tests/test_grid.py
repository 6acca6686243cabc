"""The experiment grids: which variants they run, and how each differs from the base."""

from __future__ import annotations

from pathlib import Path

import pytest

from pseudoseg.config import config_from_dict
from pseudoseg.errors import UserError
from pseudoseg.grid import grid_variants

BASE = {
    "data": {"train": "pool", "test": "tests"},
    "train": {"steps": 600, "batch_size": 8, "unlabeled_batch_size": 8},
    "method": {"name": "momentum", "teacher_steps": 800, "teacher_batch_size": 16, "teacher_stage_momentum": 0.95},
}


def _variants(raw: dict, family: str) -> dict:
    base = config_from_dict(raw)
    teacher_run = Path("grid/seed0/supervised")
    return {name: config_from_dict(make(raw, teacher_run)) for name, make in grid_variants(base, family)}


def test_momentum_grid_is_the_papers_grid_plus_a_weak_to_strong_baseline() -> None:
    variants = _variants(BASE, "momentum")
    assert list(variants) == ["supervised", "offline-original", "offline-momentum", "online-original", "online-momentum", "weak-to-strong", "supervised-100%"]
    # the supervised variant is exactly the teacher stage the others reuse
    supervised = variants["supervised"]
    assert supervised.method.name == "supervised" and supervised.method.ema_momentum == 0.95
    assert (supervised.train.steps, supervised.train.batch_size) == (800, 16)
    assert supervised.data.labeled_fraction == 0.2
    assert variants["supervised-100%"].data.labeled_fraction == 1.0
    assert variants["supervised-100%"].train.steps == 800
    for name in ("offline-original", "offline-momentum", "online-original", "online-momentum"):
        method = variants[name].method
        mode, teacher = name.split("-")
        assert (method.name, method.mode, method.teacher) == ("momentum", mode, teacher)
        assert method.teacher_run == Path("grid/seed0/supervised")
        assert variants[name].train.steps == 600
    weak_to_strong = variants["weak-to-strong"].method
    assert (weak_to_strong.mode, weak_to_strong.teacher_momentum, weak_to_strong.labels, weak_to_strong.confidence) == ("online", 0.0, "hard", 0.95)


def test_rounds_grid() -> None:
    raw = {**BASE, "data": {**BASE["data"], "kind": "volumes"}, "method": {"name": "atso", "teacher_steps": 400}}
    variants = _variants(raw, "rounds")
    assert list(variants) == ["supervised", "tso", "atso", "supervised-100%"]
    assert variants["supervised"].train.steps == 400
    assert variants["tso"].method.name == "tso" and variants["atso"].method.name == "atso"
    assert variants["atso"].method.teacher_run == Path("grid/seed0/supervised")


def test_family_must_match_the_base_method() -> None:
    with pytest.raises(UserError, match="--family rounds: the base configuration's method.name must be atso or tso"):
        grid_variants(config_from_dict(BASE), "rounds")
    with pytest.raises(UserError, match="--family: expected momentum or rounds"):
        grid_variants(config_from_dict(BASE), "other")

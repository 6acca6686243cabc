"""benchmarks/grid_table.py: one table from rows of several finished grids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import load_benchmark


def _script():
    return load_benchmark("grid_table")


def _grid(root: Path, rows: dict[str, dict[int, tuple[float, float, int, int]]]) -> Path:
    """A finished grid: runs.json and each run's report (dice, dice/a, released steps, steps)."""
    runs: dict[str, dict[str, str]] = {}
    for row, seeds in rows.items():
        for seed, (dice, dice_a, released, steps) in seeds.items():
            report = root / f"seed{seed}" / row / "report"
            report.mkdir(parents=True)
            budget = {"steps": steps, "released_steps": released, "kept_start": row != "supervised" and seed == 1}
            metrics = {"mean": {"dice": dice, "dice/a": dice_a, "hd95_mm": 10 * dice}, "budget": budget, "masks_used": {"labeled": 16, "validation": 4, "total": 20}}
            (report / "metrics.json").write_text(json.dumps(metrics))
            runs.setdefault(row, {})[str(seed)] = f"elsewhere/seed{seed}/{row}"  # as recorded where the grid ran
    (root / "runs.json").write_text(json.dumps({"family": "rounds", "seeds": [0, 1], "runs": runs}))
    return root


def test_rows_of_two_grids_in_one_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _grid(tmp_path / "a", {"supervised": {0: (0.70, 0.6, 100, 100), 1: (0.74, 0.8, 120, 120)}, "tso": {0: (0.71, 0.5, 150, 150), 1: (0.70, 0.5, 170, 170)}})
    b = _grid(tmp_path / "b", {"supervised": {0: (0.80, 0.9, 300, 300), 1: (0.82, 0.9, 300, 300)}})
    _script().main([f"{a}:supervised=M0", f"{a}:tso", f"{b}:supervised=bound", "--columns", "dice,dice/a,hd95_mm", "--reference", "M0"])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "| Row | Seeds | dice | dice/a | hd95_mm | Released steps | Steps | Masks (L+V) | Kept start |"
    assert out[2] == "| M0 | 0, 1 | 0.720 ± 0.028 | 0.700 ± 0.141 | 7.2 ± 0.3 | 100–120 | 100–120 | 16+4 | 0/2 |"  # sample std over the two seeds
    assert out[3] == "| tso | 0, 1 | 0.705 ± 0.007 | 0.500 ± 0.000 | 7.0 ± 0.1 | 150–170 | 150–170 | 16+4 | 1/2 |"  # seed 1 released its start
    assert out[4] == "| bound | 0, 1 | 0.810 ± 0.014 | 0.900 ± 0.000 | 8.1 ± 0.1 | 300 | 300 | 16+4 | 0/2 |"
    assert "- tso: 0: +0.010, 1: -0.040" in out and "- bound: 0: +0.100, 1: +0.080" in out


def test_every_finished_seed_counts_whichever_invocation_ran_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Seeds run as separate processes into one grid folder: the last one's runs.json lists its own seed only."""
    a = _grid(tmp_path / "a", {"supervised": {0: (0.70, 0.6, 100, 100), 1: (0.74, 0.8, 120, 120), 2: (0.72, 0.7, 110, 110)}})
    (a / "runs.json").write_text(json.dumps({"family": "rounds", "seeds": [2], "runs": {"supervised": {"2": "x"}}}))
    (a / "seed3" / "supervised").mkdir(parents=True)  # a run that has not finished: no report yet
    _script().main([f"{a}:supervised", "--columns", "dice"])
    assert capsys.readouterr().out.splitlines()[2].startswith("| supervised | 0, 1, 2 | 0.720 ± 0.020 |")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["{a}:atso"], "no finished run of row 'atso' (finished rows: supervised)"),
        (["{a}:supervised", "--columns", "iou"], "supervised, seed 0: no column iou"),
        (["{a}:supervised", "{a}:supervised"], "two rows share a label"),
        (["{a}"], "expected GRID:ROW"),
        (["{a}/missing:supervised"], "missing: no such grid folder"),
    ],
)
def test_bad_rows_are_one_line_errors(args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _grid(tmp_path / "a", {"supervised": {0: (0.7, 0.6, 100, 100)}})
    with pytest.raises(SystemExit) as exit_info:
        _script().main([arg.format(a=a) for arg in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_round_diagnostics_are_means_over_the_rounds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = _grid(tmp_path / "a", {"tso": {0: (0.7, 0.6, 100, 100), 1: (0.7, 0.6, 100, 100)}})
    for seed, gains in ((0, [0.1, -0.3]), (1, [0.2, 0.2])):  # round 0 (M0's labels) has no gain
        records = [{"round": 0, "gain": None, "pseudo_dice": 0.5}] + [{"round": r + 1, "gain": g, "pseudo_dice": 0.6} for r, g in enumerate(gains)]
        (a / f"seed{seed}" / "tso" / "rounds.jsonl").write_text("\n".join(map(json.dumps, records)) + "\n")
    _script().main([f"{a}:tso", "--columns", "rounds/gain,rounds/pseudo_dice"])
    assert capsys.readouterr().out.splitlines()[2] == "| tso | 0, 1 | 0.050 ± 0.212 | 0.600 ± 0.000 | 100 | 100 | 16+4 | 1/2 |"  # seeds: -0.1, +0.2


def test_online_teacher_share_reads_the_teacher_against_the_stage_start(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    share = load_benchmark("online_teacher_share")
    for seed, (start, teacher) in enumerate([(0.8, [0.78, 0.72]), (0.5, [0.5, 0.45])]):
        stage = tmp_path / f"seed{seed}" / "student"
        stage.mkdir(parents=True)
        records = [{"kind": "val", "step": 0, "start/dice": start}, {"kind": "train", "step": 50, "loss": 1.0}]
        records += [{"kind": "val", "step": 50 * (k + 1), "raw/dice": 0.1, "teacher/dice": dice} for k, dice in enumerate(teacher)]
        (stage / "metrics.jsonl").write_text("\n".join(json.dumps(record) for record in records) + "\n")
    assert share.main([str(tmp_path / "seed0"), str(tmp_path / "seed1")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("teacher stage 0.800; online teacher 50: 0.780 (98 %), 100: 0.720 (90 %); lowest 90 %")
    assert out[-1] == "lowest share over 2 run(s): 90 %"
    with pytest.raises(SystemExit, match="no online teacher validations"):
        (tmp_path / "seed0" / "student" / "metrics.jsonl").write_text(json.dumps({"kind": "val", "step": 0, "start/dice": 0.8}) + "\n")
        share.main([str(tmp_path / "seed0")])

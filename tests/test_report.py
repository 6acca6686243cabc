from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import METRIC_CONVENTIONS
from pseudoseg.evaluation.report import (
    mean_over_sets,
    render_table,
    summarize_runs,
    GridTable,
    write_grid_report,
    write_report,
)

PER_SET = {
    "Kvasir": {"dice@0.5": 0.90, "iou@0.5": 0.84, "meanDice": 0.88, "MAE": 0.03, "n": 100},
    "CVC-ClinicDB": {"dice@0.5": 0.92, "iou@0.5": 0.86, "meanDice": 0.90, "MAE": 0.01, "n": 62},
    "ETIS": {"dice@0.5": 0.60, "iou@0.5": 0.50, "meanDice": 0.59, "MAE": 0.05, "n": 196},
}


def test_mean_over_sets_is_unweighted_and_skips_counts() -> None:
    mean = mean_over_sets(PER_SET)
    assert list(mean) == ["dice@0.5", "iou@0.5", "meanDice", "MAE"]
    assert mean["dice@0.5"] == pytest.approx((0.90 + 0.92 + 0.60) / 3)  # not weighted by n
    assert mean["MAE"] == pytest.approx(0.03)
    assert "n" not in mean


def test_mean_over_sets_leaves_out_columns_missing_from_a_set_and_non_numbers() -> None:
    per_set = {"A": {"dice@0.5": 0.5, "Smeasure": 0.7, "note": "x", "ok": True}, "B": {"dice@0.5": 0.7}}
    assert mean_over_sets(per_set) == {"dice@0.5": pytest.approx(0.6)}
    # numpy scalars count as numbers
    assert mean_over_sets({"A": {"MAE": np.float64(0.25)}}) == {"MAE": 0.25}


def test_reserved_and_empty_set_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="reserved"):
        mean_over_sets({"Mean": {"dice@0.5": 1.0}})
    with pytest.raises(ValueError, match="no test sets"):
        mean_over_sets({})


def test_write_report_files(tmp_path: Path) -> None:
    per_set = {**PER_SET, "ETIS": {**PER_SET["ETIS"], "custom": float("nan")}}
    paths = write_report(per_set, tmp_path / "out" / "metrics", title="FPN, 10% labels", extra={"checkpoint": "best.safetensors"})
    assert set(paths) == {"json", "csv", "md"}
    assert all(p.is_file() and p.parent == tmp_path / "out" and p.stem == "metrics" for p in paths.values())
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary left behind

    report = json.loads(paths["json"].read_text())
    assert list(report) == ["title", "conventions", "sets", "mean", "checkpoint"]
    assert report["title"] == "FPN, 10% labels"
    assert report["conventions"]["dice@0.5"] == METRIC_CONVENTIONS["dice@0.5"]
    assert report["conventions"]["custom"] == "convention not recorded"
    assert report["sets"]["Kvasir"] == PER_SET["Kvasir"]
    assert report["sets"]["ETIS"]["custom"] is None  # NaN is written as null
    assert report["mean"]["meanDice"] == pytest.approx((0.88 + 0.90 + 0.59) / 3)
    assert "custom" not in report["mean"]

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["set"] for r in rows] == ["Kvasir", "CVC-ClinicDB", "ETIS", "mean"]
    assert rows[0]["n"] == "100" and rows[-1]["n"] == ""
    assert float(rows[-1]["iou@0.5"]) == pytest.approx((0.84 + 0.86 + 0.50) / 3)
    assert rows[2]["custom"] == ""

    md = paths["md"].read_text()
    assert md.startswith("# FPN, 10% labels")
    assert "| Kvasir | 0.900 | 0.840 | 0.880 | 0.030 |" in md
    assert "**0.807**" in md  # mean dice@0.5 = 0.8067
    assert "paper convention" in md and "PraNet convention" in md
    for column in ("dice@0.5", "iou@0.5", "meanDice", "MAE"):
        assert f"- `{column}` — {METRIC_CONVENTIONS[column]}." in md


def test_write_report_stem_and_errors(tmp_path: Path) -> None:
    paths = write_report(PER_SET, tmp_path / "kvasir_only")
    assert paths["md"].name == "kvasir_only.md"
    with pytest.raises(ValueError, match="overwrite"):
        write_report(PER_SET, tmp_path / "metrics", extra={"sets": {}})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not_a_dir"):
        write_report(PER_SET, blocker / "metrics")


def test_render_table_has_mean_row_with_three_decimals() -> None:
    table = render_table(PER_SET, title="test")
    assert table.row_count == 4
    assert [c.header for c in table.columns] == ["Test set", "dice@0.5", "iou@0.5", "meanDice", "MAE", "n"]
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "Mean" in text and "0.807" in text and "0.8067" not in text


RUNS = {
    "supervised": [
        {"Kvasir": {"dice@0.5": 0.80, "n": 100}, "ETIS": {"dice@0.5": 0.50, "n": 196}},
        {"Kvasir": {"dice@0.5": 0.82, "n": 100}, "ETIS": {"dice@0.5": 0.56, "n": 196}},
        {"Kvasir": {"dice@0.5": 0.84, "n": 100}, "ETIS": {"dice@0.5": 0.62, "n": 196}},
    ],
    "momentum": [
        {"Kvasir": {"dice@0.5": 0.88, "n": 100}, "ETIS": {"dice@0.5": 0.70, "n": 196}},
    ],
}


def test_summarize_runs_mean_and_sample_std() -> None:
    summary = summarize_runs(RUNS)
    sup = summary["supervised"]
    assert sup["n_seeds"] == 3
    assert sup["sets"]["Kvasir"]["dice@0.5"]["mean"] == pytest.approx(0.82)
    assert sup["sets"]["Kvasir"]["dice@0.5"]["std"] == pytest.approx(0.02)  # sample std (ddof 1)
    assert sup["sets"]["ETIS"]["dice@0.5"]["std"] == pytest.approx(0.06)
    assert "n" not in sup["sets"]["Kvasir"]
    # Mean row: per-seed means 0.65, 0.69, 0.73 -> mean 0.69, std 0.04.
    assert sup["mean"]["dice@0.5"]["mean"] == pytest.approx(0.69)
    assert sup["mean"]["dice@0.5"]["std"] == pytest.approx(0.04)
    # One seed: the sample std is undefined.
    assert math.isnan(summary["momentum"]["sets"]["Kvasir"]["dice@0.5"]["std"])
    # Population std on request.
    pop = summarize_runs(RUNS, ddof=0)["supervised"]["sets"]["Kvasir"]["dice@0.5"]["std"]
    assert pop == pytest.approx(math.sqrt(0.0008 / 3))


def test_summarize_runs_rejects_seeds_with_different_sets() -> None:
    with pytest.raises(ValueError, match="different test sets"):
        summarize_runs({"bad": [{"A": {"dice@0.5": 1.0}}, {"B": {"dice@0.5": 1.0}}]})
    with pytest.raises(ValueError, match="no runs"):
        summarize_runs({"empty": []})


def test_write_grid_report(tmp_path: Path) -> None:
    paths = write_grid_report(GridTable(summarize_runs(RUNS)), tmp_path, title="Label ratio 10%")
    assert {p.name for p in paths.values()} == {"grid.json", "grid.csv", "grid.md"}

    md = paths["md"].read_text()
    assert "| Configuration | Seeds | Kvasir | ETIS | Mean |" in md
    assert "| supervised | 3 | 0.820 ± 0.020 | 0.560 ± 0.060 | 0.690 ± 0.040 |" in md
    assert "| momentum | 1 | 0.880 | 0.700 | 0.790 |" in md
    assert METRIC_CONVENTIONS["dice@0.5"] in md
    assert "sample standard deviation over seeds" in md

    rows = list(csv.DictReader(paths["csv"].open()))
    assert len(rows) == 2 * 3  # two configurations x (two sets + Mean)
    mean_row = next(r for r in rows if r["config"] == "supervised" and r["set"] == "Mean")
    assert float(mean_row["mean"]) == pytest.approx(0.69) and float(mean_row["std"]) == pytest.approx(0.04)
    assert next(r for r in rows if r["config"] == "momentum")["std"] == ""

    report = json.loads(paths["json"].read_text())
    assert report["metric_columns"] == ["dice@0.5"]
    assert report["configs"]["momentum"]["sets"]["ETIS"]["dice@0.5"]["std"] is None
    assert report["configs"]["supervised"]["n_seeds"] == 3


def test_write_grid_report_missing_metric_shows_dash(tmp_path: Path) -> None:
    paths = write_grid_report(GridTable(summarize_runs(RUNS), metric_columns=("dice@0.5", "meanDice")), tmp_path)
    md = paths["md"].read_text()
    assert "## `meanDice`" in md
    assert "| supervised | 3 | – | – | – |" in md


def test_paired_differences_seed_by_seed(tmp_path: Path) -> None:
    from pseudoseg.evaluation.report import paired_differences, summarize_runs, write_grid_report

    def sets(a: float, b: float) -> dict:
        return {"x": {"dice": a, "n": 2}, "y": {"dice": b, "n": 2}}

    runs = {
        "tso": [sets(0.6, 0.8), sets(0.5, 0.7), sets(0.7, 0.7)],  # seed means 0.7, 0.6, 0.7
        "atso": [sets(0.7, 0.9), sets(0.5, 0.6), sets(0.8, 0.8)],  # seed means 0.8, 0.55, 0.8
        "broken": [sets(0.7, 0.9), {"x": {"dice": None, "n": 2}, "y": {"dice": 0.5, "n": 2}}, sets(0.7, 0.7)],
    }
    out = paired_differences(runs, "tso", "dice")
    assert set(out) == {"atso", "broken"}
    assert out["atso"]["differences"] == pytest.approx([0.1, -0.05, 0.1])
    assert out["atso"]["mean"] == pytest.approx(0.05) and out["atso"]["std"] == pytest.approx(0.0866025, rel=1e-5)
    assert (out["atso"]["positive"], out["atso"]["defined"]) == (2, 3)
    assert out["broken"]["differences"][1] is None and out["broken"]["defined"] == 2  # undefined in one seed
    with pytest.raises(ValueError, match="reference"):
        paired_differences(runs, "supervised", "dice")
    budgets = {name: [{"released_steps": 500, "steps": 800, "images": 6400}] * 3 for name in runs}
    write_grid_report(GridTable(summarize_runs(runs), metric_columns=("dice",), budgets=budgets, paired=("tso", [0, 1, 2], runs)), tmp_path)
    text = (tmp_path / "grid.md").read_text()
    assert "| atso | +0.100 | -0.050 | +0.100 | +0.050 ± 0.087 | 2/3 seeds |" in text
    assert "| Released steps | Steps | Images seen |" in text and "| 500 | 800 | 6,400 |" in text

"""One Markdown table from rows of several finished grids (mean ± std over their seeds).

A grid compares the rows of one family on one base configuration; a results
table sometimes needs rows of several (the supervised model at another label
fraction, a bound trained with another patience, another family's method).
This script reads every finished run's ``report/metrics.json`` (each seed of the
row that finished in the grid's folder), and prints one row per ``GRID:ROW[=LABEL]`` with the
chosen metric columns (mean over test sets, mean ± sample std over the grid's
seeds; ``rounds/<key>``: the mean over a rounds run's rounds of that key of its
``rounds.jsonl``, e.g. ``rounds/gain``, ``rounds/agreement_dice``), the steps
of the released model and of the whole run, the masks the run used (labeled +
validation) and in how many seeds it released its stage's start, and, with
``--reference``, the per-seed differences of the first column from that row
(paired by seed; rows of other seeds are not paired). Example, the two-class
hippocampus table of docs/results.md (earlier protocol)::

    python benchmarks/grid_table.py runs/mc-hippo10:supervised="supervised 10 %" \\
        runs/mc-hippo20:supervised="supervised 20 %" runs/mc-hippo10:tso runs/mc-hippo10:atso \\
        runs/mc-hippo10-momentum:online-momentum runs/mc-hippo10-bound:supervised-100% \\
        --columns dice,dice/Anterior,dice/Posterior,hd95_mm,hd95_mm/Anterior,hd95_mm/Posterior \\
        --reference "supervised 10 %"
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from pseudoseg.evaluation.report import summarize_runs


def _fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _row(spec: str) -> tuple[Path, str, str]:
    where, _, label = spec.partition("=")
    grid, sep, row = where.rpartition(":")
    if not sep or not grid or not row:
        _fail(f"{spec!r}: expected GRID:ROW or GRID:ROW=LABEL")
    return Path(grid), row, label or row


def _runs(grid: Path, row: str) -> dict[int, dict[str, Any]]:
    """{seed: the run's report/metrics.json} of one row of a grid: every seed whose run of the row
    finished (``<grid>/seed<k>/<row>/report/metrics.json``), whichever invocation trained it (seeds
    run as separate processes into one grid folder, or rows added later)."""
    if not grid.is_dir():
        _fail(f"{grid}: no such grid folder")
    reports = {int(path.parts[-4].removeprefix("seed")): path for path in grid.glob(f"seed*/{row}/report/metrics.json") if path.parts[-4].removeprefix("seed").isdigit()}
    if not reports:
        rows = sorted({path.parts[-3] for path in grid.glob("seed*/*/report/metrics.json")})
        _fail(f"{grid}: no finished run of row {row!r} (finished rows: {', '.join(rows) or 'none'})")
    out = {}
    for seed, report in sorted(reports.items()):
        metrics = json.loads(report.read_text())
        rounds = report.parent.parent / "rounds.jsonl"
        if rounds.is_file():  # the per-round diagnostics, each as its mean over the rounds that have it
            records = [json.loads(line) for line in rounds.read_text().splitlines() if line.strip()]
            keys = {key for record in records for key, value in record.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
            for key in keys:
                values = [record[key] for record in records if isinstance(record.get(key), (int, float)) and record.get("round", 0) > 0]
                if values:
                    metrics["mean"][f"rounds/{key}"] = sum(values) / len(values)
        out[int(seed)] = metrics
    return out


def _span(values: list[int]) -> str:
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _cell(stats: dict[str, Any] | None, decimals: int) -> str:
    if stats is None or math.isnan(stats["mean"]):
        return ""
    std = stats["std"]  # NaN for one seed
    return f"{stats['mean']:.{decimals}f}" + ("" if math.isnan(std) else f" ± {std:.{decimals}f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="GRID:ROW or GRID:ROW=LABEL, in table order")
    parser.add_argument("--columns", default="dice", help="comma-separated metric columns (default: dice)")
    parser.add_argument("--reference", help="label of the row the per-seed differences of the first column are taken from")
    parser.add_argument("--decimals", type=int, default=3)
    parser.add_argument("--mm-decimals", type=int, default=1, help="decimals of distances in mm (hd95_mm columns)")
    args = parser.parse_args(argv)
    columns = [c for c in args.columns.split(",") if c]
    rows = [_row(spec) for spec in args.rows]
    labels = [label for _, _, label in rows]
    if len(set(labels)) != len(labels):
        _fail("two rows share a label; name them with GRID:ROW=LABEL")
    reports = {label: _runs(grid, row) for grid, row, label in rows}
    for label, per_seed in reports.items():
        for seed, report in per_seed.items():
            missing = [c for c in columns if c not in report["mean"]]
            if missing:
                _fail(f"{label}, seed {seed}: no column {', '.join(missing)} (it has {', '.join(report['mean'])})")
    # the mean over test sets as the one "set" of each run
    summary = summarize_runs({label: [{"all": report["mean"]} for _, report in sorted(per_seed.items())] for label, per_seed in reports.items()})
    header = ["Row", "Seeds", *columns, "Released steps", "Steps", "Masks (L+V)", "Kept start"]
    lines = ["| " + " | ".join(header) + " |", "|:---|" + "---:|" * (len(header) - 1)]
    for label, per_seed in reports.items():
        budgets = [report["budget"] for report in per_seed.values()]
        cells = [_cell(summary[label]["sets"]["all"].get(column), args.mm_decimals if column.startswith(("hd95_mm", "hd95_penalised_mm")) else args.decimals) for column in columns]
        released = _span([b.get("released_steps", b["steps"]) for b in budgets])
        masks = " / ".join(dict.fromkeys(f"{m['labeled']}+{m['validation']}" for m in (report.get("masks_used") for report in per_seed.values()) if m)) or "–"
        kept = [bool(b["kept_start"]) for b in budgets if "kept_start" in b]
        kept_cell = f"{sum(kept)}/{len(kept)}" if kept else "–"
        lines.append("| " + " | ".join([label, ", ".join(map(str, sorted(per_seed))), *cells, released, _span([b["steps"] for b in budgets]), masks, kept_cell]) + " |")
    print("\n".join(lines))
    if args.reference:
        if args.reference not in reports:
            _fail(f"--reference {args.reference!r} is not a row label ({', '.join(labels)})")
        first, reference = columns[0], reports[args.reference]
        print(f"\nPer-seed differences in `{first}` from {args.reference} (seed: difference):\n")
        for label, per_seed in reports.items():
            if label == args.reference:
                continue
            paired = [(seed, report["mean"][first] - reference[seed]["mean"][first]) for seed, report in sorted(per_seed.items()) if seed in reference]
            print(f"- {label}: " + ", ".join(f"{seed}: {difference:+.{args.decimals}f}" for seed, difference in paired))


if __name__ == "__main__":
    main()

"""Report tables: per-test-set metrics and seed-averaged experiment grids.

Every table written here carries a legend that states the convention of each
column (see :data:`pseudoseg.evaluation.metrics.METRIC_CONVENTIONS`), because
the paper convention (Dice at 0.5, working resolution) and the PraNet
convention (pysodmetrics, native resolution) give different numbers for the
same predictions.

The "mean" row is the *unweighted* mean over test sets, as in the polyp
literature: each test set counts once, whatever its number of images.

Input shape used throughout: ``per_set = {"Kvasir": {"dice@0.5": 0.91,
"meanDice": 0.89, ..., "n": 100}, "CVC-ClinicDB": {...}, ...}``. A model of
several classes has a column per class named ``<metric>/<class>``
(``dice/anterior``) beside the mean over classes (``dice``); the legends of
those columns come from :func:`pseudoseg.evaluation.metrics.conventions_for`.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from dataclasses import dataclass
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import METRIC_CONVENTIONS
from pseudoseg.fileio import write_json, write_text

__all__ = [
    "GridTable",
    "finite_or_none",
    "mean_over_sets",
    "render_table",
    "summarize_runs",
    "write_grid_report",
    "write_report",
]

_MEAN_LABEL = "mean"
_UNKNOWN_CONVENTION = "convention not recorded"


# --------------------------------------------------------------------------- helpers


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):  # an int subclass, but never a metric
        return False
    return isinstance(value, (int, float)) or _is_numpy_scalar(value)


def _is_numpy_scalar(value: Any) -> bool:
    """A 0-d numpy number (``np.float64(0.9)``), as metric code often returns."""
    kind = getattr(getattr(value, "dtype", None), "kind", None)
    return getattr(value, "ndim", None) == 0 and kind in ("f", "i", "u") and hasattr(value, "item")


def _ordered_union(keys: Iterable[Iterable[str]]) -> list[str]:
    seen: dict[str, None] = {}
    for group in keys:
        for key in group:
            seen.setdefault(key, None)
    return list(seen)


def _order_columns(columns: Iterable[str]) -> list[str]:
    """Known columns in :data:`METRIC_CONVENTIONS` order (paper first), then the rest as given.

    A per-class column (``dice/anterior``) follows its metric's column (``dice``, the mean over classes).
    """
    columns = list(columns)
    ordered: list[str] = []
    for known in (c for c in METRIC_CONVENTIONS if c in columns):
        ordered += [known, *(c for c in columns if c.startswith(f"{known}/"))]
    return ordered + [c for c in columns if c not in ordered]


def _metric_columns(per_set: Mapping[str, Mapping[str, Any]], *, ignore: Sequence[str] = ("n",)) -> list[str]:
    """Names of the metric columns (numbers, or None where undefined) found in any set, in report order."""
    return _order_columns(
        _ordered_union(
            (k for k, v in metrics.items() if k not in ignore and (_is_number(v) or v is None)) for metrics in per_set.values()
        )
    )


def _check_sets(per_set: Mapping[str, Mapping[str, Any]]) -> None:
    if not per_set:
        raise ValueError("no test sets to report")
    for name in per_set:
        if str(name).lower() == _MEAN_LABEL:
            raise ValueError(f"a test set may not be called {name!r}: the name is reserved for the mean row")


def finite_or_none(value: Any) -> Any:
    """JSON has no NaN: write missing or undefined numbers as null."""
    if isinstance(value, Mapping):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    if _is_number(value):
        value = value.item() if _is_numpy_scalar(value) else value
        if isinstance(value, float) and not math.isfinite(value):
            return None
    return value


def _fmt(value: Any, decimals: int) -> str:
    if value is None:
        return "–"
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    value = float(value)
    return "–" if math.isnan(value) else f"{value:.{decimals}f}"


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


def _conventions(columns: Iterable[str], extra: Mapping[str, str] | None) -> dict[str, str]:
    table = {**METRIC_CONVENTIONS, **(extra or {})}
    return {c: table.get(c, _UNKNOWN_CONVENTION) for c in columns}


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([_csv_value(v) for v in row])
    return buffer.getvalue()


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _md_heading(title: str, notes: Sequence[str]) -> list[str]:
    """A report's title and the notes under it (machine, precision, warnings), each followed by a blank line."""
    lines = [f"# {title}", ""] if title else []
    return lines + ([*notes, ""] if notes else [])


def _write_files(out_dir: Path, stem: str, payload: Mapping[str, Any], csv_text: str, md_lines: Sequence[str]) -> dict[str, Path]:
    """Write ``<stem>.json`` (NaN as null), ``<stem>.csv`` and ``<stem>.md`` atomically; a path that
    cannot be written is the user's to fix. Returns ``{"json": path, "csv": path, "md": path}``."""
    contents = {"json": finite_or_none(payload), "csv": csv_text, "md": "\n".join(md_lines)}
    paths: dict[str, Path] = {}
    try:
        for suffix, content in contents.items():
            path = out_dir / f"{stem}.{suffix}"
            if suffix == "json":
                write_json(path, content)
            else:
                write_text(path, content)
            paths[suffix] = path
    except OSError as err:
        raise UserError(f"cannot write report files in {out_dir}: {err.strerror or err}") from err
    return paths


# --------------------------------------------------------------------------- per-set report


def mean_over_sets(
    per_set: Mapping[str, Mapping[str, Any]], *, ignore: Sequence[str] = ("n",)
) -> dict[str, float]:
    """Unweighted mean over test sets of every metric column (the "Total"/"Mean" row).

    Non-numeric values and the keys in ``ignore`` (the image count ``n``) are
    skipped. A column missing from some set is left out: a mean over only part
    of the sets would not be comparable with the published rows.
    """
    _check_sets(per_set)
    columns = _metric_columns(per_set, ignore=ignore)
    present = [c for c in columns if all(c in metrics and _is_number(metrics[c]) for metrics in per_set.values())]
    return {c: float(statistics.fmean(float(metrics[c]) for metrics in per_set.values())) for c in present}


_DECIMALS = 3
"""Decimals of the Markdown tables (the JSON and CSV keep full precision)."""


def write_report(
    per_set: Mapping[str, Mapping[str, Any]],
    out: str | Path,
    *,
    title: str = "",
    extra: Mapping[str, Any] | None = None,
    conventions: Mapping[str, str] | None = None,
    notes: Sequence[str] = (),
) -> dict[str, Path]:
    """Write ``<out>.json``, ``<out>.csv`` and ``<out>.md`` for one model's test-set metrics
    (``out``: the files' path without a suffix, e.g. ``report/metrics``).

    * JSON: ``{"title", "conventions": {column: description}, "sets": {name:
      {column: value, "n": int}}, "mean": {column: value}, **extra}``; NaN is
      written as ``null``.
    * CSV: a header ``set,<columns...>,n``, one row per set, then a ``mean``
      row (unweighted mean over sets, empty ``n``). Full precision.
    * Markdown: ``notes`` (lines under the title: machine, precision,
      warnings), the table rounded to three decimals and a legend that states
      the convention of every column.

    ``conventions`` adds or overrides column descriptions for columns not in
    :data:`~pseudoseg.evaluation.metrics.METRIC_CONVENTIONS`. Every file is
    written atomically. Returns ``{"json": path, "csv": path, "md": path}``.
    """
    _check_sets(per_set)
    extra = _checked_extra(extra)
    columns = _metric_columns(per_set)
    legend = _conventions(columns, conventions)
    mean = mean_over_sets(per_set)
    payload = {
        "title": title,
        "conventions": legend,
        "sets": {name: dict(metrics) for name, metrics in per_set.items()},
        "mean": mean,
        **extra,
    }
    csv_rows = [[name, *(metrics.get(c) for c in columns), metrics.get("n")] for name, metrics in per_set.items()]
    csv_rows.append([_MEAN_LABEL, *(mean.get(c) for c in columns), None])
    lines = [*_md_heading(title, notes), *_md_sets_table(per_set, columns, mean, _DECIMALS), "", *_md_sets_legend(len(per_set), legend)]
    out = Path(out)
    return _write_files(out.parent, out.name, payload, _csv_text(["set", *columns, "n"], csv_rows), lines)


def _checked_extra(extra: Mapping[str, Any] | None) -> dict[str, Any]:
    """``write_report``'s extra keys, refused where one would overwrite a key of the report's own."""
    extra = dict(extra or {})
    clash = sorted(set(extra) & {"title", "conventions", "sets", "mean"})
    if clash:
        raise ValueError(f"extra report keys {clash} would overwrite the report's own keys")
    return extra


def _set_cells(metrics: Mapping[str, Any], columns: Sequence[str], decimals: int) -> list[str]:
    """One test set's metric cells and its image count, rounded to ``decimals``."""
    return [*(_fmt(metrics.get(c), decimals) for c in columns), _fmt(metrics.get("n"), decimals)]


def _md_sets_table(per_set: Mapping[str, Mapping[str, Any]], columns: Sequence[str], mean: Mapping[str, float], decimals: int) -> list[str]:
    """The Markdown table of the per-set report: a row per test set, then the bold mean row."""
    header = ["Test set", *(f"`{c}`" for c in columns), "n"]
    rows = [[name, *_set_cells(metrics, columns, decimals)] for name, metrics in per_set.items()]
    rows.append(["**Mean**", *(f"**{_fmt(mean.get(c), decimals)}**" for c in columns), ""])
    return _md_table(header, rows)


def _md_sets_legend(set_count: int, legend: Mapping[str, str]) -> list[str]:
    """What the per-set table's mean row and columns mean."""
    return [
        f"**Mean** is the unweighted mean over the {set_count} test sets (each set counts once).",
        "",
        "Columns:",
        "",
        *(f"- `{c}` — {desc}." for c, desc in legend.items()),
        "- `n` — number of test images in the set.",
        "",
    ]


def render_table(per_set: Mapping[str, Mapping[str, Any]], *, title: str = "", decimals: int = 3) -> Table:
    """A :class:`rich.table.Table` of the per-set metrics with the mean row, for the terminal."""
    _check_sets(per_set)
    columns = _metric_columns(per_set)
    mean = mean_over_sets(per_set)
    table = Table(title=title or None)
    table.add_column("Test set")
    for column in columns:
        table.add_column(column, justify="right")
    table.add_column("n", justify="right")
    names = list(per_set)
    for i, name in enumerate(names):
        metrics = per_set[name]
        table.add_row(name, *_set_cells(metrics, columns, decimals), end_section=i == len(names) - 1)
    table.add_row("Mean", *(_fmt(mean.get(c), decimals) for c in columns), "", style="bold")
    return table


# --------------------------------------------------------------------------- experiment grids


def _mean_std(values: Sequence[float], ddof: int) -> dict[str, float]:
    mean = statistics.fmean(values)
    if len(values) - ddof <= 0:
        std = math.nan  # undefined (e.g. sample std of a single seed)
    else:
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - ddof))
    return {"mean": mean, "std": std}


def _defined(value: Any) -> bool:
    """A number that can be averaged: not None (JSON's undefined), not NaN or infinite."""
    return _is_number(value) and math.isfinite(float(value))


def _over_seeds(values: Sequence[Any], ddof: int) -> dict[str, Any]:
    """Mean and std over the seeds where the value is defined; ``defined_seeds`` when some are not."""
    defined = [float(v) for v in values if _defined(v)]
    stats: dict[str, Any] = _mean_std(defined, ddof) if defined else {"mean": math.nan, "std": math.nan}
    if len(defined) < len(values):
        stats["defined_seeds"] = len(defined)
    return stats


def _seed_mean(per_set: Mapping[str, Mapping[str, Any]], column: str) -> float | None:
    """Unweighted mean over sets of one seed; undefined when any set's value is."""
    values = [per_set[name].get(column) for name in per_set]
    return statistics.fmean(float(v) for v in values) if all(_defined(v) for v in values) else None


def summarize_runs(
    runs: Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]], *, ddof: int = 1
) -> dict[str, dict[str, Any]]:
    """Mean and standard deviation over seeds, per test set and for the mean-over-sets row.

    Args:
        runs: ``{configuration name: [per_set dict of seed 0, of seed 1, ...]}``;
            every seed of a configuration must cover the same test sets.
        ddof: delta degrees of freedom of the standard deviation; the default
            1 is the sample standard deviation (undefined, NaN, for one seed).

    Returns:
        ``{configuration: {"n_seeds": int, "ddof": int, "sets": {set: {column:
        {"mean": float, "std": float}}}, "mean": {column: {"mean", "std"}}}}``.
        The ``"mean"`` entry is computed per seed (unweighted mean over sets)
        and then summarised over seeds. A column is summarised only where
        every seed has it. A value may be undefined in some seeds (``None``
        or NaN, e.g. the HD95 of a run that predicts nothing): the mean and
        std are then over the seeds where it is defined, and the entry gains
        ``"defined_seeds"`` (their number; NaN mean when it is 0).
    """
    summary: dict[str, dict[str, Any]] = {}
    for config, seeds in runs.items():
        if not seeds:
            raise ValueError(f"configuration {config!r} has no runs")
        set_names = list(seeds[0])
        for per_set in seeds:
            _check_sets(per_set)
            if set(per_set) != set(set_names):
                raise ValueError(
                    f"configuration {config!r}: seeds cover different test sets "
                    f"({sorted(set_names)} vs {sorted(per_set)})"
                )
        sets: dict[str, dict[str, dict[str, Any]]] = {}
        for name in set_names:
            columns = _metric_columns({s: per_set[name] for s, per_set in enumerate(seeds)})
            sets[name] = {
                c: _over_seeds([per_set[name][c] for per_set in seeds], ddof)
                for c in columns
                if all(c in per_set[name] for per_set in seeds)
            }
        mean_columns = [c for c in _ordered_union(sets.values()) if all(c in sets[name] for name in set_names)]
        summary[config] = {
            "n_seeds": len(seeds),
            "ddof": ddof,
            "sets": sets,
            "mean": {c: _over_seeds([_seed_mean(per_set, c) for per_set in seeds], ddof) for c in mean_columns},
        }
    return summary


def _cell(entry: Mapping[str, Any] | None, decimals: int) -> str:
    if entry is None:
        return "–"
    mean, std = entry["mean"], entry["std"]
    if std is None or not math.isfinite(std):
        text = _fmt(mean, decimals)
    else:
        text = f"{mean:.{decimals}f} ± {std:.{decimals}f}"
    if "defined_seeds" in entry and entry["defined_seeds"]:
        text += f" ({entry['defined_seeds']} seeds)"
    return text


def paired_differences(
    runs: Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]], reference: str, column: str, *, ddof: int = 1
) -> dict[str, dict[str, Any]]:
    """Per-seed differences of each configuration's mean over sets from ``reference``'s, seed by seed.

    Args:
        runs: ``{configuration: [per_set dict of seed 0, of seed 1, ...]}`` with the
            same seeds in the same order for every configuration (a grid's runs).
        reference: the configuration subtracted.
        column: the metric.

    Returns:
        ``{configuration: {"differences": [per seed, None where undefined], "mean",
        "std", "positive": seeds with a difference > 0, "defined": seeds with one}}``
        for every configuration but the reference. A difference is paired: both
        runs of a seed share the split and the labeled-only model, so the spread
        of the differences, not of the two columns, says whether a gap is noise.
    """
    if reference not in runs:
        raise ValueError(f"reference configuration {reference!r} is not among {sorted(runs)}")
    base = [_seed_mean(per_set, column) if all(column in entry for entry in per_set.values()) else None for per_set in runs[reference]]
    out: dict[str, dict[str, Any]] = {}
    for config, seeds in runs.items():
        if config == reference:
            continue
        if len(seeds) != len(base):
            raise ValueError(f"configuration {config!r} has {len(seeds)} seeds, the reference {len(base)}")
        values = [_seed_mean(per_set, column) if all(column in entry for entry in per_set.values()) else None for per_set in seeds]
        differences = [v - b if _defined(v) and _defined(b) else None for v, b in zip(values, base)]
        defined = [d for d in differences if d is not None]
        stats = _mean_std(defined, ddof) if defined else {"mean": math.nan, "std": math.nan}
        out[config] = {"differences": differences, **stats, "positive": sum(d > 0 for d in defined), "defined": len(defined)}
    return out


def _paired_lines(differences: Mapping[str, Mapping[str, Any]], reference: str, column: str, seeds: Sequence[int], decimals: int) -> list[str]:
    header = ["Configuration", *[f"seed {seed}" for seed in seeds], "Mean ± std", "Above in"]
    rows = []
    for config, entry in differences.items():
        cells = ["–" if d is None else f"{d:+.{decimals}f}" for d in entry["differences"]]
        summary = "–"
        if entry["defined"]:
            summary = f"{entry['mean']:+.{decimals}f}" + (f" ± {entry['std']:.{decimals}f}" if math.isfinite(entry["std"]) else "")
        rows.append([config, *cells, summary, f"{entry['positive']}/{entry['defined']} seeds"])
    return [
        f"Paired differences of *Mean* from `{reference}`, seed by seed (each seed's runs share its split and "
        "labeled-only model); a gap whose sign changes between seeds, or whose mean is within about one std of 0, "
        "is within the noise.",
        "",
        *_md_table(header, rows),
        "",
    ]


def _budget_cell(values: Sequence[int]) -> str:
    if not values:
        return "–"
    low, high = min(values), max(values)
    return f"{low:,}" if low == high else f"{low:,}–{high:,}"


def _masks_cell(runs: Sequence[Mapping[str, Any]]) -> str:
    """Masks used as ``labeled+validation`` (the distinct values over seeds)."""
    used = list(dict.fromkeys(f"{b['masks_used']['labeled']}+{b['masks_used']['validation']}" for b in runs if "masks_used" in b))
    return " / ".join(used) or "–"


def _kept_start_cell(runs: Sequence[Mapping[str, Any]]) -> str:
    """In how many seeds the released model is its stage's start (``–``: no row start to keep)."""
    flags = [bool(b["kept_start"]) for b in runs if "kept_start" in b]
    return f"{sum(flags)}/{len(flags)}" if flags else "–"


@dataclass(frozen=True)
class GridTable:
    """What a grid report compares: configurations summarised over seeds, side by side in one table per metric column.

    ``budgets``: ``{configuration: [run budget of seed 0, ...]}`` (``budget.json`` of
    each run: total optimiser ``steps``, training ``images`` and, where known, the
    ``released_steps`` of the released model); every table then carries each row's
    steps and images seen, so a reader sees what a comparison holds constant.

    ``paired``: ``(reference, seeds, runs)`` with ``runs`` as given to
    :func:`summarize_runs`: each metric's table is followed by the per-seed
    differences from the reference configuration (:func:`paired_differences`).
    """

    summary: Mapping[str, Mapping[str, Any]]
    """The configurations, as :func:`summarize_runs` returns them."""
    metric_columns: Sequence[str] = ("dice@0.5",)
    conventions: Mapping[str, str] | None = None
    """Descriptions of columns not in :data:`~pseudoseg.evaluation.metrics.METRIC_CONVENTIONS`."""
    decimals: int = 3
    budgets: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
    paired: tuple[str, Sequence[int], Mapping[str, Sequence[Mapping[str, Mapping[str, Any]]]]] | None = None

    @property
    def set_names(self) -> list[str]:
        """The test sets of any configuration, in order of appearance."""
        return _ordered_union(entry["sets"] for entry in self.summary.values())

    @property
    def legend(self) -> dict[str, str]:
        """The convention of each metric column."""
        return _conventions(self.metric_columns, self.conventions)

    @property
    def budget_columns(self) -> _BudgetColumns:
        """The columns beside each table's metrics: what each row's runs spent and used."""
        return _BudgetColumns.of(self.budgets)


def write_grid_report(
    table: GridTable,
    out_dir: str | Path,
    *,
    stem: str = "grid",
    title: str = "",
    notes: Sequence[str] = (),
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``table``, the configurations of :func:`summarize_runs` side by side.

    * Markdown: one table per metric column, rows = configurations, columns =
      number of seeds, test sets and ``Mean``; cells ``"0.812 ± 0.010"``
      (mean ± std over seeds; the std alone is dropped when undefined;
      ``(k seeds)`` when the value is defined in k seeds only). Each table
      states the convention of its metric; ``notes`` (lines under the
      title, e.g. the machine and precision of the runs) come first.
    * CSV (long format, easy to pivot): ``config,metric,set,mean,std,n_seeds``
      with ``set == "Mean"`` for the mean-over-sets row.
    * JSON: ``{"title", "metric_columns", "conventions", "configs": summary,
      "budgets" and "paired" where given, **extra}``.

    Returns ``{"json": path, "csv": path, "md": path}``.
    """
    if not table.summary:
        raise ValueError("no configurations to report")
    if not table.metric_columns:
        raise ValueError("metric_columns is empty")
    lines = _md_heading(title, notes)
    for column in table.metric_columns:
        lines += _md_grid_section(table, column)
    payload = {"title": title, **_grid_payload(table), **(extra or {})}
    return _write_files(Path(out_dir), stem, payload, _csv_text(["config", "metric", "set", "mean", "std", "n_seeds"], _grid_csv_rows(table)), lines)


def _md_grid_section(table: GridTable, column: str) -> list[str]:
    """One metric's table (a row per configuration) under its convention and cell legend, then its paired differences."""
    set_names, budget, decimals = table.set_names, table.budget_columns, table.decimals
    rows = []
    for config, entry in table.summary.items():
        cells = [_cell(entry["sets"].get(name, {}).get(column), decimals) for name in set_names]
        rows.append([config, str(entry["n_seeds"]), *cells, _cell(entry["mean"].get(column), decimals), *budget.cells(config)])
    header = ["Configuration", "Seeds", *set_names, "Mean", *budget.header]
    lines = [f"## `{column}`", "", f"`{column}` — {table.legend[column]}.", "", _cells_legend(table.summary, budget), "", *_md_table(header, rows), ""]
    if table.paired is not None:
        reference, seeds, runs = table.paired
        lines += _paired_lines(paired_differences(runs, reference, column), reference, column, seeds, decimals)
    return lines


def _grid_csv_rows(table: GridTable) -> list[list[Any]]:
    """The long-format CSV rows of every metric column and configuration."""
    set_names = table.set_names
    return [row for column in table.metric_columns for config, entry in table.summary.items() for row in _csv_stats(config, entry, column, set_names)]


def _grid_payload(table: GridTable) -> dict[str, Any]:
    """The JSON report's entries for the table: columns, conventions, summaries, budgets and paired differences."""
    payload: dict[str, Any] = {
        "metric_columns": list(table.metric_columns),
        "conventions": table.legend,
        "configs": {config: dict(entry) for config, entry in table.summary.items()},
    }
    if table.budgets:
        payload["budgets"] = {config: list(runs) for config, runs in table.budgets.items()}
    if table.paired is not None:
        reference, seeds, runs = table.paired
        payload["paired"] = {"reference": reference, "seeds": list(seeds), **{c: paired_differences(runs, reference, c) for c in table.metric_columns}}
    return payload


@dataclass(frozen=True)
class _BudgetColumns:
    """The budget columns of a grid table: what each row's runs spent and used."""

    budgets: Mapping[str, Sequence[Mapping[str, Any]]]
    released: bool
    """Every run knows the steps its released weights received."""
    masks: bool
    """Some run knows the masks it used (and whether it kept its start)."""

    @classmethod
    def of(cls, budgets: Mapping[str, Sequence[Mapping[str, Any]]] | None) -> _BudgetColumns:
        budgets = budgets or {}
        released = bool(budgets) and all("released_steps" in b for runs in budgets.values() for b in runs)
        masks = bool(budgets) and any("masks_used" in b for runs in budgets.values() for b in runs)
        return cls(budgets, released, masks)

    @property
    def header(self) -> list[str]:
        spent = (["Released steps"] if self.released else []) + (["Steps", "Images seen"] if self.budgets else [])
        return spent + (["Masks (L+V)", "Kept start"] if self.masks else [])

    def cells(self, config: str) -> list[str]:
        if not self.budgets:
            return []
        runs = self.budgets.get(config, [])
        keys = ("released_steps", "steps", "images") if self.released else ("steps", "images")
        spent = [_budget_cell([b[key] for b in runs]) for key in keys]
        return spent + ([_masks_cell(runs), _kept_start_cell(runs)] if self.masks else [])


def _csv_stats(config: str, entry: Mapping[str, Any], column: str, set_names: Sequence[str]) -> list[list[Any]]:
    """The long-format CSV rows of one configuration and metric: each test set, then ``Mean``."""
    rows = []
    for name in [*set_names, "Mean"]:
        stats = entry["mean"].get(column) if name == "Mean" else entry["sets"].get(name, {}).get(column)
        if stats is not None:
            rows.append([config, column, name, stats["mean"], stats["std"], stats.get("defined_seeds") or entry["n_seeds"]])
    return rows


def _cells_legend(summary: Mapping[str, Mapping[str, Any]], columns: _BudgetColumns) -> str:
    """What a grid table's cells and budget columns mean."""
    ddofs = sorted({int(entry.get("ddof", 1)) for entry in summary.values()})
    std_kind = "sample standard deviation" if ddofs == [1] else f"standard deviation (ddof {ddofs})"
    text = (
        f"Cells: mean ± {std_kind} over seeds (number of seeds per configuration in the *Seeds* column; "
        "*(k seeds)*: defined in k seeds only, the mean is over those). "
        "*Mean* is the unweighted mean over test sets, computed per seed and then summarised over seeds."
    )
    if columns.budgets:
        text += (
            " *Steps* and *Images seen*: optimiser steps and training images (labeled and unlabeled) of every "
            "stage the row's model depends on, the shared labeled-only stage included (a range where seeds differ)."
        )
    if columns.released:
        text += (
            " *Released steps*: the steps the released weights themselves received, in the stages they were "
            "trained or fine-tuned in (a model restarted from the labeled-only model has M0's and its own; "
            "one restarted from the initial weights, its own)."
        )
    if columns.masks:
        text += (
            " *Masks (L+V)*: the masks the row's run used, labeled + validation. *Kept start*: in how many seeds "
            "the released model is its stage's start (the labeled-only model, or the model a round started from), "
            "kept because no checkpoint trained from it scored higher on validation."
        )
    return text


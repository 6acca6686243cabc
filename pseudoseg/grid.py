"""Experiment grids: a method's variants side by side, over several seeds.

A grid *family* is defined in a method's module, and other methods may add
rows to it (:class:`~pseudoseg.methods.registry.GridFamily`); ``pseudoseg
methods`` lists the families. This module knows no method: it runs the rows. Every family's table has the same
frame: the ``supervised`` row (the base configuration's labeled-only stage,
trained as a supervised run until validation stops improving), the family's
rows and the rows added to it, and ``supervised-100%`` (the same on all
labels, for as many epochs).

All variants of one seed share the seed's split, and the semi-supervised
variants start from that seed's supervised run (the same teacher:
``method.teacher_run``), so the table compares methods, not teachers. Every
run is an ordinary run directory under ``<out>/seed<k>/<variant>``; an
interrupted grid resumes where it stopped, and finished runs are not
recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pseudoseg.config import apply_overrides
from pseudoseg.run_config import config_from_dict, read_config_file, switch_method
from pseudoseg.errors import UserError
from pseudoseg.data.splits import load_split
from pseudoseg.fileio import write_json, write_text
from pseudoseg.methods.registry import GridFamily, GridRow, grid_family
from pseudoseg.progress import console_print

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig

Variant = tuple[str, Callable[[dict[str, Any], Path], dict[str, Any]]]

SUPERVISED_ROW = "supervised"
"""The labeled-only row every semi-supervised row of a seed starts from."""
UPPER_BOUND_ROW = "supervised-100%"
"""The same stage trained on all labels."""


def _with(raw: dict[str, Any], **sections: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    for dotted, value in sections.items():
        node = out
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _all_masks_list(supervised_dir: Path, run_dir: Path) -> tuple[Path, float]:
    """The upper bound of a split read from lists: a labeled list of every training unit with a
    mask (the seed's labeled and unlabeled units; validation stays as listed), written beside
    ``run_dir``, and how many times the labeled set it is."""
    split = load_split(supervised_dir / "split.json")
    everything = sorted((set(split.labeled) | set(split.unlabeled)) - set(split.without_mask))
    listed = run_dir.parent / f"{run_dir.name}.labeled.txt"
    write_text(listed, "".join(f"{unit}\n" for unit in everything))
    return listed, len(everything) / len(split.labeled)


def grid_variants(base: RunConfig, family: str | None, *, patience: int = 5) -> list[Variant]:
    """(name, function(raw base config, supervised run dir) -> raw config) for each variant of
    ``family`` (None: the family of the base configuration's method).

    The supervised rows are trained until validation stops improving (``patience``
    validations without a better checkpoint); the 100 % row may run as many epochs
    as the labeled-only model ran on its labeled split, so the bound is not
    under-trained on its larger training set.
    """
    chosen = grid_family(family, base)
    stage = chosen.labeled_stage(base)

    def supervised(fraction: float | None) -> Callable[[dict, Path], dict]:
        def make(raw: dict, supervised_dir: Path) -> dict:
            steps = stage.steps
            out = raw
            if fraction is not None and base.data.labeled_list is not None:
                listed, ratio = _all_masks_list(supervised_dir, Path(raw["run_dir"]))
                steps = round(stage.steps * ratio)
                out = _with(raw, data__labeled_list=str(listed), data__unlabeled_list=None)
            elif fraction is not None:
                steps = round(stage.steps / base.data.labeled_fraction)
                out = _with(raw, data__labeled_fraction=fraction)
            return _with(out, method=stage.method, train__steps=steps, train__batch_size=stage.batch_size, train__patience=patience)

        return make

    def semi(row: GridRow) -> Callable[[dict, Path], dict]:
        def make(raw: dict, teacher_run: Path) -> dict:
            return _with(raw, method={**row.method(dict(raw.get("method") or {}), teacher_run), "teacher_run": str(teacher_run)})

        return make

    rows = chosen.rows_for(base)
    names = [SUPERVISED_ROW, *(row.name for row in rows), UPPER_BOUND_ROW]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise UserError(f"grid --family {chosen.name}: more than one row named {', '.join(repeated)} (pseudoseg methods lists where the rows come from)")
    return [(SUPERVISED_ROW, supervised(None)), *((row.name, semi(row)) for row in rows), (UPPER_BOUND_ROW, supervised(1.0))]


def _machine(report: dict[str, Any]) -> dict[str, Any]:
    """Training (per stage) and evaluation machine of one run's report (absent in reports of older versions)."""
    return {"training": report.get("training_machines") or {}, "evaluation": report.get("machine")}


def _grid_notes(machines: dict[str, dict[int, dict[str, Any]]], reports: dict[str, list[dict[str, Any]]], seeds: list[int]) -> list[str]:
    """Markdown lines: the machines and precisions the grid's runs were trained on, and collapsed validations."""
    from pseudoseg.engine.device import machine_line

    trained: dict[str, list[str]] = {}
    for name, per_seed in machines.items():
        for seed, machine in per_seed.items():
            for line in {machine_line(m) for m in machine["training"].values()} or {"not recorded"}:
                trained.setdefault(line, []).append(f"{name} (seed {seed})")
    if len(trained) == 1:
        notes = [f"All runs trained on {next(iter(trained))}."]
    else:
        notes = [f"Trained on {line}: {', '.join(runs)}." for line, runs in trained.items()]
    for name, per_seed in reports.items():
        for seed, report in zip(seeds, per_seed):
            for network, entry in (report.get("collapse") or {}).items():
                selected = " (selected)" if entry["selected"] else ""
                notes.append(f"**Collapse**: {name}, seed {seed}: {network} {entry['kind']} at step {', '.join(map(str, entry['steps']))}{selected}.")
    return notes


@dataclass(frozen=True)
class GridRequest:
    """What ``pseudoseg grid`` is asked to run."""

    config: Path
    """The base configuration (a file or a recipe's name)."""
    out: Path
    """The grid's folder: one run per row and seed, and the tables."""
    seeds: tuple[int, ...] = (0, 1, 2)
    family: str | None = None
    """The grid family; None: the one of the base configuration's method."""
    overrides: tuple[str, ...] = ()
    """``key=value`` changes of the base configuration (``--set``)."""
    method: str | None = None
    """Replace the base configuration's method section by this method's defaults first
    (:func:`~pseudoseg.run_config.switch_method`)."""
    patience: int = 5
    """Supervised rows stop after this many validations without improvement."""
    variants: tuple[str, ...] | None = None
    """The rows to run (None: all; the supervised row always runs)."""


def run_grid(request: GridRequest, *, log: Callable[[Any], None] = console_print) -> dict[str, Any]:
    """Train every row of ``request.family`` (or the named ``variants``) for each seed and write the tables.

    The seed's ``supervised`` run is trained first whenever a semi-supervised
    variant is run, since they start from it."""
    from pseudoseg.runner import train

    raw_base, origin = _base_config(request.config, request.method, list(request.overrides), log)
    base = config_from_dict(raw_base, origin=origin)
    if base.data.test is None:
        raise UserError(f"{origin}: data.test is required for a grid (the table is on the test sets)")
    chosen: GridFamily = grid_family(request.family, base)
    variants = list(request.variants) if request.variants is not None else None
    chosen_variants = _chosen_variants(grid_variants(base, chosen.name, patience=request.patience), variants, chosen.name)
    out, seeds = Path(request.out), list(request.seeds)
    cache_dir = str(base.data.cache_dir or out / "cache")
    results: dict[str, list[Any]] = {name: [] for name, _ in chosen_variants}
    runs: dict[str, dict[str, str]] = {}
    for seed in seeds:
        supervised_dir = out / f"seed{seed}" / SUPERVISED_ROW
        for name, make in chosen_variants:
            run_dir = out / f"seed{seed}" / name
            raw = make(_with(raw_base, seed=seed, run_dir=str(run_dir), data__cache_dir=cache_dir), supervised_dir)
            log(f"[grid] seed {seed}: {name}")
            results[name].append(train(config_from_dict(raw, origin=f"{origin} [{name}]"), log=log))
            runs.setdefault(name, {})[str(seed)] = str(run_dir)
    summary = _write_tables(out, base, chosen, seeds, results, runs)
    log(f"[grid] wrote {out / 'grid.md'}")
    return {"family": chosen.name, "seeds": seeds, "summary": summary, "runs": runs}


def _base_config(config_path: Path, method: str | None, overrides: list[str], log: Callable[[Any], None]) -> tuple[dict[str, Any], str]:
    """The grid's base configuration (raw, before each row's changes) and the name errors are reported under."""
    raw_file, origin = read_config_file(config_path)
    if method is not None:
        raw_file, line = switch_method(raw_file, method)
        log(line)
    return apply_overrides(raw_file, overrides), origin


def _chosen_variants(every: list[Variant], names: list[str] | None, family: str) -> list[Variant]:
    """The rows ``names`` asks for (all when None), with the seed's supervised row every other row starts from."""
    if not names:
        return every
    unknown = [name for name in names if name not in dict(every)]
    if unknown:
        raise UserError(f"--variants: unknown {', '.join(unknown)}; the {family} grid has {', '.join(name for name, _ in every)}")
    wanted = {SUPERVISED_ROW, *names}
    return [(name, make) for name, make in every if name in wanted]


def _write_tables(out: Path, base: RunConfig, chosen: GridFamily, seeds: list[int], results: dict[str, list[Any]], runs: dict[str, dict[str, str]]) -> dict[str, Any]:
    """``grid.md`` / ``.csv`` / ``.json``, ``runs.json`` and the plots, from every row's run results."""
    from pseudoseg.evaluation.metrics import conventions_for, headline_columns
    from pseudoseg.evaluation.plots import plot_grid_curves
    from pseudoseg.evaluation.report import GridTable, summarize_runs, write_grid_report

    per_variant = {name: [dict(result.metrics["sets"]) for result in done] for name, done in results.items()}
    budget_keys = ("released_steps", "steps", "images", "masks_used", "kept_start")
    budgets = {name: [{key: result.budget[key] for key in budget_keys if key in result.budget} for result in done] for name, done in results.items()}
    reports = {name: [result.metrics for result in done] for name, done in results.items()}
    summary = summarize_runs(per_variant)
    machines = {name: {seed: _machine(metrics) for seed, metrics in zip(seeds, per_seed)} for name, per_seed in reports.items()}
    table = GridTable(
        summary,
        metric_columns=headline_columns(base.data.class_set, base.data.geometry),  # several classes: the mean and each class
        conventions=conventions_for(base.data.class_set, base.data.geometry),
        budgets=budgets,
        paired=(chosen.reference, seeds, per_variant) if chosen.reference in per_variant else None,
    )
    write_grid_report(table, out, stem="grid", title=f"{chosen.name} grid over seeds {seeds}", notes=_grid_notes(machines, reports, seeds), extra={"machines": machines})
    write_json(out / "runs.json", {"family": chosen.name, "seeds": seeds, "runs": runs})
    plot_grid_curves(out, runs)
    if chosen.plots is not None:
        chosen.plots(out, runs)
    return summary

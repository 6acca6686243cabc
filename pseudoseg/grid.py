"""Experiment grids: a method's variants side by side, over several seeds.

``momentum`` (Method A, the paper's grid): supervised on the labeled split
(which is also the teacher stage), offline x {original, momentum} teacher,
online x {original, momentum} teacher, Mean Teacher, a weak-to-strong
baseline with a confidence threshold (FixMatch family), and supervised on
100 % of the labels.
``rounds`` (Method B): supervised on the labeled split, self-learning (TSO),
ATSO from each start (the labeled-only model, its initial weights, the
previous round), with K = 3 and with the ensemble of the last K models, each
at TSO's total steps, ATSO from each start at TSO's *released-model* steps
(each round a full schedule), and the 100 % upper bound. Every table shows
both budgets and the per-seed differences from TSO.

All variants of one seed share the seed's split, and the semi-supervised
variants start from that seed's supervised run (the same teacher), so the
table compares methods, not teachers. Every run is an ordinary run directory
under ``<out>/seed<k>/<variant>``; an interrupted grid resumes where it
stopped, and finished runs are not recomputed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pseudoseg.config import RunConfig, apply_overrides, config_from_dict, load_config
from pseudoseg.errors import UserError
from pseudoseg.methods.momentum import teacher_stage_settings
from pseudoseg.progress import console_print
from pseudoseg.fileio import write_json

Variant = tuple[str, Callable[[dict[str, Any], Path], dict[str, Any]]]


def _with(raw: dict[str, Any], **sections: Any) -> dict[str, Any]:
    out = json.loads(json.dumps(raw))
    for dotted, value in sections.items():
        node = out
        *parents, leaf = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _teacher_stage(base: RunConfig) -> dict[str, Any]:
    """The supervised run that doubles as the teacher stage of the semi-supervised variants."""
    method = base.method
    train = base.train
    if method.name == "momentum":
        supervised, steps, batch_size = teacher_stage_settings(method, train)
        return {"method": supervised.model_dump(mode="json"), "steps": steps, "batch_size": batch_size}
    return {"method": {"name": "supervised"}, "steps": method.teacher_steps or train.steps, "batch_size": train.batch_size}


def grid_variants(base: RunConfig, family: str, *, patience: int = 5) -> list[Variant]:
    """(name, function(raw base config, supervised run dir) -> raw config) for each variant.

    The supervised rows are trained until validation stops improving (``patience``
    validations without a better checkpoint); the 100 % row may run as many epochs
    as the labeled-only model ran on its labeled split, so the bound is not
    under-trained on its larger training set.
    """
    teacher = _teacher_stage(base)

    def supervised(fraction: float | None) -> Callable[[dict, Path], dict]:
        steps = teacher["steps"] if fraction is None else round(teacher["steps"] / base.data.labeled_fraction)

        def make(raw: dict, _: Path) -> dict:
            out = _with(raw, method=teacher["method"], train__steps=steps, train__batch_size=teacher["batch_size"], train__patience=patience)
            return _with(out, data__labeled_fraction=fraction) if fraction is not None else out

        return make

    def semi(**method: Any) -> Callable[[dict, Path], dict]:
        def make(raw: dict, teacher_run: Path) -> dict:
            return _with(raw, method={**raw["method"], **method, "teacher_run": str(teacher_run)})

        return make

    if family == "momentum":
        if base.method.name != "momentum":
            raise UserError("grid --family momentum: the base configuration's method.name must be momentum")
        method = base.method
        return [
            ("supervised", supervised(None)),
            ("offline-original", semi(mode="offline", teacher="original")),
            ("offline-momentum", semi(mode="offline", teacher="momentum")),
            ("online-original", semi(mode="online", teacher="original")),
            ("online-momentum", semi(mode="online", teacher="momentum")),
            # Mean Teacher (Tarvainen & Valpola 2017) in the same harness: the student starts
            # from the labeled-only model and its own momentum copy is the teacher (equal
            # momenta make the two copies one network); consistency is the squared error
            # between probabilities, ramped up over the first quarter of the stage.
            (
                "mean-teacher",
                semi(
                    mode="online",
                    teacher="momentum",
                    student_init="teacher",
                    teacher_momentum=method.student_momentum,
                    unlabeled_loss="mse",
                    beta=1.0,
                    beta_rampup_steps=base.train.steps // 4,
                ),
            ),
            # The FixMatch family's weak-to-strong baseline: the teacher is the current
            # student itself (momentum 0), hard labels kept only where it is confident.
            ("weak-to-strong", semi(mode="online", teacher="momentum", student_init="teacher", teacher_momentum=0.0, labels="hard", confidence=0.95)),
            ("supervised-100%", supervised(1.0)),
        ]
    if family == "rounds":
        if base.method.name not in ("atso", "tso"):
            raise UserError("grid --family rounds: the base configuration's method.name must be atso or tso")
        method = base.method
        subsets = method.subsets
        # TSO's released model and its whole run both have M0 + R x s steps. ATSO rows with
        # round_steps s spend the same total; "-full" rows give every round the steps that
        # make the released model's equal TSO's (M0's actual steps are read from the seed's
        # supervised run, which may have stopped early).
        R, s = method.rounds, method.round_steps

        def atso(**settings: Any) -> Callable[[dict, Path], dict]:
            return semi(name="atso", subsets=subsets, final="last", **settings)

        def atso_initial_full(raw: dict, teacher_run: Path) -> dict:
            return atso(init="initial", round_steps=_stage_steps(teacher_run) + R * s)(raw, teacher_run)

        return [
            ("supervised", supervised(None)),
            ("tso", semi(name="tso", subsets=subsets, final="last")),
            ("atso", atso(init="labeled", round_steps=s)),
            ("atso-initial", atso(init="initial", round_steps=s)),
            ("atso-continue", atso(init="continue", round_steps=s)),
            (f"atso-k{3 if subsets != 3 else 2}", semi(name="atso", subsets=3 if subsets != 3 else 2, final="last", init="labeled", round_steps=s)),
            ("atso-ensemble", semi(name="atso", subsets=subsets, final="ensemble", init="labeled", round_steps=s)),
            ("atso-full", atso(init="labeled", round_steps=R * s)),
            ("atso-initial-full", atso_initial_full),
            ("supervised-100%", supervised(1.0)),
        ]
    raise UserError(f"--family: expected momentum or rounds, got {family!r}")


def _stage_steps(run_dir: Path) -> int:
    """Optimiser steps a finished supervised run spent (its ``budget.json``)."""
    path = Path(run_dir) / "budget.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; the seed's supervised run must finish first")
    return int(json.loads(path.read_text())["steps"])


REFERENCE_ROWS = {"momentum": "supervised", "rounds": "tso"}
"""The row each family's paired differences are taken from."""


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


def run_grid(
    config_path: Path,
    out: Path,
    *,
    seeds: list[int],
    family: str,
    overrides: list[str],
    patience: int = 5,
    variants: list[str] | None = None,
    log: Callable[[Any], None] = console_print,
) -> dict[str, Any]:
    """Train every variant of ``family`` (or the named ``variants``) for each seed and write the tables.

    The seed's ``supervised`` run is trained first whenever a semi-supervised
    variant is run, since they start from it."""
    import yaml

    from pseudoseg.evaluation.metrics import conventions_for, headline_columns
    from pseudoseg.evaluation.report import summarize_runs, write_grid_report
    from pseudoseg.runner import train

    base = load_config(config_path, overrides)
    if base.data.test is None:
        raise UserError(f"{config_path}: data.test is required for a grid (the table is on the test sets)")
    raw_base = apply_overrides(yaml.safe_load(Path(config_path).read_text()) or {}, overrides)
    every = grid_variants(base, family, patience=patience)
    if variants:
        unknown = [name for name in variants if name not in dict(every)]
        if unknown:
            raise UserError(f"--variants: unknown {', '.join(unknown)}; the {family} grid has {', '.join(name for name, _ in every)}")
        wanted = {"supervised", *variants}  # every semi-supervised row starts from the seed's supervised run
        variants_run = [(name, make) for name, make in every if name in wanted]
    else:
        variants_run = every
    variants = variants_run
    out = Path(out)
    cache_dir = str(base.data.cache_dir or out / "cache")
    per_variant: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    budgets: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in variants}
    runs: dict[str, dict[str, str]] = {}
    reports: dict[str, list[dict[str, Any]]] = {}
    for seed in seeds:
        supervised_dir = out / f"seed{seed}" / "supervised"
        for name, make in variants:
            run_dir = out / f"seed{seed}" / name
            raw = make(_with(raw_base, seed=seed, run_dir=str(run_dir), data__cache_dir=cache_dir), supervised_dir)
            config = config_from_dict(raw, origin=f"{config_path} [{name}]")
            log(f"[grid] seed {seed}: {name}")
            result = train(config, log=log)
            per_variant[name].append({k: v for k, v in result.metrics["sets"].items()})
            budgets[name].append({key: result.budget[key] for key in ("released_steps", "steps", "images") if key in result.budget})
            reports.setdefault(name, []).append(result.metrics)
            runs.setdefault(name, {})[str(seed)] = str(run_dir)
    summary = summarize_runs(per_variant)
    columns = headline_columns(base.data.class_set, base.data.kind)  # several classes: the mean and each class
    machines = {name: {seed: _machine(metrics) for seed, metrics in zip(seeds, per_seed)} for name, per_seed in reports.items()}
    write_grid_report(
        summary,
        out,
        stem="grid",
        metric_columns=columns,
        title=f"{family} grid over seeds {seeds}",
        conventions=conventions_for(base.data.class_set, base.data.kind),
        notes=_grid_notes(machines, reports, seeds),
        extra={"machines": machines},
        budgets=budgets,
        paired=(REFERENCE_ROWS[family], seeds, per_variant) if REFERENCE_ROWS[family] in per_variant else None,
    )
    write_json(out / "runs.json", {"family": family, "seeds": seeds, "runs": runs})
    from pseudoseg.evaluation.plots import plot_grid_curves

    plot_grid_curves(out, runs)
    if family == "rounds":
        from pseudoseg.evaluation.plots import plot_grid_rounds

        plot_grid_rounds(out, runs)
    log(f"[grid] wrote {out / 'grid.md'}")
    return {"family": family, "seeds": seeds, "summary": summary, "runs": runs}

"""Run a configured method end to end: data, split, training stages, evaluation, report.

``train(config)`` is what ``pseudoseg train`` calls. A run directory holds::

    config.yaml        the resolved configuration
    split.json         the L / U / V split manifest (reusable with data.split)
    <stage>/           one folder per training stage: metrics.jsonl, best_*.safetensors
                       (+ .json), last.safetensors (resume state), done.json
    model.json         which weights the run releases
    report/            metrics.{json,csv,md} of the released model on the test sets,
                       networks.json (every network), curves.png; the JSON files
                       and the Markdown header record the machine and precision
                       (training and evaluation) and any collapsed validation
    cache/             decoded, resized images (unless data.cache_dir is set)

Calling ``train`` again with the same configuration resumes where it stopped;
a different configuration in an existing run directory is refused, so an
earlier run is never overwritten.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from pseudoseg.config import dump_config
from pseudoseg.run_config import run_config_class
from pseudoseg.data.pool import SamplePool, check_test_apart, load_pool
from pseudoseg.data.splits import Split, load_split, make_split, save_split, split_from_lists
from pseudoseg.engine.distributed import DistInfo, barrier, init_distributed
from pseudoseg.engine.device import describe_machine, machine_line, resolve_amp, resolve_device
from pseudoseg.engine.trainer import StageResult, Trainer
from pseudoseg.errors import UserError
from pseudoseg.progress import console_print, task_bars
from pseudoseg.fileio import disk_errors, is_temporary_name, remove_temporary_files, write_json, write_text
from pseudoseg.methods.registry import get_method
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.models import NetworkRecipe

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig


@dataclass
class RunResult:
    run_dir: Path
    released: str
    networks: dict[str, Path]
    metrics: dict[str, Any] | None
    """The released model's report (``report/metrics.json``), when test sets were given."""
    budget: dict[str, Any] | None = None
    """What the run's stages spent (``budget.json``, see :func:`run_budget`)."""


def run_budget(stages: list[StageResult], run_dir: Path, released: list[tuple[StageResult, ...]] | None = None) -> dict[str, Any]:
    """Optimiser steps and training images of every stage a run trained or reused, and their totals.

    A stage reused from another run (``method.teacher_run``) counts: the run's
    model depends on it. Stages are named by their folder relative to the run
    (or the path of the run they were taken from).

    ``released``: the lineage of each released weights file (several for an
    ensemble): the stages they were trained in, fine-tuned from, down to a fresh
    start. ``released_steps`` is then what those weights received, the steps of
    every stage of those lineages, each counted once; ``steps`` is everything
    the run spent. Self-learning that continues from round to round releases
    a model of ``steps`` steps; ATSO that restarts every round from the
    labeled-only model releases one of M0 + one round.
    """

    def name(stage: StageResult) -> str:
        try:
            return str(stage.stage_dir.resolve().relative_to(Path(run_dir).resolve()))
        except ValueError:
            return str(stage.stage_dir)

    per_stage = {name(stage): {**stage.budget, "lineage_steps": stage.lineage_steps} for stage in stages}
    budget: dict[str, Any] = {
        "steps": sum(stage["steps"] for stage in per_stage.values()),
        "images": sum(stage["images"] for stage in per_stage.values()),
    }
    if released:
        lineage = {name(ancestor): ancestor for stages_of in released for ancestor in stages_of}
        budget["released_steps"] = sum(ancestor.budget["steps"] for ancestor in lineage.values())
        budget["released_stages"] = list(lineage)
    budget["stages"] = per_stage
    return budget


# Where and how fast a run executes, not what it computes: a run may resume with
# other values (on another machine, with more threads, with TensorBoard on).
RUNTIME_KEYS = frozenset({"device", "train.num_threads", "train.tensorboard", "train.log_every"})


def _first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in list(old) + [k for k in new if k not in old]:
            if f"{prefix}{key}" in RUNTIME_KEYS:
                continue
            found = _first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if found:
                return found
        return None
    return None if old == new else prefix.rstrip(".")


def check_inputs(config: RunConfig) -> None:
    """Every file and folder the configuration reads exists, and a 2-D test set holds no image of the
    training pool; checked before the run directory is written.

    Raises:
        UserError: naming the key and the path.
    """
    data = config.data
    folders = [("training", "data.train", data.train), *(("unlabeled", "data.unlabeled", folder) for folder in data.unlabeled)]
    files = [("data.split", data.split), ("data.labeled_list", data.labeled_list), ("data.unlabeled_list", data.unlabeled_list)]
    files += [("data.validation_list", data.validation_list), ("model.weights", config.model.weights)]
    for what, key, folder in folders:
        if not Path(folder).is_dir():
            raise UserError(f"{what} folder not found: {folder} ({key})")
    if data.test is not None and not Path(data.test).exists():
        raise UserError(f"test data not found: {data.test} (data.test)")
    for key, file in files:
        if file is not None and not Path(file).is_file():
            raise UserError(f"file not found: {file} ({key})")
    check_test_apart(data)  # a 2-D test image also in the training pool would inflate every score


# What a run writes before its first stage starts: a run directory holding only these
# never trained anything, and a corrected configuration may take it over.
_BEFORE_FIRST_STAGE = frozenset({"config.yaml", "split.json", "cache"})


def prepare_run_dir(config: RunConfig, dist: DistInfo, log: Callable[[Any], None] = console_print) -> Path:
    """Create the run directory, or check that an existing one holds this same run (or only
    the configuration of a run that never started a stage: it is taken over)."""
    run_dir = Path(config.run_dir)
    if dist.is_main:  # one process checks and writes; the others wait for it
        with disk_errors(run_dir):
            replaced = _claim_run_dir(config, run_dir)
        if replaced is not None:
            log(f"{run_dir}: held only the configuration of a run that never started a stage ({replaced} differed); replaced by this one")
    barrier(dist)
    return run_dir


def _claim_run_dir(config: RunConfig, run_dir: Path) -> str | None:
    """Check that ``run_dir`` is new or holds this same run; write its config.yaml.

    Returns the first differing key when a run that never started a stage was replaced.
    """
    config_file = run_dir / "config.yaml"
    replaced = None
    if config_file.is_file():
        previous = yaml.safe_load(config_file.read_text())
        try:  # keys added to pseudoseg since that run compare as their defaults
            previous = run_config_class().model_validate(previous).model_dump(mode="json")
        except ValueError:
            pass
        key = _first_difference(previous, config.model_dump(mode="json"))
        if key is not None:
            if any(path.name not in _BEFORE_FIRST_STAGE and not is_temporary_name(path.name) for path in run_dir.iterdir()):
                raise UserError(f"{run_dir}: holds a run with another configuration ({key} differs); choose a new run_dir")
            # no stage started: nothing to protect; its split may be of other data or settings
            (run_dir / "split.json").unlink(missing_ok=True)
            replaced = key
    elif run_dir.exists() and any(not is_temporary_name(path.name) for path in run_dir.iterdir()):
        raise UserError(f"{run_dir}: exists and is not a pseudoseg run directory; choose a new run_dir")
    # what a killed run was writing when it stopped (config.yaml included):
    # never renamed onto its target, never read
    if run_dir.exists():
        remove_temporary_files(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(config_file, dump_config(config))
    return replaced


def choose_split(config: RunConfig, pool: SamplePool, run_dir: Path) -> Split:
    """The run's split over the pool's units (images, or patient cases).

    Units without a true mask are always unlabeled. With ``data.labels``
    ``simulated`` (``auto`` when every unit has a mask and no ``data.unlabeled``
    folder is given) validation and labeled units are drawn among the masked
    ones exactly as :func:`make_split` draws them, and the units without a mask
    join U. With ``given``, validation is drawn among the masked units with the
    same seed and every other masked unit is labeled.

    Raises:
        UserError: if a split read from a manifest or lists makes a unit
            without a mask labeled or validation.
    """
    data = config.data
    units = pool.units()
    masked = pool.units_with_mask()
    unmasked = sorted(set(units) - set(masked))
    manifest = run_dir / "split.json"
    if manifest.is_file():
        split = load_split(manifest, ids=units)
        origin = str(manifest)
    elif data.split is not None:
        split = load_split(data.split, ids=units)
        origin = str(data.split)
    elif data.labeled_list is not None:
        split = split_from_lists(units, labeled=data.labeled_list, unlabeled=data.unlabeled_list, validation=data.validation_list)
        origin = str(data.labeled_list)
    else:
        origin = ""
        simulate = data.labels == "simulated" or (data.labels == "auto" and not unmasked and not data.unlabeled)
        if simulate:
            split = make_split(masked, labeled_fraction=data.labeled_fraction, val_fraction=data.val_fraction, seed=config.split_seed, validation=data.validation)
        else:  # given labels: validation carved out of the masks there are
            split = make_split(masked, labeled_fraction=1.0, val_fraction=data.val_fraction, seed=config.split_seed, validation="from_labeled")
            split = replace(split, labeled_fraction=None)
    missing = set(unmasked)
    for part in ("labeled", "validation"):
        wrong = [unit for unit in getattr(split, part) if unit in missing]
        if wrong:
            raise UserError(f"{origin}: {len(wrong)} {part} id{'s have' if len(wrong) > 1 else ' has'} no mask, e.g. '{wrong[0]}'")
    listed = set(split.labeled) | set(split.unlabeled) | set(split.validation)
    if not origin or data.unlabeled_list is None:  # images without a mask are unlabeled, whatever a list left out
        split = replace(split, unlabeled=split.unlabeled + tuple(unit for unit in unmasked if unit not in listed))
        listed |= missing
    sources = {folder: tuple(unit for unit in members if unit in listed) for folder, members in pool.unit_sources().items()}
    return replace(split, without_mask=tuple(unit for unit in split.unlabeled if unit in missing), sources=sources)


def split_line(config: RunConfig, split: Split, pool: SamplePool, unlabeled: np.ndarray, run_dir: Path) -> str:
    """The run's first line: the split's counts and where its labels come from."""
    noun = "cases" if config.data.geometry == "volumes" else "images"
    counts = f"{config.method.name}: {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled, {len(split.validation)} validation {noun}"
    if split.source == "lists":
        how = "split from lists"
    elif split.labels == "given":
        unused = "" if config.data.labels == "given" else f"; data.labeled_fraction {config.data.labeled_fraction:g} not used"
        how = f"labels as given: the {len(split.without_mask)} unlabeled have no mask{unused}"
    else:
        how = f"labels simulated: masks of {len(split.hidden_masks)} hidden (data.labeled_fraction {split.labeled_fraction:g}, split seed {split.seed})"
        if split.without_mask:
            how += f", {len(split.without_mask)} without a mask"
    scored = len(pool.with_true_masks(unlabeled))
    if get_method(config.method.name).uses_unlabeled and len(unlabeled):
        if scored == 0:
            how += "; pseudo-label Dice not computed (no true masks in U)"
        elif scored < len(unlabeled):
            how += f"; pseudo-label Dice on the {len(split.hidden_masks)} unlabeled {noun} with a true mask"
    return f"{counts} ({how}); {split.masks_line()}; run directory {run_dir}"


def _released_lineage(trainer: Trainer, weights: Path, stage: StageResult) -> tuple[StageResult, ...]:
    """The stages the released ``weights`` of ``stage`` received their steps in: where the stage kept
    its start, the start's own (the stage's steps did not reach them; the start may itself be a kept start)."""
    if stage.released_start(weights) and stage.start is not None:
        origin = trainer.stage_holding(stage.start)
        return _released_lineage(trainer, stage.start, origin) if origin is not None else ()
    return stage.lineage or (stage,)


def _indices(pool: SamplePool, units: tuple[str, ...]) -> np.ndarray:
    wanted = set(units)
    return np.array([index for index, group in enumerate(pool.groups) if group in wanted], dtype=np.int64)


def train(config: RunConfig, *, show_progress: bool = True, log: Callable[[Any], None] = console_print) -> RunResult:
    """Train the configured method, evaluate the released model, write the report. ``train.num_threads``
    holds for the run only: the process's thread count is restored afterwards."""
    threads = torch.get_num_threads()
    if config.train.num_threads:
        torch.set_num_threads(config.train.num_threads)
    try:
        return _train(config, show_progress=show_progress, log=log)
    finally:
        torch.set_num_threads(threads)


def _train(config: RunConfig, *, show_progress: bool, log: Callable[[Any], None]) -> RunResult:
    device = resolve_device(config.device)
    dist = init_distributed(device)
    check_inputs(config)  # before anything is written
    run_dir = prepare_run_dir(config, dist, log)
    pool = _decoded_pool(config, run_dir, dist, show_progress)
    split = choose_split(config, pool, run_dir)
    if dist.is_main and not (run_dir / "split.json").is_file():
        save_split(split, run_dir / "split.json")
    if not dist.is_main:  # one copy of every line, whatever the number of processes
        log = _silent
    log(split_line(config, split, pool, _indices(pool, split.unlabeled), run_dir))
    in_channels, out_channels = config.data.in_channels, config.data.class_set.channels
    network = NetworkRecipe.from_config(config.model, in_channels, out_channels)
    trainer = Trainer(config, pool, run_dir, dist=dist, network=network, show_progress=show_progress)
    indices = {part: _indices(pool, getattr(split, part)) for part in ("labeled", "unlabeled", "validation")}
    session = RunSession(config=config, run_dir=run_dir, pool=pool, split=split, trainer=trainer, log=log, **indices)
    outcome = get_method(config.method.name).recipe(session)
    budget = _release(session, outcome)
    metrics = None
    report = run_dir / "report" / "metrics.json"
    if config.data.test is not None and dist.is_main:
        if all((run_dir / "report" / name).is_file() for name in REPORT_FILES):  # a finished run started again: its report stands
            metrics = json.loads(report.read_text())
        else:
            metrics = evaluate_run(run_dir, config, show_progress=show_progress, log=log)
    barrier(dist)
    return RunResult(run_dir, outcome.released, outcome.networks, metrics, budget)


def _decoded_pool(config: RunConfig, run_dir: Path, dist: DistInfo, show_progress: bool) -> SamplePool:
    """The training pool, decoded into the cache by the main process first (the others then read it)."""
    cache_dir = config.data.cache_dir or run_dir / "cache"
    if dist.is_main:
        with task_bars("decoding the training pool") as bars:
            pool = load_pool(config.data, cache_dir, progress=bars if show_progress else None)
    barrier(dist)
    return pool if dist.is_main else load_pool(config.data, cache_dir)


def _release(session: RunSession, outcome: RecipeOutcome) -> dict[str, Any]:
    """Write what the run releases (``model.json``), its budget (``budget.json``) and its curves;
    returns the budget."""
    from pseudoseg.inference import write_model_manifest

    trainer, run_dir, dist = session.trainer, session.run_dir, session.trainer.dist
    released = outcome.ensemble or [outcome.networks[outcome.released]]
    holding = [trainer.stage_holding(path) for path in released]
    budget = run_budget(trainer.stages, run_dir, [_released_lineage(trainer, path, stage) for path, stage in zip(released, holding) if stage is not None])
    # the released weights are their stage's start (the labeled-only model, or the model a
    # round started from): no semi-supervised checkpoint beat it on validation
    budget["kept_start"] = all(stage is not None and stage.released_start(path) for path, stage in zip(released, holding))
    budget["masks_used"] = session.split.masks_used
    if budget["kept_start"]:
        session.log(f"{session.config.method.name}: the released model is its stage's start, kept: no checkpoint trained from it scored higher on validation")
    if dist.is_main:
        write_model_manifest(run_dir, outcome.released, outcome.networks, outcome.ensemble)
        write_json(run_dir / "budget.json", budget)
        no_truth = len(session.unlabeled) and not len(session.pool.with_true_masks(session.unlabeled))
        plot_run_curves(run_dir, note="no true masks in U: pseudo-label Dice not computed" if no_truth else None)
    barrier(dist)
    return budget


REPORT_FILES = ("metrics.json", "metrics.csv", "metrics.md", "networks.json")
"""The test-set report of a run (``report/``); a run killed while writing them writes them all again."""


def _silent(_: Any) -> None:
    pass


def evaluate_run(run_dir: Path, config: RunConfig, *, show_progress: bool = True, log: Callable[[Any], None] = console_print) -> dict[str, Any]:
    """Score every network the run released on the test sets; the released one is the report."""
    from pseudoseg.evaluation.evaluate import evaluate
    from pseudoseg.evaluation.metrics import conventions_for
    from pseudoseg.evaluation.report import finite_or_none, render_table, write_report
    from pseudoseg.inference import Predictor

    manifest = json.loads((run_dir / "model.json").read_text())
    names = list(manifest["networks"])
    if manifest.get("ensemble"):
        names.insert(0, "ensemble")
    predictors = {name: Predictor.load(run_dir / "model.json", device=config.device, amp=config.train.amp, network=name) for name in names}
    with task_bars("evaluating") as bars:
        results = evaluate(predictors, config.data.test, config.eval, progress=bars if show_progress else None)
    released = "ensemble" if manifest.get("ensemble") else manifest["released"]
    report_dir = run_dir / "report"
    device = resolve_device(config.device)
    provenance = {
        "machine": describe_machine(device, resolve_amp(config.train.amp, device)),
        "training_machines": training_machines(run_dir),
        "collapse": collapsed_validations(run_dir),
    }
    extra = {"run_dir": str(run_dir), "method": config.method.name, "network": released, "seed": config.seed, **provenance}
    if (run_dir / "budget.json").is_file():
        extra["budget"] = json.loads((run_dir / "budget.json").read_text())
    classes = predictors[released].preprocessing.classes
    if not classes.is_binary:
        extra["classes"] = classes.to_json()
    notes = provenance_notes(provenance)
    if (run_dir / "split.json").is_file():
        split = Split.from_json(json.loads((run_dir / "split.json").read_text()), origin=str(run_dir / "split.json"))
        extra["masks_used"] = split.masks_used
        notes.insert(0, f"Masks used: {split.masks_line().removeprefix('masks used: ')}.")
    if extra.get("budget", {}).get("kept_start"):
        notes.append("**Kept start**: the released model is the start of its stage (no checkpoint trained from it scored higher on validation).")
    conventions = conventions_for(classes, config.data.geometry)
    write_report(results[released], report_dir / "metrics", title=f"{config.method.name} ({released})", extra=extra, notes=notes, conventions=conventions)
    write_json(report_dir / "networks.json", finite_or_none({"released": released, "networks": results, **provenance}))
    for line in notes:
        if line.startswith("**Collapse**"):
            log(line.replace("**", ""))
    log(render_table(results[released], title=f"{config.method.name}: test sets ({released} network)"))
    return json.loads((report_dir / "metrics.json").read_text())


def _stage_records(run_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(stage folder, its done.json) of every finished stage of the run, in name order."""
    return [(path.parent, json.loads(path.read_text())) for path in sorted(Path(run_dir).glob("*/done.json"))]


def training_machines(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Stage name -> the machine and precision its training finished on (see ``describe_machine``)."""
    return {stage.name: done["machine"] for stage, done in _stage_records(run_dir) if "machine" in done}


def collapsed_validations(run_dir: Path) -> dict[str, dict[str, Any]]:
    """``"<stage>/<network>"`` -> ``{"steps", "kind", "selected"}`` for every network that collapsed at a validation.

    ``kind`` is ``empty`` (background on every validation pixel) or ``full``
    (or both, comma-separated); ``selected`` tells whether the stage's best
    checkpoint of that network is itself collapsed (only when every
    validation of it was).
    """
    from pseudoseg.engine.trainer import read_metrics

    found: dict[str, dict[str, Any]] = {}
    for stage, done in _stage_records(run_dir):
        for record in read_metrics(stage / "metrics.jsonl"):
            for key, kind in record.items():
                if record.get("kind") != "val" or not key.endswith("/collapse"):
                    continue
                network = key.removesuffix("/collapse")
                entry = found.setdefault(f"{stage.name}/{network}", {"steps": [], "kind": [], "selected": done["best"].get(network, {}).get("collapse") is not None})
                entry["steps"].append(record["step"])
                if kind not in entry["kind"]:
                    entry["kind"].append(kind)
    return {name: {**entry, "kind": ",".join(entry["kind"])} for name, entry in found.items()}


def provenance_notes(provenance: dict[str, Any]) -> list[str]:
    """Markdown lines for a report's header: where it was computed, in which precision, and any collapse."""
    notes = [f"Evaluated on {machine_line(provenance['machine'])}."]
    trained = provenance.get("training_machines") or {}
    lines = {stage: machine_line(machine) for stage, machine in trained.items()}
    if len(set(lines.values())) == 1:
        notes.append(f"Trained on {next(iter(lines.values()))}.")
    else:
        notes += [f"Stage {stage} trained on {line}." for stage, line in lines.items()]
    for name, entry in (provenance.get("collapse") or {}).items():
        what = {"empty": "background", "full": "foreground"}.get(entry["kind"], entry["kind"])
        chosen = "every validation collapsed, so its selected checkpoint is collapsed too" if entry["selected"] else "its selected checkpoint is not collapsed"
        steps = ", ".join(str(step) for step in entry["steps"])
        notes.append(f"**Collapse**: {name} predicted {what} on every validation pixel at step {steps}; {chosen}.")
    return notes


def plot_run_curves(run_dir: Path, *, note: str | None = None) -> Path | None:
    """``report/curves.png``: validation Dice of every network and pseudo-label Dice, per stage."""
    from pseudoseg.evaluation.plots import plot_stage_curves

    stages = sorted(path.parent for path in Path(run_dir).glob("*/metrics.jsonl"))
    if not stages:
        return None
    return plot_stage_curves(stages, Path(run_dir) / "report" / "curves.png", note=note)

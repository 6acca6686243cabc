"""ATSO and self-learning (TSO): rounds of relabelling and fine-tuning (Method B).

Both methods start from a model trained on the labeled split only (M0) whose
predictions on the unlabeled set U are the first pseudo labels, then run
rounds of "fine-tune on L plus pseudo-labeled images, render new labels":

* **TSO** (self-learning): every round relabels all of U with the model it
  starts from, fine-tunes that same model on L ∪ U, and continues from it.
  The model learns from its own fit to the very images it trained on, which
  is the "lazy learning" ATSO names.
* **ATSO** (Huo et al., 2021): U is split into K disjoint subsets (whole
  patient cases for CT). Round ``r`` (1-based) fine-tunes on L plus subset
  ``k = (r - 1) mod K`` with that subset's current labels, then relabels
  subset ``(k + 1) mod K`` (= ``r mod K``), which it did not train on.

Where a round starts (``method.init``) is the paper's first change, "break up
the continual learning from teacher to student":

* ``labeled`` (default): from M0, the labeled-only model;
* ``initial``: from the weights M0 started from (``model.weights`` /
  ``model.encoder_weights``, else the run's seeded initialisation): the
  paper's student, which starts from the pretrained network, not from its
  teacher;
* ``continue``: from the previous round's model, which rendered the very
  labels the round trains on: self-training on one subset at a time, kept as
  an ablation and flagged in ``rounds.jsonl`` (``own_labels``).

The budget is explicit: each ``rounds.jsonl`` record holds the round's
``steps``, the ``released_steps`` its model received (its own and those of
every model it descends from: M0 + one round for ``labeled``, one round for
``initial``, everything so far for ``continue`` and TSO) and the run's
``total_steps`` so far; ``budget.json`` holds the same for the released model.

The schedule is a pure function (:func:`atso_schedule`, :func:`tso_schedule`;
TSO is the one-subset, continuing case of the same schedule) that the recipe
follows and checks as it goes. Every round's model is its best validation
checkpoint of the raw network (chosen on V only; there is no momentum copy).

Run directory, besides the usual files::

    round_0/              the labeled-only stage (absent with method.teacher_run)
    round_<r>/            the fine-tuning stage of round r (resumable, done.json)
    labels/subsets.json   the K subsets of U (case / image ids) and their seed
    labels/round_0.npy    labels of all of U rendered by M0 (+ .json: provenance)
    labels/round_<r>.npy  labels of the subset relabelled in round r, by M_r
    rounds.jsonl          per round: provenance and lazy-learning diagnostics
    report/rounds.png     those diagnostics against the round

Each ``rounds.jsonl`` record holds the provenance of the round, as planned
(``train_subsets``, ``relabel_subset``, ``init_from``, ``labels_from``) and as
actually used (``init_weights``, ``labels_file``, ``labels_rendered_by``,
``weights``, ``relabelled_by``), and its diagnostics, all Dice at 0.5 ("per
image": averaged over images or slices like validation, 1 when both are
empty; "pooled": all pixels of the subset at once):

* ``agreement_dice`` / ``agreement_dice_pooled``: the relabelled subset's new
  labels against its previous ones (close to 1: lazy learning), and
  ``changed_fraction``, the share of its pixels that flipped;
* ``pseudo_dice`` / ``pseudo_dice_pooled``: the new labels against the true
  masks of U; ``previous_pseudo_dice`` / ``previous_pseudo_dice_pooled``: the
  subset's previous labels against them, and ``gain`` / ``gain_pooled``, the
  difference: what the round bought on the subset it relabels ("lazy" as a
  number: a round that only reproduces its labels gains nothing);
  ``pseudo_dice_all``: all current labels of U against the true masks (over
  the images of U that have a true mask; ``null`` where none has);
* ``val_dice`` (at ``val_step``): the round model on V, in the validation
  convention that chose it (per case, 3-D, for volumes; per image for 2-D
  data; see :mod:`pseudoseg.engine.validation`).

A label file that exists is complete (written under a temporary name and
renamed), and every round is a stage with ``done.json``, so a killed run
restarted with the same configuration skips finished rounds, renders only
missing label files and ends with the same weights as an uninterrupted run.
The true masks of U are read for the diagnostics only, never for training.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from pydantic import Field

from pseudoseg.config import MethodSection, TrainConfig
from pseudoseg.engine.distributed import barrier
from pseudoseg.engine.labels import harden
from pseudoseg.engine.strategy import Batch, Forward, StageSpec, StoredLabels, Strategy, Views
from pseudoseg.engine.trainer import StageResult, read_metrics
from pseudoseg.errors import UserError
from pseudoseg.fileio import write_json, write_text
from pseudoseg.methods.label_store import LabelFiles, PseudoLabelStore, label_agreement
from pseudoseg.methods.registry import GridFamily, GridRow, LabeledStage, register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import LabeledStart, SupervisedConfig, finished_stage, train_labeled_stage

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig


class RoundsConfig(MethodSection):
    """ATSO and self-learning (TSO): rounds of relabelling and fine-tuning (Method B)."""

    name: Literal["atso", "tso"] = "atso"
    subsets: int = Field(2, ge=2)
    """ATSO: number K of disjoint unlabeled subsets."""
    rounds: int = Field(4, ge=1)
    """Rounds R after the labeled-only model."""
    train_on: Literal["others", "one"] = "others"
    """ATSO with K >= 3: what a round fine-tunes on. ``others``: every subset but the one it
    relabels afterwards (K - 1 subsets, each with its current labels), the paper's two halves
    generalised; ``one``: the single subset after the held-out one, leaving K - 2 idle. The
    same with K = 2."""
    round_steps: int = Field(200, ge=1)
    """Training steps of every round. The released model of TSO and of ``init:
    continue`` has had M0 + R x round_steps steps; of ``init: labeled``, M0 +
    round_steps; of ``init: initial``, round_steps (``budget.json``)."""
    init: Literal["labeled", "initial", "continue"] = "labeled"
    """ATSO: where each round starts. ``labeled``: the labeled-only model M0;
    ``initial``: the weights M0 started from (``model.weights`` /
    ``model.encoder_weights``, else the run's seeded initialisation), the paper's
    student that does not continue from its teacher; ``continue``: the previous
    round's model, which rendered the labels it trains on (self-training on one
    subset at a time, flagged ``own_labels`` in ``rounds.jsonl``). TSO always continues."""
    labels: Literal["hard", "soft"] = "hard"
    """Stored pseudo labels: thresholded at 0.5, or probabilities."""
    final: Literal["last", "ensemble"] = "last"
    """``ensemble``: average the predictions of the last K round models."""
    teacher_run: Path | None = None
    """A finished supervised run to start from (else trained in ``<run_dir>/round_0``)."""
    teacher_steps: int | None = Field(None, ge=1)
    """Steps of the labeled-only stage (default: ``train.steps``)."""
    beta: float = Field(1.0, ge=0)
    """Weight of the pseudo-labeled loss."""

# --------------------------------------------------------------------------- schedule


@dataclass(frozen=True)
class RoundPlan:
    """What one round does. Models are named by round: 0 is the labeled-only model M0."""

    round: int
    """1-based round number r."""
    train_subsets: tuple[int, ...]
    """Subsets of U fine-tuned on (each with its current labels)."""
    relabel_subset: int
    """Subset of U relabelled by this round's model afterwards."""
    init_from: int | None
    """Round whose model this round starts from (``None``: M0's initial weights)."""
    labels_from: tuple[int, ...]
    """Per subset trained on: the round whose model rendered its labels."""


def atso_schedule(
    rounds: int, subsets: int, *, init: Literal["labeled", "initial", "continue"] = "labeled", train_on: Literal["others", "one"] = "others"
) -> list[RoundPlan]:
    """The ATSO rounds: round r relabels subset r mod K and, before, trains on every other
    subset (``train_on="others"``) or on subset (r - 1) mod K alone (``"one"``).

    All subsets start with M0's labels. With K = 2 (both alike): round 1 trains on U0
    (labels of M0) and relabels U1; round 2 trains on U1 (labels of M1) and
    relabels U0; round 3 trains on U0 (labels of M2); and so on. With K = 3 and
    ``others``: round 1 trains on U0 and U2 (labels of M0) and relabels U1; round 2
    on U0 (M0) and U1 (M1), relabels U2; round 3 on U1 (M1) and U2 (M2), relabels U0.

    Args:
        rounds: R >= 1.
        subsets: K >= 1 (K = 1 with ``init="continue"`` is self-learning).
        init: ``labeled``: every round starts from M0; ``initial``: from the
            weights M0 started from (``init_from`` None); ``continue``: from
            the previous round's model.
        train_on: see above.
    """
    if rounds < 1 or subsets < 1:
        raise ValueError(f"need rounds >= 1 and subsets >= 1, got rounds={rounds}, subsets={subsets}")
    starts = {"labeled": lambda r: 0, "initial": lambda r: None, "continue": lambda r: r - 1}
    if init not in starts:
        raise ValueError(f"init must be one of {', '.join(starts)}, got {init!r}")
    if train_on not in ("others", "one"):
        raise ValueError(f"train_on must be others or one, got {train_on!r}")
    producer = [0] * subsets  # which round's model rendered each subset's current labels
    plans = []
    for r in range(1, rounds + 1):
        relabel = r % subsets
        trained = ((r - 1) % subsets,)
        if train_on == "others" and subsets > 2:
            trained = tuple(k for k in range(subsets) if k != relabel)
        plans.append(RoundPlan(r, trained, relabel, starts[init](r), tuple(producer[k] for k in trained)))
        producer[relabel] = r
    return plans


def tso_schedule(rounds: int) -> list[RoundPlan]:
    """Self-learning: round r trains M_{r-1} on all of U with M_{r-1}'s labels, then relabels U."""
    return atso_schedule(rounds, 1, init="continue")


def split_subsets(unlabeled: np.ndarray, groups: Sequence[str], subsets: int, *, seed: int) -> list[np.ndarray]:
    """Split the unlabeled pool indices into ``subsets`` disjoint parts, keeping groups whole.

    Groups (patient cases for CT, the image itself for photographs) are
    shuffled with ``numpy.random.default_rng(seed)`` and dealt in that order,
    each to the subset with the fewest samples so far (ties: lowest subset),
    so subsets are balanced in slices, not only in cases.

    Returns:
        ``subsets`` sorted arrays of pool indices that together cover ``unlabeled``.

    Raises:
        UserError: when U holds fewer groups than subsets.
    """
    unlabeled = np.sort(np.asarray(unlabeled, dtype=np.int64))
    members: dict[str, list[int]] = {}
    for index in unlabeled.tolist():
        members.setdefault(groups[index], []).append(index)
    units = sorted(members)
    if len(units) < subsets:
        raise UserError(f"method.subsets: {subsets} subsets need at least {subsets} unlabeled cases or images; the unlabeled split has {len(units)}")
    order = np.random.default_rng(int(seed)).permutation(len(units))
    parts: list[list[int]] = [[] for _ in range(subsets)]
    for unit in order:
        target = min(range(subsets), key=lambda k: (len(parts[k]), k))
        parts[target].extend(members[units[unit]])
    return [np.sort(np.asarray(part, dtype=np.int64)) for part in parts]


# --------------------------------------------------------------------------- strategy


class RoundStrategy(Strategy):
    """Fine-tuning within a round: ``L_sup(x_l, y_l) + beta * L(x_u, stored label of x_u)``.

    The trainer reads the stored labels of each unlabeled batch and applies the
    batch's geometric augmentation to them; hard labels are thresholded again
    after an affine warp (which interpolates them).
    """

    uses_unlabeled = True

    def __init__(self, labels: StoredLabels, *, kind: Literal["hard", "soft"] = "hard", beta: float = 1.0) -> None:
        self.views = Views(stored_labels=labels)
        self.kind = kind
        self.beta = beta

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        target = batch.unlabeled_targets
        if target is None:
            raise RuntimeError("the trainer handed no stored labels to a rounds stage")
        if self.kind == "hard":  # warped by the batch's geometry: hard again
            target = harden(target)
        logits = forward(torch.cat([batch.images, batch.unlabeled]))
        labeled = batch.images.shape[0]
        criterion = self.context.criterion
        loss_sup = criterion(logits[:labeled], batch.masks)
        loss_pseudo = criterion(logits[labeled:], target)
        return loss_sup + self.beta * loss_pseudo, {"loss_sup": loss_sup.detach(), "loss_pseudo": loss_pseudo.detach()}


# --------------------------------------------------------------------------- recipe

LABELED_NETWORK = "ema"
"""The network of the labeled-only stage that is M0 (its released one: what the supervised row reports)."""

INITIAL_WEIGHTS = "initial"
"""How a round's ``init_weights`` reads when it starts from M0's initial weights (``method.init: initial``)."""


@dataclass(frozen=True)
class _LabelFile:
    round: int
    path: Path
    indices: np.ndarray
    rendered_by: str
    channels: int

    def open(self) -> PseudoLabelStore:
        return PseudoLabelStore(self.path, self.indices, channels=self.channels)


@dataclass(frozen=True)
class _RoundInputs:
    """What a round fine-tunes on and from."""

    plan: RoundPlan
    used: tuple[_LabelFile, ...]
    """The current labels of each subset it trains on."""
    start: Path | None
    """The weights it starts from (None: the run's fresh initialisation, which M0 started from)."""
    unlabeled: np.ndarray
    """The pool indices of the subsets it trains on, sorted."""

    def open_labels(self, subsets: list[np.ndarray]) -> PseudoLabelStore | LabelFiles:
        """The labels it trains on, opened: one file, or each subset's from its current file."""
        if len(self.used) == 1:
            return self.used[0].open()
        opened = {used.path: used.open() for used in self.used}  # M0's file serves every subset it still labels
        return LabelFiles([(opened[used.path], subsets[k]) for k, used in zip(self.plan.train_subsets, self.used)])

    def provenance(self, run_dir: Path) -> dict[str, Any]:
        """The label files it trains on and who rendered them (one subset: a file and a name, as
        rounds always recorded them; several: lists)."""
        files = [_relative(used.path, run_dir) for used in self.used]
        by = [used.rendered_by for used in self.used]
        if len(self.used) == 1:
            return {"train_subset": self.plan.train_subsets[0], "labels_file": files[0], "labels_rendered_by": by[0]}
        return {"train_subsets": list(self.plan.train_subsets), "labels_files": files, "labels_rendered_by": by}


@dataclass(frozen=True)
class _Relabelling:
    """The subset a round relabels: its labels before the round and the ones the round's model rendered."""

    previous: _LabelFile
    fresh: _LabelFile


# --------------------------------------------------------------------------- grid


def rounds_start(method: RoundsConfig, train: TrainConfig) -> LabeledStart:
    """Round 0, the labeled-only stage M0: the supervised defaults, ``teacher_steps`` (default
    ``train.steps``) of ``train.batch_size`` (the grid's supervised row is exactly this stage)."""
    defaults = SupervisedConfig()
    return LabeledStart(defaults.ema(defaults.ema_momentum), method.teacher_steps or train.steps, train.batch_size)


def _grid_labeled_stage(base: RunConfig) -> LabeledStage:
    return rounds_start(base.method, base.train).as_grid_row()


def _rounds_rows(base: RunConfig) -> list[GridRow]:
    """TSO, ATSO from each start, with another K and with the ensemble, at TSO's total steps;
    ATSO from each start at TSO's released-model steps."""
    method = base.method
    subsets = method.subsets
    # TSO's released model and its whole run both have M0 + R x s steps. ATSO rows with
    # round_steps s spend the same total; "-full" rows give every round the steps that
    # make the released model's equal TSO's (M0's actual steps are read from the seed's
    # supervised run, which may have stopped early).
    R, s = method.rounds, method.round_steps
    other_k = 3 if subsets != 3 else 2

    def initial_full(raw: dict[str, Any], teacher_run: Path) -> dict[str, Any]:
        return {**raw, "name": "atso", "subsets": subsets, "final": "last", "init": "initial", "round_steps": _stage_steps(teacher_run) + R * s}

    return [
        GridRow.settings("tso", name="tso", subsets=subsets, final="last"),
        GridRow.settings("atso", name="atso", subsets=subsets, final="last", init="labeled", round_steps=s),
        GridRow.settings("atso-initial", name="atso", subsets=subsets, final="last", init="initial", round_steps=s),
        GridRow.settings("atso-continue", name="atso", subsets=subsets, final="last", init="continue", round_steps=s),
        GridRow.settings(f"atso-k{other_k}", name="atso", subsets=other_k, final="last", init="labeled", round_steps=s),
        GridRow.settings("atso-ensemble", name="atso", subsets=subsets, final="ensemble", init="labeled", round_steps=s),
        GridRow.settings("atso-full", name="atso", subsets=subsets, final="last", init="labeled", round_steps=R * s),
        GridRow("atso-initial-full", initial_full),
    ]


def _stage_steps(run_dir: Path) -> int:
    """Optimiser steps a finished supervised run spent (its ``budget.json``)."""
    path = Path(run_dir) / "budget.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; the seed's supervised run must finish first")
    return int(json.loads(path.read_text())["steps"])


def _plot_rounds(out: Path, runs: dict[str, dict[str, str]]) -> None:
    from pseudoseg.evaluation.plots import plot_grid_rounds

    plot_grid_rounds(out, runs)


ROUNDS_GRID = GridFamily(
    name="rounds",
    summary="Method B's grid: supervised, TSO, ATSO from each start, another K, the ensemble, at both budgets",
    methods=("atso", "tso"),
    labeled_stage=_grid_labeled_stage,
    rows=(_rounds_rows,),
    reference="tso",
    plots=_plot_rounds,
)
"""Supervised on the labeled split, self-learning (TSO), ATSO from each start (the
labeled-only model, its initial weights, the previous round), with another K and with
the ensemble of the last K models, each at TSO's total steps, ATSO from each start at
TSO's *released-model* steps (each round a full schedule), and the 100 % upper bound.
Every table shows both budgets and the per-seed differences from TSO."""

# --------------------------------------------------------------------------- recipes


@register(
    "atso",
    section=RoundsConfig,
    summary="ATSO (Huo et al., 2021): disjoint subsets of U, each relabelled by a model that did not train on it.",
    families=(ROUNDS_GRID,),
    recipes=("ct_atso_synthetic.yaml", "ct_atso_full_synthetic.yaml", "ct_atso_pancreas.yaml", "mri_atso_hippocampus.yaml", "acdc_cpu.yaml", "acdc_gpu.yaml"),
)
def run_atso(session: RunSession) -> RecipeOutcome:
    """ATSO: K disjoint subsets of U, each relabelled by a model that did not train on it."""
    method: RoundsConfig = session.config.method
    session.require_unlabeled()
    if method.init == "continue":
        session.log(
            "method.init: continue — every round fine-tunes the model that rendered its labels: self-training on one "
            "subset at a time, not ATSO's break-up (init: labeled or initial); rounds.jsonl flags it (own_labels)"
        )
    subsets = split_subsets(session.unlabeled, session.pool.groups, method.subsets, seed=session.config.split_seed)
    return run_rounds(session, atso_schedule(method.rounds, method.subsets, init=method.init, train_on=method.train_on), subsets, init=method.init)


@register(
    "tso",
    section=RoundsConfig,
    summary="Self-learning (TSO): every round relabels all of U with the current model and fine-tunes that model on it.",
    recipes=("ct_tso_synthetic.yaml", "mri_tso_hippocampus.yaml"),
)
def run_tso(session: RunSession) -> RecipeOutcome:
    """Self-learning: each round relabels all of U with the current model and fine-tunes it on it.

    ``method.subsets`` and ``method.init`` do not apply (U is one subset and
    every round continues); with ``final: ensemble`` the last ``subsets``
    round models are averaged, as for ATSO, so the two stay comparable.
    """
    session.require_unlabeled()
    return run_rounds(session, tso_schedule(session.config.method.rounds), [np.sort(session.unlabeled)], init="continue")


def run_rounds(session: RunSession, plans: list[RoundPlan], subsets: list[np.ndarray], *, init: str) -> RecipeOutcome:
    """Follow ``plans`` over ``subsets`` of U (pool indices), resuming whatever is on disk.

    ``init`` names where rounds start (``labeled``, ``initial`` or ``continue``)
    for the records; the plans say it round by round.
    """
    config = session.config
    method: RoundsConfig = config.method
    dist = session.dist
    run_dir = Path(session.run_dir)
    _record_subsets(run_dir / "labels" / "subsets.json", subsets, session, seed=config.split_seed)

    labeled_stage = _labeled_stage(session)
    # M0 is the labeled-only stage's released network (its momentum copy), the model
    # the grid's supervised row reports and every other row starts from
    weights: dict[int, Path] = {0: labeled_stage.weights(LABELED_NETWORK)}
    stages: dict[int, StageResult] = {0: labeled_stage}

    everything = np.sort(np.concatenate(subsets))
    initial = _ensure_labels(session, 0, weights[0], everything)
    current: dict[int, _LabelFile] = {k: initial for k in range(len(subsets))}
    log = RoundsLog(run_dir / "rounds.jsonl", enabled=dist.is_main)
    if dist.is_main and 0 not in log:
        log.add(_initial_record(session, stages[0], initial, current, subsets))
        _plot(run_dir, log)

    for plan in plans:
        used = tuple(current[k] for k in plan.train_subsets)
        for k, file, planned in zip(plan.train_subsets, used, plan.labels_from):
            if file.round != planned:  # the files on disk must tell the plan's story
                raise RuntimeError(f"round {plan.round}: subset {k} holds labels of round {file.round}, the schedule says {planned}")
        start = None if plan.init_from is None else weights[plan.init_from]
        inputs = _RoundInputs(plan, used, start, np.sort(np.concatenate([subsets[k] for k in plan.train_subsets])))
        labels = inputs.open_labels(subsets)
        spec = _round_spec(session, inputs, labels, m0=weights[0])
        try:
            stages[plan.round] = session.fit(spec)
        finally:
            labels.close()
        if start is None and stages[0].init_digest and stages[plan.round].init_digest != stages[0].init_digest:
            raise UserError(
                f"method.init: initial, but round {plan.round} did not start from the weights the labeled-only model "
                f"started from ({stages[0].stage_dir} was trained with another seed or model.weights); use a new run_dir"
            )
        weights[plan.round] = stages[plan.round].weights("raw")
        previous = current[plan.relabel_subset]
        fresh = _ensure_labels(session, plan.round, weights[plan.round], subsets[plan.relabel_subset])
        current[plan.relabel_subset] = fresh
        if dist.is_main and plan.round not in log:
            own_labels = any(ancestor is stages[producer] for producer in plan.labels_from for ancestor in stages[plan.round].lineage)
            record = _round_record(session, inputs, stages[plan.round], _Relabelling(previous, fresh), current, subsets)
            log.add({**record, "init": init, "own_labels": own_labels})
            _plot(run_dir, log)
        barrier(dist)

    if dist.is_main:  # a run killed while drawing it left the previous picture, or none
        _plot(run_dir, log)
    return _released(method, plans, weights, run_dir)


def _labeled_stage(session: RunSession) -> StageResult:
    """Round 0, the labeled-only stage: ``teacher_run``'s, or trained here as ``round_0``."""
    method: RoundsConfig = session.config.method
    if method.teacher_run is not None:
        return finished_stage(method.teacher_run, session)
    return train_labeled_stage(session, "round_0", rounds_start(method, session.config.train))


def _round_spec(session: RunSession, inputs: _RoundInputs, labels: StoredLabels, *, m0: Path) -> StageSpec:
    """Round ``inputs.plan.round``: fine-tune ``inputs.start`` on L and the subsets ``inputs.unlabeled``
    with their ``labels`` (the label files ``inputs.used``, opened)."""
    run_dir = Path(session.run_dir)
    method: RoundsConfig = session.config.method
    plan, start = inputs.plan, inputs.start
    describe = {"round": plan.round, **inputs.provenance(run_dir), "init_weights": _relative(start, run_dir) if start is not None else INITIAL_WEIGHTS}
    spec = session.semi_supervised_stage(f"round_{plan.round}", RoundStrategy(labels, kind=method.labels, beta=method.beta), steps=method.round_steps, unlabeled=inputs.unlabeled, describe=describe)
    return spec.starting_from(start, baseline=m0 if start is None else None)  # a round from trained weights must beat them


def _released(method: RoundsConfig, plans: list[RoundPlan], weights: dict[int, Path], run_dir: Path) -> RecipeOutcome:
    """The last round's model (or, ``final: ensemble``, the last K rounds' models), and M0 beside it."""
    networks = {"last": weights[plans[-1].round]}
    if _inside(weights[0], run_dir):  # a teacher_run's weights are reported by that run
        networks["labeled"] = weights[0]
    ensemble = None
    if method.final == "ensemble":
        count = min(method.subsets, len(plans))
        ensemble = [weights[plan.round] for plan in plans[-count:]]
    return RecipeOutcome("last", networks, ensemble)


# --------------------------------------------------------------------------- label files


def _ensure_labels(session: RunSession, round_: int, weights: Path, indices: np.ndarray) -> _LabelFile:
    """``labels/round_<r>.npy``: labels of ``indices`` by the given weights (rendered unless already complete)."""
    channels = session.classes.channels
    run_dir = Path(session.run_dir)
    path = run_dir / "labels" / f"round_{round_}.npy"
    sidecar = path.with_suffix(".json")
    rendered_by = _relative(weights, run_dir)
    provenance = {"round": round_, "rendered_by": rendered_by, "labels": session.config.method.labels, "count": len(indices)}
    if path.is_file() and sidecar.is_file():
        recorded = json.loads(sidecar.read_text())
        if recorded != provenance:
            raise UserError(f"{path}: rendered by another model or setting ({recorded.get('rendered_by')}); delete the run's labels/ folder to render them again")
        return _LabelFile(round_, path, indices, rendered_by, channels)
    if session.dist.is_main:
        write_json(sidecar, provenance)  # before the labels: a label file never exists without it
    session.render_labels(path, weights, indices).close()
    return _LabelFile(round_, path, indices, rendered_by, channels)


def _record_subsets(path: Path, subsets: list[np.ndarray], session: RunSession, *, seed: int) -> None:
    groups = session.pool.groups
    payload = {"seed": seed, "subsets": [sorted({groups[i] for i in part.tolist()}) for part in subsets], "sizes": [len(part) for part in subsets]}
    if path.is_file():
        if json.loads(path.read_text()) != payload:
            raise UserError(f"{path}: the run's unlabeled subsets differ from the ones it started with; use a new run_dir")
    elif session.dist.is_main:
        write_json(path, payload)
    barrier(session.dist)


# --------------------------------------------------------------------------- diagnostics


class RoundsLog:
    """``rounds.jsonl``: one record per finished round (0: the labeled-only model), rewritten atomically."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path = Path(path)
        self.enabled = enabled
        self.records: dict[int, dict[str, Any]] = {r["round"]: r for r in read_rounds(self.path)} if enabled else {}

    def __contains__(self, round_: int) -> bool:
        return round_ in self.records

    def add(self, record: dict[str, Any]) -> None:
        self.records[record["round"]] = record
        if self.enabled:
            write_text(self.path, "".join(json.dumps(self.records[r]) + "\n" for r in sorted(self.records)))


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The records of a ``rounds.jsonl`` (or of ``<run_dir>/rounds.jsonl``), in round order."""
    path = Path(path)
    if path.is_dir():
        path = path / "rounds.jsonl"
    if not path.is_file():
        return []
    return sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()), key=lambda r: r["round"])


def _true_mask_dice(session: RunSession, read, indices: np.ndarray) -> dict[str, float | None]:
    """Labels read by ``read`` against the true masks of the members of ``indices`` that
    have one (diagnostic only); ``None`` values where none has."""
    scored = session.pool.with_true_masks(indices)
    if not len(scored):
        return {"dice": None, "dice_pooled": None, "n": 0}
    return label_agreement(read, session.pool.masks.read, scored, classes=session.classes.count)


def _mask_dice(session: RunSession, files: dict[int, _LabelFile], subsets: list[np.ndarray]) -> float | None:
    """Per-image Dice of the current labels of all of U against U's true masks (diagnostic only)."""
    total, count = 0.0, 0
    for k, part in enumerate(subsets):
        store = files[k].open()
        try:
            scores = _true_mask_dice(session, store.read_classes, part)
        finally:
            store.close()
        if scores["n"]:
            total += scores["dice"] * scores["n"]
            count += scores["n"]
    return total / count if count else None


def _validation_dice(stage: StageResult, network: str = "raw") -> dict[str, Any]:
    """The validation Dice of the stage's best checkpoint of ``network`` (its start, where it kept it)."""
    best = stage.best[network]
    key = "start/dice" if best.get("start") else f"{network}/dice"
    records = [r for r in read_metrics(stage.stage_dir / "metrics.jsonl") if r.get("kind") == "val" and r.get("step") == best["step"]]
    dice = records[-1].get(key) if records else None
    return {"val_dice": dice, "val_step": best["step"]}


def _initial_record(session: RunSession, stage: StageResult, initial: _LabelFile, files: dict[int, _LabelFile], subsets: list[np.ndarray]) -> dict[str, Any]:
    run_dir = Path(session.run_dir)
    store = initial.open()
    try:
        pseudo = _true_mask_dice(session, store.read_classes, initial.indices)
    finally:
        store.close()
    return {
        "round": 0,
        "method": session.config.method.name,
        "weights": _relative(stage.weights(LABELED_NETWORK), run_dir),
        "relabelled_file": _relative(initial.path, run_dir),
        "relabelled_by": initial.rendered_by,
        "n_relabelled": len(initial.indices),
        "subset_sizes": [len(part) for part in subsets],
        "agreement_dice": None,
        "agreement_dice_pooled": None,
        "changed_fraction": None,
        "pseudo_dice": pseudo["dice"],
        "pseudo_dice_pooled": pseudo["dice_pooled"],
        "pseudo_dice_all": _mask_dice(session, files, subsets),
        **_validation_dice(stage, LABELED_NETWORK),
        **_round_budget(session, stage),
    }


def _round_record(
    session: RunSession,
    inputs: _RoundInputs,
    stage: StageResult,
    relabelling: _Relabelling,
    files: dict[int, _LabelFile],
    subsets: list[np.ndarray],
) -> dict[str, Any]:
    """Provenance of what the round actually used, and how its new labels compare."""
    run_dir = Path(session.run_dir)
    plan, init = inputs.plan, inputs.start
    previous, fresh = relabelling.previous, relabelling.fresh
    new, old = fresh.open(), previous.open()
    try:
        agreement = label_agreement(new.read_classes, old.read_classes, fresh.indices, classes=session.classes.count)
        pseudo = _true_mask_dice(session, new.read_classes, fresh.indices)
        before = _true_mask_dice(session, old.read_classes, fresh.indices)
    finally:
        new.close()
        old.close()
    return {
        **asdict(plan),
        "method": session.config.method.name,
        "init_weights": _relative(init, run_dir) if init is not None else INITIAL_WEIGHTS,
        **inputs.provenance(run_dir),
        "n_train_unlabeled": len(inputs.unlabeled),
        "weights": _relative(stage.weights("raw"), run_dir),
        "relabelled_file": _relative(fresh.path, run_dir),
        "relabelled_by": fresh.rendered_by,
        "previous_labels_from": previous.round,
        "n_relabelled": len(fresh.indices),
        "agreement_dice": agreement["dice"],
        "agreement_dice_pooled": agreement["dice_pooled"],
        "changed_fraction": agreement["changed"],
        "pseudo_dice": pseudo["dice"],
        "pseudo_dice_pooled": pseudo["dice_pooled"],
        "previous_pseudo_dice": before["dice"],
        "previous_pseudo_dice_pooled": before["dice_pooled"],
        "gain": _difference(pseudo["dice"], before["dice"]),
        "gain_pooled": _difference(pseudo["dice_pooled"], before["dice_pooled"]),
        "pseudo_dice_all": _mask_dice(session, files, subsets),
        **_validation_dice(stage),
        "kept_start": stage.released_start(stage.weights("raw")),
        **_round_budget(session, stage),
    }


def _difference(after: float | None, before: float | None) -> float | None:
    return None if after is None or before is None else after - before


def _round_budget(session: RunSession, stage: StageResult) -> dict[str, int]:
    """The round's own steps, the steps its model received (its lineage) and the run's steps so far."""
    return {
        "steps": stage.budget["steps"],
        "released_steps": stage.lineage_steps,
        "total_steps": sum(done.budget["steps"] for done in session.stages),
    }


def _plot(run_dir: Path, log: RoundsLog) -> None:
    from pseudoseg.evaluation.plots import plot_round_diagnostics

    plot_round_diagnostics([log.records[r] for r in sorted(log.records)], run_dir / "report" / "rounds.png")


def _inside(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def _relative(path: Path, root: Path) -> str:
    """``path`` relative to the run directory when inside it, else absolute."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path(root).resolve()))
    except ValueError:
        return str(resolved)


__all__ = [
    "ROUNDS_GRID",
    "RoundPlan",
    "RoundsConfig",
    "RoundStrategy",
    "RoundsLog",
    "atso_schedule",
    "read_rounds",
    "run_atso",
    "run_rounds",
    "run_tso",
    "split_subsets",
    "tso_schedule",
]

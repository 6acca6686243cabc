"""The one training loop every method plugs into.

A :class:`Trainer` runs one *stage* (a teacher stage, a student stage, an ATSO
round): it builds the student network (and lets the method's
:class:`~pseudoseg.engine.strategy.Strategy` build the networks it trains
beside it), draws seeded labeled / unlabeled batches with the views the
strategy asks for, lets the strategy compute the loss, steps the one
optimiser over every trained network, and validates every
``train.val_every`` steps on the validation split only, keeping the best
weights of every network the stage holds. Its ``last.safetensors`` holds
everything an exact resume needs (networks, optimiser moments, momentum
copies, random generators, data position), so a stage killed at any point and
restarted finishes with the same weights as one that never stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pseudoseg.data.augment import BatchAugmenter
from pseudoseg.data.pool import SamplePool
from pseudoseg.data.preprocessing import InputNormalizer, Preprocessing
from pseudoseg.engine.batches import BatchAssembler
from pseudoseg.engine.checkpoint import (
    load_tensors,
    load_weights_file,
    save_tensors,
    save_weights,
)
from pseudoseg.engine.device import autocast, describe_machine, resolve_amp, resolve_device
from pseudoseg.engine.distributed import DistInfo, all_reduce_sum
from pseudoseg.engine.labels import probabilities
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.stage_state import StageState
from pseudoseg.engine.streams import IndexStream
from pseudoseg.errors import UserError
from pseudoseg.engine.validation import ValidationTally, case_positions, prefer
from pseudoseg.fileio import disk_errors, write_json, write_text
from pseudoseg.engine.strategy import Batch, StageContext, StageSpec, Strategy
from pseudoseg.progress import console_print, console_warn, progress_bar

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig
    from pseudoseg.models import NetworkRecipe

__all__ = ["MetricsLog", "StageContext", "StageResult", "StageSpec", "Trainer", "network_seed", "read_metrics", "stage_result_from_done", "stage_seed", "weights_digest"]

@dataclass
class StageResult:
    stage_dir: Path
    best: dict[str, dict[str, Any]]
    """Network name -> {"score", "step", "file"} of its best validation checkpoint
    (``file`` relative to the stage directory, so run directories can move)."""
    budget: dict[str, Any] = field(default_factory=dict)
    """What the stage spent: ``steps`` (optimiser steps run), ``images`` (training
    images drawn, labeled and unlabeled), ``max_steps``, ``stopped_early``."""
    init_digest: str | None = None
    """Digest of the weights the stage's student started from (:func:`weights_digest`)."""
    start: Path | None = None
    """The stage's start (``StageSpec.start``), where it had one: the model its best weights are
    where no checkpoint beat it (:attr:`kept_start`)."""
    lineage: tuple[StageResult, ...] = field(default=(), repr=False, compare=False)
    """The stages this one's weights descend from, oldest first, itself last: the
    stage whose weights it started from (``StageSpec.init_weights``), that
    stage's own origin, and so on. Set by :meth:`Trainer.fit`; a stage started
    from fresh or external weights is its own whole lineage."""

    def weights(self, network: str) -> Path:
        return self.stage_dir / self.best[network]["file"]

    @property
    def kept_start(self) -> list[str]:
        """Networks of which no checkpoint beat the stage's start on V: their best weights are the start."""
        return [name for name, entry in self.best.items() if entry.get("start")]

    def released_start(self, weights: Path) -> bool:
        """Whether ``weights`` (one of this stage's best files) is the stage's start, kept."""
        return any(entry.get("start") and entry["file"] == Path(weights).name for entry in self.best.values())

    @property
    def lineage_steps(self) -> int:
        """Optimiser steps the stage's weights received, counting every stage they descend from."""
        return sum(stage.budget.get("steps", 0) for stage in self.lineage or (self,))


def stage_seed(run_seed: int, stage: str) -> int:
    """Seed of a stage's batches and augmentation: distinct for distinct stage names.

    A hash of the name, not a sum of its character codes, so ``round_12`` and
    ``round_21`` draw different batches. 31 bits: the streams derive further seeds from it.
    """
    digest = hashlib.sha256(f"{run_seed}/{stage}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1


def network_seed(run_seed: int) -> int:
    """Seed of a fresh network: the run's alone, so every stage that starts fresh
    (the teacher stage, a fresh student) starts from the same initial weights."""
    return stage_seed(run_seed, "network-init")


def weights_digest(network: nn.Module) -> str:
    """A short digest of a network's parameters and buffers (which weights a stage started from)."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass
class _StageRun:
    """One stage while its loop runs: the checkpointed :class:`StageState` and what the loop
    rebuilds on every start (wrapped networks, the log, the speed window)."""

    spec: StageSpec
    stage_dir: Path
    describe: dict[str, Any]
    state: StageState
    trainable: dict[str, nn.Module]
    """The networks the optimiser steps: the student (``raw``) and the strategy's trained others."""
    parameters: list[nn.Parameter]
    models: dict[str, nn.Module]
    """``trainable`` as the loop runs them (wrapped for several processes)."""
    epoch_stream: IndexStream
    """The stream whose passes count as epochs (the unlabeled one when the strategy uses U)."""
    init_digest: str
    channels_last: bool
    log: MetricsLog | None = None
    lr: float = 0.0
    window_start: float = 0.0
    window_images: int = 0

    @property
    def images_per_step(self) -> int:
        return self.spec.batch_size + (self.spec.unlabeled_batch_size if self.state.strategy.uses_unlabeled else 0)

    @property
    def last_file(self) -> Path:
        """The checkpoint a stopped stage resumes from."""
        return self.stage_dir / "last.safetensors"

    def forward(self, images: torch.Tensor, network: str | None = None) -> torch.Tensor:
        """The loop's forward pass (:class:`~pseudoseg.engine.strategy.Forward`)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.models["raw" if network is None else network](images)


def same_settings(recorded: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Whether a stage recorded with ``recorded`` settings is the stage ``current`` describes.

    Every recorded key must hold the current value; a key the record lacks is one an earlier
    version did not record (the run directory's ``config.yaml`` already holds the whole
    configuration, compared before any stage), so it is not held against the stage."""
    if recorded is None:
        return False
    current = json.loads(json.dumps(current, default=str))
    return set(recorded) <= set(current) and all(current[key] == value for key, value in recorded.items())


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        pool: SamplePool,
        run_dir: Path,
        *,
        dist: DistInfo,
        network: NetworkRecipe,
        show_progress: bool = True,
    ) -> None:
        self.config = config
        self.pool = pool
        self.run_dir = Path(run_dir)
        self.dist = dist
        self.architecture = network.architecture
        self._build_network = network.build
        self.device = resolve_device(config.device)
        self.amp_dtype = resolve_amp(config.train.amp, self.device)
        self.normalizer = InputNormalizer(config.data.normalize, config.data.in_channels, self.device)
        self.show_progress = show_progress and dist.is_main
        self.preprocessing = Preprocessing.from_data(config.data).to_json()
        self.classes = config.data.class_set
        self.channels = self.classes.channels
        """Output channels: 1 (sigmoid) for one class, C + 1 (softmax) for several."""
        self.batches = BatchAssembler(config, pool, self.normalizer, dist=dist, device=self.device, channels=self.channels)
        self.stages: list[StageResult] = []
        """Every stage this run trained or reused, in order (the run's budget)."""

    # ------------------------------------------------------------------ helpers
    def build_network(self) -> nn.Module:
        network = self._build_network().to(self.device)
        if self.config.train.channels_last:
            network = network.to(memory_format=torch.channels_last)
        return network

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def _lr_at(self, step: int, steps: int, *, fine_tunes: bool) -> float:
        """The learning rate of ``step``: ``optim``'s protocol for a stage that starts fresh,
        ``finetune``'s for one that starts from trained weights."""
        train = self.config.train
        if fine_tunes:
            lr, warmup, schedule = train.optim.lr * train.finetune.lr_factor, round(train.finetune.warmup * steps), train.finetune.schedule
        else:
            lr, warmup, schedule = train.optim.lr, train.optim.warmup_steps, train.optim.schedule
        if step < warmup:
            return lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        if schedule == "cosine":
            return lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "poly":
            return lr * (1.0 - progress) ** 0.9
        return lr

    def _optimizer(self, params: Iterator[nn.Parameter]) -> torch.optim.Optimizer:
        optim = self.config.train.optim
        if optim.name == "sgd":
            return torch.optim.SGD(params, lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay, foreach=True)
        cls = torch.optim.Adam if optim.name == "adam" else torch.optim.AdamW
        return cls(params, lr=optim.lr, weight_decay=optim.weight_decay, fused=True)

    @torch.no_grad()
    def score(self, indices: np.ndarray, predict: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, Any]:
        """Dice, IoU and collapse of ``predict`` on ``indices``, in the convention of the pool's kind.

        Per image for 2-D data, per case (3-D, all slices of a case at once)
        for volumes; see :mod:`pseudoseg.engine.validation`.
        """
        threshold = self.config.eval.threshold
        cases, n_cases = None, None
        if self.config.data.geometry == "volumes":
            positions, n_cases = case_positions(np.asarray(self.pool.groups)[indices])
            mine = torch.from_numpy(positions[self.dist.shard()]).to(self.device)
            size = self.config.eval.batch_size
            cases = (mine[start : start + size] for start in range(0, len(mine), size))
        tally = ValidationTally(n_cases, self.device, classes=self.classes.count)
        for images, masks in self.batches.evaluation(indices):
            with self.autocast():
                prob = predict(images).float()
            tally.update(prob, masks, threshold, next(cases) if cases is not None else None)
        return tally.reduce(self.dist)

    # ------------------------------------------------------------------- stage
    def fit(self, spec: StageSpec) -> StageResult:
        """Train the stage ``spec`` (or reuse it, finished with the same settings) and record it in the run's budget."""
        origin = self.stage_holding(spec.init_weights)
        describe = self._describe(spec)
        result = self._finished_stage(self.run_dir / spec.name, describe)
        if result is None:
            self._check_stage(spec)
            run = self._open_stage(spec, describe)
            with progress_bar(f"{spec.name}", total=spec.steps, completed=run.state.step, enabled=self.show_progress) as bar:
                while run.state.step < spec.steps and not self._patience_ran_out(run.state.best, run.state.step):
                    self._train_step(run)
                    if run.state.step % self.config.train.log_every == 0 or run.state.step == spec.steps:
                        self._log_window(run, bar)
                    if run.state.step % self.config.train.val_every == 0 or run.state.step == spec.steps:
                        self._validate_and_save(run, bar)
            result = self._close_stage(run)
        self._record(result, origin)
        return result

    def _describe(self, spec: StageSpec) -> dict[str, Any]:
        """What defines the stage: a finished or unfinished stage with another description is refused."""
        describe = {"steps": spec.steps, "batch_size": spec.batch_size, "unlabeled_batch_size": spec.unlabeled_batch_size, **spec.describe}
        if spec.fine_tunes:
            describe["finetune"] = self.config.train.finetune.model_dump(mode="json")
        if spec.start is not None:  # relative to the run directory when inside it, so a run can move
            start = Path(spec.start).resolve()
            describe["start"] = str(start.relative_to(self.run_dir.resolve()) if start.is_relative_to(self.run_dir.resolve()) else start)
        return describe

    def _finished_stage(self, stage_dir: Path, describe: dict[str, Any]) -> StageResult | None:
        """The stage as its ``done.json`` holds it, if it finished with the same settings."""
        done_file = stage_dir / "done.json"
        if not done_file.is_file():
            return None
        done = json.loads(done_file.read_text())
        if not same_settings(done.get("describe"), describe):
            raise UserError(f"{stage_dir}: holds a finished stage with other settings; use a new run_dir")
        return stage_result_from_done(stage_dir, done)

    def _check_stage(self, spec: StageSpec) -> None:
        for size, name in ((spec.batch_size, "batch_size"), (spec.unlabeled_batch_size, "unlabeled_batch_size")):
            if size and size % self.dist.world:
                raise UserError(f"train.{name}: {size} is not divisible by the {self.dist.world} processes")
        if len(spec.labeled) == 0:
            raise UserError("data: the labeled split is empty; raise data.labeled_fraction")
        if len(spec.validation) == 0:
            raise UserError("data: the validation split is empty; raise data.val_fraction (checkpoints are chosen on it)")
        flags = self.pool.mask_flags()
        if not (flags[spec.labeled].all() and flags[spec.validation].all()):
            raise ValueError(f"stage {spec.name}: a labeled or validation sample has no mask")  # a bug, never the user's input

    def _open_stage(self, spec: StageSpec, describe: dict[str, Any]) -> _StageRun:
        """The stage ready for its first (or, resumed, next) step: seeded networks, the strategy set
        up, the optimiser, the data streams; restored from ``last.safetensors`` if a run stopped."""
        cfg, stage_dir = self.config, self.run_dir / spec.name
        seed = stage_seed(cfg.seed, spec.name)
        student = self._start_student(spec)
        init_digest = weights_digest(student)
        torch.manual_seed(seed)
        strategy = spec.strategy
        labeled_stream = IndexStream(spec.labeled, spec.batch_size, seed * 7 + 1)
        unlabeled_stream = IndexStream(spec.unlabeled, spec.unlabeled_batch_size, seed * 7 + 2) if strategy.uses_unlabeled else None
        epoch_stream = unlabeled_stream or labeled_stream
        partner_stream = IndexStream(spec.unlabeled, spec.unlabeled_batch_size, seed * 7 + 4) if strategy.uses_unlabeled and strategy.views.partner_batch else None
        criterion = SegmentationLoss(cfg.train.loss, smooth=cfg.train.dice_smooth, channels=self.channels)
        context = StageContext(
            config=cfg,
            spec=spec,
            device=self.device,
            dist=self.dist,
            student=student,
            criterion=criterion,
            build_network=self.build_network,
            steps_per_epoch=epoch_stream.batches_per_epoch,
            stage_dir=stage_dir,
        )
        strategy.setup(context)
        # the student and the strategy's other trainable networks: one optimiser, each wrapped alike
        trainable = {"raw": student, **strategy.trainable()}
        parameters = [parameter for network in trainable.values() for parameter in network.parameters()]
        state = StageState(
            student=student,
            extras=_extra_networks(strategy),
            strategy=strategy,
            optimizer=self._optimizer(iter(parameters)),
            scaler=torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16),
            augmenter=BatchAugmenter(cfg.train.augment, seed * 7 + 3),
            labeled_stream=labeled_stream,
            unlabeled_stream=unlabeled_stream,
            partner_stream=partner_stream,
        )
        models = {name: self._wrap(network) for name, network in trainable.items()}
        run = _StageRun(spec, stage_dir, describe, state, trainable, parameters, models, epoch_stream, init_digest, cfg.train.channels_last)
        run.log = MetricsLog(stage_dir / "metrics.jsonl", enabled=self.dist.is_main, tensorboard=cfg.train.tensorboard)
        resumed = run.last_file.is_file()
        if resumed:
            tensors, meta = load_tensors(run.last_file)
            if not same_settings(meta.get("describe"), describe):
                raise UserError(f"{run.last_file}: an unfinished stage with other settings is in the way; use a new run_dir")
            state.load_state_dict(tensors, meta, self.device)
        elif self.dist.is_main:
            stage_dir.mkdir(parents=True, exist_ok=True)
        # a killed run logged steps its checkpoint does not hold (or, with no
        # checkpoint, everything: the stage runs again from its start): they are logged again
        run.log.truncate_after(state.step if resumed else -1)
        if spec.start is not None and not resumed:
            self._keep_start_as_best(spec, student, state.networks, state.best, run.log)
        run.window_start = time.perf_counter()
        return run

    def _start_student(self, spec: StageSpec) -> nn.Module:
        """The stage's student: its seeded initialisation (``init_seed``, else the run's), or the
        trained weights it starts from."""
        torch.manual_seed(network_seed(self.config.seed) if spec.init_seed is None else spec.init_seed)
        student = self.build_network()
        if spec.init_weights is not None:
            tensors, _ = load_weights_file(spec.init_weights, expect=self.architecture)
            student.load_state_dict(tensors)
        return student

    def _train_step(self, run: _StageRun) -> None:
        """One optimiser step of the strategy's loss on the next labeled (and unlabeled) batch."""
        state, spec, train = run.state, run.spec, self.config.train
        for network in run.trainable.values():
            network.train()
        run.lr = self._lr_at(state.step, spec.steps, fine_tunes=spec.fine_tunes)
        for group in state.optimizer.param_groups:
            group["lr"] = run.lr
        labeled_indices, epoch_ended = state.labeled_stream.next()
        images, masks = self.batches.labeled(labeled_indices, state.augmenter)
        views: dict[str, Any] = {}
        if state.unlabeled_stream is not None:
            unlabeled_indices, epoch_ended = state.unlabeled_stream.next()
            partner = state.partner_stream.next()[0] if state.partner_stream is not None else None
            views = self.batches.unlabeled(unlabeled_indices, state.augmenter, state.strategy.views, partner)
        with self.autocast():
            loss, logs = state.strategy.loss(Batch(images=images, masks=masks, **views), run.forward, state.step)
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(loss).backward()
        if train.optim.grad_clip is not None:
            state.scaler.unscale_(state.optimizer)
            torch.nn.utils.clip_grad_norm_(run.parameters, train.optim.grad_clip, foreach=True)
        state.scaler.step(state.optimizer)
        state.scaler.update()
        state.step += 1
        state.strategy.after_step(state.step, epoch_ended)
        for key, value in {"loss": loss.detach(), **logs}.items():
            state.running[key] = state.running.get(key, 0.0) + value.float()
        state.window_steps += 1
        run.window_images += run.images_per_step

    def _log_window(self, run: _StageRun, bar: Any) -> None:
        """The log window's means (the loop's one host sync per log interval) and the training speed."""
        state = run.state
        elapsed = time.perf_counter() - run.window_start
        keys, totals = self._window_totals(state.running)
        values = {key: total / state.window_steps for key, total in zip(keys, totals.tolist())}
        speed = run.window_images / max(elapsed, 1e-9)
        run.log.write({"kind": "train", "step": state.step, "epoch": run.epoch_stream.epoch, "lr": run.lr, "images_per_s": speed, **values})
        bar.update(state.step, loss=values["loss"], speed=speed)
        state.running, state.window_steps, run.window_start, run.window_images = {}, 0, time.perf_counter(), 0

    def _validate_and_save(self, run: _StageRun, bar: Any) -> None:
        """Validate every network (keeping each one's best) and checkpoint the loop's state."""
        state = run.state
        validation_start = time.perf_counter()
        record = self._validate(run.spec, state.networks, state.strategy, state.best, state.step, run.epoch_stream.epoch)
        record.update(state.strategy.after_validation(record))
        run.log.write(record)
        bar.note(_validation_line(record))
        keys, totals = self._window_totals(state.running)  # a mean over processes: every process takes part
        if self.dist.is_main:
            tensors, meta = state.state_dict(dict(zip(keys, totals.unbind())), cuda=self.device.type == "cuda")
            save_tensors(run.last_file, tensors, {"describe": run.describe, **meta})
        run.window_start += time.perf_counter() - validation_start  # the training speed counts training time only

    def _close_stage(self, run: _StageRun) -> StageResult:
        """The stage's result, written to ``done.json``; one line when it kept its start."""
        spec, state, stage_dir = run.spec, run.state, run.stage_dir
        budget = {"steps": state.step, "max_steps": spec.steps, "images": state.step * run.images_per_step, "stopped_early": state.step < spec.steps}
        result = StageResult(stage_dir, state.best, budget, run.init_digest, Path(spec.start) if spec.start is not None else None)
        if self.dist.is_main:
            machine = describe_machine(self.device, self.amp_dtype)
            describe = json.loads(json.dumps(run.describe, default=str))
            write_json(stage_dir / "done.json", {"describe": describe, "best": state.best, **budget, "init_digest": run.init_digest, "machine": machine})
            if result.kept_start:
                score = state.best[result.kept_start[0]]["score"]
                console_print(
                    f"{spec.name}: no checkpoint of {', '.join(result.kept_start)} beat the stage's start on validation "
                    f"({self.config.train.selection_metric} {score:.4f} at step 0); the start is kept as {'their' if len(result.kept_start) > 1 else 'its'} best"
                )
        return result

    def _keep_start_as_best(self, spec: StageSpec, student: nn.Module, networks: dict[str, nn.Module], best: dict, log: MetricsLog) -> None:
        """Validate the stage's start (step 0) and make it every network's best so far.

        A later checkpoint of a network replaces it only by scoring higher on V, so the
        stage can release its start but never a model below it.
        """
        if spec.start == spec.init_weights:
            start = student  # not trained yet: it holds the start
        else:
            with torch.random.fork_rng(devices=[]):  # the stage's own random state stays as seeded
                start = self.build_network()
            tensors, _ = load_weights_file(spec.start, expect=self.architecture)
            start.load_state_dict(tensors)
        scores = self._score_network(spec, start)
        for name in networks:
            best[name] = self._save_best(name, start, scores, 0, spec, start=True)
        log.write({"kind": "val", "step": 0, "epoch": 0, **self._score_fields("start", scores)})

    def _wrap(self, network: nn.Module) -> nn.Module:
        """``network`` as the training loop runs it: synchronised batch norm on CUDA and
        DistributedDataParallel with several processes, itself otherwise."""
        if not self.dist.enabled:
            return network
        if self.device.type == "cuda":
            network = nn.SyncBatchNorm.convert_sync_batchnorm(network)
        return nn.parallel.DistributedDataParallel(network, device_ids=[self.dist.local_rank] if self.device.type == "cuda" else None)

    def stage_holding(self, weights: Path | None) -> StageResult | None:
        """The stage of this run (trained or reused) whose folder holds ``weights``, if any."""
        if weights is None:
            return None
        resolved = Path(weights).resolve()
        for stage in reversed(self.stages):
            if resolved.is_relative_to(stage.stage_dir.resolve()):
                return stage
        return None

    def _record(self, result: StageResult, origin: StageResult | None) -> None:
        """Count ``result`` in the run's budget, descended from ``origin`` (the stage it started from)."""
        result.lineage = (*(origin.lineage or (origin,)), result) if origin is not None else (result,)
        self.stages.append(result)

    def _patience_ran_out(self, best: dict[str, dict[str, Any]], step: int) -> bool:
        """``train.patience`` validations in a row without any network improving on its best.

        Decided from the checkpointed ``best`` records alone, so a resumed stage stops
        exactly where an uninterrupted one does.
        """
        patience = self.config.train.patience
        if patience is None or not best:
            return False
        return step - max(entry["step"] for entry in best.values()) >= patience * self.config.train.val_every

    def _window_totals(self, running: dict[str, torch.Tensor]) -> tuple[list[str], torch.Tensor]:
        """The log window's sums, as a mean over processes (each holds the loss of its share of the batch)."""
        keys = sorted(running)
        if not keys:
            return keys, torch.zeros(0, device=self.device)
        return keys, all_reduce_sum(torch.stack([running[key] for key in keys]), self.dist) / self.dist.world

    def _validate(self, spec: StageSpec, networks: dict[str, nn.Module], strategy: Strategy, best: dict, step: int, epoch: int) -> dict[str, Any]:
        record: dict[str, Any] = {"kind": "val", "step": step, "epoch": epoch}
        for name, network in networks.items():
            scores = self._score_network(spec, network)
            record.update(self._score_fields(name, scores))
            if scores["collapse"] is not None:
                record[f"{name}/collapse"] = scores["collapse"]
                if self.dist.is_main:
                    what = "background" if scores["collapse"] == "empty" else "foreground"
                    console_warn(f"warning: {spec.name} step {step}: network {name!r} predicts {what} on every validation pixel (collapsed)")
            if prefer(scores, best.get(name), self.config.train.selection_metric):
                best[name] = self._save_best(name, network, scores, step, spec)
        if strategy.renders_pseudo_labels:
            pseudo_dice = self._pseudo_label_dice(spec, strategy)
            if pseudo_dice is not None:  # absent, not zero, where U has no true masks
                record["pseudo/dice"] = pseudo_dice
        return record

    def _score_network(self, spec: StageSpec, network: nn.Module) -> dict[str, Any]:
        """``network``'s scores on V, in eval mode (its mode is restored)."""
        was_training = network.training
        network.eval()
        scores = self.score(spec.validation, lambda x: probabilities(network(x)))
        network.train(was_training)
        return scores

    def _score_fields(self, name: str, scores: dict[str, Any]) -> dict[str, float]:
        """A validation record's fields for one network: ``<name>/dice``, ``<name>/iou`` (and per class)."""
        fields = {f"{name}/dice": scores["dice"], f"{name}/iou": scores["iou"]}
        if not self.classes.is_binary:
            fields.update({f"{name}/dice/{cls}": value for cls, value in zip(self.classes.names, scores["class_dice"])})
        return fields

    def _save_best(self, name: str, network: nn.Module, scores: dict[str, Any], step: int, spec: StageSpec, *, start: bool = False) -> dict[str, Any]:
        """Save ``network``'s weights as network ``name``'s best so far (``start``: the stage's start, at step 0)
        and return the stage's ``best`` record of them."""
        metric = self.config.train.selection_metric
        convention = "per case (3-D)" if self.config.data.geometry == "volumes" else "per image"
        path = self.run_dir / spec.name / f"best_{name}.safetensors"
        record: dict[str, Any] = {"score": scores[metric], "metric": f"val {metric}@{self.config.eval.threshold} {convention}", "step": step, "file": path.name, "collapse": scores["collapse"]}
        if start:
            record["start"] = True
        if self.dist.is_main:
            meta = {"architecture": self.architecture, "preprocessing": self.preprocessing, "stage": spec.name, "network": name, "step": step, "validation": scores, "seed": self.config.seed}
            save_weights(path, network, {**meta, "start": True} if start else meta)  # which file it was: done.json's describe
        return record

    @torch.no_grad()
    def _pseudo_label_dice(self, spec: StageSpec, strategy: Strategy) -> float | None:
        """Dice of the current pseudo labels against the true masks of U (diagnostic only),
        over the images of U that have one; ``None`` when none has.

        The true masks of unlabeled images are read here and nowhere else: they
        never reach a loss.
        """
        scored = self.pool.with_true_masks(spec.unlabeled)
        return self.score(scored, strategy.pseudo_labels)["dice"] if len(scored) else None


def _extra_networks(strategy: Strategy) -> dict[str, nn.Module]:
    """The strategy's networks besides the student, trained or not, by name (each validated and checkpointed)."""
    trainable, others = strategy.trainable(), strategy.networks()
    clash = sorted((set(trainable) & set(others)) | ({"raw"} & (set(trainable) | set(others))))
    if clash:
        raise ValueError(f"{type(strategy).__name__}: network name {clash[0]!r} is used twice (raw is the student)")  # a bug of the method
    return {**trainable, **others}


def stage_result_from_done(stage_dir: Path, done: dict[str, Any]) -> StageResult:
    """A finished stage as its ``done.json`` describes it."""
    describe = done.get("describe", {})
    steps = int(done.get("steps", describe.get("steps", 0)))
    per_step = int(describe.get("batch_size", 0)) + int(describe.get("unlabeled_batch_size", 0))
    budget = {
        "steps": steps,
        "max_steps": int(done.get("max_steps", describe.get("steps", steps))),
        "images": int(done.get("images", steps * per_step)),
        "stopped_early": bool(done.get("stopped_early", False)),
    }
    start = describe.get("start")  # relative to the run directory when inside it
    return StageResult(stage_dir, done["best"], budget, done.get("init_digest"), stage_dir.parent / start if start else None)


def _validation_line(record: dict[str, Any]) -> str:
    parts = [f"step {record['step']}"]
    parts += [f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}" for key, value in record.items() if "/" in key and value is not None]
    return "  ".join(parts)


class MetricsLog:
    """Append-only JSON-lines log of training and validation records.

    With ``tensorboard``, every numeric field is also written as a TensorBoard
    scalar (``<kind>/<field>``) under ``<stage>/tensorboard`` (the ``tracking``
    extra installs TensorBoard).
    """

    def __init__(self, path: Path, *, enabled: bool, tensorboard: bool = False) -> None:
        self.path = path
        self.enabled = enabled
        self._writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("train.tensorboard: TensorBoard is not installed (pip install 'pseudoseg[tracking]')") from None
            self._writer = SummaryWriter(log_dir=str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with disk_errors(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(record) + "\n")
            if self._writer is not None:
                for key, value in record.items():
                    if key not in ("kind", "step") and isinstance(value, (int, float)):
                        self._writer.add_scalar(f"{record['kind']}/{key}", value, record["step"])
                self._writer.flush()

    def truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after its last checkpoint (all of them for step 0).

        A kill in the middle of an append leaves a last line cut short; it is dropped too.
        """
        if not self.enabled or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text().splitlines() if line.strip()]
        try:
            json.loads(lines[-1] if lines else "{}")
        except json.JSONDecodeError:
            lines.pop()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        if kept:
            write_text(self.path, "".join(line + "\n" for line in kept))
        else:
            self.path.unlink()


def read_metrics(path: Path) -> list[dict[str, Any]]:
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]

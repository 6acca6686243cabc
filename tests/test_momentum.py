"""Method A, online / offline momentum pseudo labeling: the student stage.

Unit tests drive :class:`MomentumStudentStrategy` directly on a tiny network
with fixed tensors (loss composition, pseudo labels, views, teacher updates).
Stage tests go through the real trainer and run directory (EMA schedules,
offline teacher, pseudo-label logging, exact resume after a hard kill).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from pseudoseg.run_config import config_from_dict, load_config
from pseudoseg.engine.checkpoint import load_tensors, save_weights, unprefixed
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.ema import ModelEMA
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.strategy import Batch
from pseudoseg.engine.trainer import StageContext, StageSpec, read_metrics
from pseudoseg.errors import UserError
from pseudoseg.engine.labels import pseudo_targets
from pseudoseg.engine.losses import sigmoid_rampup
from pseudoseg.methods.momentum import MomentumConfig, MomentumStudentStrategy
from pseudoseg.runner import train

REPO = Path(__file__).resolve().parents[1]
SMOOTH = 1e-5  # MONAI DiceLoss smooth_nr / smooth_dr defaults


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny networks on a shared 2-core machine: one thread avoids oversubscription (and keeps runs bit-reproducible)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- unit helpers


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 1, 1))


class RecordingLoss(SegmentationLoss):
    """The real criterion, remembering the targets and masks it was given."""

    def __init__(self) -> None:
        super().__init__("dice")
        self.calls: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []

    def forward(self, logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        self.calls.append((logits, target, valid))
        return super().forward(logits, target, valid)


class FixedTeacher(nn.Module):
    """A teacher whose probabilities are given, whatever the input."""

    def __init__(self, prob: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("logit", torch.logit(prob))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logit.expand(images.shape[0], -1, -1, -1)


def make_strategy(tmp_path: Path, **method: Any) -> MomentumStudentStrategy:
    """A set-up student-stage strategy on tiny networks (teacher weights written to disk as the recipe does)."""
    torch.manual_seed(0)
    teacher = tiny_net()
    with torch.no_grad():  # a trained-looking teacher: non-default batch-norm statistics
        teacher[1].running_mean.uniform_(-0.5, 0.5)
        teacher[1].running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "teacher.safetensors"
    save_weights(weights, teacher, {"architecture": {"name": "tiny"}})
    # momenta per step unless a test says otherwise: the hand-replayed updates below use them as they are
    strategy = MomentumStudentStrategy(MomentumConfig(**{"momentum_unit": "step", "teacher_follows": "from_start", **method}), weights)
    strategy.setup(tiny_context(tmp_path, strategy, RecordingLoss(), steps=10, steps_per_epoch=4))
    return strategy


def tiny_context(tmp_path: Path, strategy: MomentumStudentStrategy, criterion: nn.Module, *, steps: int, steps_per_epoch: int) -> StageContext:
    """What the trainer hands a strategy, for tiny networks on the CPU."""
    return StageContext(
        config=config_from_dict({"data": {"train": str(tmp_path)}}),
        spec=StageSpec(name="student", strategy=strategy, steps=steps, batch_size=2, labeled=np.arange(2), validation=np.arange(1)),
        device=torch.device("cpu"),
        dist=DistInfo(),
        student=tiny_net(),
        criterion=criterion,
        build_network=tiny_net,
        steps_per_epoch=steps_per_epoch,
        stage_dir=tmp_path,
    )


def make_batch(seed: int, size: int = 8) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    unlabeled = torch.randn(2, 3, size, size, generator=generator)
    return Batch(
        images=torch.randn(2, 3, size, size, generator=generator),
        masks=(torch.rand(2, 1, size, size, generator=generator) > 0.6).float(),
        unlabeled=unlabeled,
        unlabeled_strong=unlabeled * 1.3 + 0.2,  # another view of the same images
    )


def stub_forward(images: torch.Tensor) -> torch.Tensor:
    """A fixed per-pixel function standing in for the student."""
    return 2.0 * images[:, :1] - images[:, 1:2]


def hand_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> float:
    """Dice loss per image, averaged over the batch; pixels with valid == 0 do not count.

    The soft-label form (MONAI ``soft_label=True``): the overlap of p and t is
    (|p| + |t| - |p - t|) / 2, which equals sum(p * t) when t is binary and
    keeps the loss minimal at p == t when t is a probability map.
    """
    p, t = torch.sigmoid(logits.detach().double()), target.double()
    if valid is not None:
        p, t = p * valid.double(), t * valid.double()
    sums = p.sum(dim=(1, 2, 3)) + t.sum(dim=(1, 2, 3))
    overlap2 = sums - (p - t).abs().sum(dim=(1, 2, 3))
    return float((1.0 - (overlap2 + SMOOTH) / (sums + SMOOTH)).mean())


def float_state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().double().clone() for n, t in net.state_dict().items() if t.is_floating_point()}


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((a[n] - b[n]).pow(2).sum()) for n in a))


# -------------------------------------------------------------- pure functions


def test_sigmoid_rampup_values() -> None:
    assert sigmoid_rampup(0, 10) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(5, 10) == pytest.approx(math.exp(-5.0 * 0.25))
    assert sigmoid_rampup(10, 10) == 1.0
    assert sigmoid_rampup(1000, 10) == 1.0  # held at 1 after the ramp
    assert sigmoid_rampup(-3, 10) == pytest.approx(math.exp(-5.0))
    assert sigmoid_rampup(0, 0) == 1.0  # no ramp-up
    values = [sigmoid_rampup(s, 10) for s in range(11)]
    assert values == sorted(values)


def test_soft_pseudo_labels_pass_through() -> None:
    prob = torch.rand(2, 1, 4, 4)
    target, valid = pseudo_targets(prob, "soft", 0.0)
    assert target is prob and valid is None


def test_hard_pseudo_labels_and_confidence_mask() -> None:
    prob = torch.tensor([0.02, 0.3, 0.5, 0.55, 0.85, 0.97]).view(1, 1, 1, 6)
    target, valid = pseudo_targets(prob, "hard", 0.0)
    assert target.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert valid is None
    target, valid = pseudo_targets(prob, "hard", 0.8)
    assert target.flatten().tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert valid is not None and valid.flatten().tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


def test_confidence_without_hard_labels_is_a_configuration_error() -> None:
    with pytest.raises(UserError, match="confidence applies to hard labels only"):
        config_from_dict({"data": {"train": "x"}, "method": {"name": "momentum", "labels": "soft", "confidence": 0.7}})
    config = config_from_dict({"data": {"train": "x"}, "method": {"name": "momentum", "labels": "hard", "confidence": 0.7}})
    assert config.method.confidence == 0.7


def test_teacher_of_another_architecture_is_a_user_error(tmp_path: Path) -> None:
    other = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.BatchNorm2d(5), nn.ReLU(), nn.Conv2d(5, 1, 1))
    weights = tmp_path / "other.safetensors"
    save_weights(weights, other, {"architecture": {"name": "other"}})
    strategy = MomentumStudentStrategy(MomentumConfig(), weights)
    context = tiny_context(tmp_path, strategy, SegmentationLoss(), steps=1, steps_per_epoch=1)
    with pytest.raises(UserError, match=r"method\.teacher_run: .*other\.safetensors does not fit this run's model"):
        strategy.setup(context)


# ------------------------------------------------------------ strategy.loss


@pytest.mark.parametrize("step, ramp", [(0, math.exp(-5.0)), (5, math.exp(-1.25)), (10, 1.0), (25, 1.0)])
def test_loss_is_supervised_plus_ramped_beta_times_unsupervised(tmp_path: Path, step: int, ramp: float) -> None:
    strategy = make_strategy(tmp_path, mode="offline", beta=0.3, beta_rampup_steps=10)
    batch = make_batch(0)
    loss, logs = strategy.loss(batch, stub_forward, step)
    with torch.no_grad():
        strategy.teacher.eval()
        teacher_prob = torch.sigmoid(strategy.teacher(batch.unlabeled))
    l_sup = hand_dice_loss(stub_forward(batch.images), batch.masks)
    l_unsup = hand_dice_loss(stub_forward(batch.unlabeled_strong), teacher_prob)
    assert float(logs["loss_sup"]) == pytest.approx(l_sup, abs=1e-6)
    assert float(logs["loss_unsup"]) == pytest.approx(l_unsup, abs=1e-6)
    assert float(loss) == pytest.approx(l_sup + 0.3 * ramp * l_unsup, abs=1e-6)
    assert 0.05 < l_unsup < 0.95 and abs(l_sup - l_unsup) > 1e-3  # the terms are distinguishable


def test_mean_teacher_consistency_is_the_mse_between_probabilities(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="online", unlabeled_loss="mse", beta=2.0)
    batch = make_batch(0)
    loss, logs = strategy.loss(batch, stub_forward, 10)
    with torch.no_grad():
        teacher_prob = torch.sigmoid(strategy.teacher(batch.unlabeled))
    expected = float(((torch.sigmoid(stub_forward(batch.unlabeled_strong)) - teacher_prob) ** 2).mean())
    assert float(logs["loss_unsup"]) == pytest.approx(expected, abs=1e-7)
    assert float(loss) == pytest.approx(hand_dice_loss(stub_forward(batch.images), batch.masks) + 2.0 * expected, abs=1e-6)
    assert expected > 1e-3


def test_soft_targets_are_the_teacher_probabilities_without_gradient(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="online", labels="soft")
    batch = make_batch(1)
    student = strategy.context.student
    loss, _ = strategy.loss(batch, student, 0)
    loss.backward()
    criterion: RecordingLoss = strategy.context.criterion  # type: ignore[assignment]
    (_, _, _), (_, target, valid) = criterion.calls
    with torch.no_grad():
        expected = torch.sigmoid(strategy.teacher(batch.unlabeled))
    assert torch.equal(target, expected) and valid is None
    assert target.grad_fn is None and not target.requires_grad
    # no gradient reaches the teacher (a momentum copy, frozen), all of it reaches the student
    assert all(p.grad is None and not p.requires_grad for p in strategy.teacher.parameters())
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in student.parameters())
    assert not strategy.teacher.training


def test_hard_labels_ignore_pixels_below_confidence(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="offline", labels="hard", confidence=0.9, beta=1.0)
    levels = torch.tensor([0.02, 0.3, 0.45, 0.55, 0.7, 0.97])
    prob = levels[torch.arange(64) % 6].view(1, 1, 8, 8)
    strategy.teacher = FixedTeacher(prob)
    valid = ((prob < 0.1) | (prob > 0.9)).float().expand(2, -1, -1, -1)
    hard = (prob > 0.5).float().expand(2, -1, -1, -1)
    batch = make_batch(2)
    logits = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    loss, logs = strategy.loss(batch, lambda _: logits, 0)
    assert float(logs["loss_unsup"]) == pytest.approx(hand_dice_loss(logits[2:], hard, valid), abs=1e-6)
    assert abs(hand_dice_loss(logits[2:], hard) - hand_dice_loss(logits[2:], hard, valid)) > 1e-2  # the mask matters here
    loss.backward()
    grad_unlabeled = logits.grad[2:]
    assert float(grad_unlabeled[valid == 0].abs().max()) == 0.0
    assert float(grad_unlabeled[valid == 1].abs().min()) > 0.0
    # changing the student anywhere the teacher is unsure leaves the loss as it was
    moved = logits.detach().clone()
    moved[2:][valid == 0] += 5.0
    _, moved_logs = strategy.loss(batch, lambda _: moved, 0)
    assert float(moved_logs["loss_unsup"]) == pytest.approx(float(logs["loss_unsup"]), abs=1e-7)


def test_hard_labels_without_confidence_use_every_pixel(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="offline", labels="hard", confidence=0.0)
    prob = torch.tensor([0.2, 0.7]).repeat(32).view(1, 1, 8, 8)
    strategy.teacher = FixedTeacher(prob)
    batch = make_batch(4)
    _, logs = strategy.loss(batch, stub_forward, 0)
    hard = (prob > 0.5).float().expand(2, -1, -1, -1)
    assert float(logs["loss_unsup"]) == pytest.approx(hand_dice_loss(stub_forward(batch.unlabeled_strong), hard), abs=1e-6)


@pytest.mark.parametrize("views, teacher_sees", [("weak_strong", "unlabeled"), ("same", "unlabeled_strong")])
def test_views_teacher_weak_student_strong(tmp_path: Path, views: str, teacher_sees: str) -> None:
    strategy = make_strategy(tmp_path, views=views)
    teacher_inputs: list[torch.Tensor] = []
    strategy.teacher.register_forward_pre_hook(lambda module, args: teacher_inputs.append(args[0]))
    student_inputs: list[torch.Tensor] = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        student_inputs.append(images)
        return stub_forward(images)

    batch = make_batch(5)
    strategy.loss(batch, forward, 0)
    assert len(teacher_inputs) == 1 and len(student_inputs) == 1
    assert torch.equal(teacher_inputs[0], getattr(batch, teacher_sees))
    assert torch.equal(student_inputs[0], torch.cat([batch.images, batch.unlabeled_strong]))  # always the strong view


def test_separate_passes_forward_labeled_and_unlabeled_images_apart(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, passes="separate")
    student_inputs: list[torch.Tensor] = []

    def forward(images: torch.Tensor) -> torch.Tensor:
        student_inputs.append(images)
        return stub_forward(images)

    batch = make_batch(5)
    _, logs = strategy.loss(batch, forward, 0)
    assert [tuple(x.shape) for x in student_inputs] == [tuple(batch.images.shape), tuple(batch.unlabeled_strong.shape)]
    assert torch.equal(student_inputs[0], batch.images) and torch.equal(student_inputs[1], batch.unlabeled_strong)
    # with a batch-norm student, each part is normalised by its own statistics: another loss than one pass
    joint = make_strategy(tmp_path / "joint")
    student = strategy.context.student.train()
    separate_loss, _ = strategy.loss(batch, student, 0)
    joint_loss, _ = joint.loss(batch, joint.context.student.train(), 0)
    assert abs(float(separate_loss.detach()) - float(joint_loss.detach())) > 1e-4


@pytest.mark.parametrize("norm", ["running", "batch"])
def test_the_teacher_labels_with_running_or_batch_statistics(tmp_path: Path, norm: str) -> None:
    strategy = make_strategy(tmp_path, teacher_batch_norm=norm, mode="offline")
    batch = make_batch(2)
    teacher = strategy.teacher
    with torch.no_grad():
        expected = torch.sigmoid(teacher.train(norm == "batch")(batch.unlabeled))
    teacher.eval()
    strategy.loss(batch, strategy.context.student, 0)
    criterion: RecordingLoss = strategy.context.criterion  # type: ignore[assignment]
    (_, _, _), (_, target, _) = criterion.calls
    torch.testing.assert_close(target, expected)
    assert not teacher.training  # its mode restored
    with torch.no_grad():
        running = torch.sigmoid(teacher.eval()(batch.unlabeled))
    assert (float((target - running).abs().max()) > 1e-3) == (norm == "batch")


# ------------------------------------------------------------ teacher updates


def train_manually(strategy: MomentumStudentStrategy, steps: int, on_step: Callable[[], None]) -> None:
    """The trainer's step, by hand: loss, backward, optimiser, after_step (every step ends an epoch here)."""
    student = strategy.context.student
    optimizer = torch.optim.Adam(student.parameters(), lr=0.05)
    for step in range(steps):
        student.train()
        loss, _ = strategy.loss(make_batch(100 + step), student, step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        strategy.after_step(step + 1, True)
        on_step()


def test_online_teacher_is_the_momentum_copy_of_the_student_trajectory(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="online", teacher_momentum=0.9, student_momentum=0.7, ema_buffers="average")
    student = strategy.context.student
    frozen = float_state(strategy.teacher)
    teacher_hand, ema_hand = dict(frozen), float_state(student)

    def replay() -> None:
        now = float_state(student)
        for name in teacher_hand:
            teacher_hand[name] = 0.9 * teacher_hand[name] + 0.1 * now[name]
            ema_hand[name] = 0.7 * ema_hand[name] + 0.3 * now[name]

    train_manually(strategy, 6, replay)
    teacher, ema = float_state(strategy.teacher), float_state(strategy.student_ema.module)
    for name in teacher_hand:
        torch.testing.assert_close(teacher[name], teacher_hand[name], rtol=0, atol=1e-5, msg=name)
        torch.testing.assert_close(ema[name], ema_hand[name], rtol=0, atol=1e-5, msg=name)
    student_now = float_state(student)
    assert distance(teacher, student_now) < distance(frozen, student_now)
    # batch counters are copied from the student, not averaged
    assert int(strategy.teacher[1].num_batches_tracked) == int(student[1].num_batches_tracked) == 6
    assert strategy.networks()["teacher"] is strategy.teacher is strategy.teacher_ema.module


def test_offline_teacher_never_changes(tmp_path: Path) -> None:
    strategy = make_strategy(tmp_path, mode="offline")
    before = {n: t.clone() for n, t in strategy.teacher.state_dict().items()}
    ema_before = float_state(strategy.student_ema.module)
    train_manually(strategy, 5, lambda: None)
    assert strategy.teacher_ema is None
    for name, tensor in strategy.teacher.state_dict().items():
        assert torch.equal(tensor, before[name]), name
    assert all(not p.requires_grad and p.grad is None for p in strategy.teacher.parameters())
    assert distance(float_state(strategy.student_ema.module), ema_before) > 0  # the student's own copy does move


# ------------------------------------------------------ stages, real trainer


@dataclass
class Observed:
    """What a training run did, seen through spies on the student strategy."""

    run_dir: Path
    strategy: MomentumStudentStrategy
    updates: Counter = field(default_factory=Counter)
    batches: list[Batch] = field(default_factory=list)

    def update_count(self, ema: ModelEMA | None) -> int:
        assert ema is not None
        return self.updates[id(ema)]


def run_config(run_dir: Path, dataset: Path, *, method: dict[str, Any] | None = None, train_section: dict[str, Any] | None = None) -> dict[str, Any]:
    """A tiny run; ``method`` None gives the supervised run that serves as everybody's teacher."""
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"train": str(dataset / "TrainDataset"), "image_size": 32},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 12, "val_every": 5, "log_every": 1, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1, **(train_section or {})},
        "method": {"name": "supervised"} if method is None else {"name": "momentum", "teacher_momentum": 0.9, "student_momentum": 0.8, "momentum_unit": "step", "teacher_follows": "from_start", **method},
    }


def train_observed(config: dict[str, Any], *, keep_batches: int = 0) -> Observed:
    strategies: list[MomentumStudentStrategy] = []
    updates: Counter = Counter()
    batches: list[Batch] = []
    real_setup, real_loss, real_update = MomentumStudentStrategy.setup, MomentumStudentStrategy.loss, ModelEMA.update

    def setup(self: MomentumStudentStrategy, context: StageContext) -> None:
        strategies.append(self)
        real_setup(self, context)

    def loss(self: MomentumStudentStrategy, batch: Batch, forward: Any, step: int) -> Any:
        if len(batches) < keep_batches:
            batches.append(Batch(**{k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in vars(batch).items()}))
        return real_loss(self, batch, forward, step)

    def update(self: ModelEMA) -> None:
        updates[id(self)] += 1
        real_update(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(MomentumStudentStrategy, "setup", setup)
        patch.setattr(MomentumStudentStrategy, "loss", loss)
        patch.setattr(ModelEMA, "update", update)
        train(config_from_dict(config), show_progress=False, log=lambda _: None)
    assert len(strategies) == 1
    return Observed(Path(config["run_dir"]), strategies[0], updates, batches)


def unlabeled_batches_per_epoch(run_dir: Path, batch_size: int) -> int:
    counts = json.loads((run_dir / "split.json").read_text())["counts"]
    return max(1, counts["unlabeled"] // batch_size)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("momentum")


@pytest.fixture(scope="module")
def teacher_run(workdir: Path, tiny_polyps: Path) -> Path:
    """A finished supervised run on the same split: the teacher of every student run below."""
    run_dir = workdir / "teacher"
    train(config_from_dict(run_config(run_dir, tiny_polyps, train_section={"steps": 4, "val_every": 4})), show_progress=False, log=lambda _: None)
    return run_dir


def online_config(workdir: Path, dataset: Path, teacher_run: Path, name: str) -> dict[str, Any]:
    return run_config(workdir / name, dataset, method={"mode": "online", "ema_schedule": "step", "teacher_run": str(teacher_run)})


@pytest.fixture(scope="module")
def online_run(workdir: Path, tiny_polyps: Path, teacher_run: Path) -> Observed:
    """Online, per-step EMA, 12 steps, validation every 5: the uninterrupted reference."""
    return train_observed(online_config(workdir, tiny_polyps, teacher_run, "online"), keep_batches=1)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_tensors(path)[0]


def test_per_step_schedule_updates_both_copies_every_step(online_run: Observed) -> None:
    assert online_run.update_count(online_run.strategy.student_ema) == 12
    assert online_run.update_count(online_run.strategy.teacher_ema) == 12


@pytest.mark.parametrize("mode", ["online", "offline"])
def test_per_epoch_schedule_updates_at_epoch_ends_only(workdir: Path, tiny_polyps: Path, teacher_run: Path, mode: str) -> None:
    steps = 15
    observed = train_observed(run_config(workdir / f"epoch-{mode}", tiny_polyps, method={"mode": mode, "ema_schedule": "epoch", "teacher_run": str(teacher_run)}, train_section={"steps": steps}))
    per_epoch = unlabeled_batches_per_epoch(observed.run_dir, 4)
    assert 1 < per_epoch < steps  # several epochs, not one per step
    assert observed.strategy.context.steps_per_epoch == per_epoch
    assert observed.update_count(observed.strategy.student_ema) == steps // per_epoch
    if mode == "online":
        assert observed.update_count(observed.strategy.teacher_ema) == steps // per_epoch
    else:
        assert observed.strategy.teacher_ema is None


def test_offline_teacher_is_frozen_through_the_stage(workdir: Path, tiny_polyps: Path, teacher_run: Path) -> None:
    observed = train_observed(run_config(workdir / "offline", tiny_polyps, method={"mode": "offline", "teacher": "momentum", "teacher_run": str(teacher_run)}))
    initial = weights(teacher_run / "supervised" / "best_ema.safetensors")
    last = unprefixed("network.teacher", load_tensors(observed.run_dir / "student" / "last.safetensors")[0])
    best = weights(observed.run_dir / "student" / "best_teacher.safetensors")
    assert set(initial) == set(last) == set(best)
    for name in initial:
        assert torch.equal(last[name], initial[name]) and torch.equal(best[name], initial[name]), name
    student = weights(observed.run_dir / "student" / "best_raw.safetensors")
    assert any(not torch.equal(student[n], initial[n]) for n in initial if initial[n].is_floating_point())


def test_online_teacher_moves_towards_the_student(online_run: Observed, teacher_run: Path) -> None:
    initial = {n: t.double() for n, t in weights(teacher_run / "supervised" / "best_ema.safetensors").items() if t.is_floating_point()}
    last = load_tensors(online_run.run_dir / "student" / "last.safetensors")[0]
    teacher = {n: t.double() for n, t in unprefixed("network.teacher", last).items() if n in initial}
    student = {n: t.double() for n, t in unprefixed("student", last).items() if n in initial}
    assert distance(teacher, initial) > 0
    assert distance(teacher, student) < distance(initial, student)


def test_trainer_feeds_teacher_and_student_views_of_the_same_geometry(workdir: Path, tiny_polyps: Path, teacher_run: Path, online_run: Observed) -> None:
    # With no photometric change, the strong view must equal the weak one: same flips, rotations and affine warp.
    plain = {"brightness": 0.0, "contrast": 0.0, "color_shift": 0.0, "noise_std": 0.0, "unlabeled_affine": True}
    observed = train_observed(
        run_config(workdir / "views", tiny_polyps, method={"teacher_run": str(teacher_run)}, train_section={"steps": 2, "val_every": 2, "augment": plain}),
        keep_batches=2,
    )
    for batch in observed.batches:
        assert batch.unlabeled_strong is not None and batch.unlabeled.shape == batch.unlabeled_strong.shape
        torch.testing.assert_close(batch.unlabeled_strong, batch.unlabeled, rtol=0, atol=1e-5)
    # with the default photometry the views differ
    batch = online_run.batches[0]
    assert float((batch.unlabeled_strong - batch.unlabeled).abs().mean()) > 1e-2


def test_pseudo_label_quality_is_logged_at_every_validation(online_run: Observed) -> None:
    records = read_metrics(online_run.run_dir / "student" / "metrics.jsonl")
    validations = [r for r in records if r["kind"] == "val"]
    # step 0 validates the stage's start (the labeled-only model), which it must beat
    assert [r["step"] for r in validations] == [0, 5, 10, 12]
    assert set(validations[0]) == {"kind", "step", "epoch", "start/dice", "start/iou"}
    validations = validations[1:]
    for record in validations:
        assert 0.0 <= record["pseudo/dice"] <= 1.0
        assert {"raw/dice", "ema/dice", "teacher/dice"} <= set(record)
    curves = online_run.run_dir / "report" / "curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------- resume

KILL_DRIVER = """
import os, signal, sys
from pseudoseg.methods.momentum import MomentumStudentStrategy

real_after_step = MomentumStudentStrategy.after_step

def after_step(self, step, epoch_ended):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)  # no clean-up of any kind
    real_after_step(self, step, epoch_ended)

MomentumStudentStrategy.after_step = after_step
from pseudoseg.cli import main
main(["train", "--config", sys.argv[1]])
"""


def test_killed_student_stage_resumes_to_identical_weights(workdir: Path, tiny_polyps: Path, teacher_run: Path, online_run: Observed) -> None:
    """Hard-killed two steps after its first student checkpoint (step 5), then run again."""
    config = online_config(workdir, tiny_polyps, teacher_run, "resumed")
    config_file = workdir / "resumed.yaml"
    config_file.write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(config_file), "7"], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage = workdir / "resumed" / "student"
    assert not (stage / "done.json").exists()
    assert load_tensors(stage / "last.safetensors")[1]["step"] == 5
    assert max(r["step"] for r in read_metrics(stage / "metrics.jsonl")) == 6  # a record past the checkpoint, to be dropped

    train(load_config(config_file), show_progress=False, log=lambda _: None)

    reference = online_run.run_dir / "student"
    for network in ("raw", "ema", "teacher"):
        expected, got = weights(reference / f"best_{network}.safetensors"), weights(stage / f"best_{network}.safetensors")
        assert set(expected) == set(got)
        for name in expected:
            assert torch.equal(expected[name], got[name]), f"best_{network}: {name}"
    (expected, expected_meta), (got, got_meta) = load_tensors(reference / "last.safetensors"), load_tensors(stage / "last.safetensors")
    assert set(expected) == set(got)
    assert any(name.startswith("optim.") for name in expected) and any(name.startswith("network.teacher.") for name in expected)
    for name in expected:  # student, optimiser moments, momentum copies, teacher, generators
        assert torch.equal(expected[name], got[name]), name
    assert got_meta["step"] == expected_meta["step"] == 12
    assert {k: v["step"] for k, v in got_meta["best"].items()} == {k: v["step"] for k, v in expected_meta["best"].items()}

    def without_timing(path: Path) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "images_per_s"} for r in read_metrics(path)]

    assert without_timing(stage / "metrics.jsonl") == without_timing(reference / "metrics.jsonl")


def test_probability_mse_sums_or_averages_over_the_channels() -> None:
    from pseudoseg.engine.losses import probability_mse

    logits = torch.randn(2, 3, 4, 4)
    target = torch.softmax(torch.randn(2, 3, 4, 4), dim=1)
    squared = (torch.softmax(logits, dim=1) - target) ** 2
    assert float(probability_mse(logits, target)) == pytest.approx(float(squared.sum(1).mean()), abs=1e-6)
    assert float(probability_mse(logits, target, channels="mean")) == pytest.approx(float(squared.mean()), abs=1e-6)
    one, half = torch.randn(2, 1, 4, 4), torch.rand(2, 1, 4, 4)  # one sigmoid channel: the same either way
    assert torch.equal(probability_mse(one, half), probability_mse(one, half, channels="mean"))

"""Step time of Method A's online student against a supervised step of the same size.

What is timed is the training loop's step body, on the objects the trainer
builds (:class:`~pseudoseg.engine.trainer.Trainer`'s own ``build_network``,
``_optimizer`` (fused Adam) and ``autocast``, its ``SegmentationLoss``, a
``GradScaler``), with the real strategies:

- online student: ``MomentumStudentStrategy.loss`` on 8 labeled + 8 unlabeled
  images (teacher forward without gradients, student forward on 16), backward,
  optimiser step, ``after_step`` (student EMA + online-teacher EMA);
- supervised: ``SupervisedStrategy.loss`` on 16 labeled images, backward,
  optimiser step, ``after_step`` (one EMA).

``Trainer.fit`` is not driven itself: it runs one stage at a time, so the two
kinds of step could not be interleaved, and its data loading and augmentation
(the same for both) would only add noise. The step body below is the same
sequence of calls as the one in ``Trainer.fit``.

The two kinds of step alternate (ABBA order) after a warm-up; medians are
reported. ``ModelEMA.update`` is timed inside the steps (with a device
synchronisation around it on CUDA) to give the share of a step spent in
momentum updates.

    python benchmarks/bench_momentum_step.py                       # defaults: 128 px, UNet 16..256
    python benchmarks/bench_momentum_step.py --steps 30 --amp off --channels-last
    python benchmarks/bench_momentum_step.py --profile             # where the online step's time goes
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pseudoseg.run_config import RunConfig, config_from_dict
from pseudoseg.engine.checkpoint import save_weights
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.ema import ModelEMA
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.strategy import Batch, Strategy
from pseudoseg.engine.trainer import StageContext, StageSpec, Trainer
from pseudoseg.fileio import write_json
from pseudoseg.methods.momentum import MomentumStudentStrategy
from pseudoseg.methods.stages import EmaSettings, SupervisedStrategy
from pseudoseg.models import NetworkRecipe


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--channels", default="16,32,64,128,256", help="MONAI UNet channels per level")
    parser.add_argument("--res-units", type=int, default=2)
    parser.add_argument("--labeled", type=int, default=8, help="labeled images of an online step")
    parser.add_argument("--unlabeled", type=int, default=8, help="unlabeled images of an online step (the supervised step takes labeled + unlabeled labeled images)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps of each kind first")
    parser.add_argument("--amp", choices=["auto", "bf16", "fp16", "off"], default="auto", help="as train.amp (auto: bf16 where supported)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--mode", choices=["online", "offline"], default="online")
    parser.add_argument("--views", choices=["weak_strong", "same"], default="weak_strong")
    parser.add_argument("--profile", action="store_true", help="also profile a few online and supervised steps (torch.profiler)")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    return parser.parse_args(argv)


def make_config(args: argparse.Namespace, run_dir: Path) -> RunConfig:
    channels = [int(c) for c in args.channels.split(",")]
    return config_from_dict(
        {
            "run_dir": str(run_dir),
            "device": args.device,
            "data": {"train": str(run_dir / "unused"), "image_size": args.image_size},
            "model": {"name": "unet", "channels": channels, "num_res_units": args.res_units},
            "train": {
                "batch_size": args.labeled,
                "unlabeled_batch_size": args.unlabeled,
                "amp": args.amp,
                "channels_last": args.channels_last,
            },
            "method": {"name": "momentum", "mode": args.mode, "views": args.views, "teacher_follows": "from_start"},  # both copies updated every step
        }
    )


@dataclass
class Runner:
    """One kind of training step, made of the trainer's own parts."""

    name: str
    strategy: Strategy
    batch: Batch
    step_body: Callable[[int], None]
    emas: list[ModelEMA]
    step_times: list[float] = field(default_factory=list)
    ema_times: list[float] = field(default_factory=list)
    pending_ema: float = 0.0
    """EMA time inside the step being timed."""
    teacher_times: list[float] = field(default_factory=list)
    pending_teacher: float = 0.0


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_runner(name: str, trainer: Trainer, config: RunConfig, strategy: Strategy, batch: Batch, spec_kwargs: dict[str, Any]) -> Runner:
    """Student, strategy, fused optimiser, scaler and step body, as ``Trainer.fit`` sets them up."""
    spec = StageSpec(name=name, strategy=strategy, **spec_kwargs)
    student = trainer.build_network()
    context = StageContext(
        config=config,
        spec=spec,
        device=trainer.device,
        dist=trainer.dist,
        student=student,
        criterion=SegmentationLoss(config.train.loss),
        build_network=trainer.build_network,
        steps_per_epoch=1000,
        stage_dir=trainer.run_dir / name,
    )
    strategy.setup(context)
    optimizer = trainer._optimizer(student.parameters())
    scaler = torch.amp.GradScaler(trainer.device.type, enabled=trainer.amp_dtype == torch.float16)

    def forward(images: torch.Tensor) -> torch.Tensor:
        if config.train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return student(images)

    def step_body(step: int) -> None:  # the body of Trainer.fit's loop, data loading aside
        student.train()
        with trainer.autocast():
            loss, _ = strategy.loss(batch, forward, step)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        strategy.after_step(step + 1, False)

    emas = [e for e in (getattr(strategy, "student_ema", None), getattr(strategy, "teacher_ema", None), getattr(strategy, "ema", None)) if e is not None]
    runner = Runner(name, strategy, batch, step_body, emas)
    for ema in emas:
        ema.update = _timed_update(ema, runner, trainer.device)  # type: ignore[method-assign]
    teacher = getattr(strategy, "teacher", None)
    if teacher is not None:  # time the pseudo-label forward through hooks, without touching the strategy
        started: list[float] = []

        def before(module: nn.Module, args: Any) -> None:
            synchronize(trainer.device)
            started.append(time.perf_counter())

        def after(module: nn.Module, args: Any, output: Any) -> None:
            synchronize(trainer.device)
            runner.pending_teacher += time.perf_counter() - started.pop()

        teacher.register_forward_pre_hook(before)
        teacher.register_forward_hook(after)
    return runner


def _timed_update(ema: ModelEMA, runner: Runner, device: torch.device) -> Callable[[], None]:
    real = ema.update

    def update() -> None:
        synchronize(device)
        start = time.perf_counter()
        real()
        synchronize(device)
        runner.pending_ema += time.perf_counter() - start

    return update


def random_batch(labeled: int, unlabeled: int, size: int, device: torch.device, seed: int) -> Batch:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(labeled, 3, size, size, generator=generator)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    masks = ((yy**2 + xx**2) < 0.3).float().expand(labeled, 1, size, size).contiguous()
    batch = Batch(images=images.to(device), masks=masks.to(device))
    if unlabeled:
        weak = torch.randn(unlabeled, 3, size, size, generator=generator)
        batch.unlabeled = weak.to(device)
        batch.unlabeled_strong = (weak * 1.1 + 0.05).to(device)
    return batch


def timed_step(runner: Runner, step: int, device: torch.device, record: bool) -> None:
    runner.pending_ema = 0.0
    runner.pending_teacher = 0.0
    synchronize(device)
    start = time.perf_counter()
    runner.step_body(step)
    synchronize(device)
    elapsed = time.perf_counter() - start
    if record:
        runner.step_times.append(elapsed)
        runner.ema_times.append(runner.pending_ema)
        runner.teacher_times.append(runner.pending_teacher)


def abba(first: Runner, second: Runner, rounds: int) -> Iterator[tuple[int, Runner]]:
    """first, second, second, first, ... : both kinds see the same drift on average."""
    for index in range(rounds):
        order = (first, second) if index % 2 == 0 else (second, first)
        for runner in order:
            yield index, runner


def profile_steps(runners: list[Runner], device: torch.device, steps: int = 3) -> str:
    from torch.profiler import ProfilerActivity, profile, record_function

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tables = []
    for runner in runners:
        with profile(activities=activities) as prof:
            for step in range(steps):
                with record_function(f"{runner.name} step"):
                    timed_step(runner, 10_000 + step, device, record=False)
        sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
        tables.append(f"--- {runner.name}: {steps} steps\n" + prof.key_averages().table(sort_by=sort, row_limit=18))
    return "\n".join(tables)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        config = make_config(args, run_dir)
        trainer = Trainer(config, None, run_dir, dist=DistInfo(), network=NetworkRecipe.from_config(config.model, 3), show_progress=False)  # type: ignore[arg-type]
        device = trainer.device
        torch.manual_seed(0)
        teacher_weights = run_dir / "teacher.safetensors"
        save_weights(teacher_weights, trainer.build_network(), {"architecture": trainer.architecture})
        total = args.labeled + args.unlabeled
        online = build_runner(
            f"{args.mode} student ({args.labeled}+{args.unlabeled})",
            trainer,
            config,
            MomentumStudentStrategy(config.method, teacher_weights),  # type: ignore[arg-type]
            random_batch(args.labeled, args.unlabeled, args.image_size, device, seed=1),
            {"steps": 1000, "batch_size": args.labeled, "unlabeled_batch_size": args.unlabeled, "labeled": np.zeros(0, dtype=np.int64), "validation": np.zeros(0, dtype=np.int64)},
        )
        supervised = build_runner(
            f"supervised ({total})",
            trainer,
            config,
            SupervisedStrategy(EmaSettings(0.95, unit="epoch")),
            random_batch(total, 0, args.image_size, device, seed=2),
            {"steps": 1000, "batch_size": total, "labeled": np.zeros(0, dtype=np.int64), "validation": np.zeros(0, dtype=np.int64)},
        )
        for index, runner in abba(online, supervised, args.warmup + args.steps):
            timed_step(runner, index, device, record=index >= args.warmup)
        profile = profile_steps([online, supervised], device) if args.profile else None

    def summary(runner: Runner) -> dict[str, float]:
        step = statistics.median(runner.step_times)
        ema = statistics.median(runner.ema_times)
        teacher = statistics.median(runner.teacher_times)
        return {"step_s": step, "ema_s": ema, "ema_share": ema / step, "emas_per_step": len(runner.emas), "teacher_forward_s": teacher}

    result = {
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "amp": str(trainer.amp_dtype).replace("torch.", "") if trainer.amp_dtype else "off",
        "channels_last": args.channels_last,
        "image_size": args.image_size,
        "channels": args.channels,
        "res_units": args.res_units,
        "steps": args.steps,
        "online": summary(online),
        "supervised": summary(supervised),
    }
    result["ratio"] = result["online"]["step_s"] / result["supervised"]["step_s"]
    ratios = [a / b for a, b in zip(online.step_times, supervised.step_times)]
    result["ratio_pairwise_median"] = statistics.median(ratios)
    print(
        f"device {result['device']}, {result['threads']} threads, amp {result['amp']}, channels_last {args.channels_last}, "
        f"{args.image_size} px, UNet {args.channels} x{args.res_units} res units, median of {args.steps} steps after {args.warmup} warm-up"
    )
    print(f"{'step':<34}{'median step (ms)':>18}{'teacher fwd (ms)':>18}{'EMA updates (ms)':>18}{'EMA share':>11}")
    for runner, key in ((online, "online"), (supervised, "supervised")):
        row = result[key]
        teacher = f"{row['teacher_forward_s'] * 1e3:.1f}" if runner.teacher_times and row["teacher_forward_s"] else "-"
        print(f"{runner.name:<34}{row['step_s'] * 1e3:>18.1f}{teacher:>18}{row['ema_s'] * 1e3:>18.2f}{row['ema_share'] * 100:>10.2f}%")
    print(f"{args.mode} / supervised: {result['ratio']:.3f} (ratio of medians), {result['ratio_pairwise_median']:.3f} (median of paired ratios); target <= 1.25")
    if profile:
        print(profile)
    if args.json is not None:
        write_json(args.json, result)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])

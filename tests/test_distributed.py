"""Two processes (gloo, CPU) train the same model as one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.checkpoint import load_tensors
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]


def test_two_processes_match_one(tmp_path: Path, tiny_polyps: Path) -> None:
    # Instance norm and per-image losses: the global batch's gradient is the mean of the
    # two halves' gradients, which DistributedDataParallel computes.
    raw = tiny_config(
        tmp_path,
        tiny_polyps,
        data={"test": None},
        model={"norm": "instance"},
        # SGD: Adam divides by the gradient's magnitude, which turns float noise in
        # near-zero gradients (conv biases before a normalisation) into full steps.
        train={"steps": 8, "val_every": 4, "batch_size": 4, "log_every": 1, "optim": {"name": "sgd", "lr": 0.05}},
    )
    single = {**raw, "run_dir": str(tmp_path / "single")}
    train(config_from_dict(single), show_progress=False, log=lambda _: None)

    double = {**raw, "run_dir": str(tmp_path / "double")}
    config_file = write_config(tmp_path / "double.yaml", double)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pseudoseg", "train", "--config", str(config_file)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]

    one, _ = load_tensors(tmp_path / "single" / "supervised" / "last.safetensors")
    two, meta = load_tensors(tmp_path / "double" / "supervised" / "last.safetensors")
    assert meta["step"] == 8
    for name, value in one.items():
        if name.startswith("student.") and value.is_floating_point():
            assert torch.allclose(value, two[name], atol=1e-5, rtol=1e-4), name
    # the logged losses (averaged over processes) and the validation scores (sharded
    # over the processes, then summed) agree too
    single_log = (tmp_path / "single" / "supervised" / "metrics.jsonl").read_text()
    double_log = (tmp_path / "double" / "supervised" / "metrics.jsonl").read_text()
    import json

    def val_dice(text: str) -> list[float]:
        return [json.loads(line)["raw/dice"] for line in text.splitlines() if json.loads(line)["kind"] == "val"]

    for a, b in zip(val_dice(single_log), val_dice(double_log), strict=True):
        assert abs(a - b) < 1e-3

    def losses(text: str) -> list[float]:
        return [json.loads(line)["loss"] for line in text.splitlines() if json.loads(line)["kind"] == "train"]

    single_losses, double_losses = losses(single_log), losses(double_log)
    assert len(single_losses) == 8 and len(set(single_losses)) > 1
    for a, b in zip(single_losses, double_losses, strict=True):
        assert abs(a - b) < 1e-5

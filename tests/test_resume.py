"""A run killed at any point and started again ends with the same weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.checkpoint import load_tensors
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config

REPO = Path(__file__).resolve().parents[1]


# Runs the real command line in a child process that SIGKILLs itself (no clean-up of
# any kind) at a chosen step, deterministically, whatever the machine's load.
KILL_AT_STEP = """
import os, signal, sys
from pseudoseg.methods.stages import SupervisedStrategy

real_after_step = SupervisedStrategy.after_step

def after_step(self, step, epoch_ended):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_after_step(self, step, epoch_ended)

SupervisedStrategy.after_step = after_step
from pseudoseg.cli import main
main(["train", "--config", sys.argv[1]])
"""


def _kill_at(config_file: Path, stage_dir: Path, step: int) -> None:
    # one thread, as in this process (conftest): the same kernels give the same bits
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_STEP, str(config_file), str(step)], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert (stage_dir / "last.safetensors").is_file()
    assert not (stage_dir / "done.json").exists()


def _final_state(stage_dir: Path) -> dict[str, torch.Tensor]:
    tensors, meta = load_tensors(stage_dir / "last.safetensors")
    assert meta["step"] == 60
    return tensors


def test_killed_run_resumes_to_identical_weights(tmp_path: Path, tiny_polyps: Path) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 60, "val_every": 5, "log_every": 5})
    # uninterrupted reference
    reference = config_from_dict({**raw, "run_dir": str(tmp_path / "uninterrupted")})
    train(reference, show_progress=False, log=lambda _: None)
    # killed after its first checkpoint, then resumed
    resumed_raw = {**raw, "run_dir": str(tmp_path / "resumed")}
    config_file = write_config(tmp_path / "resumed.yaml", resumed_raw)
    _kill_at(config_file, tmp_path / "resumed" / "supervised", step=23)  # last checkpoint: step 20
    train(config_from_dict(resumed_raw), show_progress=False, log=lambda _: None)

    expected = _final_state(tmp_path / "uninterrupted" / "supervised")
    got = _final_state(tmp_path / "resumed" / "supervised")
    assert set(expected) == set(got)
    for name in expected:
        if name.startswith(("student.", "network.", "optim.")):
            assert torch.equal(expected[name], got[name]), name
    # the metrics log holds each step once, as if never interrupted
    log = (tmp_path / "resumed" / "supervised" / "metrics.jsonl").read_text().splitlines()
    reference_log = (tmp_path / "uninterrupted" / "supervised" / "metrics.jsonl").read_text().splitlines()
    import json

    def steps(lines: list[str]) -> list[tuple[str, int]]:
        return [(json.loads(line)["kind"], json.loads(line)["step"]) for line in lines]

    assert steps(log) == steps(reference_log)


def test_a_stage_is_the_same_when_every_recorded_setting_holds() -> None:
    from pseudoseg.engine.trainer import same_settings

    current = {"steps": 10, "strategy": "atso", "round": 2, "rounds": 4, "start": Path("round_1/best_raw.safetensors")}
    assert same_settings({"steps": 10, "strategy": "atso", "round": 2, "start": "round_1/best_raw.safetensors"}, current)  # recorded before "rounds" was
    assert not same_settings({"steps": 10, "strategy": "atso", "round": 3}, current)  # a recorded setting differs
    assert not same_settings({"steps": 10, "train_subset": 0}, current)  # a setting this version no longer has
    assert not same_settings(None, current)

"""A run killed at any moment and started again leaves the same files as one that never stopped.

Logs (``metrics.jsonl``, ``rounds.jsonl``), reports and the directory listing
are compared with an uninterrupted run, timings aside; no temporary file
survives a restart.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.trainer import MetricsLog, read_metrics
from pseudoseg.errors import UserError
from pseudoseg.fileio import atomic_path, is_temporary_name, remove_temporary_files
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config
from tests.test_resume import REPO

# As tests/test_resume.py: the real command line in a child process that SIGKILLs
# itself (no clean-up of any kind) at a chosen moment, deterministically: after a
# given step of a given stage, or just before a given file is renamed into place
# (its temporary file complete beside it).
KILL = """
import json, os, signal, sys

moment = json.loads(sys.argv[2])

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if "step" in moment:
    from pseudoseg.methods.rounds import RoundStrategy
    from pseudoseg.methods.stages import SupervisedStrategy

    def patch(cls):
        real = cls.after_step

        def after_step(self, step, epoch_ended):
            if self.context.spec.name == moment["stage"] and step == moment["step"]:
                die()
            real(self, step, epoch_ended)

        cls.after_step = after_step

    patch(SupervisedStrategy)
    patch(RoundStrategy)
else:
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(moment["renaming"]):
            die()
        real_replace(src, dst)

    os.replace = replace
from pseudoseg.cli import main
main(["train", "--config", sys.argv[1]])
"""

# log_every 3 and val_every 5: checkpoints at steps 5 and 8 of the labeled-only
# stage, and step 5 is not a log step.
SETTINGS = {
    "train": {"steps": 8, "val_every": 5, "log_every": 3},
    "method": {"name": "atso", "subsets": 2, "rounds": 1, "round_steps": 3},
    "eval": {"pranet_metrics": False},
}


def _kill(config_file: Path, **moment: Any) -> None:
    # one thread, as in this process (conftest): the same kernels give the same bits
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL, str(config_file), json.dumps(moment)], env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]


def _train(raw: dict) -> None:
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)


def _listing(run_dir: Path) -> list[str]:
    return sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*") if path.is_file())


def _temporary(run_dir: Path) -> list[str]:
    return [name for name in _listing(run_dir) if is_temporary_name(Path(name).name)]


def _without(record: Any, keys: set[str]) -> Any:
    return {key: value for key, value in record.items() if key not in keys} if isinstance(record, dict) else record


def _content(run_dir: Path, name: str) -> Any:
    """What a file says, timings and the run directory's own path aside."""
    path = run_dir / name
    if name.endswith(".jsonl"):
        return [_without(json.loads(line), {"images_per_s"}) for line in path.read_text().splitlines()]
    if name in ("config.yaml", "report/metrics.json"):
        return _without(yaml.safe_load(path.read_text()), {"run_dir"})
    return path.read_bytes()


def assert_same_run(got: Path, expected: Path) -> None:
    assert _listing(got) == _listing(expected)
    for name in _listing(expected):
        assert _content(got, name) == _content(expected, name), name


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, tiny_polyps: Path) -> Path:
    tmp = tmp_path_factory.mktemp("uninterrupted")
    raw = tiny_config(tmp, tiny_polyps, **SETTINGS)
    _train(raw)
    return Path(raw["run_dir"])


def test_uninterrupted_run_leaves_no_temporary_file(uninterrupted: Path) -> None:
    assert _temporary(uninterrupted) == []
    assert {"rounds.jsonl", "report/rounds.png", "report/curves.png", "report/metrics.json", "report/networks.json", "labels/round_1.npy"} <= set(_listing(uninterrupted))


def test_killed_during_training_logs_each_step_once_with_the_same_loss(tmp_path: Path, tiny_polyps: Path, uninterrupted: Path) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, **SETTINGS)
    config_file = write_config(tmp_path / "run.yaml", raw)
    stage = Path(raw["run_dir"]) / "round_0"
    expected = read_metrics(uninterrupted / "round_0" / "metrics.jsonl")

    # before the first checkpoint, after the first log record: the stage starts over
    _kill(config_file, stage="round_0", step=4)
    assert not (stage / "last.safetensors").exists()
    assert [(r["kind"], r["step"]) for r in read_metrics(stage / "metrics.jsonl")] == [("train", 3)]
    # after a checkpoint at step 5, which is not a log step (log_every 3), and the log of step 6
    _kill(config_file, stage="round_0", step=7)
    assert [(r["kind"], r["step"]) for r in read_metrics(stage / "metrics.jsonl")] == [("train", 3), ("val", 5), ("train", 6)]
    _train(raw)

    # the record of step 6, after the resume from step 5, is the mean of steps 4-6 as in the run that never stopped
    got = read_metrics(stage / "metrics.jsonl")
    assert [(r["step"], r.get("loss")) for r in got] == [(r["step"], r.get("loss")) for r in expected]
    assert [r["step"] for r in got if r["kind"] == "train"] == [3, 6, 8]
    assert_same_run(Path(raw["run_dir"]), uninterrupted)


def test_killed_with_temporary_files_cleans_them_and_ends_the_same(tmp_path: Path, tiny_polyps: Path, uninterrupted: Path) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, **SETTINGS)
    config_file = write_config(tmp_path / "run.yaml", raw)
    run_dir = Path(raw["run_dir"])
    # the labels of round 1, complete under their temporary name; the picture of the
    # last round (the one of round 0 was drawn before); the report, half written
    for renaming in ("labels/round_1.npy", "report/rounds.png", "report/networks.json"):
        _kill(config_file, renaming=renaming)
        # the restart removed what the kill before left; this kill left one
        left = _temporary(run_dir)
        assert len(left) == 1 and Path(left[0]).parent == Path(renaming).parent and Path(left[0]).name.startswith(f".{Path(renaming).name}."), left
    _train(raw)
    assert _temporary(run_dir) == []
    assert_same_run(run_dir, uninterrupted)


def test_only_temporary_names_are_removed(tmp_path: Path) -> None:
    with atomic_path(tmp_path / "report" / "curves.png") as tmp:
        tmp.write_bytes(b"complete")
    left = tmp  # a name the atomic writer uses: what a kill before the rename leaves
    left.write_bytes(b"half")
    (tmp_path / "keep").mkdir()
    staging = tmp_path / "cache" / ".0123abcd.q8_zx1ab.tmp"  # a cache build cut short
    (staging / "deep").mkdir(parents=True)
    (staging / "deep" / "images.npy").write_bytes(b"x")
    kept = ["report/curves.png", "notes.tmp", ".notes.tmp", "keep/.a.b.tmp", "keep/.a.png.abcdefgh.tmp.bak", "keep/a.png.abcdefgh.tmp", "keep/.a.png.ABCDEFGH.tmp"]
    for name in kept[1:]:
        (tmp_path / name).write_text("mine")
    removed = remove_temporary_files(tmp_path)
    assert removed == [staging, left]
    assert _listing(tmp_path) == sorted(kept)
    assert remove_temporary_files(tmp_path) == []


def test_a_run_directory_holding_only_a_temporary_file_starts(tmp_path: Path, tiny_polyps: Path) -> None:
    # killed while writing its config.yaml, the first file of a run
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 1, "val_every": 1})
    run_dir = Path(raw["run_dir"])
    run_dir.mkdir()
    (run_dir / ".config.yaml.k2l3m4n5.tmp").write_text("run_dir: x\n")
    _train(raw)
    assert _temporary(run_dir) == [] and (run_dir / "supervised" / "done.json").is_file()
    # a folder with anything else in it is not taken for a run
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a pseudoseg run directory"):
        _train({**raw, "run_dir": str(other)})


def test_a_log_line_cut_short_by_a_kill_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "train", "step": 3, "loss": 0.5}\n{"kind": "val", "step": 5}\n{"kind": "train", "step": 6, "lo')
    MetricsLog(path, enabled=True).truncate_after(5)
    assert read_metrics(path) == [{"kind": "train", "step": 3, "loss": 0.5}, {"kind": "val", "step": 5}]
    MetricsLog(path, enabled=True).truncate_after(0)  # a stage that starts over keeps no record
    assert not path.exists()

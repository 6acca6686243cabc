"""Shared fixtures: tiny synthetic data sets and a tiny run configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

# The networks in these tests are tiny: one thread is faster than two fighting over
# small kernels, and keeps test timings steady on shared machines.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_polyps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40-image PraNet-layout synthetic polyp set (48 px), with 4 images per test domain."""
    from pseudoseg.synth.polyp import PolypSetSpec, generate_polyp_dataset

    root = tmp_path_factory.mktemp("polyps") / "data"
    generate_polyp_dataset(root, PolypSetSpec(n_train=40, n_test=4, size=48, seed=0))
    return root


def tiny_config(tmp: Path, dataset: Path, **sections) -> dict:
    """A run configuration small enough to train in seconds on a CPU."""
    config = {
        "run_dir": str(tmp / "run"),
        "seed": 0,
        "data": {"train": str(dataset / "TrainDataset"), "test": str(dataset / "TestDataset"), "image_size": 32},
        "model": {"name": "unet", "channels": [8, 16, 32], "num_res_units": 1},
        "train": {"steps": 6, "val_every": 3, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "log_every": 2},
        "method": {"name": "supervised"},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            config[key] = {**config.get(key, {}), **value}
        else:
            config[key] = value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_cli(*argv: str) -> int:
    """The exit code of ``pseudoseg ARGV``, run in this process."""
    from pseudoseg.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code


def load_benchmark(name: str):
    """A script of ``benchmarks/`` imported as a module (they are not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

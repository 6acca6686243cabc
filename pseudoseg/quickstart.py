"""``pseudoseg quickstart``: the demo job, end to end, on a 2-core CPU.

Generates the synthetic polyp data set (unless already there), trains online
momentum pseudo labeling with 20 % of the labels using the packaged
``polyp_momentum_synthetic.yaml`` recipe, evaluates on every synthetic test
domain and prints the table. Running it again resumes or reuses what is done.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from importlib import resources
from pathlib import Path

from pseudoseg.progress import console_print, task_bars
from pseudoseg.config import load_config
from pseudoseg.runner import RunResult, train

RECIPE = "polyp_momentum_synthetic.yaml"


def recipe_path(name: str) -> Path:
    """A configuration shipped with the package (``configs/`` in the repository)."""
    return Path(str(resources.files("pseudoseg") / "configs" / name))


def run_quickstart(out: Path, *, steps: int | None = None, log: Callable[[Any], None] = console_print) -> RunResult:
    from pseudoseg.data.synth_polyp import generate_polyp_dataset

    out = Path(out)
    data = out / "data"
    if not (data / "dataset.json").is_file():
        log(f"generating the synthetic polyp data set in {data}")
        with task_bars("generating") as bars:
            generate_polyp_dataset(data, progress=bars)
    overrides = [f"run_dir={out / 'run'}", f"data.train={data / 'TrainDataset'}", f"data.test={data / 'TestDataset'}"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    return train(load_config(recipe_path(RECIPE), overrides), log=log)

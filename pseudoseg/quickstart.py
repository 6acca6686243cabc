"""``pseudoseg quickstart``: the demo job, end to end, on a 2-core CPU.

Generates the synthetic polyp data set (unless already there), trains online
momentum pseudo labeling with 20 % of the labels using the packaged
``polyp_momentum_synthetic.yaml`` recipe, evaluates on every synthetic test
domain and prints the table: the supervised model (the teacher stage, trained
on the labeled images only) beside the semi-supervised one, so the gain the
unlabeled images bought is on screen. Running it again resumes or reuses what
is done.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rich.table import Table

from pseudoseg.run_config import RunConfig, load_config
from pseudoseg.evaluation.report import mean_over_sets
from pseudoseg.fileio import write_json, write_text
from pseudoseg.progress import console_print, task_bars
from pseudoseg.runner import RunResult, train

RECIPE = "polyp_momentum_synthetic.yaml"
# The columns of the comparison: the paper convention and the PraNet convention.
COMPARED = ("dice@0.5", "meanDice")


def recipe_path(name: str) -> Path:
    """A configuration shipped with the package (``configs/`` in the repository)."""
    return Path(str(resources.files("pseudoseg") / "configs" / name))


def run_quickstart(out: Path, *, steps: int | None = None, log: Callable[[Any], None] = console_print) -> RunResult:
    from pseudoseg.synth.polyp import generate_polyp_dataset

    out = Path(out)
    data = out / "data"
    if not (data / "dataset.json").is_file():
        log(f"generating the synthetic polyp data set in {data}")
        with task_bars("generating") as bars:
            generate_polyp_dataset(data, progress=bars)
    overrides = [f"run_dir={out / 'run'}", f"data.train={data / 'TrainDataset'}", f"data.test={data / 'TestDataset'}"]
    if steps is not None:
        overrides.append(f"train.steps={steps}")
    config = load_config(recipe_path(RECIPE), overrides)
    result = train(config, log=log)
    compare_with_supervised(result, config, log=log)
    return result


def compare_with_supervised(result: RunResult, config: RunConfig, *, log: Callable[[Any], None] = console_print) -> dict[str, Any]:
    """Score the run's labeled-only stage on the test sets and put it beside the released model.

    The labeled-only stage is the momentum method's teacher stage (or round 0
    of ATSO / TSO): the supervised model on the same labeled images, trained
    anyway, so the comparison costs one evaluation and no training. Writes
    ``report/comparison.{json,md}`` and logs the table.
    """
    from pseudoseg.evaluation.evaluate import evaluate
    from pseudoseg.inference import Predictor

    report = result.run_dir / "report"
    saved = report / "comparison.json"
    if saved.is_file() and (report / "comparison.md").is_file():  # a finished quick start run again
        comparison = json.loads(saved.read_text())
    else:
        stage = _labeled_only_weights(result.run_dir, config)
        predictor = Predictor.load(stage, device=config.device, amp=config.train.amp)
        with task_bars("evaluating the supervised model") as bars:
            supervised = evaluate({"supervised": predictor}, config.data.test, config.eval, progress=bars)["supervised"]
        released = result.metrics["sets"]
        comparison = {
            "supervised": {"weights": str(stage.relative_to(result.run_dir)), "sets": supervised},
            "semi_supervised": {"method": config.method.name, "network": result.released, "sets": released},
        }
        write_json(saved, comparison)
        write_text(report / "comparison.md", _markdown(comparison))
    log(_table(comparison))
    return comparison


def _labeled_only_weights(run_dir: Path, config: RunConfig) -> Path:
    stage = "teacher" if config.method.name == "momentum" else "round_0"
    done = json.loads((run_dir / stage / "done.json").read_text())
    network = "ema" if "ema" in done["best"] else "raw"
    return run_dir / stage / done["best"][network]["file"]


def _rows(comparison: dict[str, Any]) -> list[list[str]]:
    supervised, semi = comparison["supervised"]["sets"], comparison["semi_supervised"]["sets"]
    rows = []
    tables = {"sup": {**supervised, "mean": mean_over_sets(supervised)}, "semi": {**semi, "mean": mean_over_sets(semi)}}
    for name in [*semi, "mean"]:
        row = [name]
        for column in COMPARED:
            a, b = tables["sup"][name][column], tables["semi"][name][column]
            row += [f"{a:.3f}", f"{b:.3f}", f"{b - a:+.3f}"]
        rows.append(row)
    return rows


def _header(comparison: dict[str, Any]) -> list[str]:
    method = comparison["semi_supervised"]["method"]
    return ["test set"] + [f"{label} {column}" for column in COMPARED for label in ("supervised", method, "gain")]


def _table(comparison: dict[str, Any]) -> Table:
    table = Table(title="supervised (labeled images only) vs. semi-supervised, on the test sets")
    for column in _header(comparison):
        table.add_column(column, justify="left" if column == "test set" else "right")
    for row in _rows(comparison):
        table.add_row(*row)
    return table


def _markdown(comparison: dict[str, Any]) -> str:
    header = _header(comparison)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in _rows(comparison)]
    legend = (
        "\nsupervised: the teacher stage's model, trained on the labeled images only; "
        "dice@0.5: paper convention (working size); meanDice: PraNet convention (native size). "
        "mean: unweighted over test sets.\n"
    )
    return "\n".join(lines) + "\n" + legend

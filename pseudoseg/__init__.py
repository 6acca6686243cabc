"""pseudoseg: semi-supervised medical image segmentation with pseudo labels.

The Python interface, the command line's in three functions::

    import pseudoseg

    result = pseudoseg.train("configs/polyp_momentum_synthetic.yaml", overrides={"train.steps": 200})
    model = pseudoseg.load(result.run_dir)
    scores = pseudoseg.evaluate(result.run_dir, "data/synthetic-polyps/TestDataset")

and the method registry, :mod:`pseudoseg.methods` (``pseudoseg.methods.register``,
``pseudoseg.methods.list_methods()``). Importing ``pseudoseg`` imports none of
torch, MONAI or the methods; each function imports what it needs when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pseudoseg import methods
    from pseudoseg.config import RunConfig
    from pseudoseg.inference import Predictor
    from pseudoseg.runner import RunResult

__version__ = "0.1.0"


def train(
    config: str | Path | Mapping[str, Any] | RunConfig,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    show_progress: bool = False,
    log: Callable[[Any], None] | None = None,
) -> RunResult:
    """Train the configured method, evaluate the released model on ``data.test``, write the report.

    What ``pseudoseg train`` does: the run directory (``run_dir``) holds everything, and
    calling ``train`` again with the same configuration resumes an interrupted run or
    returns a finished one.

    Args:
        config: a YAML file, a configuration as a dictionary (the YAML's structure), or a
            :class:`~pseudoseg.config.RunConfig`.
        overrides: ``key=value`` texts as ``--set`` takes them (``["train.steps=200"]``), or
            a mapping of dotted keys to values (``{"train.steps": 200}``).
        show_progress: progress bars on the terminal.
        log: where the run's lines go (default: the terminal).

    Returns:
        The run's :class:`~pseudoseg.runner.RunResult`: ``run_dir``, the ``released``
        network, the weights of its ``networks``, the test ``metrics`` (``None`` without
        ``data.test``) and the ``budget``.

    Raises:
        pseudoseg.errors.UserError: a bad configuration or data (one line naming the key or file).

    Example:
        >>> import pseudoseg
        >>> result = pseudoseg.train(
        ...     {"run_dir": "runs/mt", "data": {"train": "data/synthetic-polyps/TrainDataset"},
        ...      "method": {"name": "mean_teacher"}},
        ...     overrides={"train.steps": 200, "train.num_threads": 1},
        ... )
        >>> result.released
        'ema'
    """
    from pseudoseg.config import apply_overrides
    from pseudoseg.run_config import config_from_dict, load_config, run_config_class
    from pseudoseg.errors import UserError
    from pseudoseg.progress import console_print
    from pseudoseg.runner import train as run

    if isinstance(config, (str, Path)):
        resolved = load_config(config, overrides if isinstance(overrides, Mapping) else list(overrides))
    elif isinstance(config, run_config_class()):
        resolved = config_from_dict(apply_overrides(config.model_dump(mode="json"), overrides)) if overrides else config
    elif isinstance(config, Mapping):
        resolved = config_from_dict(apply_overrides(dict(config), overrides))
    else:
        raise UserError(f"pseudoseg.train: config must be a YAML path, a dictionary or a RunConfig, got {type(config).__name__}")
    return run(resolved, show_progress=show_progress, log=log or console_print)


def load(model: str | Path, *, network: str | None = None, device: str = "auto", amp: str = "auto") -> Predictor:
    """A trained model, ready to predict: what ``pseudoseg predict`` and ``evaluate`` use.

    Args:
        model: a run directory (its released model), its ``model.json``, or a weights
            file (``best_<network>.safetensors``).
        network: which network of a run (default: the released one).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        amp: mixed precision, as ``train.amp``.

    Example:
        >>> import pseudoseg, torch
        >>> predictor = pseudoseg.load("runs/polyp-momentum-synthetic")
        >>> predictor.name
        'ema'
    """
    from pseudoseg.inference import Predictor

    return Predictor.load(Path(model), device=device, amp=amp, network=network)


def evaluate(
    model: str | Path | Predictor,
    test: str | Path,
    *,
    network: str | None = None,
    threshold: float = 0.5,
    pranet_metrics: bool = True,
) -> dict[str, Any]:
    """Score a trained model on test sets, in both metric conventions (``pseudoseg evaluate``).

    Args:
        model: a run directory, its ``model.json`` or a weights file (loaded by :func:`load` with
            its defaults), or a model :func:`load` returned (to choose its device or precision).
        test: a parent of test sets (``TestDataset/<name>/images``) or one set; for
            volumes a folder with ``imagesTs/`` and ``labelsTs/``.
        network: which network of a run (default: the released one), when ``model`` is a path.
        threshold: probability threshold of the masks.
        pranet_metrics: also the PraNet convention (pysodmetrics, native resolution).

    Returns:
        ``{"model", "network", "sets": {set: {metric: value, "n": images}}, "mean": {metric: value}}``,
        as ``pseudoseg evaluate --json`` writes it.

    Example:
        >>> import pseudoseg
        >>> scores = pseudoseg.evaluate("runs/polyp-momentum-synthetic", "data/synthetic-polyps/TestDataset")
        >>> round(scores["mean"]["dice@0.5"], 3)
        0.5...
        >>> on_cpu = pseudoseg.evaluate(pseudoseg.load("runs/polyp-momentum-synthetic", device="cpu", amp="off"), "data/synthetic-polyps/TestDataset")
    """
    from pseudoseg.config import EvalConfig
    from pseudoseg.errors import UserError
    from pseudoseg.evaluation.evaluate import evaluate as run_evaluate
    from pseudoseg.evaluation.report import mean_over_sets

    if not 0 < threshold < 1:
        raise UserError(f"threshold: must be in (0, 1), got {threshold}")
    if isinstance(model, (str, Path)):
        predictor, source = load(model, network=network), str(model)
    elif network is not None:
        raise UserError("network: choose the network when loading the model (pseudoseg.load(model, network=...))")
    else:
        predictor, source = model, model.name
    results = run_evaluate({predictor.name: predictor}, Path(test), EvalConfig(threshold=threshold, pranet_metrics=pranet_metrics))[predictor.name]
    return {"model": source, "network": predictor.name, "sets": results, "mean": mean_over_sets(results)}


def __getattr__(name: str) -> Any:
    # pseudoseg.methods without an explicit import (pseudoseg.methods.register), loaded on first use
    if name == "methods":
        import importlib

        return importlib.import_module("pseudoseg.methods")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["__version__", "evaluate", "load", "methods", "train"]

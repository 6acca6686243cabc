"""The ``pseudoseg`` command line.

Errors in the user's input (missing folders, bad configuration keys, corrupt
files) end with one line on stderr and exit code 2, without a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from pseudoseg.errors import UserError
from pseudoseg.progress import task_bars, wide_console

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, help="Semi-supervised medical image segmentation with pseudo labels.")
data_app = typer.Typer(no_args_is_help=True, help="Data sets: check your own, generate the built-in synthetic benchmarks.")
app.add_typer(data_app, name="data")
weights_app = typer.Typer(no_args_is_help=True, help="Pretrained weights as local files.")
app.add_typer(weights_app, name="weights")
recipes_app = typer.Typer(help="The shipped recipes (YAML configurations), usable by name: --config NAME.")
app.add_typer(recipes_app, name="recipes")


def _write_json_output(path: Optional[Path], payload: dict) -> None:
    if path is not None:
        from pseudoseg.fileio import write_json

        write_json(path, payload)


def _json_to_stdout(path: Optional[Path], payload: dict) -> bool:
    """``--json -``: the payload on standard output (and nothing else), for a listing command."""
    if path is None or str(path) != "-":
        return False
    import json

    sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    return True


def _table(title: str, columns: tuple[str, ...], rows: list[tuple[str, ...]]):
    """A listing's rich table, its cells folded rather than cut."""
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*row)
    return table


def _amp(value: str) -> str:
    if value not in ("auto", "bf16", "fp16", "off"):
        raise UserError(f"--amp: expected auto, bf16, fp16 or off, got {value!r}")
    return value


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Argument(help="Folder to create.")],
    kind: Annotated[str, typer.Option(help="polyp (PraNet layout) or ct (Decathlon layout, NIfTI).")] = "polyp",
    n_train: Annotated[Optional[int], typer.Option(help="Training images (polyp) or cases (ct).")] = None,
    n_test: Annotated[Optional[int], typer.Option(help="Test images per domain (polyp) or test cases (ct).")] = None,
    size: Annotated[int, typer.Option(help="polyp: image side in pixels.")] = 160,
    seed: Annotated[int, typer.Option()] = 0,
    lesions: Annotated[bool, typer.Option(help="ct: lesions inside the organ as a second class (labels 1 organ, 2 lesion).")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing folder (only once the new one is complete).")] = False,
) -> None:
    """Generate a synthetic data set (deterministic per seed)."""
    counts = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    if lesions and kind != "ct":
        raise UserError(f"--lesions: only for --kind ct, got --kind {kind}")
    if kind == "polyp":
        from pseudoseg.synth.polyp import PolypSetSpec, generate_polyp_dataset

        with task_bars("generating") as bars:
            summary = generate_polyp_dataset(out, PolypSetSpec(size=size, seed=seed, **counts), overwrite=overwrite, progress=bars)
    elif kind == "ct":
        from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

        with task_bars("generating") as bars:
            summary = generate_ct_dataset(out, CtSetSpec(seed=seed, lesions=lesions, **counts), overwrite=overwrite, progress=bars)
    else:
        raise UserError(f"--kind: expected polyp or ct, got {kind!r}")
    brief = {key: summary[key] for key in ("counts", "numTraining", "numTest", "seed", "size", "shape", "labels") if key in summary}
    wide_console().print(f"wrote {out}: {brief}")


@weights_app.command("export")
def weights_export(
    out: Annotated[Path, typer.Option(help="File to write (*.safetensors), e.g. weights/densenet169_imagenet.safetensors.")],
    model: Annotated[str, typer.Option(help="fpn or flexible_unet (as model.name).")] = "fpn",
    encoder: Annotated[str, typer.Option(help="Encoder (as model.encoder).")] = "densenet169",
    overwrite: Annotated[bool, typer.Option(help="Replace an existing file.")] = False,
) -> None:
    """Download an encoder's ImageNet weights (needs internet, once) and save them for model.weights with weights_scope: encoder."""
    from pseudoseg.config import ModelConfig
    from pseudoseg.models.factory import export_encoder_weights

    if model not in ("fpn", "flexible_unet"):
        raise UserError(f"--model: expected fpn or flexible_unet, got {model!r}")
    count = export_encoder_weights(ModelConfig(name=model, encoder=encoder), out, overwrite=overwrite)
    wide_console().print(f"wrote {out}: {count} tensors of the {encoder} encoder (ImageNet); use it with model.weights: {out} and model.weights_scope: encoder")


@data_app.command("formats")
def data_formats(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the list here ('-': to standard output).")] = None,
) -> None:
    """List the data formats (data.kind), built in and from plug-ins: geometry, where each comes from, what it reads."""
    from pseudoseg.data.registry import source_names, source_origin
    from pseudoseg.data.sources import data_source

    formats = []
    for name in source_names():
        source = data_source(name)
        doc = (type(source).__doc__ or "").strip().splitlines()
        formats.append({"name": name, "geometry": source.geometry, "source": source_origin(name), "class": f"{type(source).__module__}.{type(source).__qualname__}", "summary": doc[0].replace("``", "") if doc else ""})
    payload = {"formats": formats}
    if _json_to_stdout(json_out, payload):
        return
    rows = [(entry["name"], entry["geometry"], entry["summary"], entry["source"]) for entry in formats]
    wide_console().print(_table("data formats (data.kind)", ("name", "geometry", "reads", "from"), rows))
    _write_json_output(json_out, payload)


@data_app.command("check")
def data_check(
    path: Annotated[Path, typer.Argument(help="The training data: a folder with images/ and masks/, a Decathlon or an nnU-Net data set.")],
    kind: Annotated[str, typer.Option(help="auto, folders (2-D images), volumes (NIfTI), or a format a plug-in registers.")] = "auto",
    images_dir: Annotated[str, typer.Option(help="folders: name of the images folder.")] = "images",
    masks_dir: Annotated[str, typer.Option(help="folders: name of the masks folder.")] = "masks",
    unlabeled: Annotated[Optional[list[Path]], typer.Option(help="A further folder of images without masks (repeatable), as data.unlabeled.")] = None,
    test: Annotated[Optional[Path], typer.Option(help="Test data, as data.test.")] = None,
    classes: Annotated[Optional[str], typer.Option(help="The classes, as data.classes: '{anterior: 1, posterior: 2}' (default: dataset.json labels, else one binary class).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the summary here.")] = None,
) -> None:
    """Read a data set as training would; print counts, sizes, mask values, classes, balance and every problem.

    Exit code 0 when it would train, 2 otherwise.
    """
    from pseudoseg.data.check import FolderNames, check_dataset, parse_classes_option

    report = check_dataset(
        path,
        kind=None if kind == "auto" else kind,
        folders=FolderNames(images_dir, masks_dir),
        unlabeled=tuple(unlabeled or ()),
        test=test,
        classes=None if classes is None else parse_classes_option(classes),
    )
    console = wide_console()
    for line in report.lines():
        console.print(line, markup=False, highlight=False)
    _write_json_output(json_out, report.to_json())
    if not report.ok:
        sys.exit(2)


@recipes_app.callback(invoke_without_command=True)
def recipes(context: typer.Context) -> None:
    """List the recipes, one line each: name, method, what it trains."""
    if context.invoked_subcommand is not None:
        return
    from pseudoseg.recipes import list_recipes

    found = list_recipes()
    width = max(len(recipe.name) for recipe in found)
    method_width = max(len(recipe.method) for recipe in found)
    for recipe in found:
        print(f"{recipe.name:<{width}}  {recipe.method:<{method_width}}  {recipe.summary}")


@recipes_app.command("show")
def recipes_show(name: Annotated[str, typer.Argument(help="A recipe's name, as pseudoseg recipes lists it.")]) -> None:
    """Print a recipe's YAML (pseudoseg recipes show NAME > my.yaml writes a copy to edit)."""
    from pseudoseg.recipes import recipe_text

    sys.stdout.write(recipe_text(name))


_CONFIG_HELP = "YAML run configuration: a file, or a recipe's name (pseudoseg recipes lists them)."
_METHOD_HELP = "Replace the configuration's method section by this method's defaults (keys the method shares are kept)."


@app.command()
def train(
    config: Annotated[Path, typer.Option("--config", "-c", help=_CONFIG_HELP)],
    method: Annotated[Optional[str], typer.Option("--method", help=_METHOD_HELP)] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key: --set train.steps=500 (repeatable).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the final metrics here (schema in docs/cli.md).")] = None,
) -> None:
    """Train the configured method; evaluate the released model on data.test."""
    from pseudoseg.run_config import load_config
    from pseudoseg.runner import train as run_train

    cfg = load_config(config, set_ or [], method=method, report=wide_console().print)
    result = run_train(cfg, log=wide_console().print)
    _write_json_output(json_out, {"run_dir": str(result.run_dir), "released": result.released, "metrics": result.metrics})


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="A run directory, its model.json, a weights file (.safetensors), or an exported .onnx model.")],
    test: Annotated[Path, typer.Option(help="Test data: a parent of test sets (TestDataset/<name>/images) or one set; for CT a folder with imagesTs/ and labelsTs/.")],
    out: Annotated[Optional[Path], typer.Option(help="Write metrics.{json,csv,md} here.")] = None,
    network: Annotated[Optional[str], typer.Option(help="Which network of a run (default: the released one).")] = None,
    threshold: Annotated[float, typer.Option()] = 0.5,
    pranet: Annotated[bool, typer.Option(help="Also compute the PraNet convention (pysodmetrics).")] = True,
    device: Annotated[str, typer.Option()] = "auto",
    amp: Annotated[str, typer.Option(help="auto, bf16, fp16 or off (as train.amp).")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help=_TTA_HELP)] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help=_LCC_HELP)] = False,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the metrics here (schema in docs/cli.md).")] = None,
) -> None:
    """Score a trained model on test sets, in both metric conventions."""
    from pseudoseg.config import EvalConfig
    from pseudoseg.evaluation.evaluate import evaluate as run_evaluate
    from pseudoseg.evaluation.metrics import conventions_for
    from pseudoseg.evaluation.report import mean_over_sets, render_table, write_report
    from pseudoseg.inference import PredictionOptions, Predictor

    if not 0 < threshold < 1:
        raise UserError(f"--threshold: must be in (0, 1), got {threshold}")
    predictor = Predictor.load(model, device=device, amp=_amp(amp), network=network, options=PredictionOptions(tta, largest_component))
    with task_bars("evaluating") as bars:
        results = run_evaluate({predictor.name: predictor}, test, EvalConfig(threshold=threshold, pranet_metrics=pranet), progress=bars)[predictor.name]
    classes = predictor.preprocessing.classes
    conventions = conventions_for(classes, predictor.preprocessing.geometry)
    console = wide_console()
    console.print(render_table(results, title=f"{model} ({predictor.name})"))
    if out is not None:
        from pseudoseg.engine.device import describe_machine, machine_line

        machine = describe_machine(predictor.device, predictor.amp_dtype)
        extra = {"model": str(model), "network": predictor.name, "machine": machine, "tta": tta, "largest_component": largest_component}
        if not classes.is_binary:
            extra["classes"] = classes.to_json()
        paths = write_report(results, out / "metrics", title=f"{model} ({predictor.name})", extra=extra, notes=[f"Evaluated on {machine_line(machine)}."], conventions=conventions)
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")
    _write_json_output(json_out, {"model": str(model), "network": predictor.name, "sets": results, "mean": mean_over_sets(results), "conventions": conventions})


_TTA_HELP = "Test-time augmentation: average the probabilities of the image and its mirrored views (in-plane flips)."
_LCC_HELP = "Keep each class's largest connected component (2-D for images, 3-D for volumes)."


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A run directory, its model.json, a weights file, or an exported .onnx model.")],
    inputs: Annotated[Path, typer.Argument(help="An image or a folder of images (CT: a .nii/.nii.gz volume or a folder of them).")],
    out: Annotated[Path, typer.Argument(help="Output folder (must not be the input folder).")],
    probabilities: Annotated[bool, typer.Option(help="Also write probability maps (8-bit PNG; one per class and the background for several classes).")] = False,
    overlay: Annotated[bool, typer.Option(help="Also write overlays of the mask on the image (several classes: coloured per class, with a legend).")] = False,
    threshold: Annotated[float, typer.Option(help="Foreground probability threshold (one class; several classes take the most probable).")] = 0.5,
    network: Annotated[Optional[str], typer.Option(help="Which network of a run (default: the released one).")] = None,
    device: Annotated[str, typer.Option()] = "auto",
    amp: Annotated[str, typer.Option(help="auto, bf16, fp16 or off (as train.amp).")] = "auto",
    tta: Annotated[bool, typer.Option("--tta", help=_TTA_HELP)] = False,
    largest_component: Annotated[bool, typer.Option("--largest-component", help=_LCC_HELP)] = False,
) -> None:
    """Write masks (one class) or label maps of the class values (several) at each input's native size; inputs are never modified.

    MODEL may also be an exported ONNX model (pseudoseg export), run by ONNX Runtime.
    """
    from pseudoseg.inference import PredictionOptions, Predictor
    from pseudoseg.predict import predict_paths

    if not 0 < threshold < 1:
        raise UserError(f"--threshold: must be in (0, 1), got {threshold}")
    predictor = Predictor.load(model, device=device, amp=_amp(amp), network=network, options=PredictionOptions(tta, largest_component))
    written = predict_paths(predictor, inputs, out, threshold=threshold, probabilities=probabilities, overlay=overlay)
    wide_console().print(f"wrote {len(written)} predictions to {out}")


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="A run directory, its model.json, or a weights file.")],
    out: Annotated[Path, typer.Argument(help="The file to write: OUT.onnx (or, with --torchscript, OUT.pt); OUT.json is written beside it.")],
    torchscript: Annotated[bool, typer.Option("--torchscript", help="Write TorchScript (torch.jit) instead of ONNX.")] = False,
    network: Annotated[Optional[str], typer.Option(help="Which network of a run (default: the released one).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace existing files.")] = False,
) -> None:
    """Export a trained model (normalisation included) with dynamic batch and spatial size; the preprocessing and classes go to OUT.json."""
    from pseudoseg.export import SIDECAR_FORMAT, export_model, max_difference, sidecar_path
    from pseudoseg.inference import Predictor

    expected = ".pt" if torchscript else ".onnx"
    if out.suffix != expected:
        raise UserError(f"{out}: the file name must end in {expected}{' (TorchScript)' if torchscript else ' (or pass --torchscript for .pt)'}")
    side = sidecar_path(out)
    if side.is_file() and SIDECAR_FORMAT not in side.read_text(encoding="utf-8", errors="replace"):
        raise UserError(f"{side}: exists and is not an export description (the sidecar of {out}); choose another name")
    for path in (out, side):
        if path.exists() and not overwrite:
            raise UserError(f"{path}: exists; pass --overwrite to replace it")
    predictor = Predictor.load(model, device="cpu", amp="off", network=network)
    export_model(predictor, out, source=model, torchscript=torchscript)
    difference = max_difference(predictor, out, torchscript=torchscript)
    wide_console().print(f"wrote {out} and {side} ({predictor.name}); largest difference to PyTorch on a random batch: {difference:.2e}")


@app.command()
def grid(
    config: Annotated[Path, typer.Option("--config", "-c", help="Base YAML configuration (a file or a recipe's name); its method section is replaced per variant.")],
    out: Annotated[Path, typer.Option(help="Grid folder: one run per variant and seed, and the tables.")],
    method: Annotated[Optional[str], typer.Option("--method", help=_METHOD_HELP + " The default family is then this method's.")] = None,
    seeds: Annotated[str, typer.Option(help="Comma-separated seeds.")] = "0,1,2",
    family: Annotated[Optional[str], typer.Option(help="The grid family (pseudoseg methods lists them); default: the one of the base configuration's method.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a key of the base configuration (repeatable).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the summary here.")] = None,
    patience: Annotated[int, typer.Option(min=1, help="Supervised rows stop after this many validations without improvement.")] = 5,
    variants: Annotated[Optional[str], typer.Option(help="Comma-separated rows to run (default: all; the supervised row always runs).")] = None,
) -> None:
    """Run a method's experiment grid over seeds and write the side-by-side table."""
    from pseudoseg.grid import GridRequest, run_grid

    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds: expected comma-separated integers, got {seeds!r}") from None
    if not seed_list:
        raise UserError("--seeds: no seed given")
    rows = [name.strip() for name in variants.split(",") if name.strip()] if variants else None
    request = GridRequest(config, out, tuple(seed_list), family, tuple(set_ or ()), method, patience, tuple(rows) if rows is not None else None)
    summary = run_grid(request, log=wide_console().print)
    _write_json_output(json_out, summary)


@app.command()
def methods(
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the list here ('-': to standard output).")] = None,
) -> None:
    """List the training methods (built in and plug-ins) with a one-line summary each, and the grid families."""
    from pseudoseg.methods.registry import grid_families, list_methods

    found = list_methods()
    families = grid_families()
    payload = {
        "methods": [
            {
                "name": info.name,
                "summary": info.summary,
                "source": info.source,
                "module": info.module,
                "section": f"{info.section.__module__}.{info.section.__qualname__}",
                "uses_unlabeled": info.uses_unlabeled,
                "grid_families": [family.name for family in info.families],
                "grid_rows_in": list(info.rows),
                "recipes": list(info.recipes),
            }
            for info in found
        ],
        "grid_families": [{"name": family.name, "summary": family.summary, "methods": list(family.methods), "reference": family.reference} for family in families.values()],
    }
    if _json_to_stdout(json_out, payload):
        return
    rows = []
    for info in found:
        grids = [name for name, family in families.items() if info.name in family.methods] + [f"+{name}" for name in info.rows]
        rows.append((info.name, info.summary, ", ".join(grids), info.source))
    console = wide_console()
    console.print(_table("methods (method.name)", ("name", "summary", "grid", "from"), rows))
    family_rows = [(family.name, " / ".join(family.methods), family.summary) for family in families.values()]
    console.print(_table("grid families (pseudoseg grid --family)", ("family", "base method", "compares"), family_rows))
    _write_json_output(json_out, payload)


@app.command()
def quickstart(
    out: Annotated[Path, typer.Option(help="Folder for the synthetic data and the run.")] = Path("pseudoseg-quickstart"),
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the final metrics here (schema in docs/cli.md).")] = None,
    steps: Annotated[Optional[int], typer.Option(help="Student-stage steps (default: the demo recipe's).")] = None,
) -> None:
    """Generate the synthetic polyp data, train online momentum pseudo labeling on 20 % labels, evaluate."""
    from pseudoseg.quickstart import run_quickstart

    result = run_quickstart(out, steps=steps, log=wide_console().print)
    _write_json_output(json_out, {"run_dir": str(result.run_dir), "released": result.released, "metrics": result.metrics})


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2.

    Usage errors (unknown option, missing argument) are reported by the
    command-line parser itself, also with exit code 2.
    """
    try:
        app(args=argv, standalone_mode=True)
    except UserError as exc:
        print(f"pseudoseg: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("pseudoseg: interrupted; run the same command again to resume", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()

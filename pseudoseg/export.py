"""Export a trained model for deployment: ONNX (ONNX Runtime, Triton, 3D Slicer) or TorchScript.

The exported graph is :class:`pseudoseg.inference.InferenceModel`: it takes
``image``, float32 ``[batch, channels, height, width]`` scaled to [0, 1], and
returns ``probabilities``, float32 ``[batch, K, height, width]`` (sigmoid of
the one foreground channel for one class; softmax over background and the C
classes for several). The input normalisation (ImageNet mean and standard
deviation, or [0, 1] -> [-1, 1]) is baked into the graph; batch, height and
width are dynamic (the networks need sides divisible by 2 ** (levels - 1);
pseudoseg resizes to the working size, ``image_size``).

Everything outside the graph is written beside it, ``<name>.json`` (the
*sidecar*): how raw images become the input (working size, channels, a
volume's slice context and intensity window or percentiles), the classes with
their label values and how to decide them. :func:`read_sidecar` reads it;
``pseudoseg predict model.onnx ...`` runs the exported file through it.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pseudoseg.errors import UserError
from pseudoseg.fileio import atomic_path, write_json

SIDECAR_FORMAT = "pseudoseg-export"
SIDECAR_VERSION = 1
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"
ONNX_OPSET = 18


def sidecar_path(model_file: Path) -> Path:
    return Path(model_file).with_suffix(".json")


def sidecar(predictor, *, source: Path, file_format: str) -> dict[str, Any]:
    """The JSON written beside an exported model (the format is documented in docs/deployment.md)."""
    pre = predictor.preprocessing
    classes = pre.classes
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "file_format": file_format,
        "source": str(source),
        "network": predictor.name,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", pre.in_channels, "height", "width"],
            "dtype": "float32",
            "scale": "8-bit values / 255 (volumes: after the intensity window or percentiles)",
            "working_size": pre.image_size,
            "normalization_in_graph": {
                "kind": pre.normalize,
                "mean": predictor.normalizer.mean.flatten().tolist(),
                "std": predictor.normalizer.std.flatten().tolist(),
            },
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", classes.channels, "height", "width"],
            "activation": "sigmoid" if classes.channels == 1 else "softmax",
            "channels": ["foreground"] if classes.channels == 1 else ["background", *classes.names],
            "decision": "probability >= threshold (0.5)" if classes.channels == 1 else "argmax over the channels",
        },
        "preprocessing": pre.to_json(),
    }


def read_sidecar(model_file: Path) -> dict[str, Any]:
    """The sidecar of an exported model, checked.

    Raises:
        UserError: it is missing or not one pseudoseg wrote.
    """
    import json

    path = sidecar_path(model_file)
    if not Path(model_file).is_file():
        raise UserError(f"{model_file}: model not found")
    if not path.is_file():
        raise UserError(f"{path}: not found; an exported model needs the JSON pseudoseg export wrote beside it")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path}: not valid JSON") from None
    if not isinstance(payload, dict) or payload.get("format") != SIDECAR_FORMAT or "preprocessing" not in payload:
        raise UserError(f"{path}: not a pseudoseg export description (format {SIDECAR_FORMAT!r})")
    if payload.get("version", 0) > SIDECAR_VERSION:
        raise UserError(f"{path}: written by a newer pseudoseg (version {payload['version']}); update pseudoseg")
    return payload


def _onnx_modules() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise UserError(f"ONNX export and inference need the export extra: pip install 'pseudoseg[export]' (missing {exc.name})") from None


def open_onnx_session(path: Path):
    """An ONNX Runtime session on the CPU."""
    _onnx_modules()
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (not exported) exception classes
        raise UserError(f"{path}: not a readable ONNX model ({str(exc).splitlines()[0][:120]})") from None


def example_input(predictor, batch: int = 1) -> torch.Tensor:
    """A reproducible input at the working size, for tracing and checking."""
    pre = predictor.preprocessing
    generator = torch.Generator().manual_seed(0)
    return torch.rand(batch, pre.in_channels, pre.image_size, pre.image_size, generator=generator)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """The exporter's log lines and deprecation warnings (of optional back-ends it skips) are not the user's concern."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_model(predictor, out: Path, *, source: Path, torchscript: bool = False) -> dict[str, Any]:
    """Write ``out`` (ONNX, or TorchScript with ``torchscript``) and its sidecar; return the sidecar.

    The model is serialised in memory and both files are written atomically through
    :mod:`pseudoseg.fileio` (a full disk is one line; nothing is left half-written).
    """
    out = Path(out)
    model = predictor.model.float().cpu().eval()
    example = example_input(predictor)
    if torchscript:
        with torch.no_grad(), _quiet_exporter():  # TorchScript is deprecated in PyTorch; still what many servers load
            traced = torch.jit.trace(model, example)
            buffer = io.BytesIO()
            torch.jit.save(traced, buffer)
        data = buffer.getvalue()
    else:
        _onnx_modules()
        dims = {0: torch.export.Dim("batch"), 2: torch.export.Dim("height"), 3: torch.export.Dim("width")}
        with _quiet_exporter():
            program = torch.onnx.export(
                model,
                (example,),
                None,
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=(dims,),
                opset_version=ONNX_OPSET,
                verbose=False,
            )
        data = program.model_proto.SerializeToString()
    payload = sidecar(predictor, source=source, file_format="torchscript" if torchscript else "onnx")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
        write_json(sidecar_path(out), payload)  # inside: a failure here removes the model's temporary file too
    return payload


def max_difference(predictor, out: Path, *, torchscript: bool = False, batch: int = 2) -> float:
    """Largest absolute difference between the exported model's and PyTorch's probabilities on a
    random batch at the working size."""
    example = example_input(predictor, batch)
    with torch.no_grad():
        expected = predictor.model.float().cpu().eval()(example).numpy()
    if torchscript:
        with torch.no_grad(), _quiet_exporter():
            got = torch.jit.load(str(out)).eval()(example).numpy()
    else:
        (got,) = open_onnx_session(out).run(None, {INPUT_NAME: example.numpy()})
    return float(np.abs(got - expected).max())

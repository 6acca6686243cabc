"""Where training runs, and in which precision."""

from __future__ import annotations

import contextlib

import torch

from pseudoseg.errors import UserError


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda requested but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device`` (None: full precision)."""
    if mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if torch.ops.mkldnn._is_mkldnn_bf16_supported() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def processor_name(device: torch.device) -> str:
    """The model name of the GPU, or of the CPU (from ``/proc/cpuinfo`` where there is one)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_machine(device: torch.device, amp_dtype: torch.dtype | None) -> dict[str, str | int]:
    """Where and in which precision numbers were computed, for reports.

    The same run gives other numbers in float32 than under bf16 autocast, and
    other timings on another processor, so every report records this.
    """
    return {
        "device": device.type,
        "processor": processor_name(device),
        "autocast": "off (float32)" if amp_dtype is None else str(amp_dtype).removeprefix("torch."),
        "num_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def machine_line(machine: dict) -> str:
    """One line for a Markdown header: ``cpu (Intel Xeon ...), autocast bfloat16, 1 thread, torch 2.13.0``."""
    threads = int(machine.get("num_threads", 0))
    return (
        f"{machine.get('device', '?')} ({machine.get('processor', '?')}), autocast {machine.get('autocast', '?')}, "
        f"{threads} thread{'s' if threads != 1 else ''}, torch {machine.get('torch', '?')}"
    )

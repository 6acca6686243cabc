"""Momentum (exponential moving average) copies of a network.

After an update, ``theta_ema <- m * theta_ema + (1 - m) * theta``. The update is
one fused ``torch._foreach_lerp_`` over all parameters (no Python loop over
tensors per step). Floating-point buffers (batch-norm running statistics) are
averaged the same way or copied, by choice; integer buffers (batch counters)
are always copied.
"""

from __future__ import annotations

import copy
from typing import Literal

import torch
from torch import nn


def update_momentum(momentum: float, *, unit: str, schedule: str, steps_per_epoch: int) -> float:
    """The momentum of one update, from a momentum stated per ``unit`` ("step" or "epoch").

    Updates run every step or once per epoch (``schedule``). A momentum per epoch
    applied at every one of an epoch's E steps is m^(1/E), so the copy keeps the
    same share of its past over an epoch either way; a per-step momentum applied
    once per epoch is m^E.
    """
    if unit not in ("step", "epoch") or schedule not in ("step", "epoch"):
        raise ValueError(f"unit and schedule are 'step' or 'epoch', got {unit!r}, {schedule!r}")
    if unit == schedule:
        return momentum
    if unit == "epoch":  # applied per step
        return momentum ** (1.0 / steps_per_epoch)
    return momentum**steps_per_epoch


def retained_share(momentum: float, *, schedule: str, steps: int, steps_per_epoch: int) -> float:
    """Share of its starting weights a copy keeps after ``steps`` steps of updates at ``momentum`` (per update)."""
    updates = steps if schedule == "step" else steps // steps_per_epoch
    return momentum**updates


class ModelEMA:
    """A momentum copy of a source network, updated in place by :meth:`update`."""

    def __init__(
        self,
        source: nn.Module,
        momentum: float,
        *,
        buffers: Literal["average", "copy"] = "average",
        init: nn.Module | None = None,
    ) -> None:
        """``init``: the copy's starting weights (default: a copy of ``source``)."""
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if buffers not in ("average", "copy"):
            raise ValueError(f"buffers must be 'average' or 'copy', got {buffers!r}")
        self.momentum = momentum
        self.buffer_mode = buffers
        self.module = copy.deepcopy(init if init is not None else source)
        self.module.eval()
        self.module.requires_grad_(False)
        self.attach(source)

    def attach(self, source: nn.Module) -> None:
        """Follow ``source`` (same architecture) from now on.

        Names, shapes and dtypes of every parameter and buffer must match: a
        mismatch is reported here, not as a size error inside the first update.
        """
        own_params = dict(self.module.named_parameters())
        src_params = dict(source.named_parameters())
        own_buffers = dict(self.module.named_buffers())
        src_buffers = dict(source.named_buffers())
        for kind, own, src in (("parameter", own_params, src_params), ("buffer", own_buffers, src_buffers)):
            if own.keys() != src.keys():
                missing = sorted(own.keys() ^ src.keys())
                raise ValueError(f"momentum copy and source network differ in architecture ({kind} {missing[0]} is in only one)")
            for name, tensor in own.items():
                other = src[name]
                if tensor.shape != other.shape or tensor.dtype != other.dtype:
                    raise ValueError(
                        f"momentum copy and source network differ in architecture ({kind} {name}: "
                        f"{tuple(tensor.shape)} {tensor.dtype} vs {tuple(other.shape)} {other.dtype})"
                    )
        self._targets = list(own_params.values())
        self._sources = [src_params[name] for name in own_params]
        float_names = [name for name, buf in own_buffers.items() if buf.is_floating_point()]
        int_names = [name for name, buf in own_buffers.items() if not buf.is_floating_point()]
        self._float_targets = [own_buffers[n] for n in float_names]
        self._float_sources = [src_buffers[n] for n in float_names]
        self._int_targets = [own_buffers[n] for n in int_names]
        self._int_sources = [src_buffers[n] for n in int_names]

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.momentum
        torch._foreach_lerp_(self._targets, self._sources, weight)
        if self._float_targets:
            if self.buffer_mode == "average":
                torch._foreach_lerp_(self._float_targets, self._float_sources, weight)
            else:
                torch._foreach_copy_(self._float_targets, self._float_sources)
        if self._int_targets:
            torch._foreach_copy_(self._int_targets, self._int_sources)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)

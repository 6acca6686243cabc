"""Training curves: validation Dice of every network and pseudo-label quality, per stage."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pseudoseg.fileio import atomic_path


def _pyplot():
    """pyplot on the file-only Agg back-end (imported lazily: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def _read(path: Path) -> list[dict]:
    import json

    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_stage_curves(stage_dirs: Sequence[Path], out: Path, *, note: str | None = None) -> Path:
    """One panel per stage: ``<network>/dice`` on V and ``pseudo/dice`` on U against step.

    ``note`` is written under the panels (e.g. why a pseudo-label curve is absent).
    """
    plt = _pyplot()

    fig, axes = plt.subplots(1, len(stage_dirs), figsize=(5 * len(stage_dirs), 3.6), squeeze=False)
    for axis, stage in zip(axes[0], stage_dirs):
        records = [r for r in _read(stage / "metrics.jsonl") if r["kind"] == "val"]
        keys = sorted({k for r in records for k in r if k.endswith("/dice")})
        for key in keys:
            points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
            if points:
                style = "--" if key.startswith("pseudo") else "-"
                label = "pseudo labels on U (vs. true masks)" if key.startswith("pseudo") else f"{key.split('/')[0]} on V"
                axis.plot(*zip(*points), style, marker=".", label=label)
        axis.set_title(stage.name)
        axis.set_xlabel("step")
        axis.set_ylabel("Dice @ 0.5")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    if note:
        fig.text(0.5, 0.005, note, ha="center", va="bottom", fontsize=8, style="italic")
        fig.subplots_adjust(bottom=0.2)
    _save(fig, out)
    return out


def plot_grid_curves(grid_dir: Path, runs: dict[str, dict[str, str]]) -> Path | None:
    """``<grid>/curves.png``: per variant with a student stage, pseudo-label Dice on U and
    validation Dice of the released (momentum) student against step, mean over seeds."""
    plt = _pyplot()
    import numpy as np

    series: dict[str, dict[str, list[list[tuple[int, float]]]]] = {}
    for variant, by_seed in runs.items():
        for run_dir in by_seed.values():
            log = Path(run_dir) / "student" / "metrics.jsonl"
            if not log.is_file():
                continue
            records = [r for r in _read(log) if r["kind"] == "val"]
            for key in ("pseudo/dice", "ema/dice"):
                points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
                series.setdefault(key, {}).setdefault(variant, []).append(points)
    if not series:
        return None
    titles = {"pseudo/dice": "pseudo labels on U vs. true masks (Dice @ 0.5)", "ema/dice": "momentum student on V (Dice @ 0.5)"}
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4), squeeze=False)
    for axis, (key, variants) in zip(axes[0], sorted(series.items(), reverse=True)):
        for variant, curves in sorted(variants.items()):
            length = min(len(c) for c in curves)
            steps = [s for s, _ in curves[0][:length]]
            values = np.array([[v for _, v in c[:length]] for c in curves])
            mean = values.mean(0)
            axis.plot(steps, mean, marker=".", label=f"{variant} (n={len(curves)})")
            if len(curves) > 1:
                axis.fill_between(steps, values.min(0), values.max(0), alpha=0.15)
        axis.set_title(titles[key], fontsize=10)
        axis.set_xlabel("student step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    out = Path(grid_dir) / "curves.png"
    _save(fig, out)
    return out


_ROUND_SERIES: tuple[tuple[str, str, str], ...] = (
    ("agreement_dice", "new vs. previous labels of the relabelled subset", "o-"),
    ("pseudo_dice", "relabelled subset vs. true masks", "s--"),
    ("pseudo_dice_all", "all current labels of U vs. true masks", "^--"),
    ("val_dice", "round model on V", "d-"),
)
_GRID_ROUND_SERIES = (*_ROUND_SERIES, ("gain", "gain on the relabelled subset (Dice after - before)", "v-"))
"""The grid's panels add the gain a round buys, on its own axis (a difference, near 0)."""


def plot_round_diagnostics(records: Sequence[dict], out: Path) -> Path:
    """``report/rounds.png`` of an ATSO / TSO run: lazy-learning diagnostics against the round.

    ``records`` are the rows of ``rounds.jsonl`` (round 0: the labeled-only
    model and its labels). An agreement near 1 means a round's model mostly
    reproduced the labels it was given: lazy learning.
    """
    plt = _pyplot()

    fig, axis = plt.subplots(figsize=(6.5, 4))
    for key, label, style in _ROUND_SERIES:
        points = [(r["round"], r[key]) for r in records if r.get(key) is not None]
        if points:
            axis.plot(*zip(*points), style, label=label)
    method = records[0].get("method", "") if records else ""
    axis.set_title(f"{method} rounds: pseudo-label agreement and quality", fontsize=10)
    if not any(r.get("pseudo_dice") is not None for r in records):
        axis.text(0.5, 0.02, "no true masks in U: pseudo-label quality not computed", transform=axis.transAxes, ha="center", fontsize=8, style="italic")
    axis.set_xlabel("round (0: labeled-only model)")
    axis.set_ylabel("Dice @ 0.5 (per image)")
    axis.set_xticks(sorted({r["round"] for r in records}))
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out)
    return out


def plot_grid_rounds(grid_dir: Path, runs: dict[str, dict[str, str]]) -> Path | None:
    """``<grid>/rounds.png``: per-round diagnostics of the variants with rounds (TSO, ATSO), mean over seeds."""
    plt = _pyplot()
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    by_variant: dict[str, list[list[dict]]] = {}
    for variant, by_seed in runs.items():
        for run_dir in by_seed.values():
            log = Path(run_dir) / "rounds.jsonl"
            if log.is_file():
                by_variant.setdefault(variant, []).append(sorted(_read(log), key=lambda r: r["round"]))
    if not by_variant:
        return None
    fig, axes = plt.subplots(1, len(_GRID_ROUND_SERIES), figsize=(4.6 * len(_GRID_ROUND_SERIES), 3.8), squeeze=False)
    for axis, (key, label, style) in zip(axes[0], _GRID_ROUND_SERIES):
        for variant, seeds in sorted(by_variant.items()):
            per_round: dict[int, list[float]] = {}
            for records in seeds:
                for record in records:
                    if record.get(key) is not None:
                        per_round.setdefault(record["round"], []).append(float(record[key]))
            if not per_round:
                continue
            rounds = sorted(per_round)
            values = [per_round[r] for r in rounds]
            axis.plot(rounds, [np.mean(v) for v in values], style, label=f"{variant} (n={len(seeds)})")
            if len(seeds) > 1:
                axis.fill_between(rounds, [min(v) for v in values], [max(v) for v in values], alpha=0.15)
        axis.set_title(label, fontsize=9)
        axis.set_xlabel("round")
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    axes[0][0].set_ylabel("Dice @ 0.5 (mean over seeds)")
    fig.tight_layout()
    out = Path(grid_dir) / "rounds.png"
    _save(fig, out)
    return out

"""How much of the teacher stage's validation Dice an online teacher keeps through the student stage.

The momentum paper's online teacher follows the student from the first step; with a
fresh student that starts far below it, the bar is that the teacher keeps most of its
quality while the student catches up. For each run folder of the momentum method
(``mode: online``), this prints, per validation of the student stage, the online
teacher's validation Dice (``teacher/dice`` in ``student/metrics.jsonl``) and its share
of the teacher stage's (the stage's start, ``start/dice`` at step 0), then the lowest
share. Several runs (seeds) give one line each and the lowest share over all of them.

    python benchmarks/online_teacher_share.py runs/lite26-imagenet/seed*/online-momentum
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def teacher_curve(run: Path) -> tuple[float, list[tuple[int, float]]]:
    """(the teacher stage's validation Dice, [(step, online teacher's validation Dice)]) of one run."""
    log = run / "student" / "metrics.jsonl"
    if not log.is_file():
        raise SystemExit(f"{log}: not found (a momentum run with a finished or running student stage)")
    records = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    validations = [record for record in records if record.get("kind") == "val"]
    start = next((record["start/dice"] for record in validations if record["step"] == 0 and "start/dice" in record), None)
    if start is None:
        raise SystemExit(f"{log}: no validation of the stage's start at step 0 (start/dice)")
    curve = [(record["step"], record["teacher/dice"]) for record in validations if "teacher/dice" in record]
    if not curve:
        raise SystemExit(f"{log}: no online teacher validations (teacher/dice): is it an online momentum run?")
    return start, curve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of the momentum method (mode: online)")
    args = parser.parse_args(argv)
    lowest = []
    for run in args.runs:
        start, curve = teacher_curve(run)
        if start <= 0.0:  # a teacher stage that predicts nothing: no share to keep
            print(f"{run}: teacher stage {start:.3f} (no share defined); online teacher " + ", ".join(f"{step}: {dice:.3f}" for step, dice in curve))
            continue
        shares = [(step, dice, dice / start) for step, dice in curve]
        lowest.append(min(share for _, _, share in shares))
        cells = ", ".join(f"{step}: {dice:.3f} ({100 * share:.0f} %)" for step, dice, share in shares)
        print(f"{run}: teacher stage {start:.3f}; online teacher {cells}; lowest {100 * lowest[-1]:.0f} %")
    if lowest:
        print(f"lowest share over {len(lowest)} run(s): {100 * min(lowest):.0f} %")
    return 0


if __name__ == "__main__":
    sys.exit(main())

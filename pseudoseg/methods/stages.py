"""Stages shared between methods' recipes: reusing a finished supervised stage of another run."""

from __future__ import annotations

import json
from pathlib import Path

from pseudoseg.engine.checkpoint import load_weights_file
from pseudoseg.engine.trainer import StageResult, stage_result_from_done
from pseudoseg.errors import UserError
from pseudoseg.methods.session import RunSession

SUPERVISED_STAGE_NAMES: tuple[str, ...] = ("supervised", "teacher", "round_0")
"""Stage folders that hold a supervised stage on the labeled split (searched in this order)."""


def finished_stage(run_dir: Path, session: RunSession) -> StageResult:
    """The supervised stage of an earlier run, checked to share this run's split.

    Used by ``method.teacher_run``: a semi-supervised run may start from the
    labeled-only model of another run (the grid's supervised variant) instead
    of training its own, provided that model saw only this run's labeled
    images and was selected on this run's validation images.
    """
    run_dir = Path(run_dir)
    for stage in SUPERVISED_STAGE_NAMES:
        done = run_dir / stage / "done.json"
        if done.is_file():
            break
    else:
        raise UserError(f"method.teacher_run: {run_dir} holds no finished supervised stage (no supervised/done.json)")
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        raise UserError(f"method.teacher_run: {split_file} not found")
    theirs = json.loads(split_file.read_text())
    if sorted(theirs.get("labeled", [])) != sorted(session.split.labeled) or sorted(theirs.get("validation", [])) != sorted(session.split.validation):
        raise UserError(f"method.teacher_run: {split_file} is another split than this run's; the teacher must have seen only this run's labeled images")
    result = stage_result_from_done(done.parent, json.loads(done.read_text()))
    _, meta = load_weights_file(result.weights("raw"), expect=session.trainer.architecture)
    if meta.get("preprocessing") != session.trainer.preprocessing:
        raise UserError(f"method.teacher_run: {result.weights('raw')} was trained with another preprocessing than this run's")
    session.trainer.stages.append(result)  # its steps count towards this run's budget
    return result


__all__ = ["SUPERVISED_STAGE_NAMES", "finished_stage"]

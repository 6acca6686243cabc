"""The validation score that chooses checkpoints: per case for volumes, collapse detection, selection rule."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pseudoseg.run_config import config_from_dict
from pseudoseg.engine.device import describe_machine, machine_line
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.evaluation.report import GridTable, summarize_runs, write_grid_report
from pseudoseg.models import build_model
from pseudoseg.engine.validation import ValidationTally, case_positions, prefer

ONE = DistInfo()


def tiny_volumes() -> tuple[torch.Tensor, list[str]]:
    """Two cases of 6 slices (8 x 8); the organ fills a 4 x 4 square in slices 2..3 of each, the rest is empty."""
    masks = torch.zeros(12, 1, 8, 8)
    for case in range(2):
        masks[case * 6 + 2 : case * 6 + 4, :, 2:6, 2:6] = 1
    return masks, ["case_a"] * 6 + ["case_b"] * 6


def score(prob: torch.Tensor, masks: torch.Tensor, groups: list[str] | None, batch: int = 5) -> dict:
    positions, n_cases = case_positions(np.asarray(groups)) if groups is not None else (None, None)
    tally = ValidationTally(n_cases, torch.device("cpu"))
    for start in range(0, len(masks), batch):
        cases = torch.from_numpy(positions[start : start + batch]) if positions is not None else None
        tally.update(prob[start : start + batch], masks[start : start + batch], 0.5, cases)
    return tally.reduce(ONE)


def test_volume_convention_ranks_an_empty_predictor_below_a_partial_real_one() -> None:
    masks, groups = tiny_volumes()
    empty = torch.zeros_like(masks)
    partial = masks.clone()
    partial[:, :, 2:4, :] = 0  # half of the organ in every slice that has one ...
    partial[masks.flatten(1).sum(1) == 0, :, 0, 0] = 1  # ... and one false pixel in every empty slice
    by_case = {"empty": score(empty, masks, groups), "partial": score(partial, masks, groups)}
    assert by_case["empty"]["dice"] == 0.0 and by_case["empty"]["collapse"] == "empty"
    # per case: |P & G| = 16, |P| = 16 + 4, |G| = 32
    assert by_case["partial"]["dice"] == pytest.approx(2 * 16 / (20 + 32))
    assert by_case["partial"]["iou"] == pytest.approx(16 / (20 + 32 - 16))
    assert by_case["partial"]["collapse"] is None
    # Per slice, the empty predictor reads the share of empty slices (8 of 12) and beats the real one.
    per_slice = {"empty": score(empty, masks, None), "partial": score(partial, masks, None)}
    assert per_slice["empty"]["dice"] == pytest.approx(8 / 12)
    assert per_slice["partial"]["dice"] < per_slice["empty"]["dice"]


def test_a_case_without_organ_scores_one_only_when_its_prediction_is_empty_too() -> None:
    masks = torch.zeros(4, 1, 4, 4)
    masks[:2, :, 1:3, 1:3] = 1  # case a has an organ, case b none
    groups = ["a", "a", "b", "b"]
    prob = masks.clone()
    assert score(prob, masks, groups)["dice"] == 1.0
    prob[3, :, 0, 0] = 1  # one false pixel in the organ-free case b
    assert score(prob, masks, groups)["dice"] == pytest.approx((1.0 + 0.0) / 2)


def test_full_prediction_is_a_collapse_too() -> None:
    masks, groups = tiny_volumes()
    full = score(torch.ones_like(masks), masks, groups)
    assert full["collapse"] == "full"
    assert full["dice"] == pytest.approx(2 * 32 / (32 + 6 * 64))
    almost = torch.ones_like(masks)
    almost[0, 0, 0, 0] = 0
    assert score(almost, masks, groups)["collapse"] is None


def test_sharded_case_sums_add_up_to_the_single_process_score() -> None:
    # Each process scores every other slice (DistInfo.shard) and the per-case sums are
    # all-reduced: adding the tallies by hand is what the all-reduce does.
    masks, groups = tiny_volumes()
    prob = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0)) * 0.6 + masks * 0.3
    positions, n_cases = case_positions(np.asarray(groups))
    shards = []
    for rank in range(2):
        part = DistInfo(rank=rank, world=2).shard()
        tally = ValidationTally(n_cases, torch.device("cpu"))
        tally.update(prob[part], masks[part], 0.5, torch.from_numpy(positions[part]))
        shards.append(tally)
    shards[0].sums += shards[1].sums
    shards[0].pixels += shards[1].pixels
    combined, single = shards[0].reduce(ONE), score(prob, masks, groups)
    assert combined == pytest.approx(single)
    assert 0.0 < single["dice"] < 1.0


def test_case_positions_number_cases_in_sorted_order() -> None:
    positions, count = case_positions(np.array(["b", "a", "b", "c"]))
    assert positions.tolist() == [1, 0, 1, 2] and count == 3


def test_selection_never_prefers_a_collapsed_checkpoint_over_a_real_one() -> None:
    real = {"score": 0.08, "collapse": None}
    collapsed = {"dice": 0.51, "collapse": "empty"}
    assert prefer(collapsed, None, "dice")  # the first validation always sets a best
    assert not prefer(collapsed, real, "dice")  # a higher score does not help a collapse
    assert prefer({"dice": 0.02, "collapse": None}, {"score": 0.51, "collapse": "empty"}, "dice")
    assert prefer({"dice": 0.6, "collapse": "full"}, {"score": 0.51, "collapse": "empty"}, "dice")
    assert prefer({"dice": 0.3, "collapse": None}, real, "dice")
    assert not prefer({"dice": 0.08, "collapse": None}, real, "dice")  # ties keep the earlier checkpoint
    assert prefer({"dice": 0.3, "collapse": None}, {"score": 0.1}, "dice")  # bests recorded before collapse checks


# --------------------------------------------------------------------------- a run that collapses


@pytest.fixture(scope="module")
def collapsed_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny CT run whose network predicts background everywhere (output bias -1e4), and its log."""
    from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

    root = tmp_path_factory.mktemp("ct")
    generate_ct_dataset(root / "data", CtSetSpec(n_train=6, n_test=2, shape=(16, 16, 8), seed=0))
    raw = {
        "run_dir": str(root / "run"),
        "data": {"kind": "volumes", "train": str(root / "data"), "test": str(root / "data"), "image_size": 16, "normalize": "unit", "val_fraction": 0.34},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 2, "log_every": 2, "batch_size": 2, "amp": "off", "num_threads": 1},
        "method": {"name": "supervised"},
    }
    import pseudoseg.models.factory as factory
    import pseudoseg.runner as runner

    def background_everywhere(*args, **kwargs) -> torch.nn.Module:
        network = build_model(*args, **kwargs)
        output = [m for m in network.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)) and m.bias is not None][-1]
        with torch.no_grad():
            output.bias.fill_(-1e4)
        return network

    messages: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(factory, "build_model", background_everywhere)  # the run's networks (NetworkRecipe.from_config)
        stderr = io.StringIO()
        with contextlib.redirect_stderr(stderr):
            runner.train(config_from_dict(raw), show_progress=False, log=lambda message: messages.append(str(message)))
    return Path(raw["run_dir"]), stderr.getvalue() + "\n".join(messages)


def _no_nan(text: str) -> dict:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in a JSON file")

    return json.loads(text, parse_constant=refuse)


def test_a_collapse_is_logged_once_per_validation_and_flagged_in_the_report(collapsed_run: tuple[Path, str]) -> None:
    run, log = collapsed_run
    warnings = [line for line in log.splitlines() if "on every validation pixel (collapsed)" in line]
    # two validations (steps 2 and 4) x two networks (raw, ema)
    assert sorted(warnings) == sorted(
        f"warning: supervised step {step}: network {name!r} predicts background on every validation pixel (collapsed)" for step in (2, 4) for name in ("raw", "ema")
    )
    records = [json.loads(line) for line in (run / "supervised" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["raw/collapse"], r["raw/dice"]) for r in records if r["kind"] == "val"] == [(2, "empty", 0.0), (4, "empty", 0.0)]
    best = json.loads((run / "supervised" / "done.json").read_text())["best"]
    assert best["raw"]["collapse"] == "empty" and best["raw"]["step"] == 2  # nothing better to choose
    assert "per case (3-D)" in best["raw"]["metric"]

    report = _no_nan((run / "report" / "metrics.json").read_text())
    assert report["collapse"]["supervised/raw"] == {"steps": [2, 4], "kind": "empty", "selected": True}
    networks = _no_nan((run / "report" / "networks.json").read_text())
    assert networks["collapse"] == report["collapse"]
    md = (run / "report" / "metrics.md").read_text()
    assert "**Collapse**: supervised/ema predicted background on every validation pixel at step 2, 4; every validation collapsed" in md
    assert any(line.startswith("Collapse: supervised/ema") for line in log.splitlines())


def test_an_undefined_hd95_is_excluded_counted_and_null(collapsed_run: tuple[Path, str]) -> None:
    run, _ = collapsed_run
    report = _no_nan((run / "report" / "metrics.json").read_text())
    # an empty prediction against each test case's organ: Dice 0, HD95 undefined in both cases,
    # and penalised as each case's diagonal in mm
    from pseudoseg.data.volumes import load_volume, voxel_spacing
    from pseudoseg.evaluation.volume_metrics import volume_diagonal_mm

    tests = [load_volume(path) for path in sorted((run.parent / "data" / "imagesTs").iterdir())]
    diagonal = sum(volume_diagonal_mm(image.shape, voxel_spacing(image)) for image in tests) / len(tests)
    assert report["sets"]["test"] == {"dice": 0.0, "hd95_mm": None, "hd95_penalised_mm": pytest.approx(diagonal), "hd95_undefined": 2, "n": 2}
    networks = _no_nan((run / "report" / "networks.json").read_text())
    assert networks["networks"]["ema"]["test"]["hd95_mm"] is None
    md = (run / "report" / "metrics.md").read_text()
    assert f"| test | 0.000 | – | {diagonal:.3f} | 2 | 2 |" in md
    assert "`hd95_undefined` — volume convention: number of cases whose HD95 is undefined" in md
    csv_rows = (run / "report" / "metrics.csv").read_text().splitlines()
    assert csv_rows[0] == "set,dice,hd95_mm,hd95_penalised_mm,hd95_undefined,n" and csv_rows[1].startswith("test,0.0,,") and csv_rows[1].endswith(",2,2")


def test_a_grid_summary_with_an_undefined_hd95_writes_its_table(collapsed_run: tuple[Path, str], tmp_path: Path) -> None:
    run, _ = collapsed_run
    collapsed = _no_nan((run / "report" / "metrics.json").read_text())["sets"]
    healthy = {"test": {"dice": 0.8, "hd95_mm": 6.0, "hd95_undefined": 0, "n": 2}}
    other = {"test": {"dice": 0.7, "hd95_mm": 8.0, "hd95_undefined": 0, "n": 2}}
    summary = summarize_runs({"supervised-100%": [collapsed, healthy, other], "atso": [collapsed]})
    hd95 = summary["supervised-100%"]["sets"]["test"]["hd95_mm"]
    assert hd95 == {"mean": pytest.approx(7.0), "std": pytest.approx(2**0.5), "defined_seeds": 2}
    assert summary["supervised-100%"]["mean"]["hd95_mm"]["defined_seeds"] == 2
    assert summary["supervised-100%"]["sets"]["test"]["dice"] == {"mean": pytest.approx(0.5), "std": pytest.approx(0.4358898943540674)}
    assert summary["supervised-100%"]["sets"]["test"]["hd95_undefined"]["mean"] == pytest.approx(2 / 3)
    paths = write_grid_report(GridTable(summary, metric_columns=("dice", "hd95_mm", "hd95_undefined")), tmp_path, notes=["All runs trained on cpu."])
    md = paths["md"].read_text()
    assert "| supervised-100% | 3 | 7.000 ± 1.414 (2 seeds) | 7.000 ± 1.414 (2 seeds) |" in md
    assert "| atso | 1 | – | – |" in md  # undefined in its only seed
    assert md.index("All runs trained on cpu.") < md.index("## `dice`")
    grid = _no_nan(paths["json"].read_text())
    assert grid["configs"]["atso"]["sets"]["test"]["hd95_mm"] == {"mean": None, "std": None, "defined_seeds": 0}


def test_reports_record_precision_and_machine(collapsed_run: tuple[Path, str]) -> None:
    run, _ = collapsed_run
    report = _no_nan((run / "report" / "metrics.json").read_text())
    expected = {"device": "cpu", "autocast": "off (float32)", "num_threads": 1, "torch": torch.__version__}
    assert {key: report["machine"][key] for key in expected} == expected
    assert report["machine"]["processor"]
    assert {key: report["training_machines"]["supervised"][key] for key in expected} == expected
    assert _no_nan((run / "report" / "networks.json").read_text())["machine"] == report["machine"]
    md = (run / "report" / "metrics.md").read_text()
    line = f"cpu ({report['machine']['processor']}), autocast off (float32), 1 thread, torch {torch.__version__}"
    assert f"Evaluated on {line}." in md and f"Trained on {line}." in md


def test_machine_description_names_the_autocast_dtype() -> None:
    machine = describe_machine(torch.device("cpu"), torch.bfloat16)
    assert machine["autocast"] == "bfloat16" and machine["device"] == "cpu"
    assert machine_line({**machine, "num_threads": 4}).startswith(f"cpu ({machine['processor']}), autocast bfloat16, 4 threads, torch ")

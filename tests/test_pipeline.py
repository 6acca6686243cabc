"""End to end through the command line: synth -> train -> evaluate -> predict."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli, tiny_config, write_config


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_data_synth_writes_pranet_layout(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    assert run_cli("data", "synth", str(out), "--n-train", "5", "--n-test", "2", "--size", "40") == 0
    assert len(list((out / "TrainDataset" / "images").iterdir())) == 5
    domains = sorted(p.name for p in (out / "TestDataset").iterdir())
    assert len(domains) >= 4
    for domain in domains:
        assert len(list((out / "TestDataset" / domain / "masks").iterdir())) == 2


def test_train_evaluate_predict(tmp_path: Path, tiny_polyps: Path) -> None:
    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path, tiny_polyps))
    assert run_cli("train", "--config", str(config), "--json", str(tmp_path / "train.json")) == 0
    run = tmp_path / "run"
    for name in ("config.yaml", "split.json", "model.json", "report/metrics.json", "report/metrics.csv", "report/metrics.md", "report/curves.png", "supervised/metrics.jsonl", "supervised/best_ema.safetensors", "supervised/best_ema.json", "supervised/last.safetensors", "supervised/done.json"):
        assert (run / name).is_file(), name
    summary = json.loads((tmp_path / "train.json").read_text())
    assert summary["run_dir"] == str(run) and summary["released"] == "ema"
    sets = summary["metrics"]["sets"]
    assert set(sets) == {p.name for p in (tiny_polyps / "TestDataset").iterdir()}
    for scores in sets.values():
        assert scores["n"] == 4
        assert 0.0 <= scores["dice@0.5"] <= 1.0 and 0.0 <= scores["meanDice"] <= 1.0 and 0.0 <= scores["MAE"] <= 1.0
    mean = summary["metrics"]["mean"]["dice@0.5"]
    assert mean == pytest.approx(np.mean([s["dice@0.5"] for s in sets.values()]))
    assert "paper convention" in summary["metrics"]["conventions"]["dice@0.5"]
    assert "PraNet convention" in summary["metrics"]["conventions"]["meanDice"]
    # the split manifest: 40 images at 20 % -> 8 masks used, 2 of them validate; 32 unlabeled
    split = json.loads((run / "split.json").read_text())
    assert (len(split["validation"]), len(split["labeled"]), len(split["unlabeled"])) == (2, 6, 32)
    assert split["masks_used"] == {"labeled": 6, "validation": 2, "total": 8}
    # validation records only ever come from the validation split
    records = [json.loads(line) for line in (run / "supervised" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "val"] == [3, 6]

    # evaluate the released model again, by run directory, with files and JSON
    out = tmp_path / "eval"
    assert run_cli("evaluate", str(run), "--test", str(tiny_polyps / "TestDataset"), "--out", str(out), "--amp", "off", "--json", str(tmp_path / "eval.json")) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["sets"]["in_domain"]["dice@0.5"] == pytest.approx(sets["in_domain"]["dice@0.5"], abs=1e-6)
    assert (out / "metrics.md").read_text().count("|") > 10
    # both reports say where and in which precision they were computed
    assert json.loads((out / "metrics.json").read_text())["machine"]["autocast"] == "off (float32)"
    assert summary["metrics"]["training_machines"]["supervised"]["autocast"] == "off (float32)"
    assert "Evaluated on cpu (" in (out / "metrics.md").read_text()

    # predict a folder: native sizes, binary masks, probability maps, overlays; inputs untouched
    inputs = tiny_polyps / "TestDataset" / "in_domain" / "images"
    before = tree_digest(inputs)
    preds = tmp_path / "pred"
    assert run_cli("predict", str(run / "supervised" / "best_raw.safetensors"), str(inputs), str(preds), "--probabilities", "--overlay") == 0
    assert tree_digest(inputs) == before
    for image_path in sorted(inputs.iterdir()):
        mask = np.asarray(Image.open(preds / f"{image_path.stem}.png"))
        native = Image.open(image_path).size
        assert mask.shape == (native[1], native[0])
        assert set(np.unique(mask)) <= {0, 255}
        assert (preds / "probabilities" / f"{image_path.stem}.png").is_file()
        assert (preds / "overlays" / f"{image_path.stem}.png").is_file()


def test_predict_refuses_to_write_over_inputs(tmp_path: Path, tiny_polyps: Path, capsys: pytest.CaptureFixture) -> None:
    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path, tiny_polyps, train={"steps": 2, "val_every": 2}))
    assert run_cli("train", "--config", str(config)) == 0
    folder = tmp_path / "images"
    folder.mkdir()
    image = tiny_polyps / "TestDataset" / "in_domain" / "images"
    source = sorted(image.iterdir())[0]
    (folder / "a.png").write_bytes(source.read_bytes())
    before = tree_digest(folder)
    assert run_cli("predict", str(tmp_path / "run"), str(folder), str(folder)) == 2
    assert "would overwrite an input" in capsys.readouterr().err
    assert tree_digest(folder) == before


def test_rerun_resumes_and_changed_config_is_refused(tmp_path: Path, tiny_polyps: Path, capsys: pytest.CaptureFixture) -> None:
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 3, "val_every": 3})
    config = write_config(tmp_path / "run.yaml", raw)
    assert run_cli("train", "--config", str(config)) == 0
    run = tmp_path / "run"
    before = tree_digest(run)
    # same configuration: the finished stage is reused, nothing retrained
    assert run_cli("train", "--config", str(config)) == 0
    after = tree_digest(run)
    assert {k: v for k, v in after.items() if "cache" not in k and k != "report/curves.png"} == {k: v for k, v in before.items() if "cache" not in k and k != "report/curves.png"}
    # runtime settings may change between a run and its resumption
    assert run_cli("train", "--config", str(config), "--set", "train.num_threads=1") == 0
    after = tree_digest(run)
    # another configuration in the same run directory: refused, nothing changed
    assert run_cli("train", "--config", str(config), "--set", "train.optim.lr=0.5") == 2
    err = capsys.readouterr().err
    assert "train.optim.lr differs" in err and "Traceback" not in err
    assert tree_digest(run) == after

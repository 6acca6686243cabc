"""benchmarks/hippocampus_split.py: a Decathlon imagesTr/labelsTr set laid out as a pool and a held-out test set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pseudoseg.data.volumes import discover_cases
from tests.conftest import load_benchmark, run_cli


def _script():
    return load_benchmark("hippocampus_split")


def _decathlon(root: Path, cases: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for k in range(cases):
        name = f"hippocampus_{k:03d}.nii.gz"
        for folder, data in (("imagesTr", rng.integers(0, 140, (6, 7, 5)).astype(np.uint8)), ("labelsTr", rng.integers(0, 3, (6, 7, 5)).astype(np.uint8))):
            (root / folder).mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(data, np.eye(4)), root / folder / name)
    (root / "dataset.json").write_text(json.dumps({"name": "Hippocampus", "labels": {"0": "background", "1": "Anterior", "2": "Posterior"}, "numTraining": cases}))
    return root


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_split_holds_out_a_seeded_fraction_of_whole_cases(tmp_path: Path, capsys) -> None:
    source = _decathlon(tmp_path / "hippocampus")
    before = _snapshot(source)
    out = tmp_path / "layout"
    _script().main([str(source), str(out), "--test-fraction", "0.3", "--seed", "4"])
    printed = capsys.readouterr().out
    assert f"{out}: 7 pool cases (imagesTr/, labelsTr/), 3 test cases (imagesTs/, labelsTs/), test fraction 0.3, seed 4; 20 files hard-linked" in printed
    assert sorted(os.listdir(out)) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]
    pool, test = _names(out / "imagesTr"), _names(out / "imagesTs")
    assert len(pool) == 7 and len(test) == 3 and not pool & test
    assert pool | test == _names(source / "imagesTr")
    assert _names(out / "labelsTr") == pool and _names(out / "labelsTs") == test
    assert "test cases: " + " ".join(sorted(name.removesuffix(".nii.gz") for name in test)) in printed
    for part in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        for path in (out / part).iterdir():
            assert path.samefile(source / part.replace("Ts", "Tr") / path.name)  # a hard link, no copy
    # dataset.json is a copy (editing it must not reach the source); nothing in the source changed
    assert (out / "dataset.json").read_bytes() == (source / "dataset.json").read_bytes()
    assert not (out / "dataset.json").samefile(source / "dataset.json")
    assert _snapshot(source) == before
    # the layout reads as a training pool and a test set
    assert len(discover_cases(out)) == 7 and len(discover_cases(out, images_dir="imagesTs", labels_dir="labelsTs")) == 3
    assert run_cli("data", "check", str(out), "--test", str(out)) == 0
    assert "7 labeled, 0 unlabeled, 3 test" in capsys.readouterr().out


def test_split_is_seeded(tmp_path: Path) -> None:
    source = _decathlon(tmp_path / "hippocampus", cases=20)
    script = _script()
    for name, seed in (("a", "0"), ("b", "0"), ("c", "1")):
        script.main([str(source), str(tmp_path / name), "--seed", seed])
    test = {name: _names(tmp_path / name / "imagesTs") for name in "abc"}
    assert len(test["a"]) == 4  # the default test fraction, 0.2
    assert test["a"] == test["b"] != test["c"]


def test_split_refuses_a_missing_folder_and_a_filled_output_with_one_line(tmp_path: Path, capsys) -> None:
    script = _script()
    with pytest.raises(SystemExit) as stopped:
        script.main([str(tmp_path / "nowhere"), str(tmp_path / "out")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == f"hippocampus_split: error: {tmp_path / 'nowhere' / 'imagesTr'}: image folder not found\n"
    assert not (tmp_path / "out").exists()

    source = _decathlon(tmp_path / "hippocampus")
    (source / "labelsTr" / "hippocampus_003.nii.gz").unlink()
    with pytest.raises(SystemExit) as stopped:
        script.main([str(source), str(tmp_path / "out")])
    assert stopped.value.code == 2 and "hippocampus_003.nii.gz: image has no label" in capsys.readouterr().err

    source = _decathlon(tmp_path / "complete")
    out = tmp_path / "filled"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit) as stopped:
        script.main([str(source), str(out)])
    assert stopped.value.code == 2 and "is not empty" in capsys.readouterr().err
    assert os.listdir(out) == ["mine.txt"]
    script.main([str(source), str(out), "--overwrite"])
    assert sorted(os.listdir(out)) == ["dataset.json", "imagesTr", "imagesTs", "labelsTr", "labelsTs"]

    with pytest.raises(SystemExit) as stopped:
        script.main([str(source), str(tmp_path / "other"), "--test-fraction", "1.5"])
    assert stopped.value.code == 2 and "--test-fraction: must be in (0, 1), got 1.5" in capsys.readouterr().err


def test_split_copies_where_the_file_system_cannot_link(tmp_path: Path, monkeypatch, capsys) -> None:
    source = _decathlon(tmp_path / "hippocampus", cases=5)
    script = _script()

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(script.os, "link", no_links)
    script.main([str(source), str(tmp_path / "out")])
    assert "0 files hard-linked, 10 copied (no hard links possible)" in capsys.readouterr().out
    for path in (tmp_path / "out" / "imagesTr").iterdir():
        original = source / "imagesTr" / path.name
        assert path.read_bytes() == original.read_bytes() and not path.samefile(original)

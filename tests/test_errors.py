"""Bad input ends in one clear line naming the file or key, exit code 2, and no damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pseudoseg.cli import main
from tests.conftest import tiny_config, write_config
from tests.test_pipeline import tree_digest


def fails(capsys: pytest.CaptureFixture, *argv: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def copy_train(tiny_polyps: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(tiny_polyps / "TrainDataset", root / "TrainDataset")
    return root


def train_with(tmp_path: Path, dataset: Path, capsys, *extra: str, **sections) -> str:
    config = write_config(tmp_path / "bad.yaml", tiny_config(tmp_path, dataset, data={"test": None, **sections.pop("data", {})}, **sections))
    return fails(capsys, "train", "--config", str(config), *extra)


def test_missing_training_folder(tmp_path, capsys) -> None:
    line = train_with(tmp_path, tmp_path / "nowhere", capsys)
    assert str(tmp_path / "nowhere") in line


def test_empty_dataset(tmp_path, capsys) -> None:
    (tmp_path / "empty" / "TrainDataset" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "TrainDataset" / "masks").mkdir(parents=True)
    line = train_with(tmp_path, tmp_path / "empty", capsys)
    assert "images" in line and "no image" in line.lower()


def test_mask_without_image(tmp_path, tiny_polyps, capsys) -> None:
    # (An image without a mask is an unlabeled image: see tests/test_own_data.py.)
    root = copy_train(tiny_polyps, tmp_path)
    shutil.copy(root / "TrainDataset" / "masks" / "train_00004.png", root / "TrainDataset" / "masks" / "orphan.png")
    (root / "TrainDataset" / "images" / "train_00003.png").unlink()
    line = train_with(tmp_path, root, capsys)
    assert "orphan" in line


def test_corrupt_image(tmp_path, tiny_polyps, capsys) -> None:
    root = copy_train(tiny_polyps, tmp_path)
    (root / "TrainDataset" / "images" / "train_00005.png").write_bytes(b"\x89PNG not really")
    line = train_with(tmp_path, root, capsys)
    assert "train_00005.png" in line


def test_size_mismatch(tmp_path, tiny_polyps, capsys) -> None:
    root = copy_train(tiny_polyps, tmp_path)
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "TrainDataset" / "masks" / "train_00006.png")
    line = train_with(tmp_path, root, capsys)
    assert "train_00006" in line


@pytest.mark.parametrize("fraction", ["0", "1.5"])
def test_labeled_fraction_out_of_range(tmp_path, tiny_polyps, capsys, fraction) -> None:
    line = train_with(tmp_path, tiny_polyps, capsys, "--set", f"data.labeled_fraction={fraction}")
    assert "data.labeled_fraction" in line and "(0, 1]" in line


def test_unknown_key_and_wrong_type(tmp_path, tiny_polyps, capsys) -> None:
    assert "train.stepz: unknown key" in train_with(tmp_path, tiny_polyps, capsys, "--set", "train.stepz=3")
    assert "method.beta" in train_with(tmp_path, tiny_polyps, capsys, "--set", "method.name=momentum", "--set", "method.beta=lots")


def test_checkpoint_from_another_architecture(tmp_path, tiny_polyps, capsys) -> None:
    config = write_config(tmp_path / "small.yaml", tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 2, "val_every": 2}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    capsys.readouterr()
    weights = tmp_path / "run" / "supervised" / "best_raw.safetensors"
    other = tiny_config(tmp_path, tiny_polyps, data={"test": None}, model={"channels": [8, 16, 64], "weights": str(weights)})
    other["run_dir"] = str(tmp_path / "other")
    line = fails(capsys, "train", "--config", str(write_config(tmp_path / "other.yaml", other)))
    assert str(weights) in line and "do not fit" in line


def test_failed_run_leaves_earlier_run_untouched(tmp_path, tiny_polyps, capsys) -> None:
    config = write_config(tmp_path / "ok.yaml", tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 2, "val_every": 2}))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config)])
    capsys.readouterr()
    before = tree_digest(tmp_path / "run")
    fails(capsys, "train", "--config", str(config), "--set", "data.train=/nonexistent")
    fails(capsys, "train", "--config", str(config), "--set", "train.steps=3")
    assert tree_digest(tmp_path / "run") == before


def test_evaluate_and_predict_errors(tmp_path, capsys) -> None:
    assert "model not found" in fails(capsys, "evaluate", str(tmp_path / "missing.safetensors"), "--test", str(tmp_path))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    assert str(junk) in fails(capsys, "predict", str(junk), str(tmp_path), str(tmp_path / "out"))
    assert "configuration file not found" in fails(capsys, "train", "--config", str(tmp_path / "none.yaml"))


def test_tensorboard_without_its_extra(tmp_path, tiny_polyps, capsys) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        line = train_with(tmp_path, tiny_polyps, capsys, "--set", "train.tensorboard=true")
        assert "train.tensorboard" in line and "pseudoseg[tracking]" in line
    else:
        pytest.skip("tensorboard is installed here")

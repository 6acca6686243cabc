"""The ACDC recipes read the standard split's lists and train: the published-scale (GPU) recipe
runs 50 steps on a CPU on a generated data set of ACDC's layout, so that neither recipe rots."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from pseudoseg.recipes import find_recipe
from tests.conftest import run_cli

TRAIN_PATIENTS = [f"patient{n:03d}" for n in (1, 2, 3, 4, 5, 6, 7, 8)]
VALIDATION_PATIENTS = ["patient009", "patient010"]
TEST_PATIENTS = ["patient011", "patient012"]


def _heart(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A volume ``(x, y, z)`` in [0, 1] and its labels: LV a disc (3), the myocardium a ring around
    it (2), the RV a disc beside it (1), on a few middle slices."""
    x, y = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    cx, cy = shape[0] / 2 + rng.uniform(-3, 3), shape[1] / 2 + rng.uniform(-3, 3)
    radius = np.hypot(x - cx, y - cy)
    beside = np.hypot(x - cx + 12, y - cy)
    labels = np.zeros(shape, np.uint8)
    image = rng.normal(0.1, 0.03, shape)
    for z in range(1, shape[2] - 1):
        labels[..., z][beside < 6] = 1
        labels[..., z][(radius >= 6) & (radius < 9)] = 2
        labels[..., z][radius < 6] = 3
    image += np.select([labels == 1, labels == 2, labels == 3], [0.6, 0.35, 0.8], 0.0)
    return np.clip(image, 0, 1).astype(np.float32), labels


@pytest.fixture(scope="module")
def acdc_like(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny data set in the layout of the ACDC release: an nnU-Net v2 raw data set (training and
    validation patients in imagesTr/, test patients in imagesTs/), two frames per patient, and splits/."""
    root = tmp_path_factory.mktemp("acdc") / "acdc"
    rng = np.random.default_rng(0)
    for part, patients in (("Tr", TRAIN_PATIENTS + VALIDATION_PATIENTS), ("Ts", TEST_PATIENTS)):
        (root / f"images{part}").mkdir(parents=True)
        (root / f"labels{part}").mkdir(parents=True)
        for patient in patients:
            for frame in ("frame01", "frame02"):
                image, labels = _heart((40, 36, 6), rng)
                nib.save(nib.Nifti1Image(image, np.eye(4)), root / f"images{part}" / f"{patient}_{frame}_0000.nii.gz")
                nib.save(nib.Nifti1Image(labels, np.eye(4)), root / f"labels{part}" / f"{patient}_{frame}.nii.gz")
    labels = {"background": 0, "RV": 1, "MYO": 2, "LV": 3}
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "cine-MRI"}, "labels": labels, "numTraining": 20, "file_ending": ".nii.gz"}))
    (root / "splits").mkdir()

    def frames(patients: list[str]) -> str:
        return "".join(f"{patient}_{frame}\n" for patient in patients for frame in ("frame01", "frame02"))

    (root / "splits" / "labeled_3_patients.txt").write_text(frames(TRAIN_PATIENTS[:3]))
    (root / "splits" / "labeled_7_patients.txt").write_text(frames(TRAIN_PATIENTS[:7]))
    (root / "splits" / "validation.txt").write_text(frames(VALIDATION_PATIENTS))
    return root


def _paths(data: Path, run_dir: Path, budget: int = 3) -> list[str]:
    return [
        f"data.train={data}",
        f"data.test={data}",
        f"data.labeled_list={data / 'splits' / f'labeled_{budget}_patients.txt'}",
        f"data.validation_list={data / 'splits' / 'validation.txt'}",
        f"data.cache_dir={run_dir.parent / 'cache'}",
        f"run_dir={run_dir}",
    ]


def test_gpu_recipe_is_the_published_protocol() -> None:
    recipe = yaml.safe_load(find_recipe("acdc_gpu").read_text())
    assert recipe["data"]["image_size"] == 256 and recipe["data"]["context"] == 0
    assert recipe["data"]["labeled_list"].endswith("labeled_3_patients.txt")
    assert recipe["model"]["channels"] == [16, 32, 64, 128, 256]
    assert (recipe["train"]["batch_size"], recipe["train"]["unlabeled_batch_size"]) == (12, 12)
    assert recipe["train"]["optim"] == {"name": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0001, "schedule": "poly"}
    assert recipe["method"]["rounds"] * recipe["method"]["round_steps"] == 30000
    cpu = yaml.safe_load(find_recipe("acdc_cpu").read_text())
    assert cpu["data"]["validation_list"] == recipe["data"]["validation_list"]
    assert cpu["model"] == recipe["model"] and cpu["train"]["optim"] == recipe["train"]["optim"]


def test_gpu_recipe_trains_50_steps_on_the_split_lists(acdc_like: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "acdc-gpu"
    overrides = [*_paths(acdc_like, run_dir), "train.steps=50", "train.val_every=25", "train.num_threads=1", "eval.batch_size=8"]
    argv = ["train", "--config", str(find_recipe("acdc_gpu")), "--method", "supervised", "--json", str(tmp_path / "metrics.json")]
    assert run_cli(*argv, *(item for value in overrides for item in ("--set", value))) == 0

    split = json.loads((run_dir / "split.json").read_text())
    assert split["source"] == "lists"
    assert split["counts"] == {"labeled": 6, "unlabeled": 10, "validation": 4}  # 3 + 5 + 2 patients, two frames each
    assert {unit[:10] for unit in split["labeled"]} == set(TRAIN_PATIENTS[:3])
    done = json.loads((run_dir / "supervised" / "done.json").read_text())
    assert done["steps"] == 50 and done["describe"]["batch_size"] == 12
    weights = json.loads((run_dir / "supervised" / "best_ema.json").read_text())
    assert weights["architecture"]["out_channels"] == 4  # background and the three structures
    assert weights["preprocessing"]["classes"]["names"] == ["RV", "MYO", "LV"]
    assert weights["preprocessing"]["image_size"] == 256
    scores = json.loads((tmp_path / "metrics.json").read_text())["metrics"]["sets"]["test"]
    assert scores["n"] == 4  # the 2 test patients' frames, none of them seen in training
    for name in ("dice", "dice/RV", "dice/MYO", "dice/LV", "hd95_mm", "hd95_mm/RV", "hd95_mm/MYO", "hd95_mm/LV"):
        assert name in scores


def test_upper_bound_of_a_listed_split_labels_every_training_mask(acdc_like: Path, tmp_path: Path) -> None:
    out = tmp_path / "grid"
    overrides = [*_paths(acdc_like, out / "unused"), "data.image_size=32", "model.channels=[4,8,16]", "train.steps=4", "train.val_every=2"]
    overrides += ["train.batch_size=2", "train.unlabeled_batch_size=2", "train.amp=off", "train.num_threads=1", "eval.batch_size=8"]
    argv = ["grid", "--config", str(find_recipe("acdc_cpu")), "--family", "rounds", "--seeds", "0", "--out", str(out), "--variants", "supervised-100%"]
    assert run_cli(*argv, *(item for value in overrides for item in ("--set", value))) == 0

    bound = json.loads((out / "seed0" / "supervised-100%" / "split.json").read_text())
    assert bound["counts"] == {"labeled": 16, "unlabeled": 0, "validation": 4}
    listed = (out / "seed0" / "supervised-100%.labeled.txt").read_text().split()
    assert len(listed) == 16 and not set(listed) & set(bound["validation"])
    done = json.loads((out / "seed0" / "supervised-100%" / "supervised" / "done.json").read_text())
    supervised = json.loads((out / "seed0" / "supervised" / "supervised" / "done.json").read_text())
    assert done["max_steps"] == round(supervised["max_steps"] * 16 / 6)  # as many epochs as the labeled-only model

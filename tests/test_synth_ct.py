"""The synthetic CT generator: layout, determinism, anatomy, refusal to clobber folders."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pseudoseg.synth.ct import GENERATOR_VERSION, CtSetSpec, generate_ct_dataset
from pseudoseg.data.volumes import SliceSettings, case_slices, discover_cases, voxel_spacing
from pseudoseg.errors import UserError
from pseudoseg.evaluation.volume_metrics import volume_dice

SHAPE = (40, 40, 16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "ct"
    calls: list[tuple[int, int]] = []
    summary = generate_ct_dataset(out, CtSetSpec(n_train=4, n_test=2, shape=SHAPE, seed=3), progress=lambda *a: calls.append(a))
    assert calls == [(i, 6) for i in range(1, 7)]
    return out, summary


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_layout_and_manifest(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    names = [f"case_{i:03d}.nii.gz" for i in range(6)]
    assert _files(out) == sorted(
        ["dataset.json"]
        + [f"imagesTr/{n}" for n in names[:4]]
        + [f"labelsTr/{n}" for n in names[:4]]
        + [f"imagesTs/{n}" for n in names[4:]]
        + [f"labelsTs/{n}" for n in names[4:]]
    )
    assert not [p for p in out.parent.iterdir() if p != out]  # no temporary folder left beside it
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest == json.loads(json.dumps(summary))
    assert manifest["labels"] == {"0": "background", "1": "organ"}
    assert manifest["numTraining"] == 4 and manifest["numTest"] == 2
    assert manifest["seed"] == 3 and manifest["generator_version"] == GENERATOR_VERSION
    assert manifest["training"][1] == {"image": "./imagesTr/case_001.nii.gz", "label": "./labelsTr/case_001.nii.gz"}
    assert manifest["test"] == ["./imagesTs/case_004.nii.gz", "./imagesTs/case_005.nii.gz"]
    assert [c.case_id for c in discover_cases(out)] == ["case_000", "case_001", "case_002", "case_003"]
    test_cases = discover_cases(out, images_dir="imagesTs", labels_dir="labelsTs")
    assert [c.case_id for c in test_cases] == ["case_004", "case_005"]


def test_volumes_are_ct_like(dataset: tuple[Path, dict]) -> None:
    out, summary = dataset
    spacings = set()
    for case in discover_cases(out):
        image, label = nib.load(case.image_path), nib.load(case.label_path)
        assert image.shape == label.shape == SHAPE
        assert image.get_data_dtype() == np.int16 and label.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(image.affine, label.affine)
        assert nib.aff2axcodes(image.affine) == ("L", "P", "S")
        sx, sy, sz = voxel_spacing(image)
        assert 0.7 <= sx <= 1.0 and sx == pytest.approx(sy) and 2.0 <= sz <= 3.0
        assert [round(s, 4) for s in (sx, sy, sz)] == summary["cases"][case.case_id]["spacing_mm"]
        spacings.add(round(sz, 3))

        hu = np.asanyarray(image.dataobj).astype(np.float32)
        organ = np.asanyarray(label.dataobj).astype(bool)
        assert set(np.unique(organ)) == {False, True}
        assert not organ.all(axis=(0, 1)).any()  # never fills a whole slice
        assert not organ.any(axis=(0, 1)).all()  # and some slices have no organ
        assert np.median(hu[0, 0]) < -900  # corner of the field of view: air
        body = hu > -300
        assert np.percentile(hu[body], 99) > 250  # bone: a few per cent of the body, far above soft tissue
        organ_hu = summary["cases"][case.case_id]["organ_hu"]
        core = organ & np.roll(organ, 1, 0) & np.roll(organ, -1, 0) & np.roll(organ, 1, 1) & np.roll(organ, -1, 1)
        assert abs(np.median(hu[core]) - organ_hu) < 15
        assert np.median(hu[body & ~organ]) < organ_hu - 10
    assert len(spacings) > 1  # spacing varies per case


def test_thresholding_alone_does_not_solve_it(dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    # Even with a per-case oracle threshold on the windowed slices, the
    # distractor organ and the aorta keep Dice well below a learned model's.
    for case in discover_cases(out):
        images, labels = case_slices(case, SliceSettings(size=40))
        best = max(volume_dice(images[:, 0] >= t, labels) for t in range(60, 256, 5))
        assert best < 0.85, case.case_id


def test_deterministic_per_seed_and_per_case(tmp_path: Path, dataset: tuple[Path, dict]) -> None:
    out, _ = dataset
    again = tmp_path / "again"
    generate_ct_dataset(again, CtSetSpec(n_train=2, n_test=0, shape=SHAPE, seed=3))
    for name in ("imagesTr/case_000.nii.gz", "labelsTr/case_001.nii.gz"):
        assert (again / name).read_bytes() == (out / name).read_bytes()  # case i depends on (seed, i) only
    other = tmp_path / "other"
    generate_ct_dataset(other, CtSetSpec(n_train=1, n_test=0, shape=SHAPE, seed=4))
    a = np.asanyarray(nib.load(other / "imagesTr/case_000.nii.gz").dataobj)
    b = np.asanyarray(nib.load(out / "imagesTr/case_000.nii.gz").dataobj)
    assert not np.array_equal(a, b)


def test_refuses_to_clobber_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "ct"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match=r"ct exists and is not empty"):
        generate_ct_dataset(out, CtSetSpec(n_train=1, n_test=0, shape=SHAPE))
    assert _files(out) == ["keep.txt"]
    generate_ct_dataset(out, CtSetSpec(n_train=1, n_test=0, shape=SHAPE), overwrite=True)
    assert _files(out) == ["dataset.json", "imagesTr/case_000.nii.gz", "labelsTr/case_000.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="file exists and is not a folder"):
        generate_ct_dataset(tmp_path / "file", CtSetSpec(n_train=1, n_test=0, shape=SHAPE))
    empty = tmp_path / "empty"
    empty.mkdir()
    generate_ct_dataset(empty, CtSetSpec(n_train=1, n_test=1, shape=SHAPE))  # an empty folder is fine
    assert len(_files(empty)) == 5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_test": -1}, "n_test must be an integer >= 0"),
        ({"seed": -2}, "seed must be a non-negative integer"),
        ({"shape": (40, 40)}, "shape must be three integers"),
        ({"shape": (40, 40, 4)}, "shape must be three integers"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate_ct_dataset(tmp_path / "ct", CtSetSpec(**{"shape": SHAPE, **kwargs}))
    assert not any(tmp_path.iterdir())

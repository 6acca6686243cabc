"""Intensity normalisation of volumes: a fixed CT window or each case's own percentiles (MRI)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pseudoseg.config import DataConfig
from pseudoseg.run_config import config_from_dict
from pseudoseg.data.pool import load_pool
from pseudoseg.data.preprocessing import Preprocessing
from pseudoseg.data.volumes import SliceSettings, VolumeCase, case_slices, percentile_bounds, percentile_to_uint8, window_to_uint8
from pseudoseg.errors import UserError
from pseudoseg.inference import Predictor
from pseudoseg.runner import train
from tests.conftest import run_cli


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)  # RAS already: the canonical array is the file's
    return path


def _mri_case(rng: np.random.Generator, shape=(20, 20, 5)) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 'MRI' case: a bright square on noise, with a few outlier voxels."""
    label = np.zeros(shape, np.uint8)
    x, y = rng.integers(5, 15, size=2)
    label[x - 3 : x + 3, y - 3 : y + 3, 1:4] = 1
    image = np.clip(rng.normal(40, 8, shape) + 50 * label, 0, 255)
    image[0, 0, 0] = 255  # an outlier that a min-max rescale would let squeeze the contrast
    return image.astype(np.uint8), label


# --------------------------------------------------------------------------- numbers


def test_percentile_to_uint8_numbers() -> None:
    volume = np.arange(20, dtype=np.float32).reshape(2, 2, 5)
    # 20 values 0..19, linear interpolation: the 10th percentile lies at 0.1 * 19 = 1.9, the 90th at 17.1
    assert percentile_bounds(volume, (10, 90)) == pytest.approx((1.9, 17.1))
    unit = percentile_to_uint8(volume, (10, 90))
    assert unit.dtype == np.uint8 and unit.shape == (2, 2, 5)
    # (v - 1.9) / 15.2 * 255, rounded, clipped: 2 -> 1.68, 10 -> 135.89, 17 -> 253.32
    flat = unit.ravel()
    assert flat[[0, 1, 2, 10, 17, 18, 19]].tolist() == [0, 0, 2, 136, 253, 255, 255]
    # the default percentiles (0.5, 99.5): 0.095 and 18.905
    assert percentile_bounds(volume, (0.5, 99.5)) == pytest.approx((0.095, 18.905))


def test_percentiles_ignore_nan_voxels_which_become_zero() -> None:
    volume = np.array([np.nan, 0.0, 1.0, 2.0, 3.0, 4.0, np.inf])
    assert percentile_bounds(volume, (0, 100)) == (0.0, 4.0)
    # 1/4 * 255 = 63.75, 2/4 * 255 = 127.5 (to even: 128), 3/4 * 255 = 191.25; +inf clips to 255
    np.testing.assert_array_equal(percentile_to_uint8(volume, (0, 100)), [0, 0, 64, 128, 191, 255, 255])


def test_a_constant_volume_maps_to_zero_without_dividing_by_zero() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a 0 / 0 would warn
        for volume in (np.full((3, 3, 3), 7.0, np.float32), np.full((2, 2, 2), 9, np.uint8), np.full((4,), np.nan)):
            out = percentile_to_uint8(volume)
            assert out.dtype == np.uint8 and out.shape == volume.shape and not out.any()


def test_percentiles_make_the_slices_independent_of_the_files_scale(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image, label = _mri_case(rng)
    uint8_case = VolumeCase("a", _save(tmp_path / "a.nii.gz", image), _save(tmp_path / "la.nii.gz", label))
    # the same scan stored as float32 on another scale (x 4: exact in binary floating point)
    float_case = VolumeCase("b", _save(tmp_path / "b.nii.gz", image.astype(np.float32) * 4), uint8_case.label_path)
    slices, masks = case_slices(uint8_case, SliceSettings(intensity="percentile", size=20))
    expected = percentile_to_uint8(image, (0.5, 99.5))
    np.testing.assert_array_equal(slices[:, 0], np.moveaxis(expected, 2, 0))  # per case, not per slice
    np.testing.assert_array_equal(case_slices(float_case, SliceSettings(intensity="percentile", size=20))[0], slices)
    np.testing.assert_array_equal(masks, np.moveaxis(label, 2, 0))
    # the window in HU of the default does not: the float file saturates
    assert not np.array_equal(case_slices(float_case, SliceSettings(size=20))[0], case_slices(uint8_case, SliceSettings(size=20))[0])
    low_high = percentile_bounds(image, (0.5, 99.5))
    assert low_high[1] < 255  # the outlier voxel is clipped, not the top of the range
    np.testing.assert_array_equal(slices[:, 0], np.moveaxis(window_to_uint8(image, low_high), 2, 0))


def test_percentiles_are_taken_per_channel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image, _ = _mri_case(rng)
    other = 1000.0 - 4.0 * image.astype(np.float32)  # a second channel: other scale, inverted contrast
    case = VolumeCase("c", _save(tmp_path / "c_0000.nii.gz", image), None, (_save(tmp_path / "c_0001.nii.gz", other),))
    slices, _ = case_slices(case, SliceSettings(intensity="percentile", size=20), with_labels=False)
    assert slices.shape == (5, 2, 20, 20)
    np.testing.assert_array_equal(slices[:, 0], np.moveaxis(percentile_to_uint8(image, (0.5, 99.5)), 2, 0))
    np.testing.assert_array_equal(slices[:, 1], np.moveaxis(percentile_to_uint8(other, (0.5, 99.5)), 2, 0))
    assert slices[:, 1].max() == 255 and slices[:, 1].min() == 0  # not squeezed by channel 0's range


def test_a_constant_case_gives_zero_slices(tmp_path: Path) -> None:
    case = VolumeCase("flat", _save(tmp_path / "flat.nii.gz", np.full((8, 8, 3), 5.0, np.float32)), None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        slices, _ = case_slices(case, SliceSettings(intensity="percentile", size=16), with_labels=False)
    assert slices.shape == (3, 1, 16, 16) and not slices.any()


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize("bounds", [[99.5, 0.5], [50, 50], [-1, 50], [50, 101]])
def test_percentiles_must_be_increasing_within_0_and_100(tmp_path: Path, bounds) -> None:
    raw = {"run_dir": str(tmp_path / "run"), "data": {"kind": "volumes", "train": str(tmp_path), "intensity": "percentile", "percentiles": bounds}}
    with pytest.raises(UserError, match=r"data\.percentiles: .*expected 0 <= low < high <= 100"):
        config_from_dict(raw)


def test_intensity_defaults_to_the_window_and_names_its_choices(tmp_path: Path) -> None:
    data = config_from_dict({"run_dir": str(tmp_path / "run"), "data": {"kind": "volumes", "train": str(tmp_path)}}).data
    assert data.intensity == "window" and data.percentiles == (0.5, 99.5) and data.window == (-100.0, 240.0)
    with pytest.raises(UserError, match=r"data\.intensity: .*'window' or 'percentile'"):
        config_from_dict({"run_dir": str(tmp_path / "run"), "data": {"kind": "volumes", "train": str(tmp_path), "intensity": "zscore"}})


# --------------------------------------------------------------------------- preprocessing saved with a network


def test_preprocessing_round_trip_keeps_the_intensity(tmp_path: Path) -> None:
    data = DataConfig(kind="volumes", train=tmp_path, intensity="percentile", percentiles=(1.0, 99.0), context=1, image_size=48)
    pre = Preprocessing.from_data(data)
    payload = json.loads(json.dumps(pre.to_json()))
    assert payload["intensity"] == "percentile" and payload["percentiles"] == [1.0, 99.0]
    assert Preprocessing.from_json(payload) == pre


def test_preprocessing_saved_before_the_intensity_setting_loads_as_the_window() -> None:
    old = {"kind": "volumes", "image_size": 64, "normalize": "unit", "in_channels": 3, "window": [-50.0, 200.0], "context": 1}
    pre = Preprocessing.from_json(old)
    assert pre.intensity == "window" and pre.window == (-50.0, 200.0) and pre.percentiles == (0.5, 99.5)
    assert (pre.kind, pre.image_size, pre.normalize, pre.in_channels, pre.context) == ("volumes", 64, "unit", 3, 1)


def test_preprocessing_slices_a_case_as_configured(tmp_path: Path) -> None:
    image, label = _mri_case(np.random.default_rng(2))
    case = VolumeCase("a", _save(tmp_path / "a.nii.gz", image), _save(tmp_path / "la.nii.gz", label))
    pre = Preprocessing.from_data(DataConfig(kind="volumes", train=tmp_path, intensity="percentile", percentiles=(2.0, 98.0), image_size=16, context=1))
    slices, masks = pre.volume_slices(case, with_labels=True)
    expected, expected_masks = case_slices(case, SliceSettings(intensity="percentile", percentiles=(2.0, 98.0), size=16, context=1))
    np.testing.assert_array_equal(slices, expected)
    np.testing.assert_array_equal(masks, expected_masks)


# --------------------------------------------------------------------------- training pool and a whole run


def _mri_set(root: Path, *, cases: int = 6, test: int = 1) -> Path:
    """uint8 and float32 files of different scales, as in the Decathlon hippocampus."""
    rng = np.random.default_rng(3)
    for k in range(cases + test):
        image, label = _mri_case(rng)
        stored = image if k % 2 == 0 else image.astype(np.float32) * 16
        images, labels = ("imagesTr", "labelsTr") if k < cases else ("imagesTs", "labelsTs")
        _save(root / images / f"mri_{k}.nii.gz", stored)
        _save(root / labels / f"mri_{k}.nii.gz", label)
    return root


def test_the_pool_cache_is_not_shared_between_window_and_percentiles(tmp_path: Path) -> None:
    root = _mri_set(tmp_path / "mri")
    cache = tmp_path / "cache"
    window = DataConfig(kind="volumes", train=root, image_size=16)
    load_pool(window, cache)
    load_pool(DataConfig(kind="volumes", train=root, image_size=16, percentiles=(1.0, 99.0)), cache)  # unused by the window
    assert len(list(cache.iterdir())) == 1
    pool = load_pool(DataConfig(kind="volumes", train=root, image_size=16, intensity="percentile"), cache)
    assert len(list(cache.iterdir())) == 2
    load_pool(DataConfig(kind="volumes", train=root, image_size=16, intensity="percentile", percentiles=(1.0, 99.0)), cache)
    assert len(list(cache.iterdir())) == 3
    first, _ = case_slices(VolumeCase("mri_0", root / "imagesTr" / "mri_0.nii.gz", None), SliceSettings(intensity="percentile", size=16), with_labels=False)
    np.testing.assert_array_equal(pool.images.read(list(range(len(first)))), first)


def test_a_percentile_run_predicts_and_evaluates_with_its_percentiles(tmp_path: Path) -> None:
    root = _mri_set(tmp_path / "mri")
    config = config_from_dict(
        {
            "run_dir": str(tmp_path / "run"),
            "data": {"kind": "volumes", "train": str(root), "test": str(root), "image_size": 16, "normalize": "unit", "val_fraction": 0.34, "labeled_fraction": 1.0, "intensity": "percentile"},
            "model": {"name": "unet", "channels": [8, 16], "num_res_units": 1},
            "train": {"steps": 4, "val_every": 2, "batch_size": 4, "amp": "off", "log_every": 2},
            "method": {"name": "supervised"},
        }
    )
    result = train(config, show_progress=False, log=lambda _: None)
    predictor = Predictor.load(result.run_dir)
    assert predictor.preprocessing.intensity == "percentile" and predictor.preprocessing.percentiles == (0.5, 99.5)
    # one scan stored on two scales: the same prediction, since each case is normalised by its own percentiles
    scan = np.asarray(nib.load(root / "imagesTs" / "mri_6.nii.gz").dataobj)
    inputs = tmp_path / "new"
    _save(inputs / "as_stored.nii.gz", scan)
    _save(inputs / "rescaled.nii.gz", scan.astype(np.float32) * 4)
    out = tmp_path / "predicted"
    assert run_cli("predict", str(result.run_dir), str(inputs), str(out), "--amp", "off") == 0
    stored = np.asarray(nib.load(out / "as_stored.nii.gz").dataobj) > 0
    np.testing.assert_array_equal(np.asarray(nib.load(out / "rescaled.nii.gz").dataobj) > 0, stored)
    # evaluation read the test case the same way: its 3-D Dice is that of the predicted file
    truth = np.asarray(nib.load(root / "labelsTs" / "mri_6.nii.gz").dataobj) > 0
    dice = 2 * (stored & truth).sum() / (stored.sum() + truth.sum())
    report = json.loads((result.run_dir / "report" / "metrics.json").read_text())
    assert report["sets"]["test"]["n"] == 1
    assert report["sets"]["test"]["dice"] == pytest.approx(dice, abs=1e-6)

"""CT volumes: discovery, NIfTI I/O, slicing for 2-D networks and back, 3-D metrics."""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pseudoseg.data.volumes import (
    SliceSettings,
    VolumeCase,
    case_slices,
    discover_cases,
    load_volume,
    slices_to_volume,
    voxel_spacing,
    window_to_uint8,
    write_label_volume,
)
from pseudoseg.errors import UserError
from pseudoseg.evaluation.volume_metrics import VolumeMetrics, volume_dice, volume_hd95

LPS = np.diag([-0.8, -0.8, 2.5, 1.0])  # DICOM-converted scans: first two axes flipped
# The axial axis first in the file, then the two in-plane axes (a permuted, non-canonical layout).
PERMUTED = np.array(
    [[0.0, -0.9, 0.0, 10.0], [0.0, 0.0, 0.7, -5.0], [3.0, 0.0, 0.0, 2.0], [0.0, 0.0, 0.0, 1.0]]
)


def _save(path: Path, data: np.ndarray, affine: np.ndarray = LPS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, path)
    return path


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def _sphere(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((g - c) ** 2 for g, c in zip(grids, centre)) <= radius**2


# --------------------------------------------------------------------------- discovery


def test_discover_pairs_msd_names_sorted_with_both_suffixes(tmp_path: Path) -> None:
    for name in ("liver_10.nii.gz", "liver_2.nii", "liver_1.nii.gz"):
        _touch(tmp_path / "imagesTr" / name)
    for name in ("liver_10.nii.gz", "liver_2.nii.gz", "liver_1.nii"):
        _touch(tmp_path / "labelsTr" / name)
    cases = discover_cases(tmp_path)
    assert [c.case_id for c in cases] == ["liver_1", "liver_10", "liver_2"]
    assert cases[1] == VolumeCase(
        "liver_10", tmp_path / "imagesTr" / "liver_10.nii.gz", tmp_path / "labelsTr" / "liver_10.nii.gz"
    )
    assert cases[2].image_path.name == "liver_2.nii" and cases[2].label_path.name == "liver_2.nii.gz"


def test_discover_strips_nnunet_channel_suffix(tmp_path: Path) -> None:
    _touch(tmp_path / "imagesTr" / "case_007_0000.nii.gz")
    _touch(tmp_path / "labelsTr" / "case_007.nii.gz")
    # A label that itself ends in _0000 keeps the full name as the case id.
    _touch(tmp_path / "imagesTr" / "scan_0000.nii.gz")
    _touch(tmp_path / "labelsTr" / "scan_0000.nii.gz")
    cases = discover_cases(tmp_path)
    assert [(c.case_id, c.image_path.name, c.label_path.name) for c in cases] == [
        ("case_007", "case_007_0000.nii.gz", "case_007.nii.gz"),
        ("scan_0000", "scan_0000.nii.gz", "scan_0000.nii.gz"),
    ]


def test_discover_ignores_hidden_and_other_files(tmp_path: Path) -> None:
    _touch(tmp_path / "imagesTr" / "a.nii.gz")
    _touch(tmp_path / "labelsTr" / "a.nii.gz")
    _touch(tmp_path / "imagesTr" / "._a.nii.gz")
    _touch(tmp_path / "imagesTr" / ".b.nii.gz")
    _touch(tmp_path / "labelsTr" / "._c.nii.gz")
    _touch(tmp_path / "imagesTr" / "notes.txt")
    (tmp_path / "imagesTr" / "sub.nii.gz").mkdir()
    assert [c.case_id for c in discover_cases(tmp_path)] == ["a"]


def test_discover_without_required_labels(tmp_path: Path) -> None:
    _touch(tmp_path / "imagesTs" / "b.nii.gz")
    _touch(tmp_path / "imagesTs" / "a_0000.nii.gz")
    cases = discover_cases(tmp_path, images_dir="imagesTs", labels_dir="labelsTs", require_labels=False)
    assert [(c.case_id, c.label_path) for c in cases] == [("a", None), ("b", None)]


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        ([], None, "imagesTr: image folder not found"),
        (["a.nii.gz"], None, "labelsTr: label folder not found"),
        (["readme.txt"], [], "imagesTr: no NIfTI volumes"),
        (["a.nii.gz", "b.nii.gz"], ["a.nii.gz"], "b.nii.gz: image has no label"),
        (["a.nii.gz"], ["a.nii.gz", "z.nii"], "z.nii: label has no image"),
        (["a.nii", "a.nii.gz"], ["a.nii.gz"], "is already given by"),
        (["a_0000.nii.gz", "a.nii.gz"], ["a.nii.gz"], "is already given by"),
        (["a_0000.nii.gz", "a_0001.nii.gz"], ["a.nii.gz"], "a_0001.nii.gz: multi-channel images"),
    ],
)
def test_discover_errors_name_the_path(
    tmp_path: Path, images: list[str], labels: list[str] | None, message: str
) -> None:
    if images:
        for name in images:
            _touch(tmp_path / "imagesTr" / name)
    if labels is not None:
        (tmp_path / "labelsTr").mkdir()
        for name in labels:
            _touch(tmp_path / "labelsTr" / name)
    with pytest.raises(UserError, match=message):
        discover_cases(tmp_path)


# --------------------------------------------------------------------------- reading


def test_load_volume_reports_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.nii.gz: file not found"):
        load_volume(tmp_path / "missing.nii.gz")
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not a volume")
    with pytest.raises(UserError, match="junk.nii.gz: not a readable NIfTI volume"):
        load_volume(junk)
    # A valid header with the voxel data cut short: only reading the data finds it.
    good = _save(tmp_path / "good.nii.gz", np.arange(16 * 16 * 8, dtype=np.int16).reshape(16, 16, 8))
    raw = gzip.decompress(good.read_bytes())
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(UserError, match="truncated.nii.gz: cannot read voxel data"):
        load_volume(truncated)
    assert load_volume(truncated, read_data=False).shape == (16, 16, 8)


def test_load_volume_applies_scaling_as_float32(tmp_path: Path) -> None:
    img = nib.Nifti1Image(np.array([[[0, 1], [2, 3]]], dtype=np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    nib.save(img, tmp_path / "scaled.nii")
    loaded = load_volume(tmp_path / "scaled.nii")
    data = np.asanyarray(loaded.dataobj)
    assert data.dtype == np.float32
    np.testing.assert_array_equal(data.ravel(), [-1024, -1022, -1020, -1018])


def test_window_to_uint8_numbers() -> None:
    hu = np.array([-1000.0, -100.0, 40.0, 240.0, 3000.0, np.nan])
    np.testing.assert_array_equal(window_to_uint8(hu, (-100.0, 240.0)), [0, 0, 105, 255, 255, 0])
    assert window_to_uint8(hu, (-100.0, 240.0)).dtype == np.uint8
    np.testing.assert_array_equal(window_to_uint8(np.array([0, 1, 2, 3]), (0, 3)), [0, 85, 170, 255])
    with pytest.raises(UserError, match="window"):
        window_to_uint8(hu, (240.0, -100.0))


def _ct_case(tmp_path: Path, shape: tuple[int, int, int], affine: np.ndarray, *, labels: np.ndarray | None = None):
    rng = np.random.default_rng(0)
    image = rng.integers(-200, 300, size=shape).astype(np.int16)
    if labels is None:
        labels = _sphere(shape, tuple(n / 2 for n in shape), min(shape) / 3).astype(np.uint8)
    case = VolumeCase(
        "c",
        _save(tmp_path / "imagesTr" / "c.nii.gz", image, affine),
        _save(tmp_path / "labelsTr" / "c.nii.gz", labels, affine),
    )
    return case, image, labels


def test_case_slices_axial_canonical_slices_at_native_size(tmp_path: Path) -> None:
    case, image, labels = _ct_case(tmp_path, (12, 12, 5), LPS)
    images, masks = case_slices(case, SliceSettings(size=12))
    assert images.shape == (5, 1, 12, 12) and images.dtype == np.uint8
    assert masks.shape == (5, 12, 12) and masks.dtype == np.uint8
    # LPS -> RAS flips the first two axes; the slice axis stays last.
    canonical = image[::-1, ::-1, :]
    for z in range(5):
        np.testing.assert_array_equal(images[z, 0], window_to_uint8(canonical[:, :, z], (-100, 240)))
        np.testing.assert_array_equal(masks[z], labels[::-1, ::-1, z])


def test_case_slices_slices_along_the_superior_axis_of_a_permuted_file(tmp_path: Path) -> None:
    # File axis 0 is superior (3 mm), so it becomes the slice axis.
    case, image, _ = _ct_case(tmp_path, (6, 10, 10), PERMUTED)
    images, masks = case_slices(case, SliceSettings(size=10))
    assert images.shape == (6, 1, 10, 10) and masks.shape == (6, 10, 10)
    # canonical[x, y, z] = file[z, -x, y]: file axis 1 points left (flipped), axis 2 anterior.
    canonical = np.transpose(image, (1, 2, 0))[::-1, :, :]
    np.testing.assert_array_equal(images[2, 0], window_to_uint8(canonical[:, :, 2], (-100, 240)))


def test_case_slices_context_channels_replicate_edges(tmp_path: Path) -> None:
    case, _, _ = _ct_case(tmp_path, (16, 16, 6), LPS)
    single, _ = case_slices(case, SliceSettings(size=8))
    images, _ = case_slices(case, SliceSettings(size=8, context=2), with_labels=False)
    assert images.shape == (6, 5, 8, 8)
    np.testing.assert_array_equal(images[:, 2], single[:, 0])  # centre channel
    np.testing.assert_array_equal(images[3, 0], single[1, 0])
    np.testing.assert_array_equal(images[3, 4], single[5, 0])
    for channel in (0, 1):  # before the first slice: the first slice again
        np.testing.assert_array_equal(images[0, channel], single[0, 0])
    np.testing.assert_array_equal(images[1, 0], single[0, 0])
    for channel in (3, 4):  # after the last slice: the last slice again
        np.testing.assert_array_equal(images[5, channel], single[5, 0])


def test_case_slices_resized_labels_stay_binary(tmp_path: Path) -> None:
    labels = np.zeros((20, 20, 4), dtype=np.uint8)
    labels[4:10, 4:12, 1:3] = 1
    labels[12:18, 10:16, 1:3] = 2
    case, _, _ = _ct_case(tmp_path, (20, 20, 4), LPS, labels=labels)
    images, masks = case_slices(case, SliceSettings(size=32))
    assert images.shape == (4, 1, 32, 32)
    assert set(np.unique(masks)) == {0, 1}
    assert not masks[0].any() and not masks[3].any()
    # Area is preserved up to the nearest-neighbour grid: 2 x (48 + 36) px at 20 -> x (32/20)^2.
    assert abs(int(masks[1].sum()) - 84 * (32 / 20) ** 2) < 0.1 * 84 * (32 / 20) ** 2
    _, only_two = case_slices(case, SliceSettings(size=20), foreground=(2,))
    np.testing.assert_array_equal(only_two[1], (labels[::-1, ::-1, 1] == 2).astype(np.uint8))


def test_case_slices_errors_name_the_files(tmp_path: Path) -> None:
    case, _, _ = _ct_case(tmp_path, (8, 8, 3), LPS)
    _save(case.label_path, np.zeros((8, 8, 4), dtype=np.uint8))
    with pytest.raises(UserError, match=r"labelsTr/c.nii.gz: label shape \(8, 8, 4\) differs .*/imagesTr/c.nii.gz"):
        case_slices(case)
    _save(case.label_path, np.full((8, 8, 3), 0.5, dtype=np.float32))
    with pytest.raises(UserError, match=r"labelsTr/c.nii.gz: label values are not integer classes"):
        case_slices(case)
    _save(case.label_path, np.zeros((8, 8, 3), dtype=np.uint8), np.eye(4))
    with pytest.raises(UserError, match=r"labelsTr/c.nii.gz: label orientation RAS differs from LPS"):
        case_slices(case)
    with pytest.raises(UserError, match="has no label"):
        case_slices(VolumeCase("c", case.image_path, None))


# --------------------------------------------------------------------------- back to the volume


@pytest.mark.parametrize("affine", [LPS, PERMUTED, np.diag([0.7, 0.7, 2.0, 1.0])], ids=["LPS", "permuted", "RAS"])
def test_slices_to_volume_is_exact_at_native_size(tmp_path: Path, affine: np.ndarray) -> None:
    shape = (14, 14, 14)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[2:9, 3:12, 5:10] = 1
    labels[10:13, 1:4, 0:3] = 1  # asymmetric, so a wrong flip or transpose cannot pass
    case, _, _ = _ct_case(tmp_path, shape, affine, labels=labels)
    _, masks = case_slices(case, SliceSettings(size=14))
    restored = slices_to_volume(masks.astype(np.float32), load_volume(case.image_path, read_data=False))
    assert restored.shape == shape and restored.dtype == np.float32
    np.testing.assert_array_equal(restored, labels)


@pytest.mark.parametrize("size", [24, 64])
@pytest.mark.parametrize("affine", [LPS, PERMUTED], ids=["LPS", "permuted"])
def test_slices_to_volume_after_resizing_differs_only_at_boundaries(
    tmp_path: Path, size: int, affine: np.ndarray
) -> None:
    # In-plane 40 x 36 either way; for the permuted file the in-plane axes are file axes 1 and 2.
    shape, in_plane = ((40, 36, 40), (0, 1)) if affine is LPS else ((16, 40, 36), (1, 2))
    labels = _sphere(shape, (shape[0] * 0.45, shape[1] * 0.55, shape[2] * 0.5), 10.5).astype(np.uint8)
    labels |= _sphere(shape, (shape[0] * 0.6, shape[1] * 0.2, shape[2] * 0.7), 4.5).astype(np.uint8)
    case, _, _ = _ct_case(tmp_path, shape, affine, labels=labels)
    _, masks = case_slices(case, SliceSettings(size=size))
    restored = slices_to_volume(masks.astype(np.float32), load_volume(case.image_path)) > 0.5
    target = labels.astype(bool)
    assert volume_dice(restored, target) > 0.9
    # Every disagreement lies within one working-size pixel of the true boundary,
    # in-plane only: the axial axis is never resampled.
    reach = max(1, math.ceil(40 / size))
    grown, shrunk = target.copy(), target.copy()
    for axis in in_plane:
        for shift in range(-reach, reach + 1):
            grown |= np.roll(target, shift, axis)
            shrunk &= np.roll(target, shift, axis)
    wrong = restored != target
    assert not (wrong & ~(grown & ~shrunk)).any()


def test_slices_to_volume_rejects_wrong_slice_count() -> None:
    reference = nib.Nifti1Image(np.zeros((8, 8, 5), dtype=np.int16), LPS)
    with pytest.raises(ValueError, match="Z=5"):
        slices_to_volume(np.zeros((4, 8, 8)), reference)


# --------------------------------------------------------------------------- writing


@pytest.mark.parametrize("name", ["pred.nii.gz", "pred.nii"])
def test_write_label_volume_round_trip_keeps_geometry(tmp_path: Path, name: str) -> None:
    data = np.full((10, 12, 7), -1000, dtype=np.int16)
    sform = np.diag([1.0, 2.0, 3.0, 1.0]) @ PERMUTED
    image = nib.Nifti1Image(data, sform)
    image.header.set_qform(PERMUTED, code=1)  # a different qform must survive too
    image.header.set_sform(sform, code=2)
    image.header.set_slope_inter(1.0, -1024.0)
    image.header.set_xyzt_units("mm", "sec")
    nib.save(image, tmp_path / "ct.nii.gz")
    reference = load_volume(tmp_path / "ct.nii.gz")

    labels = np.zeros((10, 12, 7), dtype=np.int64)
    labels[2:5, 3:9, 1:4] = 1
    out = tmp_path / "out" / name
    write_label_volume(out, labels, reference)

    assert sorted(p.name for p in out.parent.iterdir()) == [name]  # no temporary file left behind
    assert (out.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    written = nib.load(out)
    np.testing.assert_array_equal(written.affine, reference.affine)
    np.testing.assert_allclose(written.affine, sform, atol=1e-6)
    np.testing.assert_array_equal(written.header.get_sform(), reference.header.get_sform())
    np.testing.assert_array_equal(written.header.get_qform(), reference.header.get_qform())
    assert int(written.header["sform_code"]) == 2 and int(written.header["qform_code"]) == 1
    assert written.header.get_xyzt_units() == ("mm", "sec")
    assert written.shape == (10, 12, 7)
    assert written.get_data_dtype() == np.uint8
    assert voxel_spacing(written) == pytest.approx(voxel_spacing(reference))
    stored = np.asanyarray(written.dataobj)
    assert stored.dtype == np.uint8  # no scaling left over from the CT header
    np.testing.assert_array_equal(stored, labels)


def test_write_label_volume_rejects_misfits(tmp_path: Path) -> None:
    reference = nib.Nifti1Image(np.zeros((4, 4, 3), dtype=np.int16), LPS)
    with pytest.raises(ValueError, match="do not match"):
        write_label_volume(tmp_path / "a.nii.gz", np.zeros((4, 4, 2)), reference)
    with pytest.raises(ValueError, match="threshold"):
        write_label_volume(tmp_path / "a.nii.gz", np.full((4, 4, 3), 0.3), reference)
    with pytest.raises(UserError, match=r"a.png: NIfTI output must end in .nii or .nii.gz"):
        write_label_volume(tmp_path / "a.png", np.zeros((4, 4, 3)), reference)
    assert not any(tmp_path.iterdir())


def test_voxel_spacing_in_array_order() -> None:
    assert voxel_spacing(nib.Nifti1Image(np.zeros((2, 2, 2)), LPS)) == pytest.approx((0.8, 0.8, 2.5))
    assert voxel_spacing(nib.Nifti1Image(np.zeros((2, 2, 2)), PERMUTED)) == pytest.approx((3.0, 0.9, 0.7))


# --------------------------------------------------------------------------- metrics


def test_volume_dice_hand_computed() -> None:
    a = np.zeros((6, 6, 6), dtype=bool)
    b = np.zeros((6, 6, 6), dtype=np.uint8)
    a[1:3, 1:3, 1:3] = True  # 8 voxels
    b[2:4, 1:3, 1:3] = 1  # 8 voxels, 4 shared
    assert volume_dice(a, b) == pytest.approx(2 * 4 / 16)
    assert volume_dice(a, a) == 1.0
    assert volume_dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert volume_dice(a, np.zeros_like(a)) == 0.0
    with pytest.raises(ValueError, match="threshold"):
        volume_dice(np.full((6, 6, 6), 0.7), a)
    with pytest.raises(ValueError, match="shape"):
        volume_dice(a, a[:5])


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3])
def test_volume_hd95_of_offset_cubes_is_offset_times_spacing(axis: int, k: int) -> None:
    spacing = (0.7, 1.3, 2.5)
    target = np.zeros((24, 24, 24), dtype=bool)
    target[5:15, 6:16, 4:14] = True
    pred = np.roll(target, k, axis=axis)
    assert volume_hd95(pred, target, spacing) == pytest.approx(k * spacing[axis], rel=1e-5)


def test_volume_hd95_ignores_a_small_outlier_and_defines_empty_cases() -> None:
    spacing = (1.0, 1.0, 2.0)
    target = np.zeros((30, 30, 20), dtype=bool)
    target[5:15, 5:15, 5:15] = True
    pred = target.copy()
    pred[27, 27, 18] = True  # one stray voxel: the maximum distance is large, the 95th percentile is not
    assert volume_hd95(pred, target, spacing) == 0.0
    empty = np.zeros_like(target)
    assert volume_hd95(empty, empty, spacing) == 0.0
    assert math.isnan(volume_hd95(empty, target, spacing))
    assert math.isnan(volume_hd95(target, empty, spacing))
    with pytest.raises(ValueError, match="spacing"):
        volume_hd95(target, target, (1.0, 1.0))


def test_volume_metrics_averages_over_cases() -> None:
    spacing = (1.0, 1.0, 2.0)
    target = np.zeros((20, 20, 12), dtype=bool)
    target[4:12, 4:12, 2:8] = True
    shifted = np.roll(target, 2, axis=2)  # Dice 2*4/12 = 2/3, HD95 2 voxels * 2 mm
    metrics = VolumeMetrics()
    assert metrics.update("b", shifted, target, spacing) == pytest.approx({"dice": 2 / 3, "hd95_mm": 4.0, "hd95_penalised_mm": 4.0})
    metrics.update("a", target, target, spacing)
    metrics.update("c", np.zeros_like(target), target, spacing)
    summary = metrics.compute()
    assert summary["n"] == 3
    assert summary["dice"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert summary["hd95_mm"] == pytest.approx(2.0)  # mean of 0 and 4; case c has no distance
    assert summary["hd95_undefined"] == 1
    # penalised: case c's miss counts as the volume's diagonal, sqrt(20^2 + 20^2 + 24^2) mm
    assert summary["hd95_penalised_mm"] == pytest.approx((0 + 4 + math.sqrt(20**2 + 20**2 + 24**2)) / 3)
    assert list(summary["cases"]) == ["a", "b", "c"]
    assert math.isnan(summary["cases"]["c"]["hd95_mm"]) and summary["cases"]["c"]["dice"] == 0.0
    with pytest.raises(ValueError, match="already"):
        metrics.update("a", target, target, spacing)
    metrics.reset()
    assert metrics.compute()["n"] == 0 and math.isnan(metrics.compute()["dice"])

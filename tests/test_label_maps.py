"""Label maps of several classes in the data layer: reading, resizing, the pool, ``data check``, the generator."""

from __future__ import annotations

import json
import re
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from PIL import Image

from pseudoseg.run_config import config_from_dict
from pseudoseg.data.check import check_dataset
from pseudoseg.data.classes import ClassSet, class_set_from_mapping, classes_from_dataset_json
from pseudoseg.data.folders import read_mask
from pseudoseg.data.pool import load_pool
from pseudoseg.data.resize import resize_mask
from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset
from pseudoseg.data.volumes import SliceSettings, VolumeCase, case_slices, discover_cases
from pseudoseg.errors import UserError
from tests.conftest import run_cli

THREE = ClassSet(("anterior", "posterior"), ((1,), (2,)))
LABELS = np.array([[0, 1, 1, 0], [2, 2, 0, 1], [0, 0, 2, 2]], dtype=np.uint8)
LPS = np.diag([-0.8, -0.8, 2.5, 1.0])


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


# --------------------------------------------------------------------------- 2-D label maps


@pytest.mark.parametrize(
    ("name", "stored", "classes"),
    [
        ("8bit.png", LABELS, THREE),
        ("16bit.png", LABELS.astype(np.uint16) * 1000, ClassSet(("a", "b"), ((1000,), (2000,)))),
        ("grey.tif", LABELS.astype(np.uint16), THREE),
        ("float.tif", LABELS.astype(np.float32), THREE),
    ],
)
def test_label_map_files_give_class_indices(tmp_path: Path, name: str, stored: np.ndarray, classes: ClassSet) -> None:
    path = tmp_path / name
    if name.endswith(".tif"):
        tifffile.imwrite(path, stored)
    else:
        _png(path, stored)
    indices = read_mask(path, classes)
    assert indices.dtype == np.uint8
    np.testing.assert_array_equal(indices, LABELS)


def test_label_map_values_map_to_class_order_and_merge(tmp_path: Path) -> None:
    path = _png(tmp_path / "m.png", np.array([[0, 7, 3], [5, 3, 0]], np.uint8))
    # Index order is the order of the classes, not of the values; several values make one class.
    classes = class_set_from_mapping({"lesion": 7, "organ": [3, 5]}, "data.classes")
    np.testing.assert_array_equal(read_mask(path, classes), [[0, 1, 2], [2, 2, 0]])


def test_palette_grey_alpha_and_equal_channel_label_maps(tmp_path: Path) -> None:
    palette = Image.frombytes("P", LABELS.shape[::-1], LABELS.tobytes())
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0])  # the colours are for viewers; the indices are the values
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "palette.png", THREE), LABELS)
    with_alpha = np.stack([LABELS, np.full_like(LABELS, 255)], axis=2)
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "la.png", with_alpha), THREE), LABELS)
    grey_rgb = np.repeat(LABELS[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_mask(_png(tmp_path / "rgb.png", grey_rgb), THREE), LABELS)


def test_colour_and_lossy_label_maps_are_refused(tmp_path: Path) -> None:
    colour = np.zeros((3, 4, 3), np.uint8)
    colour[0, 1] = (255, 0, 0)
    with pytest.raises(UserError, match=r"colour.png: label map is a colour image; save the class values as a single-channel"):
        read_mask(_png(tmp_path / "colour.png", colour), THREE)
    Image.fromarray(LABELS).save(tmp_path / "lossy.jpg")
    with pytest.raises(UserError, match=r"lossy.jpg: label maps must be stored losslessly \(PNG or TIFF\)"):
        read_mask(tmp_path / "lossy.jpg", THREE)


def test_unknown_value_names_file_and_value(tmp_path: Path) -> None:
    path = _png(tmp_path / "case_07.png", np.array([[0, 1], [4, 2]], np.uint8))
    with pytest.raises(UserError) as info:
        read_mask(path, THREE)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: label value 4 is not one of the classes' values (0, 1, 2)")


def test_binary_rules_unchanged_without_values(tmp_path: Path) -> None:
    mask = np.array([[0, 255, 200], [0, 100, 255]], np.uint8)
    path = _png(tmp_path / "m.png", mask)
    plain = read_mask(path)
    assert plain.dtype == np.bool_
    np.testing.assert_array_equal(plain, mask > 128)
    as_indices = read_mask(path, ClassSet.binary())
    assert as_indices.dtype == np.uint8
    np.testing.assert_array_equal(as_indices, plain.astype(np.uint8))


def test_refused_label_map_says_how_to_declare_classes(tmp_path: Path) -> None:
    path = _png(tmp_path / "labels.png", np.array([[0, 1], [2, 0]], np.uint8))
    with pytest.raises(UserError) as info:
        read_mask(path)
    message = str(info.value)
    assert "mask looks like a multi-class label map (values 0..2)" in message
    assert "data.classes" in message and "{class_1: 1, class_2: 2}" in message and "{foreground: [1, 2]}" in message


# --------------------------------------------------------------------------- class discovery


@pytest.mark.parametrize(
    "labels",
    [{"0": "background", "1": "Anterior", "2": "Posterior"}, {"background": 0, "Anterior": 1, "Posterior": 2}],
    ids=["decathlon", "nnunet"],
)
def test_classes_from_both_dataset_json_forms(tmp_path: Path, labels: dict) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": labels}))
    found = classes_from_dataset_json(tmp_path)
    assert found == ClassSet(("Anterior", "Posterior"), ((1,), (2,)))
    config = config_from_dict({"data": {"kind": "volumes", "train": str(tmp_path)}})
    assert config.data.classes == {"Anterior": [1], "Posterior": [2]}  # recorded in config.yaml
    assert config.data.class_set == found


def test_data_classes_overrides_dataset_json_and_merges_values(tmp_path: Path) -> None:
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "Anterior", "2": "Posterior"}}))
    config = config_from_dict({"data": {"kind": "volumes", "train": str(tmp_path), "classes": {"hippocampus": [1, 2]}}})
    assert config.data.class_set == ClassSet(("hippocampus",), ((1, 2),))
    path = _png(tmp_path / "m.png", LABELS)
    np.testing.assert_array_equal(read_mask(path, config.data.class_set), LABELS > 0)


# --------------------------------------------------------------------------- resizing


def _today_2d(mask: np.ndarray, size: int) -> np.ndarray:
    resized = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.Resampling.BILINEAR)
    return (np.asarray(resized) >= 128).astype(np.uint8)


def _blobs(rng: np.random.Generator, shape: tuple[int, int], classes: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    index = np.zeros(shape, np.uint8)
    for value in range(1, classes + 1):
        for _ in range(3):
            cy, cx, r = rng.uniform(0, shape[0]), rng.uniform(0, shape[1]), rng.uniform(2, shape[0] / 3)
            index[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = value
    return index


@pytest.mark.parametrize("size", [7, 24, 61])
def test_2d_resize_of_one_class_is_todays_rule(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(10):
        mask = _blobs(rng, (37, 45), 1).astype(bool) ^ (rng.random((37, 45)) < 0.1)
        expected = _today_2d(mask, size)
        np.testing.assert_array_equal(resize_mask(mask, size), expected)
        np.testing.assert_array_equal(resize_mask(mask.astype(np.uint8), size), expected)


def test_2d_resize_of_several_classes_is_the_argmax_of_resized_indicators() -> None:
    index = np.array([[1, 1, 2, 2], [1, 1, 2, 2], [0, 0, 3, 3], [0, 0, 3, 3]], np.uint8)
    np.testing.assert_array_equal(resize_mask(index, 2), [[1, 2], [0, 3]])  # each 2 x 2 block weighs most in its pixel
    # Two classes of half a pixel each: scores 128 and 128, the background's 255 - 255 = 0; a tie goes to the lower index.
    np.testing.assert_array_equal(resize_mask(np.array([[1, 2], [1, 2]], np.uint8), 1), [[1]])
    np.testing.assert_array_equal(resize_mask(np.array([[2, 1], [2, 1]], np.uint8), 1), [[1]])
    # One class over half a pixel: 128 against the background's 127, as the binary rule (>= 128) says.
    np.testing.assert_array_equal(resize_mask(np.array([[0, 2], [0, 2]], np.uint8), 1), [[2]])
    # Classes apart from each other keep exactly their binary resize.
    rng = np.random.default_rng(0)
    index = np.zeros((40, 40), np.uint8)
    index[2:15, 3:18] = 1
    index[22:37, 20:38] = 2
    index[25:30, 2:12] = 3
    resized = resize_mask(index, 23)
    for value in (1, 2, 3):
        np.testing.assert_array_equal(resized == value, _today_2d(index == value, 23).astype(bool))
    # Where classes touch, every pixel still takes one of the classes present nearby, and each class keeps about its area.
    touching = _blobs(rng, (50, 50), 3)
    resized = resize_mask(touching, 25)
    for value in range(4):
        assert abs((resized == value).mean() - (touching == value).mean()) < 0.05
    np.testing.assert_array_equal(resize_mask(touching, 50), touching)  # same size: unchanged


def _save(path: Path, data: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, LPS)
    img.header.set_sform(LPS, code=1)
    img.header.set_qform(LPS, code=1)
    nib.save(img, path)
    return path


def _three_class_case(root: Path, values: tuple[int, int] = (1, 2), shape=(24, 20, 5)) -> tuple[VolumeCase, np.ndarray]:
    rng = np.random.default_rng(4)
    labels = np.zeros(shape, np.uint8)
    labels[3:14, 4:15, 1:4] = values[0]
    labels[8:12, 7:11, 1:3] = values[1]  # inside the first, like a lesion in an organ
    labels[17:22, 2:8, 2:5] = values[1]
    image = rng.normal(40, 20, shape).astype(np.int16)
    case = VolumeCase("c", _save(root / "imagesTr" / "c.nii.gz", image), _save(root / "labelsTr" / "c.nii.gz", labels))
    return case, labels


def test_three_class_label_volumes(tmp_path: Path) -> None:
    case, labels = _three_class_case(tmp_path, values=(3, 7))
    classes = ClassSet(("organ", "lesion"), ((3,), (7,)))
    _, native = case_slices(case, SliceSettings(size=24, classes=classes))
    assert native.shape == (5, 24, 24) and native.dtype == np.uint8
    canonical = labels[::-1, ::-1, :]  # LPS -> RAS; in-plane 24 x 20 resized to 24 x 24
    expected = np.zeros_like(canonical)
    expected[canonical == 3], expected[canonical == 7] = 1, 2
    resized = F.interpolate(torch.from_numpy(np.moveaxis(expected, 2, 0)[:, None]).float(), size=(24, 24), mode="nearest-exact")[:, 0]
    np.testing.assert_array_equal(native, resized.numpy().astype(np.uint8))
    _, small = case_slices(case, SliceSettings(size=12, classes=classes))
    assert set(np.unique(small)) == {0, 1, 2}
    _, union = case_slices(case, SliceSettings(size=12))  # no class set: every non-zero voxel, as before
    np.testing.assert_array_equal(union, (small > 0).astype(np.uint8))
    with pytest.raises(UserError, match=re.escape(f"{case.label_path}: label value 7 is not one of the classes' values (0, 3)")):
        case_slices(case, SliceSettings(classes=ClassSet(("organ",), ((3,),))))


@pytest.mark.parametrize("size", [9, 16, 40])
def test_volume_resize_of_one_class_is_todays_rule(tmp_path: Path, size: int) -> None:
    case, labels = _three_class_case(tmp_path)
    _, resized = case_slices(case, SliceSettings(size=size, classes=ClassSet(("organ",), ((1, 2),))))
    indicator = np.moveaxis((labels > 0)[::-1, ::-1, :], 2, 0)[:, None].astype(np.float32)
    today = F.interpolate(torch.from_numpy(indicator.copy()), size=(size, size), mode="nearest-exact")[:, 0] > 0.5
    np.testing.assert_array_equal(resized, today.numpy().astype(np.uint8))


# --------------------------------------------------------------------------- the pool and its cache


@pytest.fixture(scope="module")
def lesion_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("lesions") / "ct"
    generate_ct_dataset(root, CtSetSpec(n_train=3, n_test=1, shape=(32, 32, 8), seed=1, lesions=True))
    return root


def test_pool_holds_class_indices_and_its_cache_follows_the_classes(tmp_path: Path, lesion_ct: Path) -> None:
    cache = tmp_path / "cache"
    three = config_from_dict({"data": {"kind": "volumes", "train": str(lesion_ct), "image_size": 16}})
    assert three.data.classes == {"organ": [1], "lesion": [2]}
    pool = load_pool(three.data, cache)
    masks = pool.masks.read(np.arange(len(pool)))
    assert set(np.unique(masks)) == {0, 1, 2}
    union = config_from_dict({"data": {"kind": "volumes", "train": str(lesion_ct), "image_size": 16, "classes": {"organ": [1, 2]}}})
    merged = load_pool(union.data, cache).masks.read(np.arange(len(pool)))
    assert set(np.unique(merged)) == {0, 1}  # not the three-class cache read again
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    # Classes resized one by one: the organ's region is the union's region, where they agree on the grid.
    np.testing.assert_array_equal(masks > 0, merged > 0)
    again = load_pool(three.data, cache)  # same classes: the cache is reused
    assert again.masks.path == pool.masks.path


def test_pool_of_2d_label_maps(tmp_path: Path) -> None:
    root = tmp_path / "train"
    rng = np.random.default_rng(1)
    for k in range(3):
        index = _blobs(rng, (30, 30), 2)
        _png(root / "images" / f"im{k}.png", rng.integers(0, 255, (30, 30, 3), dtype=np.uint8))
        _png(root / "masks" / f"im{k}.png", (index * 100).astype(np.uint8))  # values 0, 100, 200
    config = config_from_dict({"data": {"train": str(root), "image_size": 30, "classes": {"a": 100, "b": 200}}})
    pool = load_pool(config.data, tmp_path / "cache")
    first = pool.masks.read([0])[0]
    np.testing.assert_array_equal(first, np.asarray(Image.open(root / "masks" / "im0.png")) // 100)


# --------------------------------------------------------------------------- data check


def test_data_check_reports_classes_and_per_class_balance(tmp_path: Path, lesion_ct: Path, capsys) -> None:
    out = tmp_path / "check.json"
    assert run_cli("data", "check", str(lesion_ct), "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert "classes: organ=1, lesion=2 (from dataset.json)" in text
    summary = json.loads(out.read_text())
    assert summary["classes"] == {"names": ["organ", "lesion"], "values": [[1], [2]], "source": "dataset.json"}
    counts = np.zeros(3)
    held = np.zeros(3)
    for case in discover_cases(lesion_ct):
        data = np.asarray(nib.load(case.label_path).dataobj)
        found = np.bincount(data.ravel(), minlength=3)
        counts += found
        held += found > 0
    fractions = counts / counts.sum()
    assert summary["class_fractions"] == pytest.approx({"organ": fractions[1], "lesion": fractions[2]})
    assert summary["masks_with_class"] == {"organ": held[1], "lesion": held[2]}
    assert summary["foreground_fraction"] == pytest.approx(fractions[1] + fractions[2])
    assert f"per class (voxels): organ {100 * fractions[1]:.2f} % in {held[1]:.0f} labels, lesion {100 * fractions[2]:.2f} % in {held[2]:.0f} labels" in text
    # data.classes: the union as one class; the note about unions is not made then either.
    assert run_cli("data", "check", str(lesion_ct), "--classes", "{tissue: [1, 2]}", "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert "classes: tissue=1/2 (from data.classes)" in text and "trained as one foreground" not in text
    assert json.loads(out.read_text())["class_fractions"]["tissue"] == pytest.approx(fractions[1] + fractions[2])


def test_data_check_names_the_file_with_an_unknown_value(tmp_path: Path, capsys) -> None:
    root = tmp_path / "train"
    for k, mask in enumerate([LABELS, LABELS * 2]):  # the second holds 4, which no class names
        _png(root / "images" / f"im{k}.png", np.zeros((3, 4, 3), np.uint8))
        _png(root / "masks" / f"im{k}.png", mask)
    assert run_cli("data", "check", str(root), "--classes", "{anterior: 1, posterior: 2}") == 2
    text = capsys.readouterr().out
    assert "classes: anterior=1, posterior=2 (from data.classes)" in text
    assert f"{root / 'masks' / 'im1.png'}: label value 4 is not one of the classes' values" in text
    report = check_dataset(root)  # without classes: the binary default refuses the label map and says how to name them
    assert report.classes_source == "binary default" and "data.classes" in report.problems[0]
    assert "classes: one foreground class (binary default: 0/255 or 0/1 masks)" in "\n".join(report.lines())
    assert run_cli("data", "check", str(root), "--classes", "[1, 2]") == 2
    assert "--classes: expected a mapping" in capsys.readouterr().err


# --------------------------------------------------------------------------- the generator


def test_generator_lesions_are_a_second_class_inside_the_organ(tmp_path: Path, lesion_ct: Path) -> None:
    manifest = json.loads((lesion_ct / "dataset.json").read_text())
    assert manifest["labels"] == {"0": "background", "1": "organ", "2": "lesion"} and manifest["lesions"] is True
    plain = tmp_path / "plain"
    generate_ct_dataset(plain, CtSetSpec(n_train=3, n_test=1, shape=(32, 32, 8), seed=1))
    assert json.loads((plain / "dataset.json").read_text())["labels"] == {"0": "background", "1": "organ"}
    for name in ("labelsTr/case_000.nii.gz", "labelsTr/case_002.nii.gz", "labelsTs/case_003.nii.gz"):
        with_lesions = np.asarray(nib.load(lesion_ct / name).dataobj)
        without = np.asarray(nib.load(plain / name).dataobj)
        assert set(np.unique(with_lesions)) == {0, 1, 2}
        np.testing.assert_array_equal(with_lesions > 0, without)  # lesions lie inside the organ
        assert 0 < (with_lesions == 2).sum() < (with_lesions == 1).sum()
        image = np.asarray(nib.load(lesion_ct / name.replace("labels", "images")).dataobj).astype(np.float32)
        assert np.median(image[with_lesions == 2]) < np.median(image[with_lesions == 1]) - 10  # darker than the organ


def test_synth_cli_lesions_option(tmp_path: Path, capsys) -> None:
    out = tmp_path / "ct"
    assert run_cli("data", "synth", str(out), "--kind", "ct", "--n-train", "1", "--n-test", "0", "--lesions") == 0
    assert json.loads((out / "dataset.json").read_text())["labels"]["2"] == "lesion"
    assert run_cli("data", "synth", str(tmp_path / "p"), "--kind", "polyp", "--lesions") == 2
    assert "--lesions: only for --kind ct" in capsys.readouterr().err

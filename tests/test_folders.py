"""Reading image/mask folders: decoding, mask encodings, pairing and error messages."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from pseudoseg.data.folders import (
    IMAGE_SUFFIXES,
    discover_test_sets,
    find_pairs,
    find_pairs_in,
    read_image,
    read_mask,
)
from pseudoseg.data.sources import ImagePair, check_pair_shapes
from pseudoseg.errors import UserError

# A 24x32 reference mask: a filled rectangle plus a diagonal stroke, so that a
# transposed or flipped reading would not match.
H, W = 24, 32
REFERENCE = np.zeros((H, W), dtype=bool)
REFERENCE[4:16, 6:20] = True
REFERENCE[np.arange(H), np.arange(H) + 4] = True


def _save(array: np.ndarray, path: Path, **kwargs) -> Path:
    Image.fromarray(array).save(path, **kwargs)
    return path


def _touch_image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(np.full((4, 5), value, dtype=np.uint8), path)


def _layout(root: Path, images: list[str], masks: list[str]) -> Path:
    for name in images:
        _touch_image(root / "images" / name)
    for name in masks:
        _touch_image(root / "masks" / name)
    return root


# --------------------------------------------------------------------------- masks


def _mask_0_255_png(d: Path) -> Path:
    return _save(REFERENCE.astype(np.uint8) * 255, d / "m.png")


def _mask_0_1_png(d: Path) -> Path:
    return _save(REFERENCE.astype(np.uint8), d / "m.png")


def _mask_mode1_png(d: Path) -> Path:
    img = Image.fromarray(REFERENCE)
    assert img.mode == "1"
    img.save(d / "m.png")
    return d / "m.png"


def _mask_16bit_png(d: Path) -> Path:
    return _save(REFERENCE.astype(np.uint16) * 65535, d / "m.png")


def _mask_16bit_0_1_png(d: Path) -> Path:
    return _save(REFERENCE.astype(np.uint16), d / "m.png")


def _mask_16bit_tif(d: Path) -> Path:
    tifffile.imwrite(d / "m.tif", REFERENCE.astype(np.uint16) * 65535)
    return d / "m.tif"


def _mask_16bit_0_1_tif(d: Path) -> Path:
    tifffile.imwrite(d / "m.tiff", REFERENCE.astype(np.uint16))
    return d / "m.tiff"


def _mask_bool_tif(d: Path) -> Path:
    tifffile.imwrite(d / "m.tif", REFERENCE)
    return d / "m.tif"


def _mask_noisy_jpeg(d: Path) -> Path:
    rng = np.random.default_rng(0)
    noise = rng.integers(-40, 41, size=(H, W))
    values = np.clip(REFERENCE.astype(int) * 255 + noise, 0, 255).astype(np.uint8)
    return _save(np.stack([values] * 3, axis=2), d / "m.jpg", quality=90)


def _mask_rgb_png(d: Path) -> Path:
    rgb = np.zeros((H, W, 3), dtype=np.uint8)
    rgb[REFERENCE] = (255, 255, 255)
    return _save(rgb, d / "m.png")


def _mask_red_rgba_png(d: Path) -> Path:
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[REFERENCE, 0] = 255  # pure red foreground: only the channel maximum sees it
    return _save(rgba, d / "m.png")


def _mask_palette_png(d: Path) -> Path:
    img = Image.fromarray(REFERENCE.astype(np.uint8), mode="L").convert("P")
    img.putpalette([0, 0, 0, 255, 255, 255] + [0] * (254 * 3))
    img.save(d / "m.png")
    return d / "m.png"


def _mask_0_255_bmp(d: Path) -> Path:
    return _save(REFERENCE.astype(np.uint8) * 255, d / "m.BMP")


MASK_WRITERS = {
    "0/255 png": _mask_0_255_png,
    "0/1 png": _mask_0_1_png,
    "mode 1 png": _mask_mode1_png,
    "16-bit 0/65535 png": _mask_16bit_png,
    "16-bit 0/1 png": _mask_16bit_0_1_png,
    "16-bit 0/65535 tif": _mask_16bit_tif,
    "16-bit 0/1 tiff": _mask_16bit_0_1_tif,
    "1-bit tif": _mask_bool_tif,
    "noisy RGB jpeg (Kvasir-SEG)": _mask_noisy_jpeg,
    "RGB png": _mask_rgb_png,
    "red RGBA png": _mask_red_rgba_png,
    "palette png": _mask_palette_png,
    "0/255 BMP upper-case suffix": _mask_0_255_bmp,
}


@pytest.mark.parametrize("writer", list(MASK_WRITERS.values()), ids=list(MASK_WRITERS))
def test_every_mask_encoding_reads_as_the_same_boolean_mask(tmp_path: Path, writer) -> None:
    mask = read_mask(writer(tmp_path))
    assert mask.dtype == np.bool_
    assert mask.shape == (H, W)
    np.testing.assert_array_equal(mask, REFERENCE)


def test_noisy_jpeg_mask_really_is_noisy(tmp_path: Path) -> None:
    # Guards the JPEG case above: equality must come from thresholding, not from a clean file.
    raw = np.asarray(Image.open(_mask_noisy_jpeg(tmp_path)))
    values = set(np.unique(raw).tolist())
    assert len(values) > 20


def test_8bit_threshold_is_strictly_above_128(tmp_path: Path) -> None:
    values = np.array([[0, 127, 128, 129, 200, 255]], dtype=np.uint8)
    mask = read_mask(_save(values, tmp_path / "m.png"))
    np.testing.assert_array_equal(mask, [[False, False, False, True, True, True]])


def test_all_zero_mask_is_empty_not_an_error(tmp_path: Path) -> None:
    mask = read_mask(_save(np.zeros((3, 3), np.uint8), tmp_path / "m.png"))
    assert mask.shape == (3, 3) and not mask.any()


def test_16bit_mask_threshold_is_half_the_16bit_range(tmp_path: Path) -> None:
    values = np.array([[0, 1000, 32000, 33500, 65535]], dtype=np.uint16)
    for path in (_save(values, tmp_path / "m.png"), tmp_path / "m.tif"):
        tifffile.imwrite(tmp_path / "m.tif", values)
        np.testing.assert_array_equal(read_mask(path), [[False, False, False, True, True]])


def test_16bit_mask_holding_8bit_values_uses_the_8bit_threshold(tmp_path: Path) -> None:
    values = np.array([[0, 100, 200, 255]], dtype=np.uint16)
    mask = read_mask(_save(values, tmp_path / "m.png"))
    np.testing.assert_array_equal(mask, [[False, False, True, True]])


# --------------------------------------------------------------------------- images


def test_rgb_image_is_returned_unchanged(tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    image = read_image(_save(rgb, tmp_path / "a.png"))
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, rgb)


def test_grayscale_image_becomes_three_equal_channels(tmp_path: Path) -> None:
    gray = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    image = read_image(_save(gray, tmp_path / "a.png"))
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    for c in range(3):
        np.testing.assert_array_equal(image[..., c], gray)


def test_rgba_image_drops_alpha(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 20, 30, 0
    image = read_image(_save(rgba, tmp_path / "a.png"))
    assert image.shape == (H, W, 3)
    assert image[0, 0].tolist() == [10, 20, 30]


def test_16bit_png_image_is_scaled_to_8bit(tmp_path: Path) -> None:
    gray = np.array([[0, 257, 32896, 65535]], dtype=np.uint16)
    image = read_image(_save(gray, tmp_path / "a.png"))
    assert image.dtype == np.uint8 and image.shape == (1, 4, 3)
    assert image[0, :, 0].tolist() == [0, 1, 128, 255]


def test_16bit_rgb_tiff_image_is_scaled_to_8bit(tmp_path: Path) -> None:
    rgb = np.zeros((2, 3, 3), dtype=np.uint16)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 65535, 257 * 100, 0
    tifffile.imwrite(tmp_path / "a.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "a.tif")
    assert image.dtype == np.uint8 and image.shape == (2, 3, 3)
    assert image[1, 2].tolist() == [255, 100, 0]


def test_planar_tiff_image_is_channel_last(tmp_path: Path) -> None:
    planar = np.zeros((3, 5, 6), dtype=np.uint8)
    planar[0], planar[1], planar[2] = 1, 2, 3
    tifffile.imwrite(tmp_path / "a.tif", planar, photometric="rgb", planarconfig="separate")
    image = read_image(tmp_path / "a.tif")
    assert image.shape == (5, 6, 3)
    assert image[4, 5].tolist() == [1, 2, 3]


def test_jpeg_image_reads_as_rgb(tmp_path: Path) -> None:
    image = read_image(_save(np.full((8, 8, 3), 200, np.uint8), tmp_path / "a.jpeg"))
    assert image.shape == (8, 8, 3) and abs(int(image.mean()) - 200) <= 2


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("name", ["empty.png", "empty.tif"])
def test_empty_file_is_a_user_error_naming_it(tmp_path: Path, reader, name: str) -> None:
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(UserError, match=re.escape(str(tmp_path / name))):
        reader(tmp_path / name)


@pytest.mark.parametrize("reader", [read_image, read_mask])
@pytest.mark.parametrize("name", ["junk.jpg", "junk.tiff", "junk.png"])
def test_corrupt_file_is_a_user_error_naming_it(tmp_path: Path, reader, name: str) -> None:
    (tmp_path / name).write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(UserError, match=re.escape(str(tmp_path / name)) + ".*cannot read"):
        reader(tmp_path / name)


def test_truncated_jpeg_is_a_user_error(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    rgb = np.random.default_rng(2).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(buffer, format="JPEG")
    (tmp_path / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "cut.jpg"))):
        read_image(tmp_path / "cut.jpg")


def test_missing_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        read_mask(tmp_path / "nope.png")


def test_check_pair_shapes_names_both_files(tmp_path: Path) -> None:
    pair = ImagePair("a", tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png")
    check_pair_shapes(pair, np.zeros((4, 5, 3)), np.zeros((4, 5), bool))  # same size: fine
    with pytest.raises(UserError, match=r"images/a\.jpg.*4x5.*masks/a\.png.*5x4"):
        check_pair_shapes(pair, np.zeros((4, 5, 3)), np.zeros((5, 4), bool))


# --------------------------------------------------------------------------- pairing


def test_pairs_are_sorted_by_stem_regardless_of_creation_order(tmp_path: Path) -> None:
    stems = ["m", "b", "z", "a", "10", "2"]
    for stem in stems:  # created in a scrambled order
        _touch_image(tmp_path / "images" / f"{stem}.png")
    for stem in reversed(stems):
        _touch_image(tmp_path / "masks" / f"{stem}.png")
    pairs = find_pairs(tmp_path)
    assert [p.stem for p in pairs] == sorted(stems)
    for pair in pairs:
        assert pair.image == tmp_path / "images" / f"{pair.stem}.png"
        assert pair.mask == tmp_path / "masks" / f"{pair.stem}.png"


def test_jpg_image_pairs_with_png_mask(tmp_path: Path) -> None:
    _layout(tmp_path, ["a.jpg", "b.JPEG"], ["a.png", "b.tif"])
    pairs = find_pairs(tmp_path)
    assert pairs == [
        ImagePair("a", tmp_path / "images" / "a.jpg", tmp_path / "masks" / "a.png"),
        ImagePair("b", tmp_path / "images" / "b.JPEG", tmp_path / "masks" / "b.tif"),
    ]


def test_kvasir_seg_release_layout(tmp_path: Path) -> None:
    root = tmp_path / "Kvasir-SEG"
    stems = ["cju0qkwl35piu0993l0dewei2", "cju0qoxqj9q6s0835b43399p4", "cju0roawvklrq0799vmjorwfv"]
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((6, 7, 3), np.uint8)
    mask[1:5, 2:6] = 255
    for stem in stems:
        _save(np.full((6, 7, 3), 90, np.uint8), root / "images" / f"{stem}.jpg")
        _save(mask, root / "masks" / f"{stem}.jpg")
    (root / "kavsir_bboxes.json").write_text("{}")
    pairs = find_pairs(root)
    assert [p.stem for p in pairs] == stems
    image, mask = read_image(pairs[0].image), read_mask(pairs[0].mask)
    check_pair_shapes(pairs[0], image, mask)
    assert mask.sum() == 16 and mask[1:5, 2:6].all()


def test_hidden_macos_and_non_image_files_are_ignored(tmp_path: Path) -> None:
    _layout(tmp_path, ["a.png"], ["a.png"])
    for folder in ("images", "masks"):
        (tmp_path / folder / "._a.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
        (tmp_path / folder / ".hidden.png").write_bytes(b"")
        (tmp_path / folder / "Thumbs.db").write_bytes(b"junk")
        (tmp_path / folder / "notes.json").write_text("{}")
        (tmp_path / folder / "sub.png").mkdir()  # a folder named like an image
    assert [p.stem for p in find_pairs(tmp_path)] == ["a"]


def test_explicit_folder_pair(tmp_path: Path) -> None:
    for stem in ("b", "a"):
        _touch_image(tmp_path / "frames" / f"{stem}.bmp")
        _touch_image(tmp_path / "labels" / f"{stem}.png")
    pairs = find_pairs_in(tmp_path / "frames", tmp_path / "labels")
    assert [(p.stem, p.image.name, p.mask.name) for p in pairs] == [
        ("a", "a.bmp", "a.png"),
        ("b", "b.bmp", "b.png"),
    ]


def test_custom_folder_names(tmp_path: Path) -> None:
    _touch_image(tmp_path / "img" / "a.png")
    _touch_image(tmp_path / "gt" / "a.png")
    assert [p.stem for p in find_pairs(tmp_path, images_dir="img", masks_dir="gt")] == ["a"]


def test_unlabeled_pool_without_masks_folder(tmp_path: Path) -> None:
    _layout(tmp_path, ["b.png", "a.png"], [])
    pairs = find_pairs(tmp_path, require_masks=False)
    assert [(p.stem, p.mask) for p in pairs] == [("a", None), ("b", None)]
    assert find_pairs_in(tmp_path / "images", None, require_masks=False)[0].mask is None


def test_partly_masked_pool_when_masks_not_required(tmp_path: Path) -> None:
    _layout(tmp_path, ["a.png", "b.png"], ["b.png"])
    pairs = find_pairs(tmp_path, require_masks=False)
    assert [(p.stem, p.mask) for p in pairs] == [("a", None), ("b", tmp_path / "masks" / "b.png")]


def test_missing_dataset_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=f"dataset folder not found: {re.escape(str(tmp_path / 'nope'))}"):
        find_pairs(tmp_path / "nope")


def test_missing_images_folder(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError, match=f"{re.escape(str(tmp_path))} has no 'images' folder"):
        find_pairs(tmp_path)


def test_missing_masks_folder_when_required(tmp_path: Path) -> None:
    _layout(tmp_path, ["a.png"], [])
    with pytest.raises(UserError, match=f"masks folder not found: {re.escape(str(tmp_path / 'masks'))}"):
        find_pairs(tmp_path)
    with pytest.raises(UserError, match="no masks folder given"):
        find_pairs_in(tmp_path / "images", None)


def test_no_images_lists_accepted_suffixes(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "images" / "readme.txt").write_text("x")
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "images"))) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert "no images found" in message
    assert all(suffix in message for suffix in IMAGE_SUFFIXES)
    assert "\n" not in message


def test_images_without_masks_names_five_stems_and_the_count(tmp_path: Path) -> None:
    images = [f"{i:02d}.png" for i in range(8)] + ["ok.png"]
    _layout(tmp_path, images, ["ok.png"])
    with pytest.raises(UserError) as info:
        find_pairs(tmp_path)
    message = str(info.value)
    assert message.startswith(f"8 images in {tmp_path / 'images'} have no mask in {tmp_path / 'masks'}")
    assert "00, 01, 02, 03, 04, ... (3 more)" in message
    stems = message.split(f"{tmp_path / 'masks'}: ", 1)[1]  # the temporary folder's name may hold "05"
    assert "05" not in stems.split("...")[0]
    assert "\n" not in message


def test_masks_without_images(tmp_path: Path) -> None:
    _layout(tmp_path, ["a.png"], ["a.png", "stray.png"])
    masks = re.escape(str(tmp_path / "masks"))
    with pytest.raises(UserError, match=rf"1 mask in {masks} has no image.*: stray$"):
        find_pairs(tmp_path)
    with pytest.raises(UserError, match="stray"):  # a stray mask is wrong even for an unlabeled pool
        find_pairs(tmp_path, require_masks=False)


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_duplicate_stems_with_different_suffixes(tmp_path: Path, folder: str) -> None:
    _layout(tmp_path, ["a.png", "b.png"], ["a.png", "b.png"])
    _touch_image(tmp_path / folder / "b.jpg")
    expected = f"{tmp_path / folder} has several files with the stem 'b': b.jpg, b.png"
    with pytest.raises(UserError, match=re.escape(expected)):
        find_pairs(tmp_path)


# --------------------------------------------------------------------------- test sets


def test_discover_test_sets_in_a_testdataset_tree(tmp_path: Path) -> None:
    parent = tmp_path / "TestDataset"
    sizes = {"Kvasir": 3, "CVC-300": 2, "ETIS-LaribPolypDB": 1, "CVC-ClinicDB": 2}
    for name, n in sizes.items():
        _layout(parent / name, [f"{i}.png" for i in range(n)], [f"{i}.png" for i in range(n)])
    (parent / "not_a_set").mkdir()  # no images/: skipped
    (parent / "notes.txt").write_text("x")
    sets = discover_test_sets(parent)
    assert list(sets) == sorted(sizes)
    assert {name: len(pairs) for name, pairs in sets.items()} == sizes
    assert sets["Kvasir"][2].mask == parent / "Kvasir" / "masks" / "2.png"


def test_discover_test_sets_on_a_single_set(tmp_path: Path) -> None:
    root = _layout(tmp_path / "CVC-ColonDB", ["x.png"], ["x.png"])
    sets = discover_test_sets(root)
    assert list(sets) == ["CVC-ColonDB"] and [p.stem for p in sets["CVC-ColonDB"]] == ["x"]


def test_discover_test_sets_errors(tmp_path: Path) -> None:
    (tmp_path / "empty" / "child").mkdir(parents=True)
    with pytest.raises(UserError, match=f"no test sets found in {re.escape(str(tmp_path / 'empty'))}"):
        discover_test_sets(tmp_path / "empty")
    with pytest.raises(UserError, match="not found"):
        discover_test_sets(tmp_path / "missing")
    _layout(tmp_path / "T" / "Kvasir", ["a.png"], [])
    with pytest.raises(UserError, match=re.escape(str(tmp_path / "T" / "Kvasir"))):
        discover_test_sets(tmp_path / "T")  # a malformed set fails loudly, it is not skipped


def test_multi_class_label_map_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.png"
    Image.fromarray(np.array([[0, 1], [2, 0]], dtype=np.uint8)).save(path)
    with pytest.raises(UserError, match=r"labels.png: mask looks like a multi-class label map \(values 0..2\)"):
        read_mask(path)

"""Tests for the synthetic polyp generator: determinism, layout, domains, safety."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pseudoseg.synth.polyp import (
    DEFAULT_DOMAINS,
    PolypSetSpec,
    generate_polyp_dataset,
    polyp_domain,
    render_polyp_sample,
    sample_seed,
)
from pseudoseg.errors import UserError

N_SAMPLES = 12  # per domain, for the statistics below
STAT_SIZE = 96


@pytest.fixture(scope="module")
def renders() -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """The same 12 seeds rendered under every domain (same scene, other parameters)."""
    return {d: [render_polyp_sample(s, STAT_SIZE, d) for s in range(N_SAMPLES)] for d in DEFAULT_DOMAINS}


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _siblings(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in tmp_path.iterdir())


# --- single samples -----------------------------------------------------------


def test_sample_shapes_and_values() -> None:
    for domain in DEFAULT_DOMAINS:
        image, mask = render_polyp_sample(3, 48, domain)
        assert image.shape == (48, 48, 3) and image.dtype == np.uint8
        assert mask.shape == (48, 48) and mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 255}
        # Dark corners outside the circular field of view, and no lesion there.
        assert image[0, 0].max() < 10 and mask[0, 0] == 0


def test_same_seed_same_pixels_other_seed_other_pixels() -> None:
    a_img, a_mask = render_polyp_sample(7, 64)
    b_img, b_mask = render_polyp_sample(7, 64)
    assert np.array_equal(a_img, b_img) and np.array_equal(a_mask, b_mask)
    c_img, c_mask = render_polyp_sample(8, 64)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_mask, c_mask)


def test_a_seed_sequence_can_be_reused() -> None:
    seq = sample_seed(0, "train", 5)
    first = render_polyp_sample(seq, 40)
    second = render_polyp_sample(seq, 40)
    assert np.array_equal(first[0], second[0])
    assert np.array_equal(first[0], render_polyp_sample(sample_seed(0, "train", 5), 40)[0])


def test_lesion_area_fraction_in_stated_range() -> None:
    # Each lesion's nominal area is 2 % to 25 % of the image; the union of
    # two lesions can be larger and the field of view clips a little.
    fractions = np.array([render_polyp_sample(s, 64)[1].mean() / 255 for s in range(40)])
    assert fractions.min() >= 0.01
    assert fractions.max() <= 0.45
    assert 0.05 < fractions.mean() < 0.15
    # Both ends of the range occur: small and large lesions.
    assert (fractions < 0.04).any() and (fractions > 0.15).any()


# --- domains ------------------------------------------------------------------


def test_domains_change_parameters_not_geometry(renders) -> None:
    base = renders["in_domain"]
    for domain in ("low_contrast", "colour_shift", "blur_noise"):
        for (img, mask), (base_img, base_mask) in zip(renders[domain], base):
            assert np.array_equal(mask, base_mask), domain
            assert not np.array_equal(img, base_img), domain


def test_small_lesions_are_smaller(renders) -> None:
    small = np.array([m.mean() / 255 for _, m in renders["small_lesions"]])
    usual = np.array([m.mean() / 255 for _, m in renders["in_domain"]])
    assert small.mean() < 0.4 * usual.mean()
    assert small.max() < 0.09


def _green_red_step(image: np.ndarray, mask: np.ndarray) -> float:
    """|log(G/R)| difference between a lesion and a thin ring around it.

    A chromaticity ratio is blind to shading and illumination, so it measures
    the lesion's tint; saturated highlights and black pixels are left out.
    """
    inside = mask > 0
    ring = ndimage.binary_dilation(inside, iterations=3) & ~inside
    usable = (image.max(-1) < 235) & (image.min(-1) > 8)
    log = np.log(image.astype(float) + 1.0)
    ratio = log[..., 1] - log[..., 0]
    return abs(ratio[inside & usable].mean() - ratio[ring & usable].mean())


def test_low_contrast_lesions_are_closer_to_mucosa(renders) -> None:
    low = np.mean([_green_red_step(*x) for x in renders["low_contrast"]])
    usual = np.mean([_green_red_step(*x) for x in renders["in_domain"]])
    assert low < 0.75 * usual


def test_colour_shift_changes_white_balance(renders) -> None:
    def red_over_blue(samples) -> float:
        return float(np.mean([img[..., 0].mean() / img[..., 2].mean() for img, _ in samples]))

    assert red_over_blue(renders["colour_shift"]) < 0.8 * red_over_blue(renders["in_domain"])


def test_blur_noise_is_blurred_and_noisy(renders) -> None:
    coords = np.linspace(-1.0, 1.0, STAT_SIZE)
    central = np.hypot(*np.meshgrid(coords, coords)) < 0.8

    def mid_band(img: np.ndarray) -> float:
        # Difference of Gaussians: edges and texture, above the pixel noise.
        grey = img.astype(float).mean(-1)
        band = ndimage.gaussian_filter(grey, 1.5) - ndimage.gaussian_filter(grey, 4.0)
        return float(np.abs(band[central]).mean())

    def pixel_noise(img: np.ndarray) -> float:
        img = img.astype(float)
        return float(np.abs(img - ndimage.median_filter(img, size=(3, 3, 1))).mean())

    blur = renders["blur_noise"]
    base = renders["in_domain"]
    assert np.mean([mid_band(i) for i, _ in blur]) < 0.9 * np.mean([mid_band(i) for i, _ in base])
    assert np.mean([pixel_noise(i) for i, _ in blur]) > 2.5 * np.mean([pixel_noise(i) for i, _ in base])


def test_unknown_domain_lists_known_ones() -> None:
    with pytest.raises(UserError, match="'endoscopy_x'.*in_domain.*blur_noise"):
        render_polyp_sample(0, 64, "endoscopy_x")
    with pytest.raises(UserError, match="unknown synthetic polyp domain"):
        polyp_domain("nope")


def test_default_domains_are_an_immutable_tuple() -> None:
    assert isinstance(DEFAULT_DOMAINS, tuple)
    assert DEFAULT_DOMAINS == ("in_domain", "small_lesions", "low_contrast", "colour_shift", "blur_noise")
    assert all(polyp_domain(d).name == d for d in DEFAULT_DOMAINS)


# --- data set on disk ---------------------------------------------------------


def test_layout_stems_and_summary(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    calls: list[tuple[int, int]] = []
    summary = generate_polyp_dataset(
        out, PolypSetSpec(n_train=3, n_test=2, size=32, seed=5), progress=lambda done, total: calls.append((done, total))
    )
    train = out / "TrainDataset"
    assert sorted(p.name for p in (train / "images").iterdir()) == [f"train_0000{i}.png" for i in range(3)]
    assert sorted(p.name for p in (train / "masks").iterdir()) == [f"train_0000{i}.png" for i in range(3)]
    for domain in DEFAULT_DOMAINS:
        folder = out / "TestDataset" / domain
        assert sorted(p.name for p in (folder / "images").iterdir()) == [f"{domain}_00000.png", f"{domain}_00001.png"]
        assert sorted(p.name for p in (folder / "masks").iterdir()) == [f"{domain}_00000.png", f"{domain}_00001.png"]
    for image_path in out.rglob("images/*.png"):
        image = np.asarray(Image.open(image_path))
        mask = np.asarray(Image.open(image_path.parent.parent / "masks" / image_path.name))
        assert image.shape == (32, 32, 3) and mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
    assert calls == [(i, 3 + 2 * len(DEFAULT_DOMAINS)) for i in range(1, 3 + 2 * len(DEFAULT_DOMAINS) + 1)]

    on_disk = json.loads((out / "dataset.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    assert summary["seed"] == 5 and summary["size"] == 32
    assert summary["counts"] == {"train": 3, **{d: 2 for d in DEFAULT_DOMAINS}}
    assert list(summary["domains"]) == list(DEFAULT_DOMAINS)
    assert summary["generator_version"] >= 1
    assert _siblings(tmp_path) == ["synth"]  # no temporary folder left behind


def test_same_seed_same_files_and_first_samples_independent_of_count(tmp_path: Path) -> None:
    small = tmp_path / "small"
    generate_polyp_dataset(small, PolypSetSpec(n_train=2, n_test=1, size=32, seed=3, domains=("in_domain",)))
    large = tmp_path / "large"
    generate_polyp_dataset(large, PolypSetSpec(n_train=4, n_test=3, size=32, seed=3, domains=("in_domain",)))
    small_files, large_files = _files(small), _files(large)
    assert small_files and all(large_files[name] == data for name, data in small_files.items())
    other = tmp_path / "other"
    generate_polyp_dataset(other, PolypSetSpec(n_train=2, n_test=1, size=32, seed=4, domains=("in_domain",)))
    other_files = _files(other)
    assert other_files.keys() == small_files.keys()
    assert all(other_files[n] != small_files[n] for n in small_files if "/images/" in n)


def test_test_images_never_repeat_training_images(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    generate_polyp_dataset(out, PolypSetSpec(n_train=6, n_test=6, size=32, seed=0, domains=("in_domain", "blur_noise")))
    digests = [hashlib.sha256(p.read_bytes()).hexdigest() for p in out.rglob("images/*.png")]
    assert len(digests) == 18 and len(set(digests)) == 18


def test_refuses_to_overwrite_unless_asked(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(UserError, match="synth.*not empty"):
        generate_polyp_dataset(out, PolypSetSpec(n_train=1, n_test=1, size=32, domains=("in_domain",)))
    assert (out / "keep.txt").read_text() == "old"

    generate_polyp_dataset(out, PolypSetSpec(n_train=1, n_test=1, size=32, domains=("in_domain",)), overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "TrainDataset" / "images" / "train_00000.png").is_file()
    assert _siblings(tmp_path) == ["synth"]


def test_an_empty_existing_folder_is_used(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    out.mkdir()
    generate_polyp_dataset(out, PolypSetSpec(n_train=1, n_test=1, size=32, domains=("in_domain",)))
    assert (out / "dataset.json").is_file()


def test_interrupted_generation_leaves_old_folder_untouched(tmp_path: Path) -> None:
    def stop(done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    fresh = tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        generate_polyp_dataset(fresh, PolypSetSpec(n_train=3, n_test=1, size=32, domains=("in_domain",)), progress=stop)
    assert not fresh.exists()
    assert _siblings(tmp_path) == []

    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        generate_polyp_dataset(old, PolypSetSpec(n_train=3, n_test=1, size=32, domains=("in_domain",)), overwrite=True, progress=stop)
    assert (old / "keep.txt").read_text() == "old"
    assert _siblings(tmp_path) == ["old"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_train": 0}, "n_train must be an integer >= 1"),
        ({"n_test": -1}, "n_test must be an integer >= 1"),
        ({"size": 16}, "size must be an integer >= 32"),
        ({"seed": -2}, "seed must be a non-negative integer"),
        ({"domains": ("in_domain", "fog")}, "'fog'; known domains: in_domain, small_lesions"),
        ({"domains": ()}, "no test domains"),
        ({"domains": ("in_domain", "in_domain")}, "more than once"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        generate_polyp_dataset(tmp_path / "synth", PolypSetSpec(**kwargs))
    assert not (tmp_path / "synth").exists()


def test_out_is_a_file(tmp_path: Path) -> None:
    target = tmp_path / "synth"
    target.write_text("not a folder")
    with pytest.raises(UserError, match="synth exists and is not a folder"):
        generate_polyp_dataset(target, PolypSetSpec(n_train=1, n_test=1, size=32), overwrite=True)


def test_folder_permissions_follow_the_umask(tmp_path: Path) -> None:
    umask = os.umask(0o022)
    os.umask(umask)
    out = tmp_path / "synth"
    generate_polyp_dataset(out, PolypSetSpec(n_train=1, n_test=1, size=32, domains=("in_domain",)))
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask

"""Pieces of the training engine: record store, batch streams, augmentation, configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pseudoseg.config import AugmentConfig, apply_overrides
from pseudoseg.run_config import config_from_dict, load_config
from pseudoseg.data.augment import BatchAugmenter, apply_geometry
from pseudoseg.data.store import ArrayStore
from pseudoseg.engine.streams import IndexStream
from pseudoseg.errors import UserError


# ----------------------------------------------------------------------------- store
def test_store_round_trip_and_is_a_plain_npy(tmp_path: Path) -> None:
    records = np.random.default_rng(0).integers(0, 256, (10, 2, 4, 4), dtype=np.uint8)
    store = ArrayStore.create(tmp_path / "s.npy", 10, (2, 4, 4))
    store.write(0, records[:6])
    store.write_at([8, 6, 9, 7], records[[8, 6, 9, 7]])
    np.testing.assert_array_equal(store.read([3, 3, 9, 0]), records[[3, 3, 9, 0]])
    np.testing.assert_array_equal(store.read_range(2, 7), records[2:7])
    store.close()
    np.testing.assert_array_equal(np.load(tmp_path / "s.npy"), records)
    assert (tmp_path / "s.npy").stat().st_size >= records.nbytes


def test_store_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"nope")
    with pytest.raises(UserError, match=str(bad)):
        ArrayStore(bad)
    store = ArrayStore.create(tmp_path / "s.npy", 3, (2,))
    with pytest.raises(IndexError, match="record 3 out of range"):
        store.read([3])


# ---------------------------------------------------------------------------- streams
def test_stream_covers_each_epoch_and_resumes_exactly() -> None:
    stream = IndexStream(np.arange(10, 20), batch_size=3, seed=5)
    assert stream.batches_per_epoch == 3
    epoch0 = [stream.next() for _ in range(3)]
    assert [ended for _, ended in epoch0] == [False, False, True]
    seen = np.concatenate([batch for batch, _ in epoch0])
    assert len(set(seen.tolist())) == 9 and set(seen.tolist()) <= set(range(10, 20))
    state = stream.state_dict()
    ahead = [stream.next()[0] for _ in range(4)]
    restored = IndexStream(np.arange(10, 20), batch_size=3, seed=5)
    restored.load_state_dict(state)
    for expected in ahead:
        np.testing.assert_array_equal(restored.next()[0], expected)


def test_stream_smaller_than_a_batch_repeats() -> None:
    batch, ended = IndexStream(np.array([4, 7]), batch_size=5, seed=0).next()
    assert len(batch) == 5 and set(batch.tolist()) == {4, 7} and ended


# ------------------------------------------------------------------------ augmentation
def test_geometry_moves_images_and_maps_together() -> None:
    augmenter = BatchAugmenter(AugmentConfig(), seed=0)
    image = torch.zeros(8, 3, 16, 16)
    image[:, :, 2:6, 9:14] = 1.0
    mask = image[:, :1].clone()
    geometry = augmenter.sample_geometry(8, affine=True)
    out_image, (out_mask,) = apply_geometry(image, [mask], geometry)
    assert torch.allclose(out_image[:, :1], out_mask)
    assert len({tuple(m.flatten().tolist()) for m in (out_mask > 0.5)}) > 1  # samples differ


def test_dihedral_codes_are_exact_flips_and_rotations() -> None:
    from pseudoseg.data.augment import Geometry

    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(8, 1, 1, 1)
    out, _ = apply_geometry(x, [], Geometry(torch.arange(8), None))
    for code in range(8):
        expected = x[code].flip(-1) if code >= 4 else x[code]
        assert torch.equal(out[code], torch.rot90(expected, code % 4, dims=(-2, -1)))


def test_augmentation_is_seeded_and_a_global_batch_slices_consistently() -> None:
    a = BatchAugmenter(AugmentConfig(noise_std=0.05), seed=3)
    b = BatchAugmenter(AugmentConfig(noise_std=0.05), seed=3)
    images = torch.rand(4, 3, 8, 8)
    whole = a.photometric(images, a.sample_photometry(4, 3))
    params = b.sample_photometry(4, 3)
    halves = torch.cat([b.photometric(images[part], params.select(part)) for part in (slice(0, 2), slice(2, 4))])
    assert torch.allclose(whole, halves)
    assert 0.0 <= float(whole.min()) and float(whole.max()) <= 1.0


def test_photometry_changes_intensity_not_geometry() -> None:
    augmenter = BatchAugmenter(AugmentConfig(brightness=0.3, contrast=0.3, color_shift=0.1), seed=0)
    images = torch.full((16, 3, 8, 8), 0.5)
    images[:, :, :4] = 0.2
    out = augmenter.photometric(images, augmenter.sample_photometry(16, 3))
    assert not torch.allclose(out, images)
    # the dark top half stays darker than the bottom half in every image
    assert bool((out[:, :, :4].mean((1, 2, 3)) < out[:, :, 4:].mean((1, 2, 3))).all())


# ----------------------------------------------------------------------- configuration
def test_config_overrides_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: {train: somewhere}\nmethod: {name: momentum}\n")
    config = load_config(path, ["train.steps=12", "method.beta=0.5", "data.window=[-50, 200]"])
    assert config.train.steps == 12 and config.method.beta == 0.5 and config.data.window == (-50.0, 200.0)
    assert config.method.teacher_momentum == 0.99 and config.method.ema_schedule == "step"
    with pytest.raises(UserError, match=r"c.yaml: method.labels: Input should be 'soft' or 'hard'"):
        load_config(path, ["method.labels=fuzzy"])
    with pytest.raises(UserError, match="confidence applies to hard labels only"):
        load_config(path, ["method.confidence=0.9"])
    with pytest.raises(UserError, match="data.window: .*lower bound must be below upper bound"):
        load_config(path, ["data.window=[10, 0]"])
    with pytest.raises(UserError, match="--set train.steps: expected key=value|expected key=value"):
        apply_overrides({}, ["train.steps"])


def test_config_file_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match=f"{bad}: not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(UserError, match="expected a mapping"):
        load_config(bad)
    with pytest.raises(UserError, match="data.train: required"):
        config_from_dict({})


def test_shipped_recipes_are_valid() -> None:
    recipes = Path(__file__).resolve().parents[1] / "pseudoseg" / "configs"
    files = sorted(recipes.glob("*.yaml"))
    assert files
    for path in files:
        load_config(path)

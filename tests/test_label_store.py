"""The on-disk pseudo-label store: rendering, round trips, memory, atomicity, agreement."""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.data.store import ArrayStore
from pseudoseg.errors import UserError
from pseudoseg.methods.label_store import LabelFormat, Labeler, PseudoLabelStore, encode_labels, label_agreement, render_pseudo_labels

SIZE = 12


class Brightness(nn.Module):
    """A fixed 'network': logit = 6 * (first input channel), so brighter pixels are foreground."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 6.0 * x[:, :1]


def image_store(tmp_path: Path, count: int, channels: int = 1) -> ArrayStore:
    rng = np.random.default_rng(0)
    store = ArrayStore.create(tmp_path / "images.npy", count, (channels, SIZE, SIZE))
    store.write(0, rng.integers(0, 256, size=(count, channels, SIZE, SIZE), dtype=np.uint8))
    return ArrayStore(tmp_path / "images.npy")


def expected_prob(images: ArrayStore, indices: np.ndarray) -> torch.Tensor:
    unit = torch.from_numpy(images.read(indices)).float() / 255.0
    return torch.sigmoid(6.0 * ((unit - 0.5) / 0.5))[:, :1]


def render(images: ArrayStore, indices: np.ndarray, path: Path, kind: str, network: nn.Module | None = None, batch_size: int = 4) -> PseudoLabelStore:
    return render_pseudo_labels(
        Labeler(network or Brightness(), InputNormalizer("unit", images.record_shape[0], torch.device("cpu")), contextlib.nullcontext, batch_size=batch_size),
        images,
        indices,
        path,
        label_format=LabelFormat(kind),
    )


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_render_round_trip(tmp_path: Path, kind: str) -> None:
    images = image_store(tmp_path, 20)
    covered = np.array([1, 2, 3, 7, 8, 13, 19])  # non-contiguous pool indices, batches of 4 cross the gaps
    labels = render(images, covered, tmp_path / "labels.npy", kind)
    prob = expected_prob(images, covered)[:, 0]
    expected = (prob >= 0.5).numpy().astype(np.uint8) * 255 if kind == "hard" else np.rint(prob.numpy() * 255).astype(np.uint8)
    # the file is a plain .npy in pool-index order, readable with numpy
    on_disk = np.load(tmp_path / "labels.npy")
    assert on_disk.dtype == np.uint8 and on_disk.shape == (7, SIZE, SIZE)
    np.testing.assert_array_equal(on_disk, expected)
    if kind == "hard":
        assert set(np.unique(on_disk)) <= {0, 255}
    else:
        assert len(np.unique(on_disk)) > 20  # genuinely soft
    # reading by pool index, any order, repeats allowed
    asked = np.array([19, 1, 8, 8])
    rows = [list(covered).index(i) for i in asked]
    np.testing.assert_array_equal(labels.read(asked), expected[rows])
    np.testing.assert_array_equal(labels.read_rows(2, 5), expected[2:5])
    labels.close()


def test_store_stays_on_disk(tmp_path: Path) -> None:
    count = 300
    images = image_store(tmp_path, count)
    covered = np.arange(0, count, 2)
    labels = render(images, covered, tmp_path / "labels.npy", "soft", batch_size=32)
    path = tmp_path / "labels.npy"
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_2_0(handle)
        header = handle.tell()
    assert path.stat().st_size == header + len(covered) * SIZE * SIZE  # one uint8 record per covered index
    labels.read(covered[::3])
    labels.read_rows(0, 50)

    def arrays(obj: object) -> list[np.ndarray]:
        return [value for value in vars(obj).values() if isinstance(value, np.ndarray)]

    held = arrays(labels) + arrays(labels._store)
    # only the index list (8 bytes per record) is held, never label records
    assert sum(a.nbytes for a in held) == 8 * len(covered)
    assert all(a.dtype == np.int64 and a.ndim == 1 for a in held)
    labels.close()


def test_store_checks(tmp_path: Path) -> None:
    images = image_store(tmp_path, 10)
    labels = render(images, np.array([2, 4, 6]), tmp_path / "labels.npy", "hard")
    with pytest.raises(KeyError, match="pool index 3"):
        labels.read(np.array([2, 3]))
    with pytest.raises(KeyError, match="pool index 9"):
        labels.read(np.array([9]))
    labels.close()
    with pytest.raises(UserError, match=r"labels\.npy: holds 3 label records, expected 4"):
        PseudoLabelStore(tmp_path / "labels.npy", [1, 2, 4, 6])
    with pytest.raises(ValueError, match="sorted and unique"):
        PseudoLabelStore(tmp_path / "labels.npy", [4, 2, 6])
    with pytest.raises(UserError, match=r"images\.npy: not a pseudo-label file"):
        PseudoLabelStore(tmp_path / "images.npy", np.arange(10))


def test_interrupted_render_leaves_no_file(tmp_path: Path) -> None:
    images = image_store(tmp_path, 12)

    class Failing(nn.Module):
        calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            Failing.calls += 1
            if Failing.calls == 2:
                raise RuntimeError("killed")
            return x[:, :1]

    with pytest.raises(RuntimeError, match="killed"):
        render(images, np.arange(12), tmp_path / "labels.npy", "hard", network=Failing())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images.npy"]  # no label file, no temporary


def test_encode_labels_threshold() -> None:
    prob = torch.tensor([0.0, 0.2, 0.4999, 0.5, 0.7, 1.0]).view(1, 1, 2, 3)
    np.testing.assert_array_equal(encode_labels(prob, "hard").numpy().ravel(), [0, 0, 0, 255, 255, 255])
    np.testing.assert_array_equal(encode_labels(prob, "soft").numpy().ravel(), [0, 51, 127, 128, 178, 255])
    with pytest.raises(ValueError):
        encode_labels(prob, "fuzzy")


def test_label_agreement_numbers() -> None:
    a = np.zeros((3, 4, 4), np.uint8)
    b = np.zeros((3, 4, 4), np.uint8)
    a[0, :2] = 1  # 8 px
    b[0, :1] = 1  # 4 px inside them: Dice 2*4/12
    a[1, 0, 0] = 1  # 1 px vs empty: Dice 0
    # image 2: both empty, Dice 1
    scores = label_agreement(lambda i: a[i], lambda i: b[i], np.arange(3), chunk=2)
    assert scores["n"] == 3
    assert scores["dice"] == pytest.approx((8 / 12 + 0.0 + 1.0) / 3)
    assert scores["changed"] == pytest.approx(5 / 48)
    assert scores["dice_pooled"] == pytest.approx(2 * 4 / (9 + 4))  # all pixels at once


def test_label_agreement_over_classes() -> None:
    a = np.zeros((2, 4, 4), np.uint8)
    b = np.zeros((2, 4, 4), np.uint8)
    a[0, 0] = 1  # class 1: 4 px in A, 2 of them in B -> Dice 2*2/6
    b[0, 0, :2] = 1
    a[0, 3, :2] = 2  # class 2 in image 0: 2 px in A, none in B -> Dice 0
    a[1, 1, 1] = b[1, 1, 1] = 2  # image 1: class 2 agrees on 1 px; class 1 absent from both: skipped
    scores = label_agreement(lambda i: a[i], lambda i: b[i], np.arange(2), classes=2)
    # per class over the images where it is defined, then the mean over classes
    assert scores["dice"] == pytest.approx((4 / 6 + (0.0 + 1.0) / 2) / 2)
    assert scores["dice_pooled"] == pytest.approx((4 / 6 + 2 * 1 / 4) / 2)
    assert scores["changed"] == pytest.approx(4 / 32)


def test_label_store_with_classes_round_trip(tmp_path: Path) -> None:
    images = image_store(tmp_path, 6, channels=3)

    class ThreeWay(nn.Module):
        """Logits for background / class 1 / class 2 from the three input channels."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 4.0 * x

    expected = torch.softmax(4.0 * ((torch.from_numpy(images.read(np.arange(6))).float() / 255.0 - 0.5) / 0.5), dim=1)
    covered = np.array([0, 2, 3, 5])
    labeler = Labeler(ThreeWay(), InputNormalizer("unit", 3, torch.device("cpu")), contextlib.nullcontext, batch_size=3)
    hard = render_pseudo_labels(labeler, images, covered, tmp_path / "hard.npy", label_format=LabelFormat("hard", channels=3))
    soft = render_pseudo_labels(labeler, images, covered, tmp_path / "soft.npy", label_format=LabelFormat("soft", channels=3))
    # hard: class indices on disk, one byte a pixel; soft: C + 1 probabilities a pixel, on disk
    assert np.load(tmp_path / "hard.npy", mmap_mode="r").shape == (4, SIZE, SIZE)
    assert np.load(tmp_path / "soft.npy", mmap_mode="r").shape == (4, 3, SIZE, SIZE)
    argmax = expected.argmax(1).numpy().astype(np.uint8)
    np.testing.assert_array_equal(hard.read_classes(np.array([5, 0])), argmax[[5, 0]])
    np.testing.assert_array_equal(soft.read_classes(np.array([2])), argmax[[2]])
    targets = hard.targets(np.array([3]), torch.device("cpu"))
    assert targets.shape == (1, 3, SIZE, SIZE) and torch.equal(targets.argmax(1), torch.from_numpy(argmax[[3]]).long())
    assert torch.equal(targets.sum(1), torch.ones(1, SIZE, SIZE))  # one-hot
    probabilities = soft.targets(np.array([3]), torch.device("cpu"))
    torch.testing.assert_close(probabilities, expected[[3]], atol=0.5 / 255 + 1e-6, rtol=0)
    with pytest.raises(UserError, match="not a pseudo-label file for 5 output"):
        PseudoLabelStore(tmp_path / "soft.npy", covered, channels=5)

from __future__ import annotations

import numpy as np
import pytest
import torch
from py_sod_metrics import MAE, DICEHandler, Emeasure, FmeasureV2, IOUHandler, Smeasure, WeightedFmeasure

from pseudoseg.evaluation.metrics import (
    METRIC_CONVENTIONS,
    PAPER_COLUMNS,
    PRANET_COLUMNS,
    PaperMetrics,
    PraNetMetrics,
    dice_iou_at_threshold,
    resize_bilinear,
    to_uint8_pair,
)

# --------------------------------------------------------------------------- paper convention


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four 2x2 images with hand-computed scores (see expected values in the tests)."""
    prob = torch.tensor(
        [
            [[0.9, 0.2], [0.6, 0.1]],  # P = {(0,0), (1,0)}, G = {(0,0), (0,1)}: inter 1, |P|+|G| = 4
            [[0.1, 0.2], [0.3, 0.4]],  # empty prediction, empty mask
            [[0.1, 0.2], [0.3, 0.4]],  # empty prediction, mask with 2 pixels
            [[0.9, 0.9], [0.1, 0.1]],  # 2 predicted pixels, empty mask
        ]
    ).unsqueeze(1)
    target = torch.tensor(
        [
            [[1, 1], [0, 0]],
            [[0, 0], [0, 0]],
            [[1, 0], [1, 0]],
            [[0, 0], [0, 0]],
        ],
        dtype=torch.float32,
    ).unsqueeze(1)
    return prob, target


def test_dice_iou_hand_computed_values() -> None:
    prob, target = _batch()
    dice, iou = dice_iou_at_threshold(prob, target)
    assert dice.shape == iou.shape == (4,)
    assert dice.dtype == iou.dtype == torch.float32
    torch.testing.assert_close(dice, torch.tensor([0.5, 1.0, 0.0, 0.0]))
    torch.testing.assert_close(iou, torch.tensor([1 / 3, 1.0, 0.0, 0.0]))


def test_dice_iou_target_dtype_and_layout_do_not_matter() -> None:
    prob, target = _batch()
    expected = dice_iou_at_threshold(prob, target)
    for tgt in (target.bool(), target.to(torch.uint8), target.long()):
        for got, want in zip(dice_iou_at_threshold(prob, tgt), expected):
            torch.testing.assert_close(got, want)
    # [B, H, W] without the channel dimension gives the same per-image scores.
    for got, want in zip(dice_iou_at_threshold(prob[:, 0], target[:, 0]), expected):
        torch.testing.assert_close(got, want)


def test_threshold_is_inclusive_at_exactly_one_half() -> None:
    target = torch.ones(2, 1, 1, 1)
    prob = torch.tensor([0.5, float(np.nextafter(np.float32(0.5), np.float32(0)))]).reshape(2, 1, 1, 1)
    dice, iou = dice_iou_at_threshold(prob, target)
    torch.testing.assert_close(dice, torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(iou, torch.tensor([1.0, 0.0]))
    # Another threshold moves the decision.
    dice, _ = dice_iou_at_threshold(torch.full((1, 1, 2, 2), 0.6), torch.ones(1, 1, 2, 2), threshold=0.7)
    torch.testing.assert_close(dice, torch.tensor([0.0]))


def test_dice_iou_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shape"):
        dice_iou_at_threshold(torch.zeros(2, 1, 4, 4), torch.zeros(2, 1, 4, 5))


def test_paper_metrics_accumulates_per_image_mean() -> None:
    prob, target = _batch()
    metrics = PaperMetrics()
    metrics.update(prob[:3], target[:3])
    metrics.update(prob[3:], target[3:])
    result = metrics.compute()
    assert set(result) == {"dice@0.5", "iou@0.5", "n"}
    assert result["n"] == 4
    assert result["dice@0.5"] == pytest.approx((0.5 + 1 + 0 + 0) / 4)
    assert result["iou@0.5"] == pytest.approx((1 / 3 + 1 + 0 + 0) / 4)
    torch.testing.assert_close(metrics.per_image()["dice@0.5"], torch.tensor([0.5, 1.0, 0.0, 0.0]))
    metrics.reset()
    with pytest.raises(ValueError, match="before any update"):
        metrics.compute()


def test_paper_metrics_column_names_follow_threshold() -> None:
    assert PaperMetrics().columns == PAPER_COLUMNS
    metrics = PaperMetrics(threshold=0.3)
    metrics.update(torch.full((1, 1, 2, 2), 0.4), torch.ones(1, 1, 2, 2))
    assert metrics.compute() == {"dice@0.3": 1.0, "iou@0.3": 1.0, "n": 1}


# --------------------------------------------------------------------------- conversion and resizing


def test_to_uint8_pair_rounding_and_mask_threshold() -> None:
    prob = np.array([[0.0, 1.0, 0.5, 0.498]], dtype=np.float32)
    pred, gt = to_uint8_pair(prob, np.array([[True, False, True, False]]))
    assert pred.dtype == gt.dtype == np.uint8
    assert pred.tolist() == [[0, 255, 128, 127]]  # rint: 127.5 -> 128 (tie to even), 126.99 -> 127
    assert gt.tolist() == [[255, 0, 255, 0]]
    # uint8 masks from disk: foreground is > 128, as in the benchmark files.
    _, gt = to_uint8_pair(prob, np.array([[0, 128, 129, 255]], dtype=np.uint8))
    assert gt.tolist() == [[0, 0, 255, 255]]


@pytest.mark.parametrize(
    ("prob", "mask", "message"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5), bool), "same"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 4), bool), "float"),
        (np.full((4, 4), np.nan), np.zeros((4, 4), bool), "finite"),
        (np.full((4, 4), 1.5), np.zeros((4, 4), bool), r"\[0, 1\]"),
        (np.zeros((4, 4)), np.zeros((4, 4), np.float32), "mask must be bool"),
    ],
)
def test_to_uint8_pair_rejects_bad_inputs(prob: np.ndarray, mask: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_uint8_pair(prob, mask)


def test_resize_bilinear_matches_hand_values_and_keeps_layout() -> None:
    row = torch.tensor([[0.0, 1.0]])
    # align_corners=False: output pixel centres at input coordinates -0.25, 0.25, 0.75, 1.25 (clamped).
    torch.testing.assert_close(resize_bilinear(row, (1, 4)), torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    assert resize_bilinear(torch.rand(3, 8, 8), (20, 30)).shape == (3, 20, 30)
    assert resize_bilinear(torch.rand(2, 1, 8, 8), (20, 30)).shape == (2, 1, 20, 30)
    up = resize_bilinear(torch.rand(1, 1, 5, 7), (33, 41))
    assert 0.0 <= float(up.min()) and float(up.max()) <= 1.0


# --------------------------------------------------------------------------- PraNet convention


def _disc(height: int, width: int, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < radius**2


def test_pranet_perfect_prediction() -> None:
    mask = _disc(40, 50, 12)
    metrics = PraNetMetrics()
    metrics.update(mask.astype(np.float32), mask)
    result = metrics.compute()
    fg, size = mask.sum(), mask.size
    # Thresholds >= 1/255 .. 1 reproduce the mask (Dice 1); threshold >= 0 marks every pixel.
    assert result["meanDice"] == pytest.approx((255 + 2 * fg / (fg + size)) / 256)
    assert result["meanIoU"] == pytest.approx((255 + fg / size) / 256)
    assert result["MAE"] == 0.0
    assert result["Smeasure"] == pytest.approx(1.0)
    assert result["wFmeasure"] == pytest.approx(1.0)
    assert result["maxEmeasure"] == pytest.approx(size / (size - 1))  # pysodmetrics divides by H*W - 1
    assert result["n"] == 1


def test_pranet_constant_zero_prediction() -> None:
    mask = _disc(30, 30, 8)
    metrics = PraNetMetrics()
    metrics.update(np.zeros(mask.shape), mask)
    result = metrics.compute()
    fg, size = mask.sum(), mask.size
    # A constant map is not min-max normalised: every pixel is 0, so only threshold >= 0 predicts anything.
    assert result["meanDice"] == pytest.approx(2 * fg / (fg + size) / 256)
    assert result["meanIoU"] == pytest.approx(fg / size / 256)
    assert result["MAE"] == pytest.approx(fg / size)
    assert result["wFmeasure"] == 0.0


def _hand_mean_dice_iou(pairs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[float, float]:
    """The definition: mean over images of the mean over thresholds k/255, k = 0..255, of Dice/IoU.

    Every prediction below spans 0..255 after 8-bit rounding, so min-max
    normalisation is the identity on the 8-bit levels and ``level >= k`` is
    exactly ``normalised >= k / 255``.
    """
    dices, ious = [], []
    for prob, mask in pairs:
        level = np.rint(prob * 255).astype(int)
        per_k_dice, per_k_iou = [], []
        for k in range(256):
            binary = level >= k
            inter = np.logical_and(binary, mask).sum()
            total = binary.sum() + mask.sum()
            union = np.logical_or(binary, mask).sum()
            per_k_dice.append(2 * inter / total if total else 0.0)
            per_k_iou.append(inter / union if union else 0.0)
        dices.append(np.mean(per_k_dice))
        ious.append(np.mean(per_k_iou))
    return float(np.mean(dices)), float(np.mean(ious))


def _random_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for height, width in ((24, 32), (41, 37), (16, 16)):
        mask = _disc(height, width, min(height, width) / 3)
        prob = np.clip(0.6 * mask + 0.5 * rng.random((height, width)), 0.0, 1.0)
        prob.flat[0], prob.flat[1] = 0.0, 1.0  # span the full 8-bit range
        pairs.append((prob, mask))
    return pairs


def test_pranet_mean_dice_and_iou_follow_the_definition() -> None:
    pairs = _random_pairs()
    metrics = PraNetMetrics()
    for prob, mask in pairs:
        metrics.update(prob, mask)
    result = metrics.compute()
    mean_dice, mean_iou = _hand_mean_dice_iou(pairs)
    assert result["meanDice"] == pytest.approx(mean_dice, abs=1e-12)
    assert result["meanIoU"] == pytest.approx(mean_iou, abs=1e-12)
    assert result["n"] == len(pairs)


def test_pranet_matches_pysodmetrics_run_directly() -> None:
    pairs = _random_pairs()
    fm = FmeasureV2({"dice": DICEHandler(True, False), "iou": IOUHandler(True, False)})
    wfm, sm, em, mae = WeightedFmeasure(), Smeasure(), Emeasure(), MAE()
    metrics = PraNetMetrics()
    for prob, mask in pairs:
        pred8 = np.rint(prob * 255).astype(np.uint8)
        gt8 = mask.astype(np.uint8) * 255
        for m in (fm, wfm, sm, em, mae):
            m.step(pred8, gt8)
        metrics.update(torch.from_numpy(prob), torch.from_numpy(mask))  # tensors are accepted too
    result = metrics.compute()
    per_image_em = np.array(em.changeable_ems)  # [images, thresholds]
    assert result["Smeasure"] == pytest.approx(np.mean(sm.sms))
    assert result["wFmeasure"] == pytest.approx(np.mean(wfm.weighted_fms))
    assert result["MAE"] == pytest.approx(np.mean(mae.maes))
    assert result["meanEmeasure"] == pytest.approx(per_image_em.mean())
    # maxEmeasure is the maximum of the image-averaged curve, not the mean of per-image maxima.
    assert result["maxEmeasure"] == pytest.approx(per_image_em.mean(axis=0).max())
    assert result["maxEmeasure"] <= per_image_em.max(axis=1).mean()
    assert result["meanDice"] == pytest.approx(np.mean(fm.get_results()["dice"]["dynamic"]))
    assert set(result) == set(PRANET_COLUMNS) | {"n"}


def test_pranet_compute_before_update_raises() -> None:
    with pytest.raises(ValueError, match="before any update"):
        PraNetMetrics().compute()


# --------------------------------------------------------------------------- conventions


def test_metric_conventions_cover_every_column_and_are_read_only() -> None:
    assert set(METRIC_CONVENTIONS) == set(PAPER_COLUMNS) | set(PRANET_COLUMNS) | {"dice", "hd95_mm", "hd95_penalised_mm", "hd95_undefined"}
    for column in ("dice", "hd95_mm", "hd95_undefined"):
        assert METRIC_CONVENTIONS[column].startswith("volume convention")
    for column in PAPER_COLUMNS:
        assert METRIC_CONVENTIONS[column].startswith("paper convention")
    for column in PRANET_COLUMNS:
        assert METRIC_CONVENTIONS[column].startswith("PraNet convention")
    with pytest.raises(TypeError):
        METRIC_CONVENTIONS["dice@0.5"] = "something else"  # type: ignore[index]

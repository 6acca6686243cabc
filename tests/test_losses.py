"""The published codes' batch losses (``train.loss: batch_dice``, ``batch_dice_ce``), pinned by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pseudoseg.engine.labels import one_hot
from pseudoseg.engine.losses import SegmentationLoss


def test_batch_dice_is_smp_dice_over_the_whole_batch_of_the_foreground() -> None:
    # undecided logits (p = 1/2) on 2 images of 4 pixels, 3 foreground pixels in the first image only:
    # 1 - 2 (3 / 2) / (8 / 2 + 3) = 1 - 3 / 7, one Dice for the batch (the empty image adds only to p)
    target = torch.zeros(2, 1, 2, 2)
    target[0, 0].view(-1)[:3] = 1.0
    loss = SegmentationLoss("batch_dice")(torch.zeros(2, 1, 2, 2), target)
    torch.testing.assert_close(loss, torch.tensor(1 - 3 / 7))
    # a batch without foreground costs nothing, whatever the prediction (smp masks absent classes)
    assert float(SegmentationLoss("batch_dice")(torch.full((2, 1, 2, 2), 5.0), torch.zeros(2, 1, 2, 2))) == 0.0
    # pixels outside ``valid`` do not count: only the first image's 3 foreground pixels remain
    valid = torch.zeros(2, 1, 2, 2)
    valid[0, 0].view(-1)[:3] = 1.0
    torch.testing.assert_close(SegmentationLoss("batch_dice")(torch.zeros(2, 1, 2, 2), target, valid), torch.tensor(1 - 3 / 4.5))


def test_batch_dice_with_several_classes_counts_the_background_and_absent_classes_as_zero() -> None:
    # three channels, logits 0 (p = 1/3 each), class 1 everywhere on 2 x 4 pixels: the background and
    # class 2 are absent (loss 0), class 1: 1 - 2 (8 / 3) / (8 / 3 + 8) = 1 - 1 / 2; the mean over 3 classes
    target = one_hot(torch.ones(2, 2, 2, dtype=torch.long), 3)
    loss = SegmentationLoss("batch_dice", channels=3)(torch.zeros(2, 3, 2, 2), target)
    torch.testing.assert_close(loss, torch.tensor(0.5 / 3))


@pytest.mark.parametrize("channels, dice, ce", [(1, (1.0 + 0.2) / 2, math.log(2)), (3, (1.0 + 0.4 + 1.0) / 3, math.log(3))])
def test_batch_dice_ce_is_the_mean_of_cross_entropy_and_dice_with_the_background(channels: int, dice: float, ce: float) -> None:
    # an undecided network against class 1 everywhere: background Dice loss 1 (no target pixel,
    # smoothed), class 1 as in BCP's authors' loss (squares in the denominator), class 2 (three
    # channels) 1; the cross-entropy log 2 / log 3; the loss is their mean
    target = one_hot(torch.ones(2, 5, 5, dtype=torch.long), channels)
    loss = SegmentationLoss("batch_dice_ce", channels=channels)(torch.zeros(2, channels, 5, 5), target)
    torch.testing.assert_close(loss, torch.tensor((dice + ce) / 2), atol=1e-5, rtol=0)


def test_batch_dice_ce_leaves_out_the_pixels_outside_valid() -> None:
    target = one_hot(torch.ones(2, 4, 4, dtype=torch.long), 3)
    logits = 30.0 * (2 * target - 1)  # confident and right ...
    logits[:, :, :2] = -logits[:, :, :2]  # ... except in the top half, which ``valid`` leaves out
    valid = torch.ones(2, 1, 4, 4)
    valid[:, :, :2] = 0.0
    masked = SegmentationLoss("batch_dice_ce", channels=3)(logits, target, valid)
    # what is left is right: the cross-entropy 0; class 1's Dice 0, the absent classes' smoothed 0
    torch.testing.assert_close(masked, torch.tensor(0.0), atol=1e-5, rtol=0)
    assert float(SegmentationLoss("batch_dice_ce", channels=3)(logits, target)) > 10.0

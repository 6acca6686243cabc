"""The baselines (FixMatch, UniMatch, cross pseudo supervision) and what the engine gives them:
several trainable networks, views asked for by the method (strong, CutMix within a process's
share), perturbed encoder features."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from pseudoseg.config import ModelConfig
from pseudoseg.run_config import config_from_dict
from pseudoseg.data.augment import BatchAugmenter, CutMix
from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.engine.batches import BatchAssembler
from pseudoseg.engine.checkpoint import load_tensors, load_weights_file
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.labels import harden, one_hot, probabilities
from pseudoseg.engine.losses import SegmentationLoss
from pseudoseg.engine.strategy import Batch, Views
from pseudoseg.methods import get_method, grid_families
from pseudoseg.methods.cps import CPSConfig, CPSStrategy
from pseudoseg.engine.labels import weak_to_strong_targets
from pseudoseg.methods.fixmatch import FixMatchConfig, FixMatchStrategy
from pseudoseg.models.factory import build_model
from pseudoseg.models.features import FeatureDropout, perturbed_encoder_features
from pseudoseg.engine.trainer import weights_digest
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config
from tests.test_multiclass import three_class_volumes  # noqa: F401 (a fixture)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- views


def _assembler(config: dict, images: np.ndarray, dist: DistInfo) -> BatchAssembler:
    """A batch assembler over an in-memory pool of ``images`` (uint8 ``[N, 3, S, S]``)."""
    run = config_from_dict(config)
    pool = SimpleNamespace(images=SimpleNamespace(read=lambda index: images[np.asarray(index)]))
    device = torch.device("cpu")
    return BatchAssembler(run, pool, InputNormalizer("unit", 3, device), dist=dist, device=device, channels=1)


def _views_config(strong: dict, cutmix: dict) -> dict:
    augment = {"rot90": True, "flips": True, "unlabeled_affine": False, "strong": strong, "cutmix": cutmix}
    return {"data": {"train": "pool", "normalize": "unit", "image_size": 16}, "train": {"augment": augment}}


POOL = np.random.default_rng(0).integers(0, 256, (8, 3, 16, 16), dtype=np.uint8)
NO_STRONG = {"jitter_probability": 0.0, "greyscale_probability": 0.0, "blur_probability": 0.0}


def test_cutmix_mixes_within_each_process_share() -> None:
    # no strong change and a box in every image: a mixed view is the weak view with a box of another image's
    config = _views_config(NO_STRONG, {"probability": 1.0, "area": [0.2, 0.4]})
    indices = np.arange(8)
    one = BatchAugmenter(config_from_dict(config).train.augment, seed=3)
    whole = _assembler(config, POOL, DistInfo()).unlabeled(indices, one, Views(strong=2, cutmix=True))
    for rank in (0, 1):
        augmenter = BatchAugmenter(config_from_dict(config).train.augment, seed=3)
        share = _assembler(config, POOL, DistInfo(rank=rank, world=2)).unlabeled(indices, augmenter, Views(strong=2, cutmix=True))
        # the draws are the global batch's: the generator ends where the one-process run's does
        assert torch.equal(augmenter.generator.get_state(), one.generator.get_state())
        weak = share["unlabeled"]
        torch.testing.assert_close(weak, whole["unlabeled"][rank::2], rtol=0, atol=0)
        for view, mix in zip(share["strong"], share["mixes"]):
            assert mix.box.shape == (4, 1, 16, 16) and bool(mix.box.flatten(1).any(1).all())
            assert sorted(mix.partner.tolist()) == [0, 1, 2, 3] and bool((mix.partner != torch.arange(4)).all())
            for row in range(4):
                box = mix.box[row, 0]
                # inside the box, the partner's pixels (an image of this process's share), outside its own
                assert torch.equal(view[row][:, box], weak[mix.partner[row]][:, box])
                assert torch.equal(view[row][:, ~box], weak[row][:, ~box])
        # the same boxes as the one-process run drew for these images; the partners differ (the share)
        assert torch.equal(share["mixes"][0].box, whole["mixes"][0].box[rank::2])
    assert not torch.equal(share["strong"][0], share["strong"][1])  # each view its own boxes


def test_a_second_batch_fills_the_cutmix_boxes_row_for_row() -> None:
    config = _views_config(NO_STRONG, {"probability": 1.0, "area": [0.2, 0.4]})
    augmenter = BatchAugmenter(config_from_dict(config).train.augment, seed=3)
    out = _assembler(config, POOL, DistInfo()).unlabeled(np.arange(4), augmenter, Views(strong=2, cutmix=True, partner_batch=True), np.arange(4, 8))
    weak, partner = out["unlabeled"], out["partner_unlabeled"]
    assert partner.shape == weak.shape and not torch.equal(partner, weak)
    for view, mix in zip(out["strong"], out["mixes"]):
        assert mix.partner is None and bool(mix.box.flatten(1).any(1).all())
        # no strong change here: inside each box the same row of the second batch, outside the image itself
        assert torch.equal(view, mix.apply(weak, partner))
        for row in range(4):
            box = mix.box[row, 0]
            assert torch.equal(view[row][:, box], partner[row][:, box]) and torch.equal(view[row][:, ~box], weak[row][:, ~box])
    with pytest.raises(ValueError, match="second batch"):
        out["mixes"][0].apply(weak)
    with pytest.raises(ValueError, match="partner_batch fills CutMix boxes"):
        Views(strong=1, partner_batch=True)


def test_second_batch_targets_are_the_partners_confident_decisions_in_the_box() -> None:
    box = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    box[:, :, :2] = True
    mix = CutMix(box, None)
    own, partner = torch.full((2, 1, 4, 4), 5.0), torch.full((2, 1, 4, 4), -5.0)  # foreground / background, both confident
    partner[1, :, 0, 0] = 0.0  # undecided: not confident
    target, valid = weak_to_strong_targets(own, 0.9, mix, partner)
    assert torch.equal(target[:, :, 2:], torch.ones(2, 1, 2, 4)) and torch.equal(target[:, :, :2], torch.zeros(2, 1, 2, 4))
    assert float(valid.sum()) == 2 * 16 - 1 and float(valid[1, 0, 0, 0]) == 0.0


def test_strong_views_are_the_global_batchs_and_replay_on_resume() -> None:
    config = _views_config({"jitter_probability": 1.0, "greyscale_probability": 0.5, "blur_probability": 0.5}, {"probability": 0.5})
    augment = config_from_dict(config).train.augment
    indices = np.arange(8)
    one = BatchAugmenter(augment, seed=5)
    assembler = _assembler(config, POOL, DistInfo())
    state = {key: value.clone() for key, value in one.state_dict().items()}
    first = assembler.unlabeled(indices, one, Views(strong=1, cutmix=True))
    one.load_state_dict(state)  # a resumed run draws the same views and boxes again
    again = assembler.unlabeled(indices, one, Views(strong=1, cutmix=True))
    assert torch.equal(first["strong"][0], again["strong"][0])
    assert torch.equal(first["mixes"][0].box, again["mixes"][0].box) and torch.equal(first["mixes"][0].partner, again["mixes"][0].partner)
    # without CutMix, each process's strong views are the one-process run's rows
    plain = BatchAugmenter(augment, seed=5)
    whole = assembler.unlabeled(indices, plain, Views(strong=1))
    share = _assembler(config, POOL, DistInfo(rank=1, world=2)).unlabeled(indices, BatchAugmenter(augment, seed=5), Views(strong=1))
    torch.testing.assert_close(share["strong"][0], whole["strong"][0][1::2], rtol=0, atol=1e-6)
    assert share["mixes"] == (None,)
    assert float((whole["strong"][0] - whole["unlabeled"]).abs().mean()) > 0.05  # jitter on every image


def test_strong_augmentation_transforms() -> None:
    augment = config_from_dict(_views_config({"jitter_probability": 1.0, "greyscale_probability": 1.0, "blur_probability": 0.0, "hue": 0.0}, {})).train.augment
    augmenter = BatchAugmenter(augment, seed=0)
    images = torch.rand(4, 3, 16, 16)
    params = augmenter.sample_strong(4)
    grey = augmenter.strong(images, params, colour=True)
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 1], grey[:, 2])  # greyscale: equal channels
    slices = augmenter.strong(images, params, colour=False)  # slices: no greyscale, no saturation
    assert not torch.equal(slices[:, 0], slices[:, 1])
    assert float(slices.min()) >= 0.0 and float(slices.max()) <= 1.0
    # brightness and contrast act on every channel alike: one factor and one mean per image
    factor = params.brightness.view(-1, 1, 1, 1)
    bright = (images * factor).clamp(0, 1)
    mean = bright.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(slices, (params.contrast.view(-1, 1, 1, 1) * bright + (1 - params.contrast.view(-1, 1, 1, 1)) * mean).clamp(0, 1))
    # a blur keeps a constant image and the mean of any image (reflecting borders aside), and smooths
    blurry = BatchAugmenter(config_from_dict(_views_config({"jitter_probability": 0.0, "greyscale_probability": 0.0, "blur_probability": 1.0}, {})).train.augment, seed=0)
    blur_params = blurry.sample_strong(2)
    flat = torch.full((2, 3, 16, 16), 0.3)
    torch.testing.assert_close(blurry.strong(flat, blur_params, colour=True), flat)
    noise = torch.rand(2, 3, 16, 16)
    assert float(blurry.strong(noise, blur_params, colour=True).std()) < float(noise.std())
    # a hue rotation keeps grey pixels grey and the luma of every pixel
    hue = BatchAugmenter(config_from_dict(_views_config({"jitter_probability": 1.0, "brightness": 0, "contrast": 0, "saturation": 0, "hue": 0.25, "greyscale_probability": 0, "blur_probability": 0}, {})).train.augment, seed=1)
    hue_params = hue.sample_strong(2)
    colours = torch.tensor([0.2, 0.5, 0.4]).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    shifted = hue.strong(colours, hue_params, colour=True)
    assert not torch.allclose(shifted, colours, atol=1e-3)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    torch.testing.assert_close((shifted * weights).sum(1), (colours * weights).sum(1), atol=1e-4, rtol=0)
    torch.testing.assert_close(hue.strong(torch.full((2, 3, 4, 4), 0.4), hue_params, colour=True), torch.full((2, 3, 4, 4), 0.4), atol=1e-5, rtol=0)


def test_views_are_checked() -> None:
    with pytest.raises(ValueError, match="cutmix mixes strong views"):
        Views(cutmix=True)
    with pytest.raises(Exception, match=r"train.augment.cutmix.area"):
        config_from_dict({"data": {"train": "x"}, "train": {"augment": {"cutmix": {"area": [0.5, 0.1]}}}})


# --------------------------------------------------------------------------- encoder features


ARCHITECTURES = [
    {"name": "unet", "channels": [4, 8]},
    {"name": "unet", "channels": [4, 8, 16], "num_res_units": 0},
    {"name": "basic_unet", "channels": [4, 4, 8, 8, 16, 4]},
    {"name": "flexible_unet", "encoder": "efficientnet-b0"},
    {"name": "flexible_unet", "encoder": "efficientnet-lite0"},
]


def _smp_architectures() -> list[dict]:
    try:
        import segmentation_models_pytorch  # noqa: F401
    except Exception:
        return []
    return [{"name": "fpn", "encoder": "resnet18"}]


@pytest.mark.parametrize("model", ARCHITECTURES + _smp_architectures(), ids=lambda m: m["name"] + "-" + m.get("encoder", str(len(m.get("channels", ())))))
def test_feature_perturbation_changes_the_output_only_while_active(model: dict) -> None:
    torch.manual_seed(0)
    network = build_model(ModelConfig(**model), 3, 3).eval()  # eval: rows do not mix through batch norm
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        before = network(images)
        dropout = FeatureDropout(0.5, torch.Generator().manual_seed(0), rows=slice(2, None), total=2, share=slice(None))
        with perturbed_encoder_features(network, dropout):
            during = network(images)
        after = network(images)
    assert torch.equal(before, after)  # the hooks are gone
    assert torch.equal(before[:2], during[:2])  # rows outside the perturbed stream are untouched
    assert float((before[2:] - during[2:]).abs().max()) > 1e-5
    with pytest.raises(TypeError, match="no known encoder"), perturbed_encoder_features(torch.nn.Conv2d(3, 1, 1), lambda f: f):
        pass


def test_feature_dropout_masks_are_the_global_batchs() -> None:
    features = torch.ones(4, 6, 2, 2)
    whole = FeatureDropout(0.5, torch.Generator().manual_seed(7), rows=slice(None), total=4, share=slice(None))(features)
    share = FeatureDropout(0.5, torch.Generator().manual_seed(7), rows=slice(None), total=4, share=slice(1, None, 2))(features[:2])
    assert torch.equal(share, whole[1::2])
    assert set(whole.unique().tolist()) <= {0.0, 2.0} and 0 < int((whole == 0).sum()) < whole.numel()  # whole channels, scaled by 1 / (1 - p)
    assert torch.equal(whole.amax(dim=(2, 3)), whole.amin(dim=(2, 3)))


# --------------------------------------------------------------------------- the losses


def _context(channels: int = 1) -> SimpleNamespace:
    return SimpleNamespace(criterion=SegmentationLoss("dice_bce", channels=channels), config=SimpleNamespace(train=SimpleNamespace(channels_last=False)))


def test_fixmatch_targets_are_the_confident_weak_decisions_mixed_like_the_view() -> None:
    logits = torch.tensor([4.0, -4.0, 0.5, -0.2]).view(1, 1, 1, 4).repeat(2, 1, 1, 1)
    logits[1] *= -1
    target, valid = weak_to_strong_targets(logits, 0.95, None)
    assert target[0].flatten().tolist() == [1.0, 0.0, 1.0, 0.0] and valid[0].flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    mix = SimpleNamespace(apply=lambda x: torch.stack([torch.cat([x[1][..., :2], x[0][..., 2:]], -1), x[1]]))
    mixed_target, mixed_valid = weak_to_strong_targets(logits, 0.95, mix)
    assert mixed_target[0].flatten().tolist() == [0.0, 1.0, 1.0, 0.0] and mixed_valid[0].flatten().tolist() == [1.0, 1.0, 0.0, 0.0]
    # several classes: the argmax, counted where its probability reaches the threshold
    three = torch.tensor([[5.0, 0.0], [0.0, 0.1], [0.0, 0.0]]).view(1, 3, 1, 2)
    target, valid = weak_to_strong_targets(three, 0.95, None)
    assert target.argmax(1).flatten().tolist() == [0, 1] and valid.flatten().tolist() == [1.0, 0.0]


def test_fixmatch_loss_feeds_labeled_weak_and_strong_in_one_pass() -> None:
    strategy = FixMatchStrategy(FixMatchConfig(threshold=0.6))
    strategy.context = _context()
    batch = Batch(images=torch.rand(2, 3, 4, 4), masks=torch.ones(2, 1, 4, 4), unlabeled=torch.rand(3, 3, 4, 4), strong=(torch.rand(3, 3, 4, 4),), mixes=(None,))
    seen = []

    def forward(images: torch.Tensor, network: str | None = None) -> torch.Tensor:
        seen.append(images)
        return images[:, :1] * 4 - 2

    loss, logs = strategy.loss(batch, forward, 0)
    assert len(seen) == 1 and torch.equal(seen[0], torch.cat([batch.images, batch.unlabeled, batch.strong[0]]))
    criterion = strategy.context.criterion
    weak = forward(batch.unlabeled)
    target, valid = weak_to_strong_targets(weak, 0.6, None)
    expected_unsup = criterion(forward(batch.strong[0]), target, valid)
    assert float(logs["loss_unsup"]) == pytest.approx(float(expected_unsup), abs=1e-6)
    assert float(loss) == pytest.approx(float(criterion(forward(batch.images), batch.masks) + expected_unsup), abs=1e-6)
    assert float(logs["confident"]) == pytest.approx(float(valid.mean()))


@pytest.mark.parametrize("channels, cross_on", [(1, "unlabeled"), (3, "unlabeled"), (1, "all"), (3, "all")])
def test_cps_each_network_learns_the_others_hard_decisions(channels: int, cross_on: str) -> None:
    strategy = CPSStrategy(CPSConfig(cps_weight=1.5, cross_on=cross_on))
    strategy.context = _context(channels)
    masks = one_hot(torch.randint(0, 2, (2, 4, 4)), channels)
    batch = Batch(images=torch.rand(2, 3, 4, 4), masks=masks, unlabeled=torch.rand(3, 3, 4, 4))
    heads = {None: torch.randn(3, channels), "peer": torch.randn(3, channels)}

    def forward(images: torch.Tensor, network: str | None = None) -> torch.Tensor:
        return torch.einsum("bchw,ck->bkhw", images, heads[network])

    loss, logs = strategy.loss(batch, forward, 0)
    criterion = strategy.context.criterion
    crossed = batch.unlabeled if cross_on == "unlabeled" else torch.cat([batch.images, batch.unlabeled])  # the paper: L and U
    a, b = forward(crossed), forward(crossed, "peer")
    cps = criterion(a, harden(probabilities(b), strict=True)) + criterion(b, harden(probabilities(a), strict=True))
    sup = criterion(forward(batch.images), masks) + criterion(forward(batch.images, "peer"), masks)
    assert float(logs["loss_cps"]) == pytest.approx(float(cps), abs=1e-5)
    assert float(loss) == pytest.approx(float(sup + 1.5 * cps), abs=1e-5)


@pytest.mark.parametrize("cross_on", ["unlabeled", "all"])
def test_cps_cutmix_crosses_the_mixed_images_with_the_others_decisions_mixed_alike(cross_on: str) -> None:
    strategy = CPSStrategy(CPSConfig(cps_weight=1.5, cross_on=cross_on, cutmix=True))
    assert strategy.views == Views(strong=1, cutmix=True, strong_augment=False)
    strategy.context = _context(1)
    masks = one_hot(torch.randint(0, 2, (2, 4, 4)), 1)
    unlabeled = torch.rand(2, 3, 4, 4)
    # the mix pastes the right half of image 1 into image 0 (and keeps image 1)
    mix = SimpleNamespace(apply=lambda x: torch.stack([torch.cat([x[0][..., :2], x[1][..., 2:]], -1), x[1]]))
    batch = Batch(images=torch.rand(2, 3, 4, 4), masks=masks, unlabeled=unlabeled, strong=(mix.apply(unlabeled),), mixes=(mix,))
    heads = {None: torch.randn(3, 1), "peer": torch.randn(3, 1)}
    passes = []

    def forward(images: torch.Tensor, network: str | None = None) -> torch.Tensor:
        passes.append(network)
        return torch.einsum("bchw,ck->bkhw", images, heads[network])

    loss, logs = strategy.loss(batch, forward, 0)
    assert passes == [None, "peer"]  # labeled, unmixed and mixed images in one pass per network
    criterion = strategy.context.criterion
    hard = lambda images, network: harden(probabilities(forward(images, network)), strict=True)  # noqa: E731
    mixed = batch.strong[0]
    cps = criterion(forward(mixed), mix.apply(hard(unlabeled, "peer"))) + criterion(forward(mixed, "peer"), mix.apply(hard(unlabeled, None)))
    if cross_on == "all":  # the labeled images too, unmixed; the unmixed unlabeled ones are left to the mixed
        cps = criterion(forward(batch.images), hard(batch.images, "peer")) + criterion(forward(batch.images, "peer"), hard(batch.images, None)) + cps
    sup = criterion(forward(batch.images), masks) + criterion(forward(batch.images, "peer"), masks)
    assert float(logs["loss_cps"]) == pytest.approx(float(cps), abs=1e-5)
    assert float(loss) == pytest.approx(float(sup + 1.5 * cps), abs=1e-5)


def test_a_cutmix_only_view_keeps_the_weak_views_pixels() -> None:
    config = config_from_dict({"data": {"train": "x", "image_size": 16}, "train": {"augment": {"cutmix": {"probability": 1.0}}}})
    images = np.random.default_rng(0).integers(0, 255, size=(4, 3, 16, 16), dtype=np.uint8)
    pool = SimpleNamespace(images=SimpleNamespace(read=lambda index: images[index]))
    normalizer = InputNormalizer("imagenet", 3, torch.device("cpu"))
    assembler = BatchAssembler(config, pool, normalizer, dist=DistInfo(), device=torch.device("cpu"), channels=1)
    out = {}
    for strong_augment in (True, False):
        augmenter = BatchAugmenter(config.train.augment, 3)
        out[strong_augment] = assembler.unlabeled(np.arange(4), augmenter, Views(strong=1, cutmix=True, strong_augment=strong_augment))
    plain, jittered = out[False], out[True]
    assert torch.equal(plain["unlabeled"], jittered["unlabeled"])  # the same draws either way
    assert torch.equal(plain["strong"][0], plain["mixes"][0].apply(plain["unlabeled"]))  # mixed, nothing else
    assert not torch.equal(jittered["strong"][0], jittered["mixes"][0].apply(jittered["unlabeled"]))


@pytest.mark.parametrize("name", ["fixmatch", "unimatch"])
def test_official_passes_keep_the_strong_views_out_of_the_weak_views_labels(name: str) -> None:
    """In training mode batch norm normalises a pass by its own statistics: with ``passes: official``
    the weak view's confident decisions do not change when the strong views of the batch do."""
    from pseudoseg.methods.unimatch import UniMatchConfig, UniMatchStrategy

    torch.manual_seed(0)
    network = build_model(ModelConfig(name="unet", channels=(4, 8), num_res_units=1), 3, 1).train()
    unlabeled, images = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    masks = one_hot(torch.randint(0, 2, (2, 16, 16)), 1)
    mixes = tuple(SimpleNamespace(apply=lambda x: x) for _ in range(2))

    def confident(passes: str, strong_scale: float) -> float:
        if name == "fixmatch":
            strategy = FixMatchStrategy(FixMatchConfig(threshold=0.6, passes=passes))
        else:
            strategy = UniMatchStrategy(UniMatchConfig(threshold=0.6, passes=passes))
        strategy.context = SimpleNamespace(**vars(_context()), student=network, spec=SimpleNamespace(unlabeled_batch_size=2), dist=DistInfo())
        strategy.generator = torch.Generator().manual_seed(1)
        strong = tuple(torch.rand(2, 3, 16, 16) * strong_scale for _ in range(strategy.views.strong))
        batch = Batch(images=images, masks=masks, unlabeled=unlabeled, strong=strong, mixes=mixes[: len(strong)])
        return float(strategy.loss(batch, lambda images, network_name=None: network(images), 0)[1]["confident"])

    assert confident("official", 1.0) == confident("official", 50.0)
    assert confident("joint", 1.0) != confident("joint", 50.0)  # one pass: the strong views move the weak view's statistics


# --------------------------------------------------------------------------- tiny runs


def _quiet(raw: dict) -> Any:
    return train(config_from_dict(raw), show_progress=False, log=lambda _: None)


def _records(stage: Path, kind: str) -> list[dict]:
    return [r for r in map(json.loads, (stage / "metrics.jsonl").read_text().splitlines()) if r["kind"] == kind]


TRAIN_KEYS = {"fixmatch": {"loss_sup", "loss_unsup", "confident"}, "unimatch": {"loss_sup", "loss_s1", "loss_s2", "loss_fp", "confident"}, "cps": {"loss_sup", "loss_sup_peer", "loss_cps"}}


VARIANTS = {
    "cps-cutmix": ("cps", {"cutmix": True}),
    "fixmatch-official": ("fixmatch", {"passes": "official"}),
    "unimatch-official": ("unimatch", {"passes": "official"}),
    "fixmatch-second-batch": ("fixmatch", {"cutmix_partner": "second_batch"}),
}


@pytest.mark.parametrize("name", ["fixmatch", "unimatch", "cps", *VARIANTS])
def test_baseline_on_one_class_from_a_labeled_start(name: str, tiny_polyps: Path, tmp_path: Path) -> None:
    name, settings = VARIANTS.get(name, (name, {}))
    method = {"name": name, "teacher_steps": 3, "steps": 4, **settings}
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, method=method, train={"val_every": 2})
    result = _quiet(raw)
    run = Path(raw["run_dir"])
    networks = {"raw", "peer"} if name == "cps" else {"raw"}
    assert result.released == "raw" and set(result.networks) == networks
    # the labeled-only stage, then this stage; where no checkpoint beat the stage's start, the
    # released weights are that start and received the labeled-only stage's steps alone
    assert result.budget["steps"] == 3 + 4
    assert result.budget["released_steps"] == (3 if result.budget["kept_start"] else 3 + 4)
    # the stage started from the labeled-only stage's momentum copy
    start = load_tensors(run / "teacher" / "best_ema.safetensors")[0]
    network = build_model(ModelConfig(**raw["model"]), 3, 1)
    network.load_state_dict(start)
    assert json.loads((run / "student" / "done.json").read_text())["init_digest"] == weights_digest(network)
    first = load_tensors(run / "student" / "last.safetensors")[0]
    train_records = _records(run / "student", "train")
    assert [r["step"] for r in train_records] == [2, 4] and TRAIN_KEYS[name] <= set(train_records[-1])
    assert all(np.isfinite(r["loss"]) for r in train_records)
    val = _records(run / "student", "val")[-1]
    assert {f"{network}/dice" for network in networks} <= set(val) and 0.0 <= val["pseudo/dice"] <= 1.0
    if name == "cps":  # two networks, both trained and checkpointed
        peer = {key[len("network.peer.") :]: value for key, value in first.items() if key.startswith("network.peer.")}
        student = {key[len("student.") :]: value for key, value in first.items() if key.startswith("student.")}
        assert peer.keys() == student.keys() == start.keys()
        assert any(not torch.equal(peer[key], student[key]) for key in peer)
        assert (run / "student" / "best_peer.safetensors").is_file()


@pytest.mark.parametrize("name", ["fixmatch", "unimatch", "cps"])
def test_baseline_on_three_class_volumes(name: str, three_class_volumes: Path, tmp_path: Path) -> None:  # noqa: F811
    raw = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "data": {"kind": "volumes", "train": str(three_class_volumes), "image_size": 16, "normalize": "unit", "labeled_fraction": 0.3, "val_fraction": 0.25},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 3, "val_every": 3, "log_every": 3, "batch_size": 2, "unlabeled_batch_size": 2, "amp": "off", "loss": "dice_bce"},
        "eval": {"batch_size": 8},
        "method": {"name": name, "student_init": "fresh", "threshold": 0.4} if name != "cps" else {"name": name, "student_init": "fresh"},
    }
    _quiet(raw)
    run = Path(raw["run_dir"])
    assert not (run / "teacher").exists()
    val = _records(run / "student", "val")[-1]
    assert {"raw/dice/organ", "raw/dice/lesion"} <= set(val) and 0.0 <= val["pseudo/dice"] <= 1.0
    assert load_weights_file(run / "student" / "best_raw.safetensors")[1]["architecture"]["out_channels"] == 3
    assert np.isfinite(_records(run / "student", "train")[-1]["loss"])


def test_the_baselines_are_registered_with_their_grid_rows() -> None:
    for name in ("fixmatch", "unimatch", "cps"):
        info = get_method(name)
        assert info.module == f"pseudoseg.methods.{name}" and info.uses_unlabeled and set(info.rows) == {"momentum", "rounds"}
    base = config_from_dict({"data": {"train": "x"}, "train": {"steps": 600}, "method": {"name": "momentum"}})
    rows = {row.name: row for row in grid_families()["momentum"].rows_for(base)}
    assert "weak-to-strong" not in rows and {"fixmatch", "unimatch", "cps"} <= set(rows)
    assert rows["fixmatch"].method({"name": "momentum", "beta": 0.3}, Path("s")) == {"name": "fixmatch"}
    rounds = config_from_dict({"data": {"train": "x", "kind": "volumes"}, "method": {"name": "atso", "rounds": 4, "round_steps": 150}})
    rows = {row.name: row for row in grid_families()["rounds"].rows_for(rounds)}
    assert rows["cps"].method({"name": "atso"}, Path("s")) == {"name": "cps", "steps": 600}  # TSO's R x round_steps after M0


# --------------------------------------------------------------------------- two networks: resume, processes

# As tests/test_resume.py: the real command line in a child process that SIGKILLs itself at a given step.
KILL_AT_STEP = """
import importlib, os, signal, sys

strategy = getattr(importlib.import_module(sys.argv[3]), sys.argv[4])
real_after_step = strategy.after_step

def after_step(self, step, epoch_ended):
    if step == int(sys.argv[2]):
        os.kill(os.getpid(), signal.SIGKILL)
    real_after_step(self, step, epoch_ended)

strategy.after_step = after_step
from pseudoseg.cli import main
main(["train", "--config", sys.argv[1]])
"""


@pytest.mark.parametrize("name, strategy, settings", [("cps", "CPSStrategy", {}), ("unimatch", "UniMatchStrategy", {"cutmix_partner": "second_batch"})])
def test_killed_run_resumes_to_identical_weights(name: str, strategy: str, settings: dict, tmp_path: Path, tiny_polyps: Path) -> None:
    # cps: two trainable networks and their optimiser moments; unimatch: CutMix views from a second
    # batch (its own stream) and feature dropout replayed
    method = {"name": name, "student_init": "fresh", **settings}
    raw = tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 8, "val_every": 3, "log_every": 2}, method=method)
    _quiet({**raw, "run_dir": str(tmp_path / "uninterrupted")})
    resumed = {**raw, "run_dir": str(tmp_path / "resumed")}
    config_file = write_config(tmp_path / "resumed.yaml", resumed)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(config_file), "5", f"pseudoseg.methods.{name}", strategy], env=env, capture_output=True, text=True, timeout=300
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    stage = tmp_path / "resumed" / "student"
    assert load_tensors(stage / "last.safetensors")[1]["step"] == 3 and not (stage / "done.json").exists()
    _quiet(resumed)
    expected, meta = load_tensors(tmp_path / "uninterrupted" / "student" / "last.safetensors")
    got, _ = load_tensors(stage / "last.safetensors")
    assert meta["step"] == 8 and set(expected) == set(got)
    if name == "cps":
        assert any(key.startswith("network.peer.") for key in expected)
        # one optimiser over both networks: Adam moments for every parameter of each
        parameters = len(list(build_model(ModelConfig(**raw["model"]), 3, 1).parameters()))
        assert len(meta["optimizer"]["param_groups"][0]["params"]) == 2 * parameters
        assert sum(key.startswith("optim.") and key.endswith(".exp_avg") for key in expected) == 2 * parameters
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert _records(stage, "val") == _records(tmp_path / "uninterrupted" / "student", "val")


def test_two_networks_under_two_processes_match_one(tmp_path: Path, tiny_polyps: Path) -> None:
    # as tests/test_distributed.py: instance norm, per-image losses and SGD
    raw = tiny_config(
        tmp_path,
        tiny_polyps,
        data={"test": None},
        model={"norm": "instance"},
        train={"steps": 6, "val_every": 3, "batch_size": 4, "unlabeled_batch_size": 4, "log_every": 1, "optim": {"name": "sgd", "lr": 0.05}},
        method={"name": "cps", "student_init": "fresh"},
    )
    _quiet({**raw, "run_dir": str(tmp_path / "single")})
    config_file = write_config(tmp_path / "double.yaml", {**raw, "run_dir": str(tmp_path / "double")})
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "pseudoseg", "train", "--config", str(config_file)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    one, _ = load_tensors(tmp_path / "single" / "student" / "last.safetensors")
    two, meta = load_tensors(tmp_path / "double" / "student" / "last.safetensors")
    assert meta["step"] == 6
    compared = [name for name, value in one.items() if name.startswith(("student.", "network.peer.")) and value.is_floating_point()]
    assert any(name.startswith("network.peer.") for name in compared)
    for name in compared:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
    single, double = _records(tmp_path / "single" / "student", "train"), _records(tmp_path / "double" / "student", "train")
    assert len(single) == 6
    for a, b in zip(single, double, strict=True):
        assert abs(a["loss_cps"] - b["loss_cps"]) < 1e-5 and abs(a["loss"] - b["loss"]) < 1e-5
    for a, b in zip(_records(tmp_path / "single" / "student", "val"), _records(tmp_path / "double" / "student", "val"), strict=True):
        assert abs(a["peer/dice"] - b["peer/dice"]) < 1e-3 and abs(a["raw/dice"] - b["raw/dice"]) < 1e-3


@pytest.mark.parametrize("peer_start", ["labeled", "fresh"])
def test_cps_peer_starts_from_m0s_raw_network_or_apart(peer_start: str, tiny_polyps: Path, tmp_path: Path) -> None:
    """From a labeled start the student is M0's momentum copy; the peer M0's raw network, or with
    ``peer_start: fresh`` a draw of its own (a learning rate of ~0 keeps both where they started)."""
    teacher = tmp_path / "teacher"
    _quiet(tiny_config(tmp_path, tiny_polyps, run_dir=str(teacher), data={"test": None}, train={"steps": 2, "val_every": 2}))
    raw = tiny_config(
        tmp_path,
        tiny_polyps,
        run_dir=str(tmp_path / "cps"),
        data={"test": None},
        train={"steps": 1, "val_every": 1, "optim": {"lr": 1e-12}},
        method={"name": "cps", "teacher_run": str(teacher), "peer_start": peer_start},
    )
    _quiet(raw)
    state, _ = load_tensors(tmp_path / "cps" / "student" / "last.safetensors")
    m0_raw, _ = load_weights_file(teacher / "supervised" / "best_raw.safetensors")
    name = next(key for key in m0_raw if key.endswith("conv.weight"))
    peer, student = state[f"network.peer.{name}"], state[f"student.{name}"]
    assert not torch.allclose(peer, student)  # the two networks start apart either way
    assert torch.allclose(peer, m0_raw[name], atol=1e-6) is (peer_start == "labeled")

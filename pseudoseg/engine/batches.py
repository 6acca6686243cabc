"""Batch assembly: pool indices in, one process's augmented, normalised device tensors out.

Every process draws the augmentation parameters of the *whole* global batch
from the stage's augmenter (one seeded generator) and keeps its own share, so
the images a process sees, and the random state a checkpoint stores, do not
depend on the number of processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pseudoseg.data.augment import BatchAugmenter, apply_geometry
from pseudoseg.data.pool import SamplePool
from pseudoseg.data.sources import data_source
from pseudoseg.data.preprocessing import InputNormalizer
from pseudoseg.engine.distributed import DistInfo
from pseudoseg.engine.labels import harden, one_hot
from pseudoseg.engine.strategy import Views

if TYPE_CHECKING:
    from pseudoseg.config import RunConfig


class BatchAssembler:
    """This process's labeled, unlabeled and evaluation batches of a run's pool.

    Args:
        config: the run's configuration (augmentation switches, input channels, evaluation batch size).
        pool: the decoded training pool.
        normalizer: the run's input normalisation.
        dist: this process's place among the processes.
        device: where the batches go.
        channels: the network's output channels (targets are one-hot over them).
    """

    def __init__(self, config: RunConfig, pool: SamplePool, normalizer: InputNormalizer, *, dist: DistInfo, device: torch.device, channels: int) -> None:
        self.config = config
        self.pool = pool
        self.normalizer = normalizer
        self.dist = dist
        self.device = device
        self.channels = channels
        self.colour = data_source(config.data.kind).colour  # volumes' channels are slices or modalities: no colour jitter
        self.in_channels = config.data.in_channels

    def labeled(self, indices: np.ndarray, augmenter: BatchAugmenter) -> tuple[torch.Tensor, torch.Tensor]:
        """Augmented, normalised images ``[b, C, S, S]`` and their targets ``[b, K, S, S]`` (one-hot, hard)."""
        geometry = augmenter.sample_geometry(len(indices), affine=self.config.train.augment.labeled_affine)
        mine = indices[self.dist.shard()]
        images = self.normalizer.to_unit(self.pool.images.read(mine))
        masks = one_hot(torch.from_numpy(self.pool.masks.read(mine)).to(self.device), self.channels)
        images, (masks,) = apply_geometry(images, [masks], geometry.select(self.dist.shard()))
        if geometry.theta is not None:  # the affine warp interpolates: hard again
            masks = harden(masks, strict=True)
        return self.normalizer(images), masks

    def unlabeled(self, indices: np.ndarray, augmenter: BatchAugmenter, views: Views, partner: np.ndarray | None = None) -> dict[str, Any]:
        """The fields of :class:`~pseudoseg.engine.strategy.Batch` for unlabeled images: the weak view
        and the ``views`` a strategy asks for, all of the same geometry; ``partner``: the second
        batch whose strong views fill the CutMix boxes (``Views.partner_batch``)."""
        part = self.dist.shard()
        n = len(indices)
        # every draw is for the global batch, in a fixed order (Views): the generator's
        # state after a step does not depend on the number of processes
        geometry = augmenter.sample_geometry(n, affine=self.config.train.augment.unlabeled_affine)
        photometry = augmenter.sample_photometry(n, self.in_channels) if views.photometric else None
        strong = [(augmenter.sample_strong(n), augmenter.sample_cutmix(n) if views.cutmix else None) for _ in range(views.strong)]
        mine = indices[part]
        images = self.normalizer.to_unit(self.pool.images.read(mine))
        maps = []
        if views.stored_labels is not None:
            maps.append(views.stored_labels.targets(mine, self.device))
        images, maps = apply_geometry(images, maps, geometry.select(part))
        out: dict[str, Any] = {"unlabeled": self.normalizer(images), "unlabeled_index": mine}
        if photometry is not None:
            out["unlabeled_strong"] = self.normalizer(augmenter.photometric(images, photometry.select(part)))
        if maps:
            out["unlabeled_targets"] = maps[0]
        if strong:
            height, width = images.shape[-2:]
            views_out, mixes = [], []
            for params, cutmix in strong:
                view = self.normalizer(augmenter.strong(images, params.select(part), colour=self.colour)) if views.strong_augment else out["unlabeled"]
                mix = cutmix.select(part).boxes(height, width, self.device) if cutmix is not None else None
                views_out.append(mix.apply(view) if mix is not None and not views.partner_batch else view)  # a partner batch fills the boxes below
                mixes.append(mix)
            out["strong"], out["mixes"] = tuple(views_out), tuple(mixes)
        if views.partner_batch:
            self._fill_from_partner(out, partner, augmenter, views)
        return out

    def _fill_from_partner(self, out: dict[str, Any], indices: np.ndarray | None, augmenter: BatchAugmenter, views: Views) -> None:
        """Refill the strong views' CutMix boxes from the same rows of a second batch, its own
        geometry and strong augmentation drawn after the first batch's (for the global batch)."""
        if indices is None:
            raise ValueError("Views.partner_batch: the loop draws no second unlabeled batch")
        part = self.dist.shard()
        geometry = augmenter.sample_geometry(len(indices), affine=self.config.train.augment.unlabeled_affine)
        strong = [augmenter.sample_strong(len(indices)) for _ in range(views.strong)]
        images, _ = apply_geometry(self.normalizer.to_unit(self.pool.images.read(indices[part])), [], geometry.select(part))
        weak = self.normalizer(images)
        mixes = tuple(mix.from_second_batch() for mix in out["mixes"])
        views_out = []
        for view, mix, params in zip(out["strong"], mixes, strong):
            partner_view = self.normalizer(augmenter.strong(images, params.select(part), colour=self.colour)) if views.strong_augment else weak
            views_out.append(torch.where(mix.box, partner_view, view))
        out["strong"], out["mixes"], out["partner_unlabeled"] = tuple(views_out), mixes, weak

    def evaluation(self, indices: np.ndarray) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """This process's share of ``indices``, as normalised batches (no augmentation) and
        their masks (class indices, ``float [B, 1, H, W]``)."""
        mine = indices[self.dist.shard()]
        size = self.config.eval.batch_size
        for start in range(0, len(mine), size):
            chunk = mine[start : start + size]
            images = self.normalizer(self.normalizer.to_unit(self.pool.images.read(chunk)))
            masks = torch.from_numpy(self.pool.masks.read(chunk)).to(self.device).unsqueeze(1).float()
            yield images, masks


__all__ = ["BatchAssembler"]

"""FixMatch for segmentation (Sohn et al., 2020): weak-to-strong pseudo labels with a confidence threshold.

One stage. Each step the student predicts the weak view of the unlabeled
images (the geometric augmentation alone); where its confidence reaches
``threshold`` (0.95, the paper's), its hard decision is the target of its
prediction on a *strong* view of the same images and geometry::

    loss = L_sup(student(x_l), y_l) + beta * L(student(mix(strong(x_u))), mix(hard(student(x_u))), mix(conf >= threshold))

The strong view is colour jitter, random greyscale and Gaussian blur, each
with a probability (``train.augment.strong``), then CutMix (``cutmix``,
``train.augment.cutmix``): a box of each image replaced by the same box of
another image of the batch; its target and confidence mask are mixed the
same way, so the pasted pixels learn their own image's pseudo label. This is
the segmentation form of FixMatch used as the baseline in UniMatch (Yang et
al., CVPR 2023) and its code's settings; ``beta`` is the paper's lambda_u = 1,
and the loss against the pseudo labels is the run's ``train.loss`` on the
confident pixels only (per image, see :mod:`pseudoseg.engine.losses`). The
labeled, weak and strong images go through the network in one batch, in
training mode (``passes: joint``), or, as the official UniMatch code runs
FixMatch, the labeled and weak images in one pass and the strong view in a
second (``passes: official``); the weak view's prediction is not
differentiated.

By default the stage starts from the momentum copy of a labeled-only stage
(``student_init: labeled``, or the seed's supervised run in the grids:
``teacher_run``), as every semi-supervised row of the grids does, so the grids
compare methods rather than starts. The student is the released model (``raw``).

FixMatch replaces the momentum grid's former ``weak-to-strong`` row (the
momentum method with a momentum-0 teacher, hard labels at 0.95 and only
photometric changes): the row ``fixmatch`` adds the strong augmentation and
CutMix; it is also a row of the rounds grid.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pseudoseg.engine.labels import weak_to_strong_targets
from pseudoseg.engine.strategy import Batch, Forward, Strategy, partner_predictions, student_predictions
from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import WeakToStrongSection, baseline_rows, fit_one_stage, labeled_start


class FixMatchConfig(WeakToStrongSection):
    """FixMatch for segmentation: confident weak-view decisions as targets of a strong, CutMix-mixed view."""

    name: Literal["fixmatch"] = "fixmatch"
    beta: float = Field(1.0, ge=0)
    """Weight of the loss on the strong view (the paper's lambda_u)."""
    cutmix: bool = True
    """CutMix the strong view (``train.augment.cutmix``); off: the strong augmentation alone."""


class FixMatchStrategy(Strategy):
    """The stage: supervised loss plus the strong view learning the weak view's confident decisions."""

    uses_unlabeled = True
    renders_pseudo_labels = True

    def __init__(self, method: FixMatchConfig) -> None:
        self.method = method
        self.views = method.views(1, cutmix=method.cutmix)

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labeled, unlabeled = batch.images.shape[0], batch.unlabeled.shape[0]
        if self.method.passes == "official":  # the strong view apart: it does not enter the weak view's batch statistics
            logits = torch.cat([forward(torch.cat([batch.images, batch.unlabeled])), forward(batch.strong[0])])
        else:
            logits = forward(torch.cat([batch.images, batch.unlabeled, batch.strong[0]]))
        criterion = self.context.criterion
        loss_sup = criterion(logits[:labeled], batch.masks)
        target, valid = weak_to_strong_targets(logits[labeled : labeled + unlabeled], self.method.threshold, batch.mixes[0], partner_predictions(self.context, batch))
        loss_unsup = criterion(logits[labeled + unlabeled :], target, valid)
        loss = loss_sup + self.method.beta * loss_unsup
        return loss, {"loss_sup": loss_sup.detach(), "loss_unsup": loss_unsup.detach(), "confident": valid.mean()}

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        return student_predictions(self.context, images)


@register(
    "fixmatch",
    section=FixMatchConfig,
    summary="FixMatch for segmentation (Sohn et al., 2020): confident weak-view decisions supervise a strong, CutMix-mixed view.",
    rows=baseline_rows("fixmatch", {"name": "fixmatch"}),
)
def run_fixmatch(session: RunSession) -> RecipeOutcome:
    method: FixMatchConfig = session.config.method
    session.require_unlabeled()
    start = labeled_start(session, method)
    init = start.weights("ema") if start is not None else None
    student = fit_one_stage(session, method, FixMatchStrategy(method), init)
    return RecipeOutcome("raw", {"raw": student.weights("raw")})


__all__ = ["FixMatchConfig", "FixMatchStrategy", "run_fixmatch", "student_predictions", "weak_to_strong_targets"]

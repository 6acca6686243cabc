"""UniMatch (Yang et al., CVPR 2023): weak-to-strong consistency with two strong views and a feature-perturbed stream.

One stage. The student's prediction on the weak view of the unlabeled images
gives hard pseudo labels, counted where its confidence reaches ``threshold``
(0.95, the paper's medical setting). Three predictions learn them:

- two strong views of the same images and geometry, each with its own colour
  jitter, greyscale, blur (``train.augment.strong``) and its own CutMix
  (``train.augment.cutmix``), against the pseudo labels mixed the same way;
- the weak view again, with channel dropout (``feature_dropout``, p = 0.5)
  on the encoder features its decoder reads (:mod:`pseudoseg.models.features`:
  the skip connections and the deepest features of every architecture the
  factory builds).

The loss is the paper's (its Eq. 5 and code)::

    loss = (L_sup + strong_weight * (L_s1 + L_s2) + perturbation_weight * L_fp) / 2

with ``strong_weight`` 0.25 and ``perturbation_weight`` 0.5 (lambda = mu = 0.5
in the paper); the halving only scales the step (none of it under Adam). The
losses against the pseudo labels are the run's ``train.loss`` on the
confident pixels (the paper's medical code: Dice). All five batches
(labeled, weak, two strong, the weak one for the perturbed stream) go through
the network in one pass in training mode (``passes: joint``), or, as the
official code, the two strong views in a second pass (``passes: official``);
the dropout applies to the last rows only, and its masks are drawn for the global batch from the strategy's
own generator (checkpointed), so a resumed run drops the same channels.
Where the paper draws the images pasted by CutMix from a second unlabeled
batch, here they are images of the same batch (the partner's pseudo labels
then come from the same weak prediction; see :meth:`pseudoseg.data.augment.CutMixDraw.boxes`).

Like FixMatch (:mod:`pseudoseg.methods.fixmatch`), it starts from the
labeled-only model (``student_init``, ``teacher_run``), and the student is the
released model (``raw``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from pseudoseg.engine.labels import weak_to_strong_targets
from pseudoseg.engine.strategy import Batch, Forward, StageContext, Strategy, partner_predictions, student_predictions
from pseudoseg.engine.trainer import stage_seed
from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import WeakToStrongSection, baseline_rows, fit_one_stage, labeled_start
from pseudoseg.models.features import FeatureDropout, perturbed_encoder_features


class UniMatchConfig(WeakToStrongSection):
    """UniMatch: two strong CutMix views and a feature-perturbed stream learn the weak view's confident decisions."""

    name: Literal["unimatch"] = "unimatch"
    strong_weight: float = Field(0.25, ge=0)
    """Weight of each strong view's loss (the paper: mu / 2 = 0.25)."""
    perturbation_weight: float = Field(0.5, ge=0)
    """Weight of the feature-perturbed stream's loss (the paper: lambda = 0.5)."""
    feature_dropout: float = Field(0.5, ge=0, lt=1)
    """Channel dropout probability on the encoder features of the perturbed stream."""


class UniMatchStrategy(Strategy):
    """The stage: supervised loss plus two strong views and the feature-perturbed weak view."""

    uses_unlabeled = True
    renders_pseudo_labels = True
    def __init__(self, method: UniMatchConfig) -> None:
        self.method = method
        self.views = method.views(2)

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        seed = stage_seed(context.config.seed, f"{context.spec.name}/feature-dropout")
        self.generator = torch.Generator().manual_seed(seed)

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        method = self.method
        labeled, unlabeled = batch.images.shape[0], batch.unlabeled.shape[0]
        official = method.passes == "official"
        # joint: labeled, weak, both strong views and the perturbed weak view in one pass; official: the
        # strong views in a second pass, outside the weak view's batch statistics (the official code)
        first = [batch.images, batch.unlabeled] if official else [batch.images, batch.unlabeled, *batch.strong]
        perturbed = slice(labeled + len(first[1:]) * unlabeled, None)  # the last rows: the weak view again
        dropout = FeatureDropout(
            method.feature_dropout, self.generator, rows=perturbed, total=self.context.spec.unlabeled_batch_size, share=self.context.dist.shard()
        )
        with perturbed_encoder_features(self.context.student, dropout):
            logits = forward(torch.cat([*first, batch.unlabeled]))
        strong_logits = forward(torch.cat(batch.strong)) if official else logits[labeled + unlabeled : labeled + 3 * unlabeled]
        criterion = self.context.criterion
        loss_sup = criterion(logits[:labeled], batch.masks)
        weak = logits[labeled : labeled + unlabeled]
        strong = [strong_logits[k * unlabeled : (k + 1) * unlabeled] for k in range(2)]
        losses = []
        partner = partner_predictions(self.context, batch)
        for view, mix in zip(strong, batch.mixes):
            target, valid = weak_to_strong_targets(weak, method.threshold, mix, partner)
            losses.append(criterion(view, target, valid))
        target, valid = weak_to_strong_targets(weak, method.threshold, None)
        loss_fp = criterion(logits[perturbed], target, valid)
        loss = (loss_sup + method.strong_weight * (losses[0] + losses[1]) + method.perturbation_weight * loss_fp) / 2.0
        logs = {"loss_sup": loss_sup.detach(), "loss_s1": losses[0].detach(), "loss_s2": losses[1].detach(), "loss_fp": loss_fp.detach(), "confident": valid.mean()}
        return loss, logs

    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        return student_predictions(self.context, images)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"feature_dropout": self.generator.get_state()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["feature_dropout"])


@register(
    "unimatch",
    section=UniMatchConfig,
    summary="UniMatch (Yang et al., CVPR 2023): two strong CutMix views and a feature-perturbed stream learn confident weak-view labels.",
    rows=baseline_rows("unimatch", {"name": "unimatch"}),
)
def run_unimatch(session: RunSession) -> RecipeOutcome:
    method: UniMatchConfig = session.config.method
    session.require_unlabeled()
    start = labeled_start(session, method)
    init = start.weights("ema") if start is not None else None
    student = fit_one_stage(session, method, UniMatchStrategy(method), init)
    return RecipeOutcome("raw", {"raw": student.weights("raw")})


__all__ = ["UniMatchConfig", "UniMatchStrategy", "run_unimatch"]

"""Cross pseudo supervision (Chen et al., CVPR 2021): two networks label each other.

One stage, two trainable networks of the run's architecture that start from
different weights: the student (``raw``) and its ``peer``. Each is supervised
on the labeled images and learns the other's hard decisions (argmax; ``p >
0.5`` for one class) on the weak view of the unlabeled images::

    loss = L_sup(a(x_l), y_l) + L_sup(b(x_l), y_l) + w * ramp(step) * (L(a(x_u), hard(b(x_u))) + L(b(x_u), hard(a(x_u))))

where ``w`` is ``cps_weight`` (1.5, the paper's), ``ramp`` an optional
sigmoid ramp-up over ``rampup_steps`` (the paper's code: none), the pseudo
labels are not differentiated, and every loss is the run's ``train.loss``
(the paper: cross-entropy). Both networks are in the one optimiser, wrapped
for several processes, clipped together, validated (``raw/dice``,
``peer/dice``) and checkpointed; the released model is the first network
(``raw``), as the paper evaluates one branch; the peer is evaluated too
(``report/networks.json``).

Where the two start (``student_init``): ``labeled`` (default, the grids) —
the student from the labeled-only stage's momentum copy and the peer, by
``peer_start``, from its raw network (``labeled``: two trained networks that
differ little) or from a fresh initialisation of its own (``fresh``: the
paper's premise, two networks that start apart); ``fresh`` — two different
initialisations (the student the run's, the peer another draw), the paper's
recipe, which relies on pretrained encoders to train in reasonable time.

``cross_on``: the images the cross supervision covers, the unlabeled ones
(default) or the labeled and the unlabeled ones (``all``, the paper's).

``cutmix`` (CPS + CutMix, the paper's headline variant): the unlabeled images
are CutMix-mixed within the batch (``train.augment.cutmix``, no other
augmentation), and each network learns, on the mixed images, the other's hard
decisions on the unmixed ones mixed alike; the cross supervision of the
unmixed unlabeled images is then dropped, as in the paper's code. All images
go through each network in one pass (labeled, unmixed, mixed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from pseudoseg.engine.checkpoint import load_weights_file
from pseudoseg.engine.labels import harden, probabilities
from pseudoseg.engine.losses import sigmoid_rampup
from pseudoseg.engine.strategy import Batch, Forward, StageContext, Strategy, Views
from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import LabeledStartSection, baseline_rows, fit_one_stage, labeled_start


class CPSConfig(LabeledStartSection):
    """Cross pseudo supervision: two networks, each learning the other's hard decisions on U."""

    name: Literal["cps"] = "cps"
    cps_weight: float = Field(1.5, ge=0)
    """Weight of the cross pseudo supervision (the paper's lambda)."""
    rampup_steps: int = Field(0, ge=0)
    """Sigmoid ramp-up of ``cps_weight`` over this many steps (0: constant, the paper's code)."""
    peer_start: Literal["labeled", "fresh"] = "labeled"
    """``student_init: labeled``: where the peer starts. ``labeled``: the labeled-only stage's raw
    network (the student starts from its momentum copy); ``fresh``: an initialisation of its own
    (drawn from the stage's seed), so the two networks start apart, the paper's premise."""
    cross_on: Literal["unlabeled", "all"] = "unlabeled"
    """Images the cross supervision covers: the unlabeled ones, or the labeled and unlabeled ones
    (``all``, the paper's)."""
    cutmix: bool = False
    """CPS + CutMix (the paper's headline variant): the cross supervision of the unlabeled images
    on CutMix-mixed copies (``train.augment.cutmix``), the other network's decisions mixed alike."""


class CPSStrategy(Strategy):
    """Two trainable networks: the student and its peer, each supervised by the other on U."""

    uses_unlabeled = True
    renders_pseudo_labels = True

    def __init__(self, method: CPSConfig, peer_weights: Path | None = None) -> None:
        self.method = method
        self.views = Views(strong=1, cutmix=True, strong_augment=False) if method.cutmix else Views()
        self.peer_weights = peer_weights
        """Where the peer starts (a weights file), or None: a fresh initialisation."""

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        # drawn from the stage's seed, so the peer starts from other weights than the student
        self.peer = context.build_network()
        if self.peer_weights is not None:
            tensors, _ = load_weights_file(self.peer_weights)
            self.peer.load_state_dict(tensors)

    def trainable(self) -> dict[str, nn.Module]:
        return {"peer": self.peer}

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labeled, unmixed = batch.images.shape[0], batch.images.shape[0] + batch.unlabeled.shape[0]
        inputs = torch.cat([batch.images, batch.unlabeled, *batch.strong])  # one pass per network
        first, second = forward(inputs), forward(inputs, network="peer")
        criterion = self.context.criterion
        loss_sup = criterion(first[:labeled], batch.masks)
        loss_sup_peer = criterion(second[:labeled], batch.masks)
        with torch.no_grad():
            from_first = harden(probabilities(first[:unmixed]), strict=True)
            from_second = harden(probabilities(second[:unmixed]), strict=True)
        # unmixed images crossed: the labeled ones with cross_on: all, the unlabeled ones unless CutMix replaces them
        plain = slice(0 if self.method.cross_on == "all" else labeled, labeled if self.method.cutmix else unmixed)
        terms = [criterion(first[plain], from_second[plain]), criterion(second[plain], from_first[plain])] if plain.start < plain.stop else []
        if self.method.cutmix:
            mix = batch.mixes[0]
            terms += [criterion(first[unmixed:], mix.apply(from_second[labeled:])), criterion(second[unmixed:], mix.apply(from_first[labeled:]))]
        loss_cps = sum(terms)
        weight = self.method.cps_weight * sigmoid_rampup(step, self.method.rampup_steps)
        loss = loss_sup + loss_sup_peer + weight * loss_cps
        return loss, {"loss_sup": loss_sup.detach(), "loss_sup_peer": loss_sup_peer.detach(), "loss_cps": loss_cps.detach()}

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The peer's probabilities (eval mode): the labels the released network learns from."""
        return probabilities(self.context.frozen_forward(self.peer, images))


@register(
    "cps",
    section=CPSConfig,
    summary="Cross pseudo supervision (Chen et al., CVPR 2021): two networks from different starts learn each other's hard labels on U.",
    rows=baseline_rows("cps", {"name": "cps"}),
)
def run_cps(session: RunSession) -> RecipeOutcome:
    method: CPSConfig = session.config.method
    session.require_unlabeled()
    start = labeled_start(session, method)
    init, peer = (start.weights("ema"), start.weights("raw")) if start is not None else (None, None)
    if method.peer_start == "fresh":
        peer = None  # the peer's own draw from the stage's seed
    result = fit_one_stage(session, method, CPSStrategy(method, peer), init, peer_weights=str(peer))
    return RecipeOutcome("raw", {"raw": result.weights("raw"), "peer": result.weights("peer")})


__all__ = ["CPSConfig", "CPSStrategy", "run_cps"]

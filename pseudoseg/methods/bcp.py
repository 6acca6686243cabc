"""BCP, bidirectional copy-paste (Bai et al., CVPR 2023): labeled and unlabeled images pasted into each other.

Two stages, as the authors' code (``ACDC_BCP_train.py``, DeepMed-Lab-ECNU/BCP).

1. **Pre-training** (``<run_dir>/teacher``) on the labeled images only, with
   copy-paste among them (``pretrain: copy_paste``): the labeled batch is cut in
   halves ``a`` and ``b``; a square of ``patch_fraction`` (2/3) of the image side,
   at one random place per step, is taken from ``b`` and pasted into ``a``, and
   the ground truths are mixed alike. The network sees only the mixed images::

       loss = (L(f(x), y; outside) + L(f(x), y; inside)) / 2

   where ``L(.; region)`` is the loss on the region's pixels only: by default the
   authors' (``loss: authors``: Dice over the batch with every class, the background
   included, + cross-entropy), or the run's ``train.loss`` (``loss: run``: masked
   Dice per image + its cross-entropy if any). ``pretrain: plain`` is the supervised
   stage every other baseline starts from.
2. **Self-training** (``<run_dir>/student``): a mean teacher, the EMA copy of
   the student (``momentum`` 0.99 per step, both starting from the pre-trained
   network), labels the unlabeled batch (hard decisions, argmax; ``p > 0.5`` for
   one class; then only the largest connected component of each class kept,
   ``largest_component``). The labeled and unlabeled batches are cut in halves
   and, with one square per step::

       x_in  = U_a outside, L_a inside     target: teacher(U_a) outside, Y_a inside
       x_out = L_b outside, U_b inside     target: Y_b outside, teacher(U_b) inside

       loss = (u * L(f(x_in); outside) + L(f(x_in); inside) + L(f(x_out); outside) + u * L(f(x_out); inside)) / 2

   so every labeled pixel counts 1 and every pseudo-labeled pixel ``u =
   unlabeled_weight`` (0.5, the paper's). The two mixed batches go through the
   student in two passes, as in the authors' code; the teacher labels each
   unlabeled half in its own pass in training mode (``teacher_mode: train``:
   batch statistics, as the authors' ``ema_model.train()``).

The square's place is drawn from the stage's own generator (checkpointed with
the stage), once per step for the global batch, so a resumed run pastes the
same squares; with several processes each pairs the halves of its own share.
**The released network is the student** (``raw``), as the authors evaluate and
keep ``model``; the teacher (``ema``) is validated and reported too.

Where the stage starts (``student_init``, ``teacher_run`` and ``start_network``):
by default the pre-training runs here and both networks start from its best
raw network on the validation split (the authors' ``best_model``); the grids'
rows start, like every baseline, from the momentum copy (``start_network: ema``)
of the seed's supervised run (``teacher_run``: the plain stage, not the
copy-paste one). docs/methods_bcp.md lists every difference from the authors' code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from pydantic import Field
from scipy import ndimage
from torch import nn

from pseudoseg.engine.ema import ModelEMA
from pseudoseg.engine.labels import decide, harden, one_hot, probabilities
from pseudoseg.engine.losses import batch_dice_per_class, class_maps, pixel_cross_entropy
from pseudoseg.engine.strategy import Batch, Forward, StageContext, Strategy
from pseudoseg.engine.trainer import stage_seed
from pseudoseg.errors import UserError
from pseudoseg.methods.registry import register
from pseudoseg.methods.session import RecipeOutcome, RunSession
from pseudoseg.methods.stages import EmaSettings, LabeledStartSection, SupervisedStrategy, baseline_rows, fit_one_stage, labeled_start

if TYPE_CHECKING:
    from pseudoseg.engine.losses import SegmentationLoss


class BCPConfig(LabeledStartSection):
    """BCP: copy-paste pre-training on L, then a mean teacher whose labels of U are mixed with
    the ground truth of L in both directions.

    The keys of the labeled-only start (``steps``, ``student_init``, ``teacher_run``,
    ``teacher_steps``, ``teacher_batch_size``, ``teacher_stage_momentum``) are those of
    every one-stage baseline; the pre-training is that stage."""

    name: Literal["bcp"] = "bcp"
    student_init: Literal["labeled", "fresh"] = "labeled"
    """``labeled``: student and teacher start from the labeled-only stage's ``start_network``
    (the stage trained in ``<run_dir>/teacher`` as ``pretrain`` says, or ``teacher_run``), the
    paper; ``fresh``: from the run's initialisation, without pre-training."""
    pretrain: Literal["copy_paste", "plain"] = "copy_paste"
    """The labeled-only stage when trained here: ``copy_paste`` among labeled images (the
    paper), or ``plain`` supervised training (the other baselines' start). ``teacher_run``
    replaces it, whichever way that run was trained."""
    start_network: Literal["raw", "ema"] = "raw"
    """Which network of the labeled-only stage student and teacher start from: ``raw``, its
    best network on V (the authors' ``best_model``), or ``ema``, its momentum copy (the
    start of every other baseline; the grids' rows)."""
    momentum: float = Field(0.99, ge=0, lt=1)
    """The teacher: teacher <- m * teacher + (1 - m) * student after every step (the authors' alpha)."""
    unlabeled_weight: float = Field(0.5, ge=0)
    """Weight of the pseudo-labeled pixels of both mixed images (the authors' ``u_weight``;
    labeled pixels weigh 1)."""
    patch_fraction: float = Field(2 / 3, gt=0, lt=1)
    """Side of the pasted square, as a fraction of the image's (the authors': 2/3), in
    pre-training and self-training."""
    largest_component: bool = True
    """Keep only the largest connected component (8-connected) of each class in the
    teacher's labels (the authors' ACDC code); the labels go to the CPU for it."""
    loss: Literal["authors", "run"] = "authors"
    """The loss on each part of a mixed image (pre-training and self-training): ``authors``,
    the authors' Dice (over the whole batch, every class with the background, squared
    denominators) + cross-entropy on the part's pixels; ``run``: the run's ``train.loss``
    on the part's pixels (masked Dice per image, foreground classes only)."""
    teacher_mode: Literal["train", "eval"] = "train"
    """The teacher labels U in training mode (batch statistics of each unlabeled half, the
    authors' code) or in eval mode (running statistics)."""


# --------------------------------------------------------------------------- mixing


class PatchDraw:
    """Where the pasted square lies: one place per step, for the whole global batch, from a
    generator of the stage's own seed (checkpointed through the strategy's state)."""

    def __init__(self, fraction: float, seed: int) -> None:
        self.fraction = fraction
        self.generator = torch.Generator().manual_seed(seed)

    def box(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``bool [1, 1, H, W]``: True inside the square.

        Its top-left corner is uniform over ``0 .. H - h - 1`` (and likewise for the
        columns), ``h = int(H * fraction)``, as ``np.random.randint(0, H - h)`` in the
        authors' code (which never puts the square against the far edges)."""
        patch_h, patch_w = int(height * self.fraction), int(width * self.fraction)
        top = int(torch.randint(height - patch_h, (1,), generator=self.generator))
        left = int(torch.randint(width - patch_w, (1,), generator=self.generator))
        box = torch.zeros(1, 1, height, width, dtype=torch.bool)
        box[..., top : top + patch_h, left : left + patch_w] = True
        return box.to(device, non_blocking=True)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {"copy_paste": self.generator.get_state()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(tensors["copy_paste"])


@dataclass(frozen=True)
class Mixed:
    """A batch of copy-pasted images, their mixed targets, and how much each part's pixels weigh."""

    images: torch.Tensor
    """``[n, C, H, W]``: the outer images, the inner images inside the square."""
    targets: torch.Tensor
    """``[n, K, H, W]``: the outer images' targets, the inner images' inside the square."""
    box: torch.Tensor
    """``bool [1, 1, H, W]``: True inside the square."""
    outside_weight: float
    inside_weight: float


def copy_paste(outer: torch.Tensor, outer_targets: torch.Tensor, inner: torch.Tensor, inner_targets: torch.Tensor, box: torch.Tensor, weights: tuple[float, float]) -> Mixed:
    """``inner`` pasted into ``outer`` inside ``box``, and their targets alike; ``weights``: (outside, inside)."""
    return Mixed(torch.where(box, inner, outer), torch.where(box, inner_targets, outer_targets), box, *weights)


def bidirectional_copy_paste(
    labeled: torch.Tensor, masks: torch.Tensor, unlabeled: torch.Tensor, pseudo: torch.Tensor, box: torch.Tensor, unlabeled_weight: float
) -> tuple[Mixed, Mixed]:
    """BCP's two mixed batches: the first halves (``L_a`` into ``U_a``) and the second (``U_b`` into ``L_b``).

    ``labeled`` / ``masks``: the labeled images and their ground truth; ``unlabeled`` /
    ``pseudo``: the unlabeled images and the teacher's labels; as many of each, an even
    number. Ground-truth pixels weigh 1, pseudo-labeled pixels ``unlabeled_weight``."""
    half = labeled.shape[0] // 2
    into_unlabeled = copy_paste(unlabeled[:half], pseudo[:half], labeled[:half], masks[:half], box, (unlabeled_weight, 1.0))
    into_labeled = copy_paste(labeled[half:], masks[half:], unlabeled[half:], pseudo[half:], box, (1.0, unlabeled_weight))
    return into_unlabeled, into_labeled


RegionLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(logits ``[n, K, H, W]``, targets ``[n, K, H, W]``, region ``float [n, 1, H, W]``) -> the loss on the region's pixels."""


def authors_loss(logits: torch.Tensor, targets: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The authors' Dice + cross-entropy on the pixels where ``region`` is 1 (``losses.DiceLoss``
    and ``nn.CrossEntropyLoss`` in their ``mix_loss``).

    Dice per class over the whole batch, ``1 - (2 sum p t + e) / (sum p^2 + sum t^2 + e)``
    with e = 1e-10, averaged over every class, the background included (one class: the
    sigmoid's two classes, background and foreground); the cross-entropy averaged over the
    region's pixels of the batch (one class: binary). In float32."""
    logits = logits.float()
    probs, classes = class_maps(logits, targets)
    dice = batch_dice_per_class(probs, classes, region, smooth=1e-10)
    cross_entropy = (pixel_cross_entropy(logits, targets) * region).sum() / (region.sum() + 1e-16)
    return dice.mean() + cross_entropy


def mixed_loss(region_loss: RegionLoss, logits: torch.Tensor, mixed: Mixed) -> torch.Tensor:
    """The authors' ``mix_loss``: the loss on the pixels outside the square and, separately, on
    those inside, each against the mixed target, weighted."""
    inside = mixed.box.expand(logits.shape[0], 1, *logits.shape[-2:]).float()
    outside = 1.0 - inside
    return mixed.outside_weight * region_loss(logits, mixed.targets, outside) + mixed.inside_weight * region_loss(logits, mixed.targets, inside)


def region_loss_of(loss: str, criterion: SegmentationLoss) -> RegionLoss:
    """The region loss a BCP ``loss`` setting names (``run``: the run's criterion, masked)."""
    return authors_loss if loss == "authors" else criterion


def largest_components(labels: torch.Tensor) -> torch.Tensor:
    """``labels`` (hard, ``[B, K, H, W]``) with each image's foreground classes reduced to their
    largest 8-connected component; the rest of a class becomes background (the authors'
    ``get_ACDC_2DLargestCC``; the first of equally large components is kept)."""
    channels = labels.shape[1]
    decided = decide(labels).cpu().numpy()  # class indices; the one host copy of the step
    structure = np.ones((3, 3), dtype=bool)
    for image in decided:
        for cls in range(1, max(channels, 2)):
            components, count = ndimage.label(image == cls, structure=structure)
            if count > 1:
                largest = np.argmax(np.bincount(components.ravel())[1:]) + 1
                image[(components > 0) & (components != largest)] = 0
    return one_hot(torch.from_numpy(decided).to(labels.device), channels)


# --------------------------------------------------------------------------- stages


class CopyPasteStrategy(SupervisedStrategy):
    """BCP's pre-training: supervised training on labeled images copy-pasted into each other
    (the second half of the batch into the first), keeping the momentum copy of the labeled stage."""

    def __init__(self, ema: EmaSettings, *, patch_fraction: float, loss: str) -> None:
        super().__init__(ema)
        self.patch_fraction = patch_fraction
        self.loss_kind = loss

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        self.patches = PatchDraw(self.patch_fraction, stage_seed(context.config.seed, f"{context.spec.name}/copy-paste"))
        self.region_loss = region_loss_of(self.loss_kind, context.criterion)

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        half = batch.images.shape[0] // 2
        box = self.patches.box(*batch.images.shape[-2:], batch.images.device)
        mixed = copy_paste(batch.images[:half], batch.masks[:half], batch.images[half:], batch.masks[half:], box, (1.0, 1.0))
        loss = mixed_loss(self.region_loss, forward(mixed.images), mixed) / 2.0
        return loss, {"loss_sup": loss.detach()}

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.patches.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.patches.load_state_tensors(tensors)


class BCPStrategy(Strategy):
    """BCP's self-training: the student learns the bidirectionally mixed images against the
    mixed ground truth and teacher labels; the teacher is its EMA copy."""

    uses_unlabeled = True
    renders_pseudo_labels = True

    def __init__(self, method: BCPConfig) -> None:
        self.method = method

    def setup(self, context: StageContext) -> None:
        super().setup(context)
        # batch-norm statistics averaged like the weights, as the authors' EMA of the whole state (integer counters copied)
        self.teacher = ModelEMA(context.student, self.method.momentum, buffers="average")
        self.patches = PatchDraw(self.method.patch_fraction, stage_seed(context.config.seed, f"{context.spec.name}/copy-paste"))
        self.region_loss = region_loss_of(self.method.loss, context.criterion)

    @torch.no_grad()
    def teacher_labels(self, unlabeled: torch.Tensor) -> torch.Tensor:
        """The teacher's hard labels ``[u, K, H, W]`` of the unlabeled batch, as BCP trains on them."""
        teacher = self.teacher.module
        if self.context.config.train.channels_last:
            unlabeled = unlabeled.contiguous(memory_format=torch.channels_last)
        if self.method.teacher_mode == "train":  # each half in its own pass, as the authors' pre_a / pre_b
            half = unlabeled.shape[0] // 2
            teacher.train()
            logits = torch.cat([teacher(unlabeled[:half]), teacher(unlabeled[half:])])
            teacher.eval()
        else:
            logits = teacher(unlabeled)
        return self._targets(logits)

    def _targets(self, logits: torch.Tensor) -> torch.Tensor:
        """Hard decisions of the teacher's logits, reduced to each class's largest component if asked."""
        labels = harden(probabilities(logits), strict=True)
        return largest_components(labels) if self.method.largest_component else labels

    def loss(self, batch: Batch, forward: Forward, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pseudo = self.teacher_labels(batch.unlabeled)
        box = self.patches.box(*batch.images.shape[-2:], batch.images.device)
        into_unlabeled, into_labeled = bidirectional_copy_paste(batch.images, batch.masks, batch.unlabeled, pseudo, box, self.method.unlabeled_weight)
        loss_into_unlabeled = mixed_loss(self.region_loss, forward(into_unlabeled.images), into_unlabeled)
        loss_into_labeled = mixed_loss(self.region_loss, forward(into_labeled.images), into_labeled)
        loss = (loss_into_unlabeled + loss_into_labeled) / 2.0
        return loss, {"loss_into_unlabeled": loss_into_unlabeled.detach(), "loss_into_labeled": loss_into_labeled.detach()}

    def after_step(self, step: int, epoch_ended: bool) -> None:
        self.teacher.update()

    def networks(self) -> dict[str, nn.Module]:
        return {"ema": self.teacher.module}

    @torch.no_grad()
    def pseudo_labels(self, images: torch.Tensor) -> torch.Tensor:
        """The teacher's labels as BCP uses them (hard, largest components), rendered in eval mode:
        diagnostics must not move its batch-norm statistics."""
        return self._targets(self.context.frozen_forward(self.teacher.module, images))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return self.patches.state_tensors()

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.patches.load_state_tensors(tensors)


def _check_halves(size: int, key: str, world: int) -> None:
    """BCP cuts each process's share of a batch in halves."""
    share = size // world
    if share % 2:
        raise UserError(f"{key}: BCP cuts each process's share of the batch in two halves; {size} on {world} process(es) gives {share} per process, which is odd")


@register(
    "bcp",
    section=BCPConfig,
    summary="BCP (Bai et al., CVPR 2023): copy-paste pre-training, then a mean teacher's labels of U and the ground truth of L pasted into each other.",
    rows=baseline_rows("bcp", {"name": "bcp", "start_network": "ema"}),
)
def run_bcp(session: RunSession) -> RecipeOutcome:
    method: BCPConfig = session.config.method
    train = session.config.train
    session.require_unlabeled()
    world = session.dist.world
    if train.unlabeled_batch_size != train.batch_size:
        raise UserError(
            f"train.unlabeled_batch_size: BCP pastes each labeled image into an unlabeled one and back, so it needs as many "
            f"of each per step (train.batch_size {train.batch_size}), got {train.unlabeled_batch_size}"
        )
    _check_halves(train.batch_size, "train.batch_size", world)
    pretraining = {}
    if method.student_init == "labeled" and method.teacher_run is None and method.pretrain == "copy_paste":
        _check_halves(method.teacher_batch_size or (train.batch_size + train.unlabeled_batch_size), "method.teacher_batch_size", world)
        pretraining = {"strategy": CopyPasteStrategy, "settings": {"patch_fraction": method.patch_fraction, "loss": method.loss}}
    start = labeled_start(session, method, **pretraining)
    init = start.weights(method.start_network) if start is not None else None
    result = fit_one_stage(session, method, BCPStrategy(method), init)
    return RecipeOutcome("raw", {"raw": result.weights("raw"), "ema": result.weights("ema")})


__all__ = [
    "BCPConfig",
    "BCPStrategy",
    "CopyPasteStrategy",
    "Mixed",
    "PatchDraw",
    "authors_loss",
    "bidirectional_copy_paste",
    "copy_paste",
    "largest_components",
    "mixed_loss",
    "run_bcp",
]

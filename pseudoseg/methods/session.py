"""What a method's recipe works with: the run's configuration, its data split, and a narrow
service over the engine (fit a stage, count another run's stage, load a frozen network,
render pseudo labels), so that no method reaches into the trainer."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pseudoseg.errors import UserError
from pseudoseg.progress import console_print

if TYPE_CHECKING:
    from torch import nn

    from pseudoseg.config import RunConfig
    from pseudoseg.data.classes import ClassSet
    from pseudoseg.data.pool import SamplePool
    from pseudoseg.data.splits import Split
    from pseudoseg.engine.distributed import DistInfo
    from pseudoseg.engine.strategy import StageSpec, Strategy
    from pseudoseg.engine.trainer import StageResult, Trainer
    from pseudoseg.methods.label_store import PseudoLabelStore


@dataclass(frozen=True)
class RecipeOutcome:
    """What a method's recipe trained: its networks' best weights, and which is released."""

    released: str
    networks: dict[str, Path]
    ensemble: list[Path] | None = None
    """Weights whose mean prediction is the released model (ATSO's ``final: ensemble``)."""


@dataclass
class RunSession:
    config: RunConfig
    run_dir: Path
    pool: SamplePool
    split: Split
    trainer: Trainer
    """The engine. Recipes use the service below, not the trainer itself (tests/test_architecture.py)."""
    labeled: np.ndarray
    unlabeled: np.ndarray
    validation: np.ndarray
    """Pool indices of L, U and V."""
    log: Callable[[Any], None] = console_print
    """Where a recipe says what it decided (one line each)."""

    def require_unlabeled(self) -> None:
        """A semi-supervised method needs images without (used) masks: say how to get some."""
        if len(self.unlabeled):
            return
        name = self.config.method.name
        if self.split.labels == "given":
            raise UserError(
                f"data: {name} needs unlabeled images, and every image has a mask; add images without masks "
                "(data.unlabeled) or hide some with data.labels: simulated and a data.labeled_fraction below 1"
            )
        raise UserError(f"data.labeled_fraction: {name} needs unlabeled images; use a fraction below 1")

    # ------------------------------------------------------------------ the engine's service

    def labeled_stage(self, name: str, strategy: Strategy, *, steps: int, batch_size: int, describe: Mapping[str, Any]) -> StageSpec:
        """A stage on this run's labeled images alone (validated on V), defined by ``describe``."""
        from pseudoseg.engine.strategy import StageSpec

        return StageSpec(name=name, strategy=strategy, steps=steps, batch_size=batch_size, labeled=self.labeled, validation=self.validation, describe=dict(describe))

    def semi_supervised_stage(self, name: str, strategy: Strategy, *, steps: int, unlabeled: np.ndarray | None = None, describe: Mapping[str, Any] | None = None) -> StageSpec:
        """A stage on this run's labeled and unlabeled images (``unlabeled``: a part of them), validated
        on V, in the run's batches (``train.batch_size`` + ``train.unlabeled_batch_size``).

        It is defined by the run's whole method section and ``describe``'s keys beyond it, so a
        stage cannot leave a setting out of what a resume compares. Where the student starts:
        :meth:`~pseudoseg.engine.strategy.StageSpec.starting_from` (default: fresh)."""
        from pseudoseg.engine.strategy import StageSpec

        method, train = self.config.method, self.config.train
        return StageSpec(
            name=name,
            strategy=strategy,
            steps=steps,
            batch_size=train.batch_size,
            unlabeled_batch_size=train.unlabeled_batch_size,
            labeled=self.labeled,
            unlabeled=self.unlabeled if unlabeled is None else unlabeled,
            validation=self.validation,
            describe={"strategy": method.name, **method.model_dump(mode="json"), **(describe or {})},
        )

    def fit(self, spec: StageSpec) -> StageResult:
        """Train (or resume, or find finished) one stage; its steps count towards the run's budget."""
        return self.trainer.fit(spec)

    def adopt(self, stage: StageResult) -> None:
        """Count a stage another run trained (``method.teacher_run``) towards this run's budget."""
        self.trainer.stages.append(stage)

    @property
    def stages(self) -> tuple[StageResult, ...]:
        """The stages this run has fitted or adopted so far, in order."""
        return tuple(self.trainer.stages)

    @property
    def dist(self) -> DistInfo:
        """This process's place among the run's processes."""
        return self.trainer.dist

    @property
    def classes(self) -> ClassSet:
        """The run's foreground classes."""
        return self.trainer.classes

    def weights_meta(self, path: Path) -> dict[str, Any]:
        """The metadata of a weights file, refused (naming it) unless it holds this run's architecture."""
        from pseudoseg.engine.checkpoint import load_weights_file

        _, meta = load_weights_file(path, expect=self.trainer.architecture)
        return meta

    @property
    def preprocessing(self) -> dict[str, Any]:
        """How this run's inputs are preprocessed (recorded with every network it saves)."""
        return self.trainer.preprocessing

    def frozen_network(self, path: Path) -> nn.Module:
        """A network of the run's architecture holding the weights at ``path``, on the device, in
        eval mode and without gradients: a model that labels or teaches and does not learn."""
        from pseudoseg.engine.checkpoint import load_weights_file

        network = self.trainer.build_network()
        tensors, _ = load_weights_file(path)
        network.load_state_dict(tensors)
        return network.eval().requires_grad_(False)

    def render_labels(self, path: Path, weights: Path, indices: np.ndarray) -> PseudoLabelStore:
        """Pseudo labels of the pool images ``indices`` by the network at ``weights``, written to
        ``path`` (every process renders its share; ``method.labels`` says hard or soft)."""
        from pseudoseg.methods.label_store import LabelFormat, Labeler, render_pseudo_labels

        labeler = Labeler(self.frozen_network(weights), self.trainer.normalizer, self.trainer.autocast, batch_size=self.config.eval.batch_size)
        label_format = LabelFormat(self.config.method.labels, threshold=self.config.eval.threshold, channels=self.trainer.channels)
        return render_pseudo_labels(labeler, self.pool.images, indices, path, label_format=label_format, dist=self.trainer.dist)

"""Typed run configuration, validated when it is loaded.

A run is described by one YAML file (see ``configs/``) plus ``--set key=value``
overrides. Every key is declared here with its type and default; an unknown key
or a value of the wrong type is reported as one line naming the key
(``method.beta: Input should be a valid number``), before any work starts.
"""

from __future__ import annotations

import copy
import json
import types
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pseudoseg.errors import UserError

if TYPE_CHECKING:
    from pseudoseg.data.classes import ClassSet


def _yaml_boolean_words(value: bool) -> tuple[str, ...]:
    """The unquoted words YAML reads as ``value`` (YAML 1.1, as PyYAML does)."""
    return tuple(word for word in ("true", "yes", "on", "false", "no", "off") if yaml.safe_load(word) is value)


def literal_words(annotation: Any) -> tuple[str, ...]:
    """The words a field accepts when its type is a ``Literal`` (also inside ``X | None``)."""
    if get_origin(annotation) is Literal:
        return tuple(arg for arg in get_args(annotation) if isinstance(arg, str))
    if get_origin(annotation) in (Union, types.UnionType):
        return tuple(word for arg in get_args(annotation) for word in literal_words(arg))
    return ()


class _Section(BaseModel):
    # Attribute docstrings become field descriptions: the README's configuration
    # reference is generated from them (python -m pseudoseg.config).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _words_yaml_read_as_booleans(cls, data: Any) -> Any:
        # YAML reads unquoted off / on / yes / no as booleans, in files and in
        # --set alike: where a key takes one of a set of words and exactly one
        # of them is what YAML turned into that boolean, the user meant the word.
        if not isinstance(data, dict):
            return data
        words = {}
        for name, value in data.items():
            field = cls.model_fields.get(name) if isinstance(value, bool) else None
            if field is not None:
                meant = [word for word in literal_words(field.annotation) if word in _yaml_boolean_words(value)]
                if len(meant) == 1:
                    words[name] = meant[0]
        return {**data, **words} if words else data


class DataConfig(_Section):
    """Where the images come from and how they are split into L / U / V."""

    kind: Literal["folders", "volumes"] = "folders"
    """``folders``: 2-D images and masks; ``volumes``: CT or MRI volumes in NIfTI."""
    train: Path
    """Training pool. ``folders``: a folder with ``images/`` and ``masks/`` (PraNet
    layout, Kvasir-SEG as released); images without a mask are unlabeled.
    ``volumes``: a folder with ``imagesTr/`` and ``labelsTr/`` (Medical Segmentation
    Decathlon layout); cases without a label are unlabeled. Either kind: an nnU-Net
    v2 raw data set (``dataset.json``, ``imagesTr/<case>_0000<file_ending>``)."""
    unlabeled: tuple[Path, ...] = ()
    """Further folders of images without masks (``folders``: image files; ``volumes``:
    NIfTI files), added to the unlabeled set."""
    labels: Literal["auto", "given", "simulated"] = "auto"
    """Which images are labeled. ``given``: those with a mask (validation drawn
    from them; ``labeled_fraction`` unused). ``simulated``: a benchmark, the masks of
    all but ``labeled_fraction`` of them are hidden. ``auto``: ``simulated`` when every
    image has a mask and there is no ``unlabeled`` folder, ``given`` otherwise."""
    test: Path | None = None
    """Test sets. ``folders``: a parent of several sets (``TestDataset/<name>/images``)
    or one set. ``volumes``: a folder with ``imagesTs/`` and ``labelsTs/``."""
    images_dir: str = "images"
    """Name of the images folder inside ``train`` and each test set."""
    masks_dir: str = "masks"
    """Name of the masks folder inside ``train`` and each test set."""
    image_size: int = Field(128, ge=16)
    """Working resolution: every image is resized to image_size x image_size."""
    normalize: Literal["imagenet", "unit"] = "imagenet"
    """``imagenet``: ImageNet mean/std (RGB photographs, pretrained encoders);
    ``unit``: scale to [-1, 1] (CT slices)."""
    labeled_fraction: float = 0.2
    """Simulated labels: fraction of the masked images (after validation) that keep
    their masks, in (0, 1]. Not used when the labels are given."""
    val_fraction: float = 0.1
    """Fraction of the pool held out for validation (checkpoint choice), in [0, 1)."""
    split_seed: int | None = None
    """Seed of the L / U / V split; defaults to the run's seed."""
    split: Path | None = None
    """A split manifest (JSON) written by an earlier run, reused as it is."""
    labeled_list: Path | None = None
    """Text file of labeled stems (one per line), to reproduce a published split."""
    unlabeled_list: Path | None = None
    """Text file of unlabeled stems (default: every stem not listed elsewhere)."""
    validation_list: Path | None = None
    """Text file of validation stems."""
    cache_dir: Path | None = None
    """Where decoded, resized images are cached; defaults to ``<run_dir>/cache``."""
    intensity: Literal["window", "percentile"] = "window"
    """``volumes``: how intensities become the network's input. ``window``: the fixed
    ``window`` (CT, whose Hounsfield units mean the same tissue in every scan).
    ``percentile``: per case and channel, clipped to the case's own ``percentiles``
    and rescaled to [0, 1] (MRI and other scans without a physical unit: their
    scale differs between scanners, sequences and files, and the percentiles
    rather than minimum and maximum keep a few bright or dark outlier voxels
    from squeezing the contrast of the tissue)."""
    percentiles: tuple[float, float] = (0.5, 99.5)
    """``volumes`` with ``intensity: percentile``: low and high percentile (in %, of all
    the case's voxels) mapped onto 0 and 1; 0 <= low < high <= 100."""
    window: tuple[float, float] = (-100.0, 240.0)
    """``volumes`` with ``intensity: window``: intensity window in HU, clipped and rescaled."""
    context: int = Field(0, ge=0)
    """``volumes``: neighbouring slices on each side given as extra channels."""
    channels: int | None = Field(None, ge=1)
    """``volumes``: image channels per case (files ``_0000``, ``_0001``, ...); read
    from an nnU-Net ``dataset.json`` (``channel_names``) when not set, else 1."""
    classes: dict[str, int | list[int]] | None = None
    """Foreground classes and the label values of each in the masks, e.g. ``{anterior: 1,
    posterior: 2}`` (several values make one class: ``{hippocampus: [1, 2]}``). Read
    from the ``labels`` of a ``dataset.json`` in ``train`` when not set (Decathlon or
    nnU-Net v2 form); with neither, one foreground class decoded by the binary mask
    rules. Two or more classes train a softmax over C + 1 channels; a mask value no
    class names is an error naming the file."""

    @field_validator("labeled_fraction")
    @classmethod
    def _labeled_fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(f"must be in [0, 1), got {value}")
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] >= value[1]:
            raise ValueError(f"lower bound must be below upper bound, got {list(value)}")
        return value

    @field_validator("percentiles")
    @classmethod
    def _percentiles(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= value[0] < value[1] <= 100.0:
            raise ValueError(f"expected 0 <= low < high <= 100, got {list(value)}")
        return value

    @model_validator(mode="after")
    def _channels_from_dataset_json(self) -> DataConfig:
        if self.channels is None and self.kind == "volumes":
            from pseudoseg.data.nnunet import channel_count

            # Resolved once here, so config.yaml records the network's input channels.
            object.__setattr__(self, "channels", channel_count(self.train) or 1)
        if self.classes is None:
            from pseudoseg.data.classes import classes_from_dataset_json

            # Resolved once here, so config.yaml records the classes the network was trained for.
            found = classes_from_dataset_json(self.train)
            if found is not None and found.values is not None:
                object.__setattr__(self, "classes", {name: list(values) for name, values in zip(found.names, found.values)})
        else:
            from pseudoseg.data.classes import class_set_from_mapping

            class_set_from_mapping(self.classes, "data.classes")  # checked at load time
        return self

    @property
    def class_set(self) -> ClassSet:
        """The run's foreground classes (:mod:`pseudoseg.data.classes`)."""
        from pseudoseg.data.classes import ClassSet, class_set_from_mapping

        return class_set_from_mapping(self.classes, "data.classes") if self.classes else ClassSet.binary()

    @property
    def in_channels(self) -> int:
        return 3 if self.kind == "folders" else (self.channels or 1) * (2 * self.context + 1)


class ModelConfig(_Section):
    """The network, built by :func:`pseudoseg.models.build_model`."""

    name: Literal["unet", "basic_unet", "flexible_unet", "fpn"] = "unet"
    """Network: MONAI ``UNet``, ``BasicUNet``, ``FlexibleUNet``; ``fpn`` needs the ``smp`` extra."""
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    """``unet``: channels per level; ``basic_unet``: its six feature sizes."""
    num_res_units: int = 2
    """``unet``: residual units per level."""
    norm: Literal["batch", "instance", "group"] = "batch"
    """Normalisation layers."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout probability."""
    encoder: str = "resnet18"
    """``flexible_unet`` (MONAI backbones: resnet*, efficientnet-b*) and ``fpn``
    (segmentation-models-pytorch encoders, e.g. densenet169)."""
    encoder_weights: Literal["none", "imagenet"] = "none"
    """Initial encoder weights: ``none`` (random) or ``imagenet``, downloaded once
    into the back-end's own cache (``fpn``: segmentation-models-pytorch;
    ``flexible_unet``: MONAI, efficientnet-b0 to b7). ``imagenet`` needs
    ``data.normalize: imagenet``. Offline, give the same weights as a local file
    (``weights`` with ``weights_scope: encoder``; ``pseudoseg weights export``
    writes it)."""
    weights: Path | None = None
    """Local weights (safetensors or a PyTorch state dict), loaded safely."""
    weights_scope: Literal["full", "encoder"] = "full"
    """Load ``weights`` into the whole network or into its encoder only."""

    @model_validator(mode="after")
    def _one_source_of_weights(self) -> ModelConfig:
        if self.encoder_weights != "none":
            if self.name not in ("fpn", "flexible_unet"):
                raise ValueError(f"encoder_weights: {self.name} has no pretrained encoder; imagenet is for fpn and flexible_unet")
            if self.weights is not None:
                raise ValueError("encoder_weights: imagenet and model.weights both set the initial weights; keep one")
        return self


class OptimConfig(_Section):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    """Optimiser."""
    lr: float = Field(1e-3, gt=0)
    """Learning rate (after warm-up, before the schedule)."""
    weight_decay: float = Field(0.0, ge=0)
    """Weight decay."""
    momentum: float = 0.9
    """``sgd`` only."""
    schedule: Literal["constant", "cosine", "poly"] = "constant"
    """Learning-rate schedule over the stage's steps (poly: power 0.9)."""
    warmup_steps: int = Field(0, ge=0)
    """Linear warm-up steps."""
    grad_clip: float | None = Field(None, gt=0)
    """Clip the global gradient norm to this value (None: no clipping)."""


class AugmentConfig(_Section):
    """Batched, seeded augmentation (see :mod:`pseudoseg.data.augment`)."""

    flips: bool = True
    """Random horizontal flips."""
    rot90: bool = True
    """Random 90-degree rotations."""
    labeled_affine: bool = False
    """Shift-scale-rotate on labeled images too."""
    unlabeled_affine: bool = True
    """Shift-scale-rotate on unlabeled images (the momentum paper's code)."""
    shift: float = Field(0.0625, ge=0)
    """Shift-scale-rotate: largest shift, as a fraction of the image side."""
    scale: float = Field(0.1, ge=0)
    """Shift-scale-rotate: largest relative scale change."""
    rotate_deg: float = Field(45.0, ge=0)
    """Shift-scale-rotate: largest rotation in degrees."""
    brightness: float = Field(0.2, ge=0)
    """Strong view: largest additive brightness change (intensities in [0, 1])."""
    contrast: float = Field(0.2, ge=0)
    """Strong view: largest relative contrast change."""
    color_shift: float = Field(0.08, ge=0)
    """Per-channel additive shift, as a fraction of the intensity range."""
    noise_std: float = Field(0.0, ge=0)
    """Strong view: standard deviation of added Gaussian noise."""


class TrainConfig(_Section):
    steps: int = Field(1000, ge=1)
    """Optimiser steps of the stage (the most it runs when ``patience`` is set). An
    epoch is one pass over the unlabeled set when the method draws from it, over
    the labeled set otherwise."""
    patience: int | None = Field(None, ge=1)
    """Stop a stage early once no network's validation score has improved for this
    many validations (``val_every`` steps each); None: always run ``steps``. The
    steps run are recorded with the stage (``done.json``) and in the report."""
    batch_size: int = Field(8, ge=1)
    """Labeled images per step (global, over all processes)."""
    unlabeled_batch_size: int = Field(8, ge=1)
    """Unlabeled images per step (global), for methods that use them."""
    optim: OptimConfig = OptimConfig()
    loss: Literal["dice", "dice_bce"] = "dice"
    """Loss on logits for both labeled and pseudo-labeled images (per image, then averaged)."""
    dice_smooth: float = Field(1e-5, gt=0)
    """Added to the numerator and denominator of every image's soft Dice. With
    the default (MONAI's), an image with an empty mask scores Dice loss 1
    unless its summed foreground probability drops below about 1e-5, a cliff
    that pulls a network towards predicting background everywhere when many
    images are empty (CT slices above and below the organ); ``1`` turns that
    term into a gentle penalty on the predicted area."""
    amp: Literal["auto", "bf16", "fp16", "off"] = "auto"
    """``auto``: bf16 where the processor supports it (CPUs with AVX-512 BF16 /
    AMX, CUDA GPUs with bf16), otherwise fp16 on CUDA, otherwise off."""
    channels_last: bool = False
    """channels_last memory format (faster for encoder networks on some hardware)."""
    val_every: int = Field(100, ge=1)
    """Validate (and checkpoint) every N steps, and at the end."""
    log_every: int = Field(10, ge=1)
    """Log the training losses every N steps (the only host sync of the loop)."""
    selection_metric: Literal["dice", "iou"] = "dice"
    """Validation metric (threshold 0.5, per image) that picks the best checkpoints."""
    num_threads: int | None = Field(None, ge=1)
    """CPU threads (default: PyTorch's choice)."""
    tensorboard: bool = False
    """Also log every metric to TensorBoard (``<stage>/tensorboard``; needs the ``tracking`` extra)."""
    augment: AugmentConfig = AugmentConfig()


class EvalConfig(_Section):
    threshold: float = Field(0.5, gt=0, lt=1)
    """Probability threshold of the binary masks."""
    pranet_metrics: bool = True
    """Also compute the PraNet convention (pysodmetrics, native resolution)."""
    batch_size: int = Field(16, ge=1)
    """Images per forward pass during evaluation."""


class SupervisedConfig(_Section):
    """Train on the labeled split only (``data.labeled_fraction: 1.0`` for the
    fully supervised upper bound), keeping a momentum copy."""

    name: Literal["supervised"] = "supervised"
    ema_momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum of the kept copy: ema <- m * ema + (1 - m) * network, per ``momentum_unit``."""
    momentum_unit: Literal["step", "epoch"] = "step"
    """What the momentum means: the share of the copy kept over one step (default:
    a copy of the last ~1/(1-m) steps, whatever the data set's size) or over one epoch
    (the momentum paper's numbers, for its teacher stage). Converted to the update rate
    of ``ema_schedule``: per-epoch m over E steps is m^(1/E) per step."""
    ema_schedule: Literal["step", "epoch"] = "step"
    """Update the momentum copy after every step or at the end of every epoch."""
    ema_buffers: Literal["average", "copy"] = "average"
    """Batch-norm running statistics: averaged like parameters, or copied."""


class MomentumConfig(_Section):
    """Online pseudo labeling with momentum networks (Method A)."""

    name: Literal["momentum"] = "momentum"
    mode: Literal["online", "offline"] = "online"
    """``offline``: the teacher is frozen; ``online``: the teacher is updated
    during the student stage as a momentum copy of the student."""
    teacher: Literal["momentum", "original"] = "momentum"
    """Which network of the teacher stage becomes the teacher."""
    teacher_run: Path | None = None
    """A finished supervised run directory to take the teacher from; when
    absent, the teacher stage is trained first in ``<run_dir>/teacher``."""
    teacher_steps: int | None = Field(None, ge=1)
    """Teacher-stage steps (default: ``train.steps``)."""
    teacher_batch_size: int | None = Field(None, ge=1)
    """Teacher-stage batch (default: labeled + unlabeled batch of the student)."""
    teacher_stage_momentum: float = Field(0.95, ge=0, lt=1)
    """Momentum of the teacher stage's copy (the "momentum teacher"), per ``momentum_unit``."""
    teacher_momentum: float = Field(0.99, ge=0, lt=1)
    """Online teacher update: teacher <- m * teacher + (1 - m) * student, per ``momentum_unit``."""
    student_momentum: float = Field(0.99, ge=0, lt=1)
    """Momentum of the student's own copy (the released model), per ``momentum_unit``."""
    momentum_unit: Literal["epoch", "step"] = "epoch"
    """What the three momenta mean: the share kept over one epoch (the paper's numbers:
    0.95 / 0.99 / 0.99) or over one step. They are converted to the update rate of
    ``ema_schedule`` (per-epoch m over E steps is m^(1/E) per step), so a recipe means the
    same at any batch size and data set size."""
    ema_schedule: Literal["step", "epoch"] = "step"
    """All momentum updates after every step (default) or once per epoch (the authors' code)."""
    ema_buffers: Literal["average", "copy"] = "average"
    """Batch-norm running statistics: averaged like parameters, or copied."""
    teacher_follows: Literal["auto", "from_start", "once_caught_up"] = "auto"
    """``mode: online``: when the online teacher starts following the student.
    ``from_start`` (the paper); ``once_caught_up``: from the first validation at which the
    student's momentum copy scores at least the teacher (until then the teacher is frozen,
    as offline), so a student that starts far from the teacher is not averaged into it
    while it is still worse; ``auto``: ``from_start`` when the student starts from the
    teacher (``student_init: teacher``), ``once_caught_up`` otherwise."""
    beta: float = Field(0.3, ge=0)
    """Weight of the loss against the teacher's pseudo labels."""
    unlabeled_loss: Literal["segmentation", "mse"] = "segmentation"
    """Loss against the pseudo labels: the training loss (``train.loss``), or the
    mean squared error between probabilities (Mean Teacher's consistency)."""
    beta_rampup_steps: int = Field(0, ge=0)
    """Sigmoid ramp-up of beta over this many steps (0: constant)."""
    labels: Literal["soft", "hard"] = "soft"
    """``soft``: the teacher's probabilities; ``hard``: thresholded at 0.5."""
    confidence: float = Field(0.0, ge=0, lt=1)
    """Hard labels only: ignore pixels whose teacher confidence max(p, 1-p) is below."""
    views: Literal["weak_strong", "same"] = "weak_strong"
    """``weak_strong``: the teacher labels the weak view, the student sees a
    photometrically strong view of the same geometry; ``same``: both see the
    same augmented image (the authors' code)."""
    student_init: Literal["fresh", "teacher", "random"] = "fresh"
    """``fresh``: the student starts from the weights the teacher stage started from
    (``model.weights`` / ``model.encoder_weights`` if set, else the run's seeded
    initialisation): the paper's fresh student, which shares its ImageNet start with the
    teacher. ``teacher``: from the teacher's trained weights (measured better without
    pretrained weights, see the README; with ``mode: online`` and equal teacher and
    student momenta the online teacher and the student's copy are then one network: Mean
    Teacher). ``random``: an unrelated initialisation (an ablation: averaged into a
    trained teacher, it destroys it)."""

    @model_validator(mode="after")
    def _confidence_needs_hard(self) -> MomentumConfig:
        if self.confidence > 0 and self.labels != "hard":
            raise ValueError("confidence applies to hard labels only: set labels: hard")
        return self


class RoundsConfig(_Section):
    """ATSO and self-learning (TSO): rounds of relabelling and fine-tuning (Method B)."""

    name: Literal["atso", "tso"] = "atso"
    subsets: int = Field(2, ge=2)
    """ATSO: number K of disjoint unlabeled subsets."""
    rounds: int = Field(4, ge=1)
    """Rounds R after the labeled-only model."""
    round_steps: int = Field(200, ge=1)
    """Training steps of every round. The released model of TSO and of ``init:
    continue`` has had M0 + R x round_steps steps; of ``init: labeled``, M0 +
    round_steps; of ``init: initial``, round_steps (``budget.json``)."""
    init: Literal["labeled", "initial", "continue"] = "labeled"
    """ATSO: where each round starts. ``labeled``: the labeled-only model M0;
    ``initial``: the weights M0 started from (``model.weights`` /
    ``model.encoder_weights``, else the run's seeded initialisation), the paper's
    student that does not continue from its teacher; ``continue``: the previous
    round's model, which rendered the labels it trains on (self-training on one
    subset at a time, flagged ``own_labels`` in ``rounds.jsonl``). TSO always continues."""
    labels: Literal["hard", "soft"] = "hard"
    """Stored pseudo labels: thresholded at 0.5, or probabilities."""
    final: Literal["last", "ensemble"] = "last"
    """``ensemble``: average the predictions of the last K round models."""
    teacher_run: Path | None = None
    """A finished supervised run to start from (else trained in ``<run_dir>/round_0``)."""
    teacher_steps: int | None = Field(None, ge=1)
    """Steps of the labeled-only stage (default: ``train.steps``)."""
    beta: float = Field(1.0, ge=0)
    """Weight of the pseudo-labeled loss."""


MethodConfig = Annotated[Union[SupervisedConfig, MomentumConfig, RoundsConfig], Field(discriminator="name")]


class RunConfig(_Section):
    run_dir: Path = Path("runs/run")
    """Where the run writes everything; an existing run with the same configuration resumes."""
    seed: int = 0
    """Seed of initialisation, batches and augmentation (and of the split by default)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """``auto``: CUDA when available."""
    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    method: MethodConfig = SupervisedConfig()

    @model_validator(mode="after")
    def _pretrained_encoder_sees_imagenet_statistics(self) -> RunConfig:
        # ImageNet weights expect ImageNet-normalised inputs; any other scaling
        # silently wastes the pretraining.
        if self.model.encoder_weights == "imagenet" and self.data.normalize != "imagenet":
            raise ValueError(f"model.encoder_weights: imagenet needs data.normalize: imagenet, got {self.data.normalize}")
        return self

    @property
    def split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=value`` -> (["a", "b"], value parsed as YAML)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise UserError(f"--set {key}: value is not valid YAML ({exc.__class__.__name__})") from None
    return key.split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    merged = copy.deepcopy(raw)
    for text in overrides:
        path, value = parse_override(text)
        node = merged
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(f"--set {'.'.join(path)}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return merged


def config_from_dict(raw: dict[str, Any], *, origin: str = "configuration") -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(part) for part in error["loc"] if not str(part).startswith("function-after"))
        # A discriminated union reports the chosen branch in the location
        # ("method.momentum.beta"); users write "method.beta".
        for name in ("supervised", "momentum", "atso", "tso"):
            key = key.replace(f"method.{name}.", "method.")
            if key == f"method.{name}":  # a check across keys of the method section
                key = "method"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        elif "input" in error and not isinstance(error["input"], dict) and error["type"] != "missing" and "got " not in message:
            message += f", got {_as_read(error['input'])}"
        # A check across keys names the key it is about: "encoder_weights: ..."
        # in the model section is reported as "model.encoder_weights: ...".
        named, sep, rest = message.partition(": ")
        if error["type"] == "value_error" and sep and named.replace(".", "_").isidentifier():
            key, message = (f"{key}.{named}" if key else named), rest
        if error["type"] == "missing" and key == "data":
            key, message = "data.train", "required (the training folder); the data section is missing"
        raise UserError(f"{origin}: {key}: {message}") from None


def _as_read(value: Any) -> str:
    """A refused value as the YAML reader produced it, with why when YAML changed a word."""
    if isinstance(value, bool):
        words = _yaml_boolean_words(value)
        shown = json.dumps(value)
        return f"{shown} (YAML reads unquoted {', '.join(words[:-1])} and {words[-1]} as {shown})"
    shown = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run configuration, apply ``key=value`` overrides, validate."""
    raw: dict[str, Any] = {}
    origin = "configuration"
    if path is not None:
        path = Path(path)
        origin = str(path)
        if not path.is_file():
            raise UserError(f"{path}: configuration file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise UserError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping of keys at the top level")
        raw = loaded
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, origin=origin)


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def _type_name(annotation: Any) -> str:
    from typing import get_args, get_origin

    if get_origin(annotation) is Literal:
        return "one of " + ", ".join(f"`{value}`" for value in get_args(annotation))
    text = str(annotation).replace("typing.", "").replace("pathlib.", "").replace("<class '", "").replace("'>", "")
    return text.replace("NoneType", "None")


def config_reference() -> str:
    """The Markdown reference of every configuration key (embedded in the README)."""
    sections = [
        ("", RunConfig, ("run_dir", "seed", "device")),
        ("data.", DataConfig, None),
        ("model.", ModelConfig, None),
        ("train.", TrainConfig, None),
        ("train.optim.", OptimConfig, None),
        ("train.augment.", AugmentConfig, None),
        ("eval.", EvalConfig, None),
        ("method.  (name: supervised)", SupervisedConfig, None),
        ("method.  (name: momentum)", MomentumConfig, None),
        ("method.  (name: atso / tso)", RoundsConfig, None),
    ]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for prefix, model, only in sections:
        key_prefix, _, note = prefix.partition("  ")
        for name, field in model.model_fields.items():
            if only is not None and name not in only:
                continue
            if isinstance(field.default, BaseModel) or name == "name" and note:
                continue
            default = "required" if field.is_required() else f"`{json_default(field.default)}`"
            meaning = " ".join((field.description or "").split()).replace("``", "`").replace("|", "\\|")
            if note and name == [n for n in model.model_fields if n != "name"][0]:
                meaning = f"*{note.strip('()')}*. {meaning}"
            lines.append(f"| `{key_prefix}{name}` | {_type_name(field.annotation).replace('|', 'or')} | {default} | {meaning} |")
    return "\n".join(lines)


def json_default(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return str(list(value))
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def update_readme(path: Path) -> None:
    """Rewrite the reference between the README's config-reference markers."""
    import re

    start, end = "<!-- config-reference:start -->", "<!-- config-reference:end -->"
    text = path.read_text(encoding="utf-8")
    block = f"{start}\n{config_reference()}\n{end}"
    path.write_text(re.sub(re.escape(start) + ".*?" + re.escape(end), lambda _: block, text, flags=re.S), encoding="utf-8")


if __name__ == "__main__":
    import sys

    # python -m pseudoseg.config [README.md]: print the reference, or update it in the README
    if len(sys.argv) > 1:
        update_readme(Path(sys.argv[1]))
    else:
        print(config_reference())

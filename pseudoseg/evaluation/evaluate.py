"""Evaluate models on test sets, in both metric conventions.

2-D test sets (PraNet layout): every image is resized to the model's working
size, predicted, and scored twice: the momentum paper's convention (Dice and
IoU at threshold 0.5 at the working size, mask resized to it) and the PraNet
convention (pysodmetrics at the mask's native resolution, the probability map
resized up to it bilinearly). CT test sets: every case is predicted slice by
slice, restored to the scan's geometry, and scored in 3-D (Dice, HD95 in mm).

A model of several classes reads the test masks and labels with its own class
set (file values -> class indices), decides by the argmax over its C + 1
class probabilities at the mask's native resolution (images) or the scan's
voxel grid (volumes), and is scored per class and as the mean over classes
(:class:`~pseudoseg.evaluation.metrics.ClassMetrics`,
:class:`~pseudoseg.evaluation.volume_metrics.VolumeMetrics`); the label map it
is scored on is the one ``pseudoseg predict`` writes.

Images are read once and shared by all models being compared.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch

from pseudoseg.config import EvalConfig
from pseudoseg.data.classes import ClassSet
from pseudoseg.data.preprocessing import Preprocessing
from pseudoseg.data.sources import data_source
from pseudoseg.data.resize import resize_image, resize_mask
from pseudoseg.data.sources import ImagePair, ImageSource
from pseudoseg.errors import UserError
from pseudoseg.evaluation.metrics import ClassMetrics, PaperMetrics, PraNetMetrics, resize_bilinear
from pseudoseg.inference import Predictor

PerSet = dict[str, dict[str, Any]]
Progress = Callable[[str, int, int], None]


def _common_preprocessing(predictors: dict[str, Predictor]) -> Preprocessing:
    kinds = {predictor.preprocessing for predictor in predictors.values()}
    if len(kinds) != 1:
        raise UserError("models compared in one evaluation must share their preprocessing (working size, normalisation, classes)")
    return kinds.pop()


def evaluate(predictors: dict[str, Predictor], test_root: Path, config: EvalConfig, *, progress: Progress | None = None) -> dict[str, PerSet]:
    """Scores of every predictor on every test set under ``test_root``: {model: {set: {metric: value}}}."""
    preprocessing = _common_preprocessing(predictors)
    format_ = data_source(preprocessing.kind)
    if format_.geometry == "volumes":
        return _evaluate_volumes(predictors, Path(test_root), preprocessing, config, progress)
    return _evaluate_images(predictors, format_.find_test_sets(Path(test_root), None), format_, config, progress)


def _evaluate_images(predictors, test_sets: dict[str, list[ImagePair]], format_: ImageSource, config: EvalConfig, progress) -> dict[str, PerSet]:
    pre = _common_preprocessing(predictors)
    classes = pre.classes
    results: dict[str, PerSet] = {name: {} for name in predictors}
    for set_name, pairs in test_sets.items():
        if classes.is_binary:
            paper = {name: PaperMetrics(config.threshold) for name in predictors}
            pranet = {name: PraNetMetrics() for name in predictors} if config.pranet_metrics else {}
        else:
            per_class = {name: ClassMetrics(classes.names) for name in predictors}
        for start in range(0, len(pairs), config.batch_size):
            chunk = pairs[start : start + config.batch_size]
            images, masks = [], []
            for pair in chunk:
                image, mask = format_.read_pair(pair, classes)
                images.append(image)
                masks.append(mask == 1 if classes.is_binary else mask)
            records = np.stack([resize_image(image, pre.image_size) for image in images])
            if classes.is_binary:
                small_masks = torch.from_numpy(np.stack([resize_mask(mask, pre.image_size) for mask in masks])).unsqueeze(1)
            for name, predictor in predictors.items():
                prob = predictor.probabilities(records).float().cpu()
                if not classes.is_binary:
                    for single, mask in zip(prob, masks):
                        per_class[name].update(predictor.labels(resize_bilinear(single, mask.shape)[None], config.threshold), torch.from_numpy(mask).long()[None])
                    continue
                prob = predictor.kept_probabilities(prob, config.threshold)  # --largest-component
                paper[name].update(prob, small_masks)
                if pranet:
                    for single, mask in zip(prob, masks):
                        pranet[name].update(resize_bilinear(single, mask.shape)[0].clamp_(0, 1).numpy(), mask)
            if progress is not None:
                progress(set_name, min(start + config.batch_size, len(pairs)), len(pairs))
        for name in predictors:
            if not classes.is_binary:
                results[name][set_name] = per_class[name].compute()
                continue
            scores = paper[name].compute()
            if pranet:
                scores = {**scores, **{k: v for k, v in pranet[name].compute().items() if k != "n"}}
            results[name][set_name] = scores
    return results


def read_test_label(path: Path, classes: ClassSet) -> np.ndarray:
    """A label volume in its file's array order as class indices (:func:`pseudoseg.data.volumes.label_indices`)."""
    from pseudoseg.data.volumes import label_indices, load_volume

    return label_indices(np.asarray(load_volume(path).dataobj), path, classes=classes)


def _evaluate_volumes(predictors, test_root: Path, pre: Preprocessing, config: EvalConfig, progress) -> dict[str, PerSet]:
    from pseudoseg.data.volumes import load_volume, volume_cases, voxel_spacing
    from pseudoseg.evaluation.volume_metrics import VolumeMetrics

    classes = pre.classes
    if not (test_root / "imagesTs").is_dir():  # imagesTr/ holds training cases: never a test set
        raise UserError(f"{test_root}: no imagesTs/ folder; a test set of volumes is imagesTs/ + labelsTs/ (imagesTr/ holds training cases)")
    cases = volume_cases(test_root, images_dir="imagesTs", labels_dir="labelsTs", require_labels=True)
    metrics = {name: VolumeMetrics(classes.names) for name in predictors}
    for done, case in enumerate(cases, 1):
        slices, _ = pre.volume_slices(case, with_labels=False)
        reference = load_volume(case.image_path)
        target = read_test_label(case.label_path, classes)
        for name, predictor in predictors.items():
            prob = restore_volume(predict_slices(predictor, slices, config.batch_size), reference)
            volume = predictor.labels(torch.from_numpy(prob)[None], config.threshold)[0].numpy().astype(np.uint8)
            metrics[name].update(case.case_id, volume, target.reshape(volume.shape), voxel_spacing(reference))
        if progress is not None:
            progress(test_root.name, done, len(cases))
    results: dict[str, PerSet] = {}
    for name, metric in metrics.items():
        summary = metric.compute()
        keys = ("dice", "hd95_mm", "hd95_penalised_mm", "hd95_undefined", "n") if classes.is_binary else [key for key in summary if key != "cases"]
        results[name] = {"test": {key: summary[key] for key in keys}}
    return results


def predict_slices(predictor: Predictor, slices: np.ndarray, batch_size: int) -> np.ndarray:
    """Probabilities ``[Z, K, S, S]`` for uint8 slices ``[Z, C, S, S]`` (``K``: the model's channels)."""
    out = [predictor.probabilities(slices[start : start + batch_size]).float().cpu().numpy() for start in range(0, len(slices), batch_size)]
    channels = predictor.preprocessing.classes.channels
    return np.concatenate(out) if out else np.zeros((0, channels, *slices.shape[2:]), dtype=np.float32)


def restore_volume(prob_slices: np.ndarray, reference: nib.Nifti1Image) -> np.ndarray:
    """Slice probabilities ``[Z, K, S, S]`` restored to the voxel grid of ``reference``: ``[K, *shape]``, channel by channel."""
    from pseudoseg.data.volumes import slices_to_volume

    return np.stack([slices_to_volume(prob_slices[:, k], reference) for k in range(prob_slices.shape[1])])


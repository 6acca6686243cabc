"""Evaluation, reports and prediction for several classes; binary numbers pinned.

The predictors here are built directly: one 1x1 convolution with set weights
(:class:`BandNetwork`), so what they predict follows from the input image and
every expected number is computed by hand.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from pseudoseg.config import EvalConfig
from pseudoseg.data.classes import ClassSet
from pseudoseg.data.preprocessing import Preprocessing
from pseudoseg.errors import UserError
from pseudoseg.evaluation.evaluate import evaluate
from pseudoseg.evaluation.metrics import METRIC_CONVENTIONS, ClassMetrics, conventions_for, headline_columns
from pseudoseg.evaluation.report import GridTable, summarize_runs, write_grid_report, write_report
from pseudoseg.evaluation.volume_metrics import VolumeMetrics
from pseudoseg.inference import Predictor
from pseudoseg.predict import CLASS_COLOURS, predict_paths
from tests.conftest import run_cli

TWO_CLASSES = ClassSet(("anterior", "posterior"), ((3,), (7, 8)))
"""Background + two classes, written 3 and 7 (8 also reads as posterior) in the files."""

LPS = np.diag([-1.5, -1.0, 2.5, 1.0])


class BandNetwork(nn.Module):
    """Logits from the mean input channel ``x`` (in [-1, 1] after the unit normalisation).

    One output channel: the logit ``3x`` (soft probabilities, 0.5 at mid grey).
    Three: logits ``(-2x, 0.5, 2x)``: background for dark pixels, class 1 for
    mid grey, class 2 for bright ones, so an image drawn with grey levels
    0 / 128 / 255 *is* its predicted label map.
    """

    def __init__(self, channels: int, in_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 1)
        with torch.no_grad():
            mean = torch.full((channels, in_channels), 1.0 / in_channels)
            if channels == 1:
                self.conv.weight.copy_((3.0 * mean)[:, :, None, None])
                self.conv.bias.zero_()
            else:
                self.conv.weight.copy_((mean * torch.tensor([-2.0, 0.0, 2.0])[:, None])[:, :, None, None])
                self.conv.bias.copy_(torch.tensor([0.0, 0.5, 0.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def band_predictor(classes: ClassSet, *, kind: str = "folders", size: int = 8, window: tuple[float, float] = (0.0, 2.0)) -> Predictor:
    in_channels = 3 if kind == "folders" else 1
    preprocessing = Preprocessing(kind, size, "unit", in_channels, window, 0, "window", (0.5, 99.5), classes)
    return Predictor([BandNetwork(classes.channels, in_channels)], preprocessing, device=torch.device("cpu"), amp_dtype=None)


def grey_of(labels: np.ndarray) -> np.ndarray:
    """RGB image that the three-class :class:`BandNetwork` predicts as ``labels`` (class indices)."""
    return np.repeat(np.array([0, 128, 255], dtype=np.uint8)[labels][:, :, None], 3, axis=2)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    nib.save(img, path)
    return path


# --------------------------------------------------------------------------- per-class metrics by hand


def test_class_metrics_hand_computed_with_absent_classes_skipped() -> None:
    pred = torch.tensor(
        [
            [[1, 1, 0], [2, 2, 0]],  # class 1: P 2, G 1, shared 1 -> Dice 2/3, IoU 1/2; class 2: P 2, G 3, shared 2 -> 4/5, 2/3
            [[1, 0, 0], [0, 0, 0]],  # class 1: Dice 2/3, IoU 1/2; class 2 absent from both: skipped
            [[0, 0, 0], [0, 0, 0]],  # nothing anywhere: both classes skipped, no mean for this image
            [[0, 0, 0], [0, 0, 2]],  # class 2 predicted on an empty mask: 0; class 1 skipped
        ]
    )
    target = torch.tensor(
        [
            [[1, 0, 0], [2, 2, 2]],
            [[1, 1, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0]],
            [[0, 0, 0], [0, 0, 0]],
        ]
    )
    metrics = ClassMetrics(("anterior", "posterior"))
    metrics.update(pred[:2], target[:2])
    metrics.update(pred[2], target[2])  # one map [H, W]
    metrics.update(pred[3:], target[3:])
    scores = metrics.compute()
    assert list(scores) == ["dice", "dice/anterior", "dice/posterior", "iou", "iou/anterior", "iou/posterior", "n"]
    assert scores["dice/anterior"] == pytest.approx(2 / 3)
    assert scores["dice/posterior"] == pytest.approx((4 / 5 + 0) / 2)  # counting absent as 1 would give 0.7
    assert scores["dice"] == pytest.approx((2 / 3 + 2 / 5) / 2)
    assert scores["iou/anterior"] == pytest.approx(1 / 2)
    assert scores["iou/posterior"] == pytest.approx((2 / 3 + 0) / 2)
    assert scores["iou"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert scores["n"] == 4
    per_image = metrics.per_image()
    np.testing.assert_allclose(per_image["dice"], [(2 / 3 + 4 / 5) / 2, 2 / 3, math.nan, 0.0])  # over the classes present in each
    np.testing.assert_allclose(per_image["dice/posterior"], [4 / 5, math.nan, math.nan, 0.0])


def test_class_metrics_class_absent_from_the_whole_set_is_left_out_of_the_mean() -> None:
    metrics = ClassMetrics(("a", "b", "c"))
    metrics.update(torch.tensor([[1, 2], [0, 0]]), torch.tensor([[1, 2], [2, 0]]))  # a: 1, b: 2/3, c: never present
    scores = metrics.compute()
    assert math.isnan(scores["dice/c"])
    assert scores["dice"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(ValueError, match="before any update"):
        ClassMetrics(("a", "b")).compute()


def _two_case_volumes() -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Case 0: class 1 shifted by one voxel along axis 0, class 2 nowhere. Case 1: class 1 exact, class 2 missed."""
    truth0 = np.zeros((6, 6, 4), dtype=np.uint8)
    truth0[2:5, 1:4, 0:2] = 1  # 18 voxels
    pred0 = np.roll(truth0, -1, axis=0)  # 12 shared: Dice 24/36; every voxel is on the surface: HD95 = 1 voxel
    truth1 = np.zeros((6, 6, 4), dtype=np.uint8)
    truth1[1:3, 1:3, 1:3] = 1
    truth1[4:6, 4:6, 2:4] = 2
    pred1 = np.where(truth1 == 1, 1, 0).astype(np.uint8)
    return [pred0, pred1], [truth0, truth1]


def test_volume_metrics_per_class_hand_computed() -> None:
    spacing = (1.5, 1.0, 2.5)
    preds, truths = _two_case_volumes()
    metrics = VolumeMetrics(("anterior", "posterior"))
    first = metrics.update("case0", preds[0], truths[0], spacing)
    assert first["dice/anterior"] == pytest.approx(2 / 3) and first["hd95_mm/anterior"] == pytest.approx(1.5)
    assert math.isnan(first["dice/posterior"]) and math.isnan(first["hd95_mm/posterior"])  # absent from both: skipped
    assert first["dice"] == pytest.approx(2 / 3)  # the case's mean is over the classes defined in it
    second = metrics.update("case1", preds[1], truths[1], spacing)
    assert second["dice"] == pytest.approx(0.5) and second["dice/posterior"] == 0.0
    assert second["hd95_mm"] == 0.0 and math.isnan(second["hd95_mm/posterior"])
    summary = metrics.compute()
    assert summary["dice/anterior"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["dice/posterior"] == 0.0  # over case1 only, where the class exists
    assert summary["dice"] == pytest.approx(((2 / 3 + 1) / 2 + 0) / 2)
    assert summary["hd95_mm/anterior"] == pytest.approx(0.75)
    assert math.isnan(summary["hd95_mm/posterior"])  # defined in no case
    assert summary["hd95_mm"] == pytest.approx(0.75)  # over the classes where it is defined
    assert (summary["hd95_undefined"], summary["hd95_undefined/anterior"], summary["hd95_undefined/posterior"]) == (1, 0, 1)
    assert summary["n"] == 2 and list(summary["cases"]) == ["case0", "case1"]


def test_one_class_volume_metrics_keep_the_binary_rules() -> None:
    empty = np.zeros((4, 4, 4), dtype=np.uint8)
    for metrics in (VolumeMetrics(), VolumeMetrics(("organ",))):
        assert metrics.update("empty", empty, empty, (1.0, 1.0, 1.0)) == {"dice": 1.0, "hd95_mm": 0.0, "hd95_penalised_mm": 0.0}


# --------------------------------------------------------------------------- evaluation end to end


def _label_png_set(root: Path) -> Path:
    """One set 's' of two 8 x 8 images: the image draws the prediction, the mask (values 3 / 7) the truth."""
    pred = np.zeros((8, 8), dtype=np.int64)
    pred[0:4, 0:4] = 1  # 16 pixels of anterior
    pred[4:8, 4:8] = 2  # 16 of posterior
    truth = np.zeros((8, 8), dtype=np.uint8)
    truth[0:4, 0:2] = 3  # 8 of anterior: Dice 2*8/24, IoU 8/16
    truth[4:8, 4:8] = 7  # posterior exact
    write_png(root / "s" / "images" / "a.png", grey_of(pred))
    write_png(root / "s" / "masks" / "a.png", truth)
    write_png(root / "s" / "images" / "b.png", grey_of(np.zeros((8, 8), dtype=np.int64)))  # nothing anywhere: skipped
    write_png(root / "s" / "masks" / "b.png", np.zeros((8, 8), dtype=np.uint8))
    return root


def test_evaluate_images_per_class(tmp_path: Path) -> None:
    root = _label_png_set(tmp_path / "test")
    scores = evaluate({"m": band_predictor(TWO_CLASSES)}, root, EvalConfig())["m"]["s"]
    assert scores == pytest.approx(
        {"dice": (2 / 3 + 1) / 2, "dice/anterior": 2 / 3, "dice/posterior": 1.0, "iou": (0.5 + 1) / 2, "iou/anterior": 0.5, "iou/posterior": 1.0, "n": 2}
    )


def test_evaluate_images_reads_masks_with_the_class_values(tmp_path: Path) -> None:
    root = _label_png_set(tmp_path / "test")
    bad = np.zeros((8, 8), dtype=np.uint8)
    bad[0, 0] = 5
    write_png(root / "s" / "masks" / "b.png", bad)
    with pytest.raises(UserError, match=r"b\.png: label value 5 is not one of"):
        evaluate({"m": band_predictor(TWO_CLASSES)}, root, EvalConfig())
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[0, 0] = (3, 7, 0)  # a label map drawn in colour (a grey one stored as RGB reads as grey)
    write_png(root / "s" / "masks" / "b.png", colour)
    with pytest.raises(UserError, match=r"b\.png: label map is a colour image"):
        evaluate({"m": band_predictor(TWO_CLASSES)}, root, EvalConfig())


def _label_volume_set(root: Path) -> Path:
    """The two cases of :func:`_two_case_volumes` as files: images draw the predictions (0 / 1 / 2), labels hold 3 / 7."""
    preds, truths = _two_case_volumes()
    values = np.array([0, 3, 7], dtype=np.uint8)
    for number, (pred, truth) in enumerate(zip(preds, truths)):
        write_nifti(root / "imagesTs" / f"case{number}.nii.gz", pred.astype(np.float32), LPS)
        write_nifti(root / "labelsTs" / f"case{number}.nii.gz", values[truth], LPS)
    return root


def test_evaluate_volumes_per_class_in_mm(tmp_path: Path) -> None:
    root = _label_volume_set(tmp_path / "test")
    predictor = band_predictor(TWO_CLASSES, kind="volumes", size=6)
    scores = evaluate({"m": predictor}, root, EvalConfig())["m"]["test"]
    assert list(scores) == [
        "dice", "dice/anterior", "dice/posterior", "hd95_mm", "hd95_mm/anterior", "hd95_mm/posterior",
        "hd95_penalised_mm", "hd95_penalised_mm/anterior", "hd95_penalised_mm/posterior",
        "hd95_undefined", "hd95_undefined/anterior", "hd95_undefined/posterior", "n",
    ]  # fmt: skip
    assert scores["dice/anterior"] == pytest.approx(5 / 6) and scores["dice/posterior"] == 0.0
    assert scores["dice"] == pytest.approx(5 / 12)
    assert scores["hd95_mm/anterior"] == pytest.approx(0.75)  # (1 voxel x 1.5 mm + 0) / 2
    assert math.isnan(scores["hd95_mm/posterior"]) and scores["hd95_mm"] == pytest.approx(0.75)
    assert (scores["hd95_undefined"], scores["hd95_undefined/posterior"], scores["n"]) == (1, 1, 2)


# --------------------------------------------------------------------------- binary numbers pinned


def _binary_folder_set(root: Path) -> Path:
    """Two sets of three noisy 20 x 24 images with 0/255 masks, scored at a 16 x 16 working size."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[:20, :24]
    for s, name in enumerate(("alpha", "beta")):
        for i in range(3):
            mask = ((yy - 8 - i) ** 2 + (xx - 10 - 2 * s) ** 2 <= (4 + i) ** 2) | ((yy > 15) & (xx > 18 - i))
            grey = np.clip(60 + 120 * mask + rng.normal(0, 40, mask.shape), 0, 255).astype(np.uint8)
            write_png(root / name / "images" / f"{i}.png", np.repeat(grey[:, :, None], 3, axis=2))
            write_png(root / name / "masks" / f"{i}.png", (mask * 255).astype(np.uint8))
    return root


def _binary_volume_set(root: Path) -> Path:
    """Two noisy 12 x 10 x 6 cases (anisotropic voxels) with a box label, scored at an 8 x 8 working size."""
    rng = np.random.default_rng(3)
    affine = np.diag([1.5, 1.0, 2.5, 1.0])
    for c in range(2):
        label = np.zeros((12, 10, 6), dtype=np.uint8)
        label[3 + c : 9, 2 : 7 + c, 1:5] = 1
        image = (30 + 50 * label + rng.normal(0, 15, label.shape)).astype(np.float32)
        write_nifti(root / "imagesTs" / f"case_{c}.nii.gz", image, affine)
        write_nifti(root / "labelsTs" / f"case_{c}.nii.gz", label, affine)
    return root


# Measured with the evaluation as it was before classes existed (commit f128d47).
BINARY_FOLDER_SCORES = {
    "alpha": {"dice@0.5": 0.9654707511266073, "iou@0.5": 0.9334006706873575, "n": 3, "meanDice": 0.6946310357423372, "meanIoU": 0.5931191444749087, "wFmeasure": 0.6286160710333607, "Smeasure": 0.8127195835601614, "meanEmeasure": 0.7269896559811557, "maxEmeasure": 0.9885572624405089, "MAE": 0.16323832583930295},
    "beta": {"dice@0.5": 0.9728840986887614, "iou@0.5": 0.947590192159017, "n": 3, "meanDice": 0.6885024095312566, "meanIoU": 0.5885105768132075, "wFmeasure": 0.6195279509304252, "Smeasure": 0.8166000535284189, "meanEmeasure": 0.7186370012518501, "maxEmeasure": 0.9953664744652522, "MAE": 0.1655053210998821},
}  # fmt: skip
BINARY_VOLUME_SCORES = {"test": {"dice": 0.9209069231701896, "hd95_mm": 1.0625, "hd95_penalised_mm": 1.0625, "hd95_undefined": 0, "n": 2}}


def test_binary_reports_are_unchanged(tmp_path: Path) -> None:
    folders = evaluate({"m": band_predictor(ClassSet.binary(), size=16, window=(-100.0, 240.0))}, _binary_folder_set(tmp_path / "f"), EvalConfig())["m"]
    volumes = evaluate({"m": band_predictor(ClassSet.binary(), kind="volumes", window=(0.0, 120.0))}, _binary_volume_set(tmp_path / "v"), EvalConfig())["m"]
    for got, pinned in ((folders, BINARY_FOLDER_SCORES), (volumes, BINARY_VOLUME_SCORES)):
        assert list(got) == list(pinned)
        for name in pinned:
            assert list(got[name]) == list(pinned[name])  # same columns in the same order
            assert got[name] == pytest.approx(pinned[name], rel=1e-12, abs=1e-12)
    # the report of a binary model: the same columns and legend as before classes
    paths = write_report(folders, tmp_path / "report" / "metrics", conventions=conventions_for(ClassSet.binary(), "images"))
    header = paths["csv"].read_text().splitlines()[0]
    assert header == "set,dice@0.5,iou@0.5,meanDice,meanIoU,wFmeasure,Smeasure,meanEmeasure,maxEmeasure,MAE,n"
    assert json.loads(paths["json"].read_text())["conventions"] == {c: METRIC_CONVENTIONS[c] for c in header.split(",")[1:-1]}
    # a class set that names the one class's value reads the masks by value, with the same numbers
    valued = ClassSet(("polyp",), ((255,),))
    again = evaluate({"m": band_predictor(valued, size=16, window=(-100.0, 240.0))}, tmp_path / "f", EvalConfig())["m"]
    for name, pinned in BINARY_FOLDER_SCORES.items():
        assert again[name] == pytest.approx(pinned, rel=1e-12, abs=1e-12)


# --------------------------------------------------------------------------- reports


def test_reports_name_the_classes(tmp_path: Path) -> None:
    root = _label_volume_set(tmp_path / "test")
    per_set = evaluate({"m": band_predictor(TWO_CLASSES, kind="volumes", size=6)}, root, EvalConfig())["m"]
    conventions = conventions_for(TWO_CLASSES, "volumes")
    paths = write_report(per_set, tmp_path / "report" / "metrics", conventions=conventions)
    rows = list(csv.reader(paths["csv"].open()))
    assert rows[0][:4] == ["set", "dice", "dice/anterior", "dice/posterior"]
    assert rows[0][4:7] == ["hd95_mm", "hd95_mm/anterior", "hd95_mm/posterior"]
    assert float(rows[1][rows[0].index("dice/anterior")]) == pytest.approx(5 / 6)
    assert rows[1][rows[0].index("hd95_mm/posterior")] == ""  # undefined: empty, not NaN
    report = json.loads(paths["json"].read_text())
    assert report["sets"]["test"]["dice/posterior"] == 0.0 and report["sets"]["test"]["hd95_mm/posterior"] is None
    assert "class posterior (label values 7, 8)" in report["conventions"]["dice/posterior"]
    assert "skipped" in report["conventions"]["dice"] and "skipped" in report["conventions"]["dice/anterior"]
    md = paths["md"].read_text()
    assert "| Test set | `dice` | `dice/anterior` | `dice/posterior` | `hd95_mm` |" in md
    assert f"- `dice/anterior` — {conventions['dice/anterior']}." in md
    # the grid's tables: the mean over classes and each class
    columns = headline_columns(TWO_CLASSES, "volumes")
    assert columns == (
        "dice", "dice/anterior", "dice/posterior", "hd95_mm", "hd95_mm/anterior", "hd95_mm/posterior",
        "hd95_penalised_mm", "hd95_penalised_mm/anterior", "hd95_penalised_mm/posterior", "hd95_undefined",
    )
    grid = write_grid_report(GridTable(summarize_runs({"atso": [per_set, per_set]}), metric_columns=columns, conventions=conventions), tmp_path / "grid")
    text = grid["md"].read_text()
    assert "## `dice/posterior`" in text and conventions["hd95_mm/anterior"] in text
    assert headline_columns(TWO_CLASSES, "images") == ("dice", "dice/anterior", "dice/posterior", "iou")
    assert headline_columns(ClassSet.binary(), "images") == ("dice@0.5", "meanDice")
    assert headline_columns(ClassSet.binary(), "volumes") == ("dice", "hd95_mm", "hd95_penalised_mm", "hd95_undefined")


# --------------------------------------------------------------------------- prediction


def test_predict_images_writes_class_values_probabilities_and_a_legend(tmp_path: Path) -> None:
    labels = np.zeros((8, 8), dtype=np.int64)
    labels[1:4, 1:6] = 1
    labels[5:8, 2:8] = 2
    inputs = tmp_path / "images"
    write_png(inputs / "a.png", grey_of(labels))
    out = tmp_path / "pred"
    written = predict_paths(band_predictor(TWO_CLASSES), inputs, out, probabilities=True, overlay=True)
    assert written == [out / "a.png"]
    label_map = Image.open(out / "a.png")
    assert label_map.mode == "L"  # 8-bit
    np.testing.assert_array_equal(np.asarray(label_map), np.array([0, 3, 7])[labels])  # first value of each class
    maps = {name: np.asarray(Image.open(out / "probabilities" / name / "a.png")) / 255 for name in ("background", "anterior", "posterior")}
    np.testing.assert_array_equal(np.argmax(np.stack(list(maps.values())), axis=0), labels)
    np.testing.assert_allclose(sum(maps.values()), 1.0, atol=2 / 255)  # C + 1 softmax channels
    overlay = np.asarray(Image.open(out / "overlays" / "a.png"))
    assert overlay.shape[0] > 8 + 2 * 10 and overlay.shape[1] > 8  # a legend row per class below the image
    np.testing.assert_array_equal(overlay[1, 1], CLASS_COLOURS[0])  # an outline pixel of each class in its colour
    np.testing.assert_array_equal(overlay[5, 2], CLASS_COLOURS[1])
    legend = overlay[8:]
    for colour in CLASS_COLOURS[:2]:
        assert (legend == colour).all(axis=2).sum() >= 25  # each class's swatch
    assert (legend.min(axis=2) > 200).sum() > 10  # the class names, in white


def test_predict_images_at_native_size_and_one_class_without_legend(tmp_path: Path) -> None:
    labels = np.zeros((12, 20), dtype=np.int64)
    labels[2:10, 3:9] = 1
    labels[2:10, 12:18] = 2
    write_png(tmp_path / "in" / "b.png", grey_of(labels))
    predict_paths(band_predictor(TWO_CLASSES), tmp_path / "in", tmp_path / "out")
    written = np.asarray(Image.open(tmp_path / "out" / "b.png"))
    assert written.shape == (12, 20) and set(np.unique(written)) == {0, 3, 7}
    assert (written[4:8, 4:8] == 3).all() and (written[4:8, 13:17] == 7).all()
    predict_paths(band_predictor(ClassSet.binary()), tmp_path / "in", tmp_path / "binary", overlay=True)
    assert set(np.unique(np.asarray(Image.open(tmp_path / "binary" / "b.png")))) <= {0, 255}
    assert np.asarray(Image.open(tmp_path / "binary" / "overlays" / "b.png")).shape == (12, 20, 3)


def test_predict_volumes_writes_class_values_with_the_input_geometry(tmp_path: Path) -> None:
    root = _label_volume_set(tmp_path / "data")
    out = tmp_path / "pred"
    written = predict_paths(band_predictor(TWO_CLASSES, kind="volumes", size=6), root / "imagesTs", out)
    assert [p.name for p in written] == ["case0.nii.gz", "case1.nii.gz"]
    preds, _ = _two_case_volumes()
    for path, pred in zip(written, preds):
        source = nib.load(root / "imagesTs" / path.name)
        result = nib.load(path)
        np.testing.assert_array_equal(result.affine, source.affine)
        np.testing.assert_array_equal(result.header.get_sform(), source.header.get_sform())
        assert result.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(np.asarray(result.dataobj), np.array([0, 3, 7])[pred])


def test_predict_refuses_a_class_value_beyond_eight_bits(tmp_path: Path) -> None:
    write_png(tmp_path / "in" / "a.png", grey_of(np.zeros((8, 8), dtype=np.int64)))
    wide = ClassSet(("a", "b"), ((1,), (300,)))
    with pytest.raises(UserError, match="class 'b': label value 300 does not fit an 8-bit label map"):
        predict_paths(band_predictor(wide), tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_evaluate_and_predict_commands_with_a_saved_model(tmp_path: Path) -> None:
    from pseudoseg.config import ModelConfig
    from pseudoseg.engine.checkpoint import save_weights
    from pseudoseg.models import build_model, describe_architecture

    torch.manual_seed(0)
    model_config = ModelConfig.model_validate({"name": "unet", "channels": [4, 8], "num_res_units": 0})
    network = build_model(model_config, 3, TWO_CLASSES.channels)
    preprocessing = Preprocessing("folders", 8, "unit", 3, (-100.0, 240.0), 0, "window", (0.5, 99.5), TWO_CLASSES)
    weights = tmp_path / "best_raw.safetensors"
    save_weights(weights, network, {"architecture": describe_architecture(model_config, 3, TWO_CLASSES.channels), "preprocessing": preprocessing.to_json()})
    root = _label_png_set(tmp_path / "test")
    out = tmp_path / "report"
    assert run_cli("evaluate", str(weights), "--test", str(root), "--out", str(out), "--amp", "off", "--device", "cpu", "--json", str(tmp_path / "e.json")) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["classes"] == {"names": ["anterior", "posterior"], "values": [[3], [7, 8]]}
    assert {"dice", "dice/anterior", "dice/posterior", "iou/posterior"} <= set(report["sets"]["s"])
    assert "meanDice" not in report["sets"]["s"]  # the PraNet metrics are for one class
    assert json.loads((tmp_path / "e.json").read_text())["conventions"]["dice"].startswith("several classes")
    assert run_cli("predict", str(weights), str(root / "s" / "images"), str(tmp_path / "pred"), "--device", "cpu", "--amp", "off") == 0
    assert set(np.unique(np.asarray(Image.open(tmp_path / "pred" / "a.png")))) <= {0, 3, 7}

"""Your own data: images without masks are unlabeled, image-only folders, volumes with
missing labels, the nnU-Net raw format, split records, ``data check`` and the bad inputs."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from pseudoseg.run_config import config_from_dict
from pseudoseg.data.pool import load_pool
from pseudoseg.data.splits import make_split
from pseudoseg.runner import train
from tests.conftest import tiny_config, write_config
from tests.test_errors import fails
from tests.test_pipeline import run_cli, tree_digest


def partial_copy(tiny_polyps: Path, tmp_path: Path, keep: int = 12) -> Path:
    """The 40 training images with masks for the first ``keep`` of them only."""
    root = tmp_path / "partial"
    shutil.copytree(tiny_polyps / "TrainDataset", root)
    for mask in sorted((root / "masks").iterdir())[keep:]:
        mask.unlink()
    return root


def run(tmp_path: Path, tiny_polyps: Path, train_folder: Path, lines: list | None = None, **sections):
    raw = tiny_config(tmp_path, tiny_polyps, **sections)
    raw["data"] = {**raw["data"], "train": str(train_folder), "test": None, **sections.get("data", {})}
    config = config_from_dict(raw)
    return config, train(config, show_progress=False, log=(lines.append if lines is not None else lambda _: None))


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "split.json").read_text())


# --------------------------------------------------------------------------- 2-D folders


def test_images_without_a_mask_are_the_unlabeled_set(tmp_path, tiny_polyps) -> None:
    root = partial_copy(tiny_polyps, tmp_path)
    lines: list = []
    config, result = run(tmp_path, tiny_polyps, root, lines)
    split = manifest(result.run_dir)
    masked = sorted(p.stem for p in (root / "masks").iterdir())
    unmasked = sorted(set(p.stem for p in (root / "images").iterdir()) - set(masked))
    assert split["labels"] == "given" and split["labeled_fraction"] is None and split["seed"] == 0
    assert sorted(split["labeled"] + split["validation"]) == masked
    assert split["counts"] == {"labeled": 10, "unlabeled": 28, "validation": 2}  # validation: 20 % of the 12 masks
    assert split["unlabeled"] == unmasked and split["without_mask"] == unmasked
    assert split["sources"] == {str(root): sorted(masked + unmasked)}
    assert lines[0].startswith(
        "supervised: 10 labeled, 28 unlabeled, 2 validation images (labels as given: the 28 unlabeled have no mask; data.labeled_fraction 0.2 not used); "
        "masks used: 10 labeled + 2 validation = 12 (validation from the labeled budget)"
    )
    # The pool holds no mask for them: flagged, and the record never written.
    pool = load_pool(config.data, result.run_dir / "cache")
    flags = dict(zip(pool.ids, pool.has_mask))
    assert [flags[stem] for stem in unmasked] == [False] * 28 and all(flags[stem] for stem in masked)


def test_fully_labeled_folder_is_the_benchmark_split_as_before(tmp_path, tiny_polyps) -> None:
    lines: list = []
    config, result = run(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset", lines)
    split = manifest(result.run_dir)
    stems = sorted(p.stem for p in (tiny_polyps / "TrainDataset" / "images").iterdir())
    expected = make_split(stems, labeled_fraction=0.2, val_fraction=0.2, seed=0, validation="from_labeled")
    assert (split["labeled"], split["unlabeled"], split["validation"]) == (list(expected.labeled), list(expected.unlabeled), list(expected.validation))
    assert split["labels"] == "simulated" and split["labeled_fraction"] == 0.2 and split["without_mask"] == []
    assert "labels simulated: masks of 32 hidden (data.labeled_fraction 0.2, split seed 0)" in lines[0]


def test_extra_unlabeled_folders(tmp_path, tiny_polyps) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for image in sorted((tiny_polyps / "TestDataset" / "in_domain" / "images").iterdir()):
        shutil.copy(image, frames / image.name)
    lines: list = []
    _, result = run(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset", lines, data={"unlabeled": [str(frames)]})
    split = manifest(result.run_dir)
    extra = sorted(f"frames/{p.stem}" for p in frames.iterdir())
    # With an image-only folder the masks of the training folder are used as given.
    assert split["labels"] == "given" and split["unlabeled"] == extra and split["without_mask"] == extra
    assert split["counts"] == {"labeled": 32, "unlabeled": 4, "validation": 8}
    assert split["sources"][str(frames)] == extra


def test_simulated_labels_on_partial_data_score_pseudo_labels_on_the_hidden_masks_only(tmp_path, tiny_polyps) -> None:
    root = partial_copy(tiny_polyps, tmp_path, keep=30)
    lines: list = []
    momentum = {"name": "momentum", "teacher_steps": 2, "teacher_batch_size": 4}
    _, result = run(tmp_path, tiny_polyps, root, lines, data={"labels": "simulated", "labeled_fraction": 0.5}, method=momentum)
    split = manifest(result.run_dir)
    assert split["labels"] == "simulated" and len(split["without_mask"]) == 10
    hidden = sorted(set(split["unlabeled"]) - set(split["without_mask"]))
    # half of the 30 masks used (12 labeled + 3 validation), the other 15 hidden
    assert len(hidden) == 15 and all((root / "masks" / f"{stem}.png").is_file() for stem in hidden)
    assert "pseudo-label Dice on the 15 unlabeled images with a true mask" in lines[0]
    records = [json.loads(line) for line in (result.run_dir / "student" / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["kind"] == "val" and r["step"] > 0]  # step 0 validates the start only
    assert scored and all(0.0 <= r["pseudo/dice"] <= 1.0 for r in scored)


def test_pseudo_label_dice_is_absent_without_true_masks_of_u(tmp_path, tiny_polyps) -> None:
    root = partial_copy(tiny_polyps, tmp_path)
    lines: list = []
    momentum = {"name": "momentum", "teacher_steps": 2, "teacher_batch_size": 4}
    _, result = run(tmp_path, tiny_polyps, root, lines, method=momentum)
    assert "pseudo-label Dice not computed (no true masks in U)" in lines[0]
    records = [json.loads(line) for line in (result.run_dir / "student" / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["kind"] == "val"]
    assert validations and all("pseudo/dice" not in r for r in validations)
    assert (result.run_dir / "report" / "curves.png").is_file()


def test_rounds_diagnostics_are_null_without_true_masks_of_u(tmp_path, tiny_polyps) -> None:
    root = partial_copy(tiny_polyps, tmp_path)
    rounds = {"name": "atso", "subsets": 2, "rounds": 2, "round_steps": 2, "teacher_steps": 2}
    _, result = run(tmp_path, tiny_polyps, root, method=rounds)
    records = [json.loads(line) for line in (result.run_dir / "rounds.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert all(r["pseudo_dice"] is None and r["pseudo_dice_pooled"] is None and r["pseudo_dice_all"] is None for r in records)
    assert all(r["agreement_dice"] is not None for r in records if r["round"] > 0)


# --------------------------------------------------------------------------- volumes


def _volume(path: Path, data: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)


def _ct_case(rng: np.random.Generator, shape=(24, 24, 6)) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros(shape, np.uint8)
    x, y = rng.integers(6, 18, size=2)
    label[x - 4 : x + 4, y - 4 : y + 4, 1:5] = 1
    image = rng.normal(0, 20, shape).astype(np.float32) + 120.0 * label
    return image, label


def volume_config(tmp_path: Path, root: Path, **data) -> dict:
    return {
        "run_dir": str(tmp_path / "run"),
        "data": {"kind": "volumes", "train": str(root), "image_size": 16, "normalize": "unit", "val_fraction": 0.25, **data},
        "model": {"name": "unet", "channels": [8, 16], "num_res_units": 1},
        "train": {"steps": 2, "val_every": 2, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "log_every": 1},
        "method": {"name": "supervised"},
    }


def test_volumes_without_a_label_are_unlabeled_cases(tmp_path) -> None:
    rng = np.random.default_rng(0)
    root = tmp_path / "ct"
    for k in range(6):
        image, label = _ct_case(rng)
        _volume(root / "imagesTr" / f"case_{k}.nii.gz", image)
        if k < 4:
            _volume(root / "labelsTr" / f"case_{k}.nii.gz", label)
    extra = tmp_path / "more"
    _volume(extra / "scan_a.nii.gz", _ct_case(rng)[0])
    lines: list = []
    config = config_from_dict(volume_config(tmp_path, root, unlabeled=[str(extra)]))
    result = train(config, show_progress=False, log=lines.append)
    split = manifest(result.run_dir)
    assert split["unlabeled"] == ["case_4", "case_5", "more/scan_a"] == split["without_mask"]
    assert sorted(split["labeled"] + split["validation"]) == ["case_0", "case_1", "case_2", "case_3"]
    assert lines[0].startswith("supervised: 3 labeled, 3 unlabeled, 1 validation cases (labels as given")
    pool = load_pool(config.data, result.run_dir / "cache")
    assert len(pool) == 7 * 6 and pool.has_mask.sum() == 4 * 6


def nnunet_volumes(root: Path, *, cases: int = 5, labeled: int = 4, test: int = 1) -> Path:
    rng = np.random.default_rng(1)
    for k in range(cases + test):
        image, label = _ct_case(rng)
        folder = "imagesTr" if k < cases else "imagesTs"
        _volume(root / folder / f"brain_{k:03d}_0000.nii.gz", image)
        _volume(root / folder / f"brain_{k:03d}_0001.nii.gz", 200.0 - image)
        if k < labeled:
            _volume(root / "labelsTr" / f"brain_{k:03d}.nii.gz", label)
    dataset = {"channel_names": {"0": "T1", "1": "FLAIR"}, "labels": {"background": 0, "lesion": 1}, "numTraining": cases, "file_ending": ".nii.gz", "name": "Dataset042_Tiny"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    return root


def test_nnunet_raw_volumes_with_two_channels_train_and_predict(tmp_path, capsys) -> None:
    root = nnunet_volumes(tmp_path / "Dataset042_Tiny")
    config = config_from_dict(volume_config(tmp_path, root))
    assert config.data.channels == 2 and config.data.in_channels == 2
    pool = load_pool(config.data, tmp_path / "cache")
    assert pool.images.record_shape == (2, 16, 16)
    first = pool.images.read([0])[0]
    assert not np.array_equal(first[0], first[1])  # two different channels, not a copy
    result = train(config, show_progress=False, log=lambda _: None)
    assert manifest(result.run_dir)["without_mask"] == ["brain_004"]
    out = tmp_path / "predictions"
    assert run_cli("predict", str(result.run_dir), str(root / "imagesTs"), str(out)) == 0
    written = nib.load(out / "brain_005.nii.gz")
    assert written.shape == (24, 24, 6) and sorted(p.name for p in out.iterdir()) == ["brain_005.nii.gz"]


def test_decathlon_layout_keeps_working_with_its_own_dataset_json(tmp_path) -> None:
    rng = np.random.default_rng(2)
    root = tmp_path / "Task99"
    for k in range(4):
        image, label = _ct_case(rng)
        _volume(root / "imagesTr" / f"t_{k}.nii.gz", image)
        _volume(root / "labelsTr" / f"t_{k}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "CT"}, "labels": {"0": "background", "1": "x"}, "numTraining": 4, "training": []}))
    config = config_from_dict(volume_config(tmp_path, root))
    assert config.data.channels == 1
    assert len(load_pool(config.data, tmp_path / "cache")) == 4 * 6


def nnunet_png(tiny_polyps: Path, root: Path, *, labeled: int = 30) -> Path:
    images = sorted((tiny_polyps / "TrainDataset" / "images").iterdir())
    for k, path in enumerate(images):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "imagesTr" / f"polyp_{k:03d}_0000.png")
        if k < labeled:
            (root / "labelsTr").mkdir(parents=True, exist_ok=True)
            mask = np.asarray(Image.open(tiny_polyps / "TrainDataset" / "masks" / path.name)) > 128
            Image.fromarray(mask.astype(np.uint8)).save(root / "labelsTr" / f"polyp_{k:03d}.png")  # nnU-Net: class indices 0/1
    dataset = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1}, "numTraining": len(images), "file_ending": ".png"}
    (root / "dataset.json").write_text(json.dumps(dataset))
    # nnU-Net's 2-D RGB sets are one file per channel: split the RGB files.
    for path in sorted((root / "imagesTr").glob("*_0000.png")):
        rgb = np.asarray(Image.open(path).convert("RGB"))
        for c in range(3):
            Image.fromarray(rgb[:, :, c]).save(path.with_name(path.name.replace("_0000", f"_{c:04d}")))
    return root


def test_nnunet_raw_png_data_set(tmp_path, tiny_polyps) -> None:
    root = nnunet_png(tiny_polyps, tmp_path / "Dataset120_Polyps")
    lines: list = []
    config, result = run(tmp_path, tiny_polyps, root, lines)
    split = manifest(result.run_dir)
    assert split["labels"] == "given" and split["without_mask"] == [f"polyp_{k:03d}" for k in range(30, 40)]
    pool = load_pool(config.data, result.run_dir / "cache")
    original = np.asarray(Image.open(sorted((tiny_polyps / "TrainDataset" / "images").iterdir())[0]).convert("RGB"))
    from pseudoseg.data.resize import resize_image

    assert np.array_equal(pool.images.read([0])[0], resize_image(original, 32))  # channels stacked as R, G, B


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda root: _set_json(root, numTraining=7), "numTraining is 7 but imagesTr holds 5 cases (4 with a label)"),
        (lambda root: (root / "imagesTr" / "brain_002_0001.nii.gz").unlink(), "brain_002_0001.nii.gz: missing"),
        (lambda root: _set_json(root, file_ending=".nii"), "no .nii images but .nii.gz files: file_ending in"),
        (lambda root: _set_json(root, channel_names={"0": "T1"}), "channel 1 but"),
    ],
)
def test_dataset_json_that_disagrees_with_the_files(tmp_path, capsys, change, message) -> None:
    root = nnunet_volumes(tmp_path / "Dataset042_Tiny")
    change(root)
    config = write_config(tmp_path / "c.yaml", volume_config(tmp_path, root))
    line = fails(capsys, "train", "--config", str(config))
    assert message in line
    assert not (tmp_path / "run" / "split.json").exists()


def _set_json(root: Path, **values) -> None:
    payload = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**payload, **values}))


# --------------------------------------------------------------------------- data check


def test_data_check_on_good_data(tmp_path, tiny_polyps, capsys) -> None:
    root = partial_copy(tiny_polyps, tmp_path)
    out = tmp_path / "check.json"
    assert run_cli("data", "check", str(root), "--test", str(tiny_polyps / "TestDataset"), "--json", str(out)) == 0
    text = capsys.readouterr().out
    assert "images: 12 labeled, 28 unlabeled, 20 test" in text and "no problems: it would train" in text
    summary = json.loads(out.read_text())
    assert summary["sizes"] == {"48x48": 40} and summary["channels"] == {"3": 40} and summary["mask_values"] == [0, 255]
    assert 0 < summary["foreground_fraction"] < 1
    assert run_cli("data", "check", str(nnunet_volumes(tmp_path / "Dataset042_Tiny"))) == 0
    text = capsys.readouterr().out
    assert "cases: 4 labeled, 1 unlabeled, 1 test" in text and "channels: 2 (5)" in text and "nnU-Net raw" in text


def test_data_check_lists_every_problem(tmp_path, tiny_polyps, capsys) -> None:
    root = partial_copy(tiny_polyps, tmp_path)
    (root / "images" / "train_00001.png").write_bytes(b"not a png")
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(root / "masks" / "train_00002.png")
    Image.fromarray(np.array([[0, 1], [2, 0]], np.uint8)).resize((48, 48)).save(root / "masks" / "train_00003.png")
    assert run_cli("data", "check", str(root)) == 2
    text = capsys.readouterr().out
    assert "3 problems: it would not train" in text
    assert "train_00001.png: cannot read image" in text and "train_00002" in text and "multi-class label map" in text
    root = nnunet_volumes(tmp_path / "Dataset042_Tiny")
    _set_json(root, numTraining=9)
    (root / "imagesTr" / "brain_001_0001.nii.gz").unlink()
    assert run_cli("data", "check", str(root)) == 2
    text = capsys.readouterr().out
    assert "2 problems" in text and "numTraining is 9" in text and "brain_001_0001.nii.gz: missing" in text


# --------------------------------------------------------------------------- bad inputs


def bad_config(tmp_path: Path, tiny_polyps: Path, train_folder: Path, **data) -> Path:
    raw = tiny_config(tmp_path, tiny_polyps, data={"train": str(train_folder), "test": None, **data})
    if data:  # each attempt in its own run directory
        raw["run_dir"] = str(tmp_path / f"run-{abs(hash(json.dumps(data))) % 10**8}")
    return write_config(tmp_path / "bad.yaml", raw)


def test_nothing_labeled(tmp_path, tiny_polyps, capsys) -> None:
    root = partial_copy(tiny_polyps, tmp_path, keep=0)
    line = fails(capsys, "train", "--config", str(bad_config(tmp_path, tiny_polyps, root)))
    assert line == f"pseudoseg: error: {root}: nothing is labeled (no image has a mask in {root / 'masks'}); pseudoseg needs some masks"
    assert not (tmp_path / "run" / "split.json").exists()


def test_mask_folder_that_matches_no_image(tmp_path, tiny_polyps, capsys) -> None:
    root = partial_copy(tiny_polyps, tmp_path, keep=40)
    for mask in (root / "masks").iterdir():
        mask.rename(mask.with_name(f"mask_{mask.name}"))
    line = fails(capsys, "train", "--config", str(bad_config(tmp_path, tiny_polyps, root)))
    assert f"no mask in {root / 'masks'} matches an image in {root / 'images'} by file stem" in line


def test_unlabeled_folder_that_is_empty_or_holds_masks(tmp_path, tiny_polyps, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    line = fails(capsys, "train", "--config", str(bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset", unlabeled=[str(empty)])))
    assert f"{empty}: no images found for data.unlabeled" in line
    masks = tiny_polyps / "TrainDataset" / "masks"
    line = fails(capsys, "train", "--config", str(bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset", unlabeled=[str(masks)])))
    assert f"{masks}: holds masks, not images" in line
    line = fails(capsys, "train", "--config", str(bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset", unlabeled=[str(tmp_path / "nowhere")])))
    assert "unlabeled folder not found" in line and "nowhere" in line


def test_empty_configuration_file_names_data_train(tmp_path, capsys) -> None:
    config = tmp_path / "empty.yaml"
    config.write_text("")
    assert fails(capsys, "train", "--config", str(config)) == f"pseudoseg: error: {config}: data.train: required (the training folder); the data section is missing"


def no_space(*args, **kwargs):
    """A writer on a full disk."""
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_while_writing_a_checkpoint(tmp_path, tiny_polyps, capsys, monkeypatch) -> None:
    config = bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset")

    monkeypatch.setattr("pseudoseg.engine.checkpoint.save_file", no_space)
    line = fails(capsys, "train", "--config", str(config))
    assert line.startswith(f"pseudoseg: error: {tmp_path / 'run' / 'supervised'}") and line.endswith(".safetensors: cannot write (no space left on the device)")
    assert not list((tmp_path / "run").rglob("*.tmp"))


def test_full_disk_while_writing_the_image_cache(tmp_path, tiny_polyps, capsys, monkeypatch) -> None:
    config = bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset")

    monkeypatch.setattr("pseudoseg.data.store.ArrayStore.write", no_space)
    line = fails(capsys, "train", "--config", str(config))
    assert line.startswith(f"pseudoseg: error: {tmp_path / 'run' / 'cache'}/") and line.endswith("cannot write (no space left on the device)")
    assert list((tmp_path / "run" / "cache").iterdir()) == []  # no half-built cache left


def test_run_directory_that_cannot_be_written(tmp_path, tiny_polyps, capsys, monkeypatch) -> None:
    config = bad_config(tmp_path, tiny_polyps, tiny_polyps / "TrainDataset")
    original = Path.mkdir

    def refuse(self, *args, **kwargs):
        if str(self).startswith(str(tmp_path / "run")):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refuse)
    line = fails(capsys, "train", "--config", str(config))
    assert line == f"pseudoseg: error: {tmp_path / 'run'}: cannot write (permission denied)"


def test_predict_into_the_folder_of_jpeg_inputs_is_refused(tmp_path, tiny_polyps, capsys) -> None:
    config = write_config(tmp_path / "run.yaml", tiny_config(tmp_path, tiny_polyps, data={"test": None}, train={"steps": 2, "val_every": 2}))
    assert run_cli("train", "--config", str(config)) == 0
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted((tiny_polyps / "TestDataset" / "in_domain" / "images").iterdir())[:2]:
        Image.open(path).convert("RGB").save(folder / f"{path.stem}.jpg")
    before = tree_digest(folder)
    capsys.readouterr()
    line = fails(capsys, "predict", str(tmp_path / "run"), str(folder), str(folder))
    assert f"{folder}: the output folder is the input folder" in line
    assert tree_digest(folder) == before


def test_split_lists_and_explicit_label_modes(tmp_path, tiny_polyps, capsys) -> None:
    from pseudoseg.errors import UserError
    from pseudoseg.runner import choose_split

    root = partial_copy(tiny_polyps, tmp_path)
    raw = tiny_config(tmp_path, tiny_polyps, data={"train": str(root), "test": None})
    pool = load_pool(config_from_dict(raw).data, tmp_path / "cache")
    # A labeled list naming an image without a mask is refused, naming the list.
    listed = tmp_path / "labeled.txt"
    listed.write_text("train_00000\ntrain_00030\n")
    config = config_from_dict({**raw, "data": {**raw["data"], "labeled_list": str(listed)}})
    with pytest.raises(UserError, match=f"{listed}: 1 labeled id has no mask, e.g. 'train_00030'"):
        choose_split(config, pool, tmp_path / "run")
    # A fully labeled folder with labels: given keeps every mask (no hidden ones).
    full = config_from_dict({**raw, "data": {**raw["data"], "train": str(tiny_polyps / "TrainDataset"), "labels": "given"}})
    split = choose_split(full, load_pool(full.data, tmp_path / "cache"), tmp_path / "run")
    assert (len(split.labeled), len(split.unlabeled), len(split.validation)) == (32, 0, 8) and split.labeled_fraction is None


def test_comparison_puts_the_teacher_stage_beside_the_released_model(tmp_path, tiny_polyps) -> None:
    from pseudoseg.quickstart import compare_with_supervised

    raw = tiny_config(tmp_path, tiny_polyps, method={"name": "momentum", "teacher_steps": 2, "teacher_batch_size": 4}, eval={"pranet_metrics": True})
    config = config_from_dict(raw)
    result = train(config, show_progress=False, log=lambda _: None)
    lines: list = []
    comparison = compare_with_supervised(result, config, log=lines.append)
    assert comparison["supervised"]["weights"] == "teacher/best_ema.safetensors"
    assert comparison["semi_supervised"]["sets"] == result.metrics["sets"]
    assert sorted(comparison["supervised"]["sets"]) == sorted(result.metrics["sets"])
    table = (result.run_dir / "report" / "comparison.md").read_text()
    first = sorted(result.metrics["sets"])[0]
    gain = result.metrics["sets"][first]["dice@0.5"] - comparison["supervised"]["sets"][first]["dice@0.5"]
    assert f"| {first} | {comparison['supervised']['sets'][first]['dice@0.5']:.3f} |" in table and f"{gain:+.3f}" in table

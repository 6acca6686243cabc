"""From a trained run to a deployed model: recipes by name, --method, export, TTA and
post-processing, and what full disks and failed first runs leave behind.

The command-line tests run from a temporary folder outside the repository, as a user
after ``pip install`` would.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from scipy import ndimage

from conftest import run_cli, tiny_config, write_config

REPOSITORY = Path(__file__).resolve().parents[1]
SHIPPED = sorted(path.stem for path in (REPOSITORY / "pseudoseg" / "configs").glob("*.yaml"))


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --------------------------------------------------------------------------- recipes by name


def test_recipes_lists_every_shipped_recipe_on_one_line(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli("recipes") in (0, None)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == SHIPPED
    cvc = next(line for line in lines if line.startswith("polyp_momentum_cvc "))
    assert cvc.split()[1] == "momentum" and "CVC-ClinicDB" in cvc


def test_recipes_show_writes_the_recipe(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli("recipes", "show", "mri_tso_hippocampus") in (0, None)
    assert capsys.readouterr().out == (REPOSITORY / "pseudoseg" / "configs" / "mri_tso_hippocampus.yaml").read_text()
    assert run_cli("recipes", "show", "nosuch") == 2
    line = error_line(capsys)
    assert line.startswith("pseudoseg: error: nosuch: no recipe of that name; recipes: ") and "polyp_momentum_cvc" in line


def test_config_file_wins_over_a_recipe_of_the_same_name(tmp_path, monkeypatch) -> None:
    from pseudoseg.run_config import load_config

    monkeypatch.chdir(tmp_path)
    assert load_config("polyp_momentum_cvc").run_dir == Path("runs/polyp-momentum-cvc")
    write_config(tmp_path / "polyp_momentum_cvc", {"data": {"train": "mine"}, "run_dir": "runs/mine"})
    assert load_config("polyp_momentum_cvc").run_dir == Path("runs/mine")


def test_unknown_config_says_how_to_list_recipes(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert run_cli("train", "--config", "polyp_momentum_cvv") == 2
    assert error_line(capsys) == "pseudoseg: error: polyp_momentum_cvv: configuration file not found, and no recipe of that name (pseudoseg recipes lists them)"


@pytest.fixture(scope="module")
def cvc_like(tmp_path_factory) -> Path:
    """A folder laid out as the CVC-ClinicDB recipe expects (data/cvc-clinicdb/...), from the synthetic polyps."""
    from pseudoseg.synth.polyp import PolypSetSpec, generate_polyp_dataset

    cwd = tmp_path_factory.mktemp("user")
    generate_polyp_dataset(cwd / "data" / "cvc-clinicdb", PolypSetSpec(n_train=24, n_test=2, size=32, seed=0))
    return cwd


TINY = ["--set", "data.image_size=32", "--set", "model.channels=[8, 16, 32]", "--set", "train.steps=2", "--set", "train.val_every=2"]
TINY += ["--set", "train.batch_size=4", "--set", "train.unlabeled_batch_size=4", "--set", "train.amp=off", "--set", "eval.pranet_metrics=false"]


def test_train_a_recipe_by_name_from_outside_the_repository(cvc_like, monkeypatch, capsys) -> None:
    monkeypatch.chdir(cvc_like)
    args = ["train", "--config", "polyp_momentum_cvc", *TINY, "--set", "method.teacher_steps=2", "--set", "run_dir=runs/by-name"]
    assert run_cli(*args, "--json", "out.json") in (0, None)
    result = json.loads((cvc_like / "out.json").read_text())
    assert result["run_dir"] == "runs/by-name" and result["released"] == "ema"
    assert set(result["metrics"]["sets"]) == set(os.listdir(cvc_like / "data" / "cvc-clinicdb" / "TestDataset"))
    assert yaml.safe_load((cvc_like / "runs" / "by-name" / "config.yaml").read_text())["method"]["name"] == "momentum"


def test_method_flag_replaces_the_section_and_says_what_it_kept(cvc_like, monkeypatch, capsys) -> None:
    monkeypatch.chdir(cvc_like)
    args = ["train", "--config", "polyp_momentum_cvc", "--method", "unimatch", *TINY, "--set", "method.teacher_steps=2", "--set", "run_dir=runs/unimatch"]
    assert run_cli(*args) in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    assert "--method unimatch: method section of momentum replaced by unimatch's defaults; kept teacher_steps, teacher_batch_size, teacher_stage_momentum; dropped mode, teacher," in out
    method = yaml.safe_load((cvc_like / "runs" / "unimatch" / "config.yaml").read_text())["method"]
    assert method["name"] == "unimatch" and method["teacher_steps"] == 2 and method["teacher_batch_size"] == 16
    assert method["student_init"] == "labeled"  # the recipe's 'teacher' is not a unimatch value: dropped, the default stays
    assert (cvc_like / "runs" / "unimatch" / "model.json").is_file()


def test_set_method_name_with_another_methods_keys_suggests_method(cvc_like, monkeypatch, capsys) -> None:
    monkeypatch.chdir(cvc_like)
    assert run_cli("train", "--config", "polyp_momentum_cvc", "--set", "method.name=unimatch", "--set", "run_dir=runs/never") == 2
    line = error_line(capsys)
    assert line.endswith("polyp_momentum_cvc.yaml: method.mode: not a key of method unimatch (the section was written for another method); use --method unimatch to replace it with unimatch's defaults")
    assert not (cvc_like / "runs" / "never").exists()
    # a plain misspelling is not blamed on another method
    assert run_cli("train", "--config", "polyp_momentum_cvc", "--set", "method.bta=0.3") == 2
    assert error_line(capsys).endswith("polyp_momentum_cvc.yaml: method.bta: unknown key")
    assert run_cli("grid", "--config", "polyp_momentum_cvc", "--out", "grid", "--method", "nosuch") == 2
    assert error_line(capsys).startswith("pseudoseg: error: --method nosuch: no such method; registered: supervised, ")


def test_grid_takes_a_recipe_by_name_and_a_method(cvc_like, monkeypatch) -> None:
    from pseudoseg.grid import GridRequest, run_grid

    monkeypatch.chdir(cvc_like)
    lines: list[str] = []
    overrides = [text for text in TINY if text != "--set"] + ["method.teacher_steps=2", "method.rounds=1", "method.round_steps=2"]
    request = GridRequest(Path("polyp_momentum_cvc"), Path("grid"), seeds=(0,), overrides=tuple(overrides), method="tso", patience=1, variants=("tso",))
    summary = run_grid(request, log=lambda line: lines.append(str(line)))
    assert lines[0].startswith("--method tso: method section of momentum replaced by tso's defaults; kept teacher_steps")
    assert summary["family"] == "rounds" and set(summary["runs"]) == {"supervised", "tso"}
    assert yaml.safe_load((cvc_like / "grid" / "seed0" / "tso" / "config.yaml").read_text())["method"]["name"] == "tso"


# --------------------------------------------------------------------------- trained models for the tests below


@pytest.fixture(scope="module")
def polyp_run(tmp_path_factory, tiny_polyps) -> Path:
    from pseudoseg.run_config import config_from_dict
    from pseudoseg.runner import train

    tmp = tmp_path_factory.mktemp("polyp-run")
    config = tiny_config(tmp, tiny_polyps, train={"steps": 4, "val_every": 4}, eval={"pranet_metrics": False})
    train(config_from_dict(config), show_progress=False, log=lambda _: None)
    return tmp / "run"


@pytest.fixture(scope="module")
def ct_data(tmp_path_factory) -> Path:
    from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

    root = tmp_path_factory.mktemp("ct") / "data"
    generate_ct_dataset(root, CtSetSpec(n_train=6, n_test=2, shape=(24, 24, 10), seed=0, lesions=True))
    return root


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory, ct_data) -> Path:
    """Two classes (organ, lesion), 2.5-D slices with one neighbour on each side."""
    from pseudoseg.run_config import config_from_dict
    from pseudoseg.runner import train

    tmp = tmp_path_factory.mktemp("ct-run")
    config = {
        "run_dir": str(tmp / "run"),
        "data": {"kind": "volumes", "train": str(ct_data), "image_size": 16, "normalize": "unit", "context": 1, "labeled_fraction": 0.5, "val_fraction": 0.2},
        "model": {"name": "unet", "channels": [8, 16, 32], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 4, "batch_size": 4, "amp": "off"},
        "method": {"name": "supervised"},
    }
    train(config_from_dict(config), show_progress=False, log=lambda _: None)
    return tmp / "run"


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize("run", ["polyp_run", "ct_run"])
def test_onnx_export_matches_pytorch_at_any_batch_and_size(run, request, tmp_path, monkeypatch, capsys) -> None:
    import onnxruntime

    from pseudoseg.inference import Predictor

    run_dir = request.getfixturevalue(run)
    monkeypatch.chdir(tmp_path)
    assert run_cli("export", str(run_dir), "model.onnx") in (0, None)
    out = capsys.readouterr().out
    difference = float(out.split("largest difference to PyTorch on a random batch: ")[1].split()[0])
    assert difference < 1e-4
    predictor = Predictor.load(run_dir, device="cpu", amp="off")
    sidecar = json.loads((tmp_path / "model.json").read_text())
    assert sidecar["format"] == "pseudoseg-export" and sidecar["preprocessing"] == predictor.preprocessing.to_json()
    classes = predictor.preprocessing.classes
    assert sidecar["output"]["channels"] == (["foreground"] if classes.is_binary else ["background", *classes.names])
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    size = predictor.preprocessing.image_size
    for batch, height, width in ((1, size, size), (3, 2 * size, size + 8)):
        image = torch.rand(batch, predictor.preprocessing.in_channels, height, width, generator=torch.Generator().manual_seed(batch))
        (got,) = session.run(None, {"image": image.numpy()})
        expected = predictor.forward(image).numpy()
        assert got.shape == (batch, classes.channels, height, width)
        print(f"{run}: batch {batch}, {height}x{width}: max abs difference {np.abs(got - expected).max():.2e}")
        assert np.abs(got - expected).max() < 1e-4


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:DeprecationWarning")
def test_torchscript_export_matches_pytorch(polyp_run, tmp_path, capsys) -> None:
    from pseudoseg.inference import Predictor

    assert run_cli("export", str(polyp_run), str(tmp_path / "model.pt"), "--torchscript") in (0, None)
    capsys.readouterr()
    predictor = Predictor.load(polyp_run, device="cpu", amp="off")
    image = torch.rand(2, 3, 40, 48)
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    assert torch.allclose(scripted(image), predictor.forward(image), atol=1e-5)
    assert json.loads((tmp_path / "model.json").read_text())["file_format"] == "torchscript"


def test_export_refuses_to_overwrite_and_to_clobber_a_weights_json(polyp_run, tmp_path, capsys) -> None:
    released = json.loads((polyp_run / "model.json").read_text())["networks"]["ema"]
    weights = polyp_run / released
    before = weights.with_suffix(".json").read_text()
    assert run_cli("export", str(weights), str(weights.with_suffix(".onnx"))) == 2
    assert "exists and is not an export description" in error_line(capsys)
    assert weights.with_suffix(".json").read_text() == before and not weights.with_suffix(".onnx").exists()
    assert run_cli("export", str(polyp_run), str(tmp_path / "m.onnx")) in (0, None)
    capsys.readouterr()
    assert run_cli("export", str(polyp_run), str(tmp_path / "m.onnx")) == 2
    assert error_line(capsys) == f"pseudoseg: error: {tmp_path / 'm.onnx'}: exists; pass --overwrite to replace it"
    assert run_cli("export", str(polyp_run), str(tmp_path / "m.onnx.bak")) == 2
    assert "must end in .onnx" in error_line(capsys)


@pytest.mark.parametrize("run", ["polyp_run", "ct_run"])
def test_predict_from_the_onnx_file_writes_what_pytorch_writes(run, request, tiny_polyps, ct_data, tmp_path, capsys) -> None:
    run_dir = request.getfixturevalue(run)
    inputs = tiny_polyps / "TestDataset" / "in_domain" / "images" if run == "polyp_run" else ct_data / "imagesTs"
    assert inputs.is_dir()
    assert run_cli("export", str(run_dir), str(tmp_path / "model.onnx")) in (0, None)
    for options in ([], ["--tta", "--largest-component"]):
        assert run_cli("predict", str(tmp_path / "model.onnx"), str(inputs), str(tmp_path / "onnx"), *options) in (0, None)
        assert run_cli("predict", str(run_dir), str(inputs), str(tmp_path / "torch"), "--amp", "off", *options) in (0, None)
        written = sorted(path.name for path in (tmp_path / "onnx").iterdir())
        assert written and written == sorted(path.name for path in (tmp_path / "torch").iterdir())
        for name in written:
            assert np.array_equal(_read_labels(tmp_path / "onnx" / name), _read_labels(tmp_path / "torch" / name)), name
    capsys.readouterr()
    (tmp_path / "model.json").unlink()
    assert run_cli("predict", str(tmp_path / "model.onnx"), str(inputs), str(tmp_path / "again")) == 2
    assert error_line(capsys).endswith("model.json: not found; an exported model needs the JSON pseudoseg export wrote beside it")


def _read_labels(path: Path) -> np.ndarray:
    if path.suffix == ".png":
        return np.asarray(Image.open(path))
    import nibabel as nib

    return np.asarray(nib.load(path).dataobj)


# --------------------------------------------------------------------------- TTA and post-processing


def test_tta_averages_the_flipped_views_flipped_back(polyp_run) -> None:
    from pseudoseg.inference import PredictionOptions, Predictor, flip_views

    assert flip_views(2) == [(), (2,), (3,), (2, 3)]
    plain = Predictor.load(polyp_run, device="cpu", amp="off")
    augmented = Predictor.load(polyp_run, device="cpu", amp="off", options=PredictionOptions(tta=True))
    records = np.random.default_rng(0).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    unit = torch.from_numpy(records).float() / 255
    by_hand = sum(plain.forward(unit.flip(axes)).flip(axes) for axes in [(), (2,), (3,), (2, 3)]) / 4
    assert torch.allclose(augmented.probabilities(records), by_hand, atol=1e-6)
    assert not torch.allclose(plain.probabilities(records), by_hand, atol=1e-4)  # the views differ: the average is not the plain output


def test_keep_largest_components_per_class_in_2d_and_3d() -> None:
    from pseudoseg.inference import keep_largest_components

    image = torch.zeros(12, 12, dtype=torch.long)
    image[1:3, 1:3] = 1  # small piece of class 1
    image[5:10, 5:10] = 1  # its largest
    image[0, 8:12] = 2  # class 2: the largest piece of its own, though smaller than class 1's
    image[11, 0] = 2
    kept = keep_largest_components(image, classes=2)
    assert kept[1:3, 1:3].sum() == 0 and (kept[5:10, 5:10] == 1).all() and (kept[0, 8:12] == 2).all() and kept[11, 0] == 0
    volume = torch.zeros(6, 8, 8, dtype=torch.long)
    volume[0, 0, 0] = 1
    volume[2:5, 2:5, 2:5] = 1
    volume[5, 7, 7] = 1
    kept = keep_largest_components(volume, classes=1)
    assert int(kept.sum()) == 27 and kept[0, 0, 0] == 0


@pytest.mark.parametrize("run", ["polyp_run", "ct_run"])
def test_predict_largest_component_leaves_one_piece_per_class(run, request, tiny_polyps, ct_data, tmp_path, capsys) -> None:
    from pseudoseg.inference import Predictor

    run_dir = request.getfixturevalue(run)
    inputs = tiny_polyps / "TestDataset" / "in_domain" / "images" if run == "polyp_run" else ct_data / "imagesTs"
    assert run_cli("predict", str(run_dir), str(inputs), str(tmp_path / "plain"), "--amp", "off") in (0, None)
    assert run_cli("predict", str(run_dir), str(inputs), str(tmp_path / "kept"), "--amp", "off", "--largest-component") in (0, None)
    capsys.readouterr()
    values = [0, 255] if run == "polyp_run" else [0, *[v[0] for v in Predictor.load(run_dir, device="cpu").preprocessing.classes.values]]
    pieces_before = 0
    for path in sorted((tmp_path / "kept").iterdir()):
        plain, kept = _read_labels(tmp_path / "plain" / path.name), _read_labels(path)
        for value in values[1:]:
            structure = np.ones((3,) * plain.ndim)
            pieces_before += ndimage.label(plain == value, structure)[1]
            pieces = ndimage.label(kept == value, structure)[1]
            assert pieces == min(1, ndimage.label(plain == value, structure)[1])
            assert ((kept == value) <= (plain == value)).all()  # only removes
    assert pieces_before > 0


def test_evaluate_scores_what_predict_writes_with_tta_and_largest_component(ct_run, ct_data, tmp_path, capsys) -> None:
    """Volumes: evaluate's Dice is the Dice of the label maps predict writes, with the same options."""
    import nibabel as nib

    from pseudoseg.evaluation.evaluate import read_test_label
    from pseudoseg.evaluation.volume_metrics import VolumeMetrics
    from pseudoseg.inference import Predictor

    classes = Predictor.load(ct_run, device="cpu").preprocessing.classes
    scores = {}
    for name, options in {"plain": [], "tta": ["--tta"], "both": ["--tta", "--largest-component"]}.items():
        out = tmp_path / f"{name}.json"
        assert run_cli("evaluate", str(ct_run), "--test", str(ct_data), "--amp", "off", *options, "--json", str(out)) in (0, None)
        scores[name] = json.loads(out.read_text())["sets"]["test"]
        assert run_cli("predict", str(ct_run), str(ct_data / "imagesTs"), str(tmp_path / name), "--amp", "off", *options) in (0, None)
        metric = VolumeMetrics(classes.names)
        for path in sorted((tmp_path / name).iterdir()):
            values = np.asarray(nib.load(path).dataobj)
            truth = read_test_label(ct_data / "labelsTs" / path.name, classes)
            index = np.zeros_like(values)
            for number, value in enumerate(classes.values, 1):
                index[values == value[0]] = number
            metric.update(path.name, index, truth, (1.0, 1.0, 1.0))
        assert metric.compute()["dice"] == pytest.approx(scores[name]["dice"], abs=1e-9), name
    capsys.readouterr()
    assert scores["plain"]["dice"] != scores["tta"]["dice"]


# --------------------------------------------------------------------------- full disks


def _tiny_run(tmp_path: Path, tiny_polyps: Path, run_dir: Path) -> Path:
    config = tiny_config(tmp_path, tiny_polyps, run_dir=str(run_dir), data={"test": None, "cache_dir": str(tmp_path / "cache")})
    config["model"]["channels"] = [16, 32, 64, 128]  # weights of about 1.5 MB: more than the small file system holds
    config["train"].update({"steps": 2, "val_every": 2})
    return write_config(tmp_path / "run.yaml", config)


def _assert_nothing_half_written(run_dir: Path) -> None:
    from pseudoseg.fileio import is_temporary_name

    for folder, dirs, files in os.walk(run_dir):
        assert not [name for name in dirs + files if is_temporary_name(name)], folder
        assert not [name for name in files if name.endswith(".safetensors")], folder


def test_disk_full_while_writing_a_checkpoint_on_a_small_file_system(tmp_path, tiny_polyps) -> None:
    """A 256 kB tmpfs, mounted in a user and mount namespace of its own (needs unshare and mount)."""
    small = tmp_path / "small"
    small.mkdir()
    probe = ["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)]
    if shutil.which("unshare") is None or subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("no user namespace here to mount a small tmpfs in; test_disk_full_from_the_serializer covers the same path")
    config = _tiny_run(tmp_path, tiny_polyps, small / "run")
    script = f"mount -t tmpfs -o size=256k tmpfs {small} && cd {tmp_path} && {sys.executable} -m pseudoseg train --config {config}; echo exit=$?; ls -la {small}/run {small}/run/*/"
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert "exit=2" in done.stdout, done.stdout + done.stderr
    errors = done.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("pseudoseg: error: ") and errors[0].endswith(".safetensors: cannot write (no space left on the device)"), done.stderr
    assert ".tmp" not in done.stdout and ".safetensors" not in done.stdout.replace(".safetensors:", "")  # the listing of the run


def test_disk_full_from_the_serializer(tmp_path, tiny_polyps, monkeypatch, capsys) -> None:
    """ENOSPC as safetensors reports it (its own SafetensorError, not an OSError), with part of the file written."""
    from safetensors import SafetensorError

    import pseudoseg.engine.checkpoint as checkpoint

    def fills_the_disk(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(checkpoint, "save_file", fills_the_disk)
    run_dir = tmp_path / "run"
    assert run_cli("train", "--config", str(_tiny_run(tmp_path, tiny_polyps, run_dir))) == 2
    line = error_line(capsys)
    assert line.startswith(f"pseudoseg: error: {run_dir}/") and line.endswith(".safetensors: cannot write (no space left on the device)")
    _assert_nothing_half_written(run_dir)


def test_other_serializer_errors_keep_their_traceback(tmp_path) -> None:
    from safetensors import SafetensorError

    from pseudoseg.fileio import disk_errors

    with pytest.raises(SafetensorError):
        with disk_errors(tmp_path / "x.safetensors"):
            raise SafetensorError("Error while serializing: something else")


def test_disk_full_from_json_and_png_writers(tmp_path, monkeypatch) -> None:
    import errno

    from pseudoseg.errors import UserError
    from pseudoseg.fileio import write_json
    from pseudoseg.predict import _save_png

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(UserError, match=r"a\.json: cannot write \(no space left on the device\)"):
        write_json(tmp_path / "a.json", {"x": 1})
    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(UserError, match=r"b\.png: cannot write \(no space left on the device\)"):
        _save_png(tmp_path / "b.png", np.zeros((4, 4), np.uint8))
    assert sorted(os.listdir(tmp_path)) == []


# --------------------------------------------------------------------------- a failed first run


def test_missing_training_folder_writes_nothing_then_the_right_one_trains(tmp_path, tiny_polyps, capsys) -> None:
    config = tiny_config(tmp_path, tiny_polyps, data={"test": None})
    wrong = write_config(tmp_path / "wrong.yaml", {**config, "data": {**config["data"], "train": str(tmp_path / "TrainDatset")}})
    assert run_cli("train", "--config", str(wrong)) == 2
    assert error_line(capsys) == f"pseudoseg: error: training folder not found: {tmp_path / 'TrainDatset'} (data.train)"
    assert not (tmp_path / "run").exists()
    assert run_cli("train", "--config", str(write_config(tmp_path / "right.yaml", config))) in (0, None)
    assert (tmp_path / "run" / "model.json").is_file()


def test_a_run_dir_holding_only_a_configuration_is_taken_over(tmp_path, tiny_polyps, capsys) -> None:
    config = tiny_config(tmp_path, tiny_polyps, data={"test": None})
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    failing = write_config(tmp_path / "failing.yaml", {**config, "data": {**config["data"], "train": str(empty)}})
    assert run_cli("train", "--config", str(failing)) == 2  # fails reading the pool, after config.yaml
    capsys.readouterr()
    assert (tmp_path / "run" / "config.yaml").is_file() and not (tmp_path / "run" / "split.json").exists()
    assert run_cli("train", "--config", str(write_config(tmp_path / "right.yaml", config))) in (0, None)
    out = " ".join(capsys.readouterr().out.split())
    assert f"{tmp_path / 'run'}: held only the configuration of a run that never started a stage (data.train differed); replaced by this one" in out
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["data"]["train"] == config["data"]["train"]
    assert (tmp_path / "run" / "model.json").is_file()
    # once a stage has started, another configuration is refused as before
    assert run_cli("train", "--config", str(failing)) == 2
    assert "holds a run with another configuration (data.train differs); choose a new run_dir" in error_line(capsys)


# --------------------------------------------------------------------------- data check


def test_data_check_says_a_repeated_problem_once(tmp_path, tiny_polyps, capsys) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_polyps / "TrainDataset", root)
    masks = sorted((root / "masks").iterdir())
    label_map = np.zeros((48, 48), np.uint8)
    label_map[:10], label_map[10:20] = 1, 2
    for path in masks:
        Image.fromarray(label_map).save(path)
    assert run_cli("data", "check", str(root)) == 2
    lines = capsys.readouterr().out.splitlines()
    problems = lines[next(i for i, line in enumerate(lines) if "it would not train" in line) :]
    text = " ".join(" ".join(problems).split())
    assert problems[0] == "1 problem: it would not train"
    first = ", ".join(str(path) for path in masks[:3])
    assert text.startswith(f"1 problem: it would not train - {len(masks)} files: mask looks like a multi-class label map (values 0..2);")
    assert text.endswith(f"({first}, ...)") and "nothing is labeled" not in text

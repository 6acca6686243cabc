"""Data formats are plug-ins: a format installed from outside the package trains, evaluates and predicts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pseudoseg.data.registry import register_source, source_names, source_origin
from pseudoseg.data.sources import ImageSource, data_source
from pseudoseg.errors import UserError

REPO = Path(__file__).resolve().parents[1]

# One file: the whole format. Arrays in .npz files: "image" (H, W, 3 uint8) and, for a
# labeled image, "mask" (H, W; non-zero is the polyp).
NPZ_FORMAT = '''
from pathlib import Path

import numpy as np

from pseudoseg.data.registry import register_source
from pseudoseg.data.sources import ImagePair, ImageSource
from pseudoseg.errors import UserError


def _pairs(folder):
    files = sorted(Path(folder).glob("*.npz"))
    if not files:
        raise UserError(f"{folder}: no .npz files")
    pairs = []
    for path in files:
        with np.load(path) as arrays:
            pairs.append(ImagePair(path.stem, path, path if "mask" in arrays.files else None))
    return pairs


@register_source("npz")
class NpzSource(ImageSource):
    """Arrays in .npz files: image (H, W, 3) and, when labeled, mask (H, W)."""

    def find_training(self, data):
        return _pairs(data.train)

    def find_unlabeled(self, folder, data):
        return [ImagePair(pair.stem, pair.image, None) for pair in _pairs(folder)]

    def find_test_sets(self, root, data):
        return {folder.name: _pairs(folder) for folder in sorted(Path(root).iterdir()) if folder.is_dir()}

    def read_image(self, pair):
        with np.load(pair.image) as arrays:
            return arrays["image"]

    def read_mask(self, pair, classes):
        with np.load(pair.mask) as arrays:
            return (arrays["mask"] > 0).astype(np.uint8)
'''


def _distribution(root: Path) -> None:
    """The format installed as importlib.metadata finds a distribution on sys.path: its module and dist-info."""
    (root / "npz_format.py").write_text(textwrap.dedent(NPZ_FORMAT))
    info = root / "npz_format-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: npz-format\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text("[pseudoseg.data_sources]\nnpz = npz_format\n")


def _write_case(path: Path, rng: np.random.Generator, *, labeled: bool) -> None:
    """A 40 x 40 frame with a bright disc (the "polyp") on textured background."""
    yy, xx = np.mgrid[:40, :40]
    cy, cx, r = rng.integers(12, 28), rng.integers(12, 28), rng.integers(5, 9)
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    image = rng.integers(30, 90, size=(40, 40, 3)).astype(np.uint8)
    image[mask > 0] = (200, 120, 110)
    arrays = {"image": image, "mask": mask} if labeled else {"image": image}
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def npz_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    (root / "train").mkdir()
    (root / "test" / "frames").mkdir(parents=True)
    (root / "new").mkdir()
    for k in range(24):
        _write_case(root / "train" / f"case{k:02d}.npz", rng, labeled=k < 16)
    for k in range(6):
        _write_case(root / "test" / "frames" / f"test{k}.npz", rng, labeled=True)
    for k in range(2):
        _write_case(root / "new" / f"new{k}.npz", rng, labeled=False)
    return root


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    _distribution(root)
    return root


def _pseudoseg(*argv: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "pseudoseg", *argv], capture_output=True, text=True, env=env, cwd=path, timeout=600)


def test_the_built_in_formats_are_registered() -> None:
    assert source_names() == ("folders", "volumes")
    assert [data_source(name).geometry for name in source_names()] == ["images", "volumes"]
    assert source_origin("folders") == "built in" and isinstance(data_source("folders"), ImageSource)
    with pytest.raises(UserError, match=r"^data.kind: unknown data format 'npz'; registered: folders, volumes$"):
        data_source("npz")


def test_register_source_marks_and_adds_nothing() -> None:
    @register_source("marked-only")
    class Marked(ImageSource):
        pass

    assert Marked.name == "marked-only" and "marked-only" not in source_names()
    with pytest.raises(ValueError, match="use letters"):
        register_source("two words")


def test_a_plugin_format_is_listed_checked_trained_evaluated_and_predicted(plugin: Path, npz_data: Path, tmp_path: Path) -> None:
    listed = _pseudoseg("data", "formats", "--json", "-", path=plugin)
    assert listed.returncode == 0, listed.stderr
    formats = {entry["name"]: entry for entry in json.loads(listed.stdout)["formats"]}
    assert list(formats) == ["folders", "volumes", "npz"]
    assert formats["npz"] == {
        "name": "npz",
        "geometry": "images",
        "source": "npz-format 0.3",
        "class": "npz_format.NpzSource",
        "summary": "Arrays in .npz files: image (H, W, 3) and, when labeled, mask (H, W).",
    }
    # the data check reads every file through the format's own readers
    checked = _pseudoseg("data", "check", str(npz_data / "train"), "--kind", "npz", "--test", str(npz_data / "test"), "--json", str(tmp_path / "check.json"), path=plugin)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["counts"] == {"labeled": 16, "unlabeled": 8, "test": 6} and report["sizes"] == {"40x40": 24} and report["mask_values"] == [0, 1]

    config = {
        "run_dir": str(tmp_path / "run"),
        "data": {"kind": "npz", "train": str(npz_data / "train"), "test": str(npz_data / "test"), "image_size": 32, "labels": "given", "val_fraction": 0.25},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 2, "log_every": 2, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1},
        "method": {"name": "mean_teacher"},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    trained = _pseudoseg("train", "--config", str(tmp_path / "run.yaml"), "--json", str(tmp_path / "out.json"), path=plugin)
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert (len(split["labeled"]), len(split["unlabeled"]), len(split["validation"])) == (12, 8, 4)
    scores = out["metrics"]["sets"]["frames"]
    assert set(scores) >= {"dice@0.5", "meanDice"} and scores["n"] == 6
    log = [json.loads(line) for line in (tmp_path / "run" / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log if record["kind"] == "val"] == [0, 2, 4]

    predicted = _pseudoseg("predict", str(tmp_path / "run"), str(npz_data / "new"), str(tmp_path / "masks"), path=plugin)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    written = sorted((tmp_path / "masks").iterdir())
    assert [path.name for path in written] == ["new0.png", "new1.png"]
    assert np.asarray(Image.open(written[0])).shape == (40, 40)  # the input's own size

    # a test set holding a training file (by content) is refused before training
    shutil.copy(npz_data / "train" / "case03.npz", npz_data / "test" / "frames" / "copy.npz")
    try:
        refused = _pseudoseg("train", "--config", str(tmp_path / "run.yaml"), "--set", f"run_dir={tmp_path / 'run2'}", path=plugin)
    finally:
        (npz_data / "test" / "frames" / "copy.npz").unlink()
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "data.test: 1 test image is also in the training pool (same content):" in refused.stderr and "copy.npz" in refused.stderr


def test_a_broken_format_plugin_is_one_line_naming_it(tmp_path: Path) -> None:
    _distribution(tmp_path)
    (tmp_path / "npz_format.py").write_text("import does_not_exist_anywhere\n")
    listed = _pseudoseg("data", "formats", path=tmp_path)
    assert listed.returncode == 2
    assert listed.stderr.strip() == (
        "pseudoseg: error: plug-in data source 'npz' (npz_format, from npz-format 0.3): ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    )
    (tmp_path / "npz_format.py").write_text(textwrap.dedent(NPZ_FORMAT).replace('register_source("npz")', 'register_source("folders")'))
    clash = _pseudoseg("data", "formats", path=tmp_path)
    assert clash.returncode == 2 and "ValueError: data source 'folders' is already registered (built in)" in clash.stderr
    (tmp_path / "npz_format.py").write_text(textwrap.dedent(NPZ_FORMAT).replace("    def read_mask(self, pair, classes):", "    def read_mask_(self, pair, classes):"))
    incomplete = _pseudoseg("data", "formats", path=tmp_path)
    assert incomplete.returncode == 2 and "TypeError: NpzSource is not a complete pseudoseg.data.sources.DataSource" in incomplete.stderr

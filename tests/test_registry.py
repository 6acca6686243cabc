"""The method registry: listing and creation, a plug-in method from outside the package, import hygiene, the Python API."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal, get_args

import pytest
import yaml

import pseudoseg
from pseudoseg.config import MethodSection
from pseudoseg.run_config import config_from_dict, config_reference, run_config_class
from pseudoseg.errors import UserError
from pseudoseg.methods import get_method, grid_families, list_methods, register
from pseudoseg.methods.mean_teacher import MeanTeacherConfig, run_mean_teacher
from pseudoseg.methods.registry import method_sections

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------- the registry API


def test_the_built_in_methods_are_listed_in_order_with_one_line_each() -> None:
    methods = list_methods()
    # the default first, then by module: a new file in pseudoseg/methods is found without being listed anywhere
    assert [info.name for info in methods] == ["supervised", "bcp", "cps", "fixmatch", "mean_teacher", "momentum", "atso", "tso", "unimatch"]
    assert all(info.source == "built in" and info.summary and "\n" not in info.summary for info in methods)
    assert {info.module for info in methods} == {f"pseudoseg.methods.{name}" for name in ("supervised", "bcp", "cps", "fixmatch", "momentum", "mean_teacher", "rounds", "unimatch")}
    assert get_method("atso").section is get_method("tso").section  # one section, one loop, two methods
    assert get_method("mean_teacher").section is MeanTeacherConfig and get_method("mean_teacher").recipe is run_mean_teacher
    assert not get_method("supervised").uses_unlabeled and get_method("tso").uses_unlabeled
    for info in methods:  # every recipe a method names ships with the package
        assert all(path.is_file() for path in info.recipe_files()), info.name
    assert [path.name for path in get_method("tso").recipe_files()] == ["ct_tso_synthetic.yaml", "mri_tso_hippocampus.yaml"]


def test_an_unknown_method_names_those_that_exist() -> None:
    with pytest.raises(UserError, match=r"^method.name: no method 'cutmix'; registered: supervised, bcp, cps, fixmatch, mean_teacher, momentum, atso, tso, unimatch \(pseudoseg methods lists them\)$"):
        get_method("cutmix")
    with pytest.raises(UserError) as refused:
        config_from_dict({"data": {"train": "x"}, "method": {"name": "cutmix"}})
    assert str(refused.value) == (
        "configuration: method: Input tag 'cutmix' found using 'name' does not match any of the expected tags: "
        "'supervised', 'bcp', 'cps', 'fixmatch', 'mean_teacher', 'momentum', 'atso', 'tso', 'unimatch'"
    )
    with pytest.raises(UserError, match=r"^configuration: method.name: required, one of supervised, bcp, cps, fixmatch, mean_teacher, momentum, atso, tso, unimatch$"):
        config_from_dict({"data": {"train": "x"}, "method": {"beta": 0.5}})
    # a key of another method's section: the section was written for that method
    with pytest.raises(UserError, match=r"^configuration: method.mode: not a key of method mean_teacher \(the section was written for another method\); use --method mean_teacher to replace it with mean_teacher's defaults$"):
        config_from_dict({"data": {"train": "x"}, "method": {"name": "mean_teacher", "mode": "online"}})


def test_the_configuration_is_the_union_of_the_registered_sections() -> None:
    annotation = run_config_class().model_fields["method"].annotation
    assert get_args(annotation) == method_sections() == tuple(dict.fromkeys(info.section for info in list_methods()))
    assert config_from_dict({"data": {"train": "x"}}).method.name == "supervised"
    reference = config_reference()
    for section in method_sections():  # docs/configuration.md's reference lists every method's keys
        names = " / ".join(get_args(section.model_fields["name"].annotation))
        assert f"*name: {names}*" in reference
    assert "| `method.rampup_steps` |" in reference


def test_registering_checks_the_section_and_adds_nothing_by_itself() -> None:
    class Twice(MethodSection):
        name: Literal["twice"] = "twice"

    with pytest.raises(TypeError, match="Twice.name must be a Literal holding 'other'"):
        register("other", section=Twice, summary="x")
    with pytest.raises(TypeError, match="summary must be one line"):
        register("twice", section=Twice, summary="one\ntwo")
    with pytest.raises(TypeError, match="subclass of pseudoseg.config.MethodSection"):
        register("twice", section=dict, summary="x")

    @register("twice", section=Twice, summary="Marked, not registered: the registry is built from modules and entry points.")
    def run_twice(session):
        raise AssertionError

    assert "twice" not in [info.name for info in list_methods()]
    assert not hasattr(list_methods(), "append") and not hasattr(grid_families(), "__setitem__")


def test_grid_families_come_from_the_method_files() -> None:
    families = grid_families()
    assert list(families) == ["momentum", "rounds"]
    assert families["momentum"].methods == ("momentum",) and families["rounds"].methods == ("atso", "tso")
    assert (families["momentum"].reference, families["rounds"].reference) == ("supervised", "tso")
    assert "grid.py" not in {Path(info.module.replace(".", "/")).name for info in list_methods()}
    grid_source = (REPO / "pseudoseg" / "grid.py").read_text()
    for name in ("momentum", "mean_teacher", "atso", "tso", "teacher_momentum", "round_steps"):
        assert f'"{name}"' not in grid_source, name


# --------------------------------------------------------------------------- a plug-in method


PLUGIN = '''
"""Entropy minimisation: supervised loss plus the mean pixel entropy of the unlabeled predictions."""

from typing import Literal

import torch
from pydantic import Field

from pseudoseg.config import MethodSection
from pseudoseg.engine.labels import probabilities
from pseudoseg.methods import RecipeOutcome, Strategy, register


class EntropyConfig(MethodSection):
    """Entropy minimisation on the unlabeled images."""

    name: Literal["entropy_min"] = "entropy_min"
    weight: float = Field(0.1, ge=0)
    """Weight of the entropy term."""


class EntropyStrategy(Strategy):
    uses_unlabeled = True

    def __init__(self, weight):
        self.weight = weight

    def loss(self, batch, forward, step):
        logits = forward(torch.cat([batch.images, batch.unlabeled]))
        labeled = batch.images.shape[0]
        loss_sup = self.context.criterion(logits[:labeled], batch.masks)
        p = probabilities(logits[labeled:]).clamp(1e-6, 1 - 1e-6)
        entropy = -(p * p.log() + (1 - p) * (1 - p).log()).mean()
        return loss_sup + self.weight * entropy, {"loss_sup": loss_sup.detach(), "entropy": entropy.detach()}


@register("entropy_min", section=EntropyConfig, summary="Entropy minimisation on unlabeled images (a plug-in).")
def run_entropy_min(session):
    session.require_unlabeled()
    spec = session.semi_supervised_stage("entropy", EntropyStrategy(session.config.method.weight), steps=session.config.train.steps)
    result = session.fit(spec)
    return RecipeOutcome("raw", {"raw": result.weights("raw")})
'''


def _distribution(root: Path, name: str, module: str, source: str, entry: str) -> None:
    """An installed distribution as importlib.metadata finds it on sys.path: a module and its dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{name.replace('-', '_')}-0.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[pseudoseg.methods]\n{entry} = {module}\n")


def _pseudoseg(*argv: str, path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(path), str(REPO)])}
    return subprocess.run([sys.executable, "-m", "pseudoseg", *argv], capture_output=True, text=True, env=env, cwd=path, timeout=600)


@pytest.fixture(scope="module")
def plugin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plugin")
    _distribution(root, "entropy-plugin", "entropy_plugin", PLUGIN, "entropy")
    return root


def test_a_plugin_method_is_listed_and_trained_from_the_command_line(plugin: Path, tiny_polyps: Path, tmp_path: Path) -> None:
    listed = _pseudoseg("methods", "--json", "-", path=plugin)
    assert listed.returncode == 0, listed.stderr
    methods = {entry["name"]: entry for entry in json.loads(listed.stdout)["methods"]}
    assert list(methods)[-1] == "entropy_min" and methods["entropy_min"]["source"] == "entropy-plugin 0.3"
    assert methods["entropy_min"]["summary"] == "Entropy minimisation on unlabeled images (a plug-in)."
    assert methods["momentum"]["source"] == "built in"
    table = _pseudoseg("methods", path=plugin)
    assert table.returncode == 0 and "entropy_min" in table.stdout and "entropy-plugin 0.3" in table.stdout
    config = {
        "run_dir": str(tmp_path / "run"),
        "data": {"train": str(tiny_polyps / "TrainDataset"), "test": str(tiny_polyps / "TestDataset"), "image_size": 32},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 2, "log_every": 2, "batch_size": 4, "unlabeled_batch_size": 4, "amp": "off", "num_threads": 1},
        "eval": {"pranet_metrics": False},
        "method": {"name": "entropy_min", "weight": 0.5},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    trained = _pseudoseg("train", "--config", str(tmp_path / "run.yaml"), "--json", str(tmp_path / "out.json"), path=plugin)
    assert trained.returncode == 0, trained.stderr[-2000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["released"] == "raw" and out["metrics"]["method"] == "entropy_min"
    assert set(out["metrics"]["sets"]) == {"blur_noise", "colour_shift", "in_domain", "low_contrast", "small_lesions"}
    log = [json.loads(line) for line in (tmp_path / "run" / "entropy" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["kind"] == "train" and "entropy" in r] == [2, 4]
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["method"] == {"name": "entropy_min", "weight": 0.5}
    # its keys are validated like any other method's
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**config, "method": {"name": "entropy_min", "weigth": 1}}))
    refused = _pseudoseg("train", "--config", str(tmp_path / "bad.yaml"), path=plugin)
    assert refused.returncode == 2 and refused.stderr.strip() == f"pseudoseg: error: {tmp_path / 'bad.yaml'}: method.weigth: unknown key"
    # and its section is in the configuration reference of that installation
    reference = subprocess.run(
        [sys.executable, "-m", "pseudoseg.run_config"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": f"{plugin}{os.pathsep}{REPO}"}, timeout=600
    )
    assert "| `method.weight` | float | `0.1` | *name: entropy_min*. Weight of the entropy term. |" in reference.stdout


def test_a_broken_plugin_is_one_line_naming_it(tmp_path: Path) -> None:
    _distribution(tmp_path, "broken-plugin", "broken_plugin", "import does_not_exist_anywhere\n", "broken")
    listed = _pseudoseg("methods", path=tmp_path)
    assert listed.returncode == 2
    assert listed.stderr.strip() == (
        "pseudoseg: error: plug-in method 'broken' (broken_plugin, from broken-plugin 0.3): "
        "ModuleNotFoundError: No module named 'does_not_exist_anywhere'"
    )
    (tmp_path / "broken_plugin.py").write_text(PLUGIN.replace('register("entropy_min"', 'register("momentum"'))
    mismatch = _pseudoseg("methods", path=tmp_path)
    assert mismatch.returncode == 2 and len(mismatch.stderr.strip().splitlines()) == 1
    assert "TypeError: method 'momentum': EntropyConfig.name must be a Literal holding 'momentum'" in mismatch.stderr
    (tmp_path / "broken_plugin.py").write_text(PLUGIN.replace('"entropy_min"', '"momentum"'))
    clash = _pseudoseg("methods", path=tmp_path)
    assert clash.returncode == 2 and clash.stderr.strip() == (
        "pseudoseg: error: plug-in method 'broken' (broken_plugin, from broken-plugin 0.3): "
        "ValueError: method 'momentum' is already registered (pseudoseg.methods.momentum, built in)"
    )


# --------------------------------------------------------------------------- import hygiene


def _modules_after(statement: str) -> set[str]:
    code = f"import sys, json; {statement}; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, check=True, timeout=600)
    return set(json.loads(done.stdout))


def test_the_training_loop_imports_no_evaluation_code() -> None:
    loaded = _modules_after("import pseudoseg.engine.trainer")
    assert "pseudoseg.engine.trainer" in loaded
    assert not {name for name in loaded if name.startswith(("pseudoseg.evaluation", "py_sod_metrics", "pysodmetrics"))}
    assert not {name for name in loaded if name.startswith("pseudoseg.methods")}


def test_import_pseudoseg_is_light() -> None:
    loaded = _modules_after("import pseudoseg; pseudoseg.methods.register")
    assert not {"torch", "monai", "pydantic"} & loaded
    assert not {name for name in loaded if name.startswith(("pseudoseg.methods.", "pseudoseg.engine"))} - {"pseudoseg.methods.registry"}


def test_no_import_cycle_between_engine_modules() -> None:
    engine = REPO / "pseudoseg" / "engine"
    graph: dict[str, set[str]] = {}
    for path in engine.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):  # every import, TYPE_CHECKING and function-level included
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[path.stem] = {name.rsplit(".", 1)[1] for name in imported if name.startswith("pseudoseg.engine.")}
    assert "strategy" in graph["trainer"] and "trainer" not in set().union(*graph.values())  # the loop depends on the contract, never back

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})) for nxt in graph.get(start, ()))

    assert [module for module in graph if reaches(module, module, {module})] == []


# --------------------------------------------------------------------------- the Python API


def test_the_python_api_trains_loads_and_evaluates(tiny_polyps: Path, tmp_path: Path) -> None:
    config = {
        "run_dir": str(tmp_path / "api"),
        "data": {"train": str(tiny_polyps / "TrainDataset"), "image_size": 32},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 4, "val_every": 2, "batch_size": 4, "amp": "off", "num_threads": 1},
    }
    result = pseudoseg.train(config, overrides={"method.name": "mean_teacher", "method.teacher_steps": 2}, log=lambda _: None)
    assert result.released == "ema" and result.metrics is None and result.budget["steps"] == 2 + 4
    again = pseudoseg.train(run_config_class().model_validate({**config, "method": {"name": "mean_teacher", "teacher_steps": 2}}), log=lambda _: None)
    assert again.networks == result.networks  # the same run, found finished
    (tmp_path / "api.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(UserError, match=r"api: holds a run with another configuration \(method\.\w+ differs\)"):
        pseudoseg.train(tmp_path / "api.yaml", overrides=["method.name=supervised"], log=lambda _: None)
    predictor = pseudoseg.load(result.run_dir, device="cpu", amp="off")
    assert predictor.name == "ema"
    scores = pseudoseg.evaluate(pseudoseg.load(result.run_dir, network="raw", device="cpu", amp="off"), tiny_polyps / "TestDataset", pranet_metrics=False)
    assert scores["network"] == "raw" and set(scores["sets"]) == {"blur_noise", "colour_shift", "in_domain", "low_contrast", "small_lesions"}
    assert 0.0 <= scores["mean"]["dice@0.5"] <= 1.0 and scores["sets"]["in_domain"]["n"] == 4
    with pytest.raises(UserError, match=r"network: choose the network when loading the model"):
        pseudoseg.evaluate(predictor, tiny_polyps / "TestDataset", network="raw")
    with pytest.raises(UserError, match="config must be a YAML path, a dictionary or a RunConfig, got int"):
        pseudoseg.train(3)


def test_the_labeled_stage_keys_are_declared_once_with_one_default() -> None:
    from pseudoseg.methods.stages import LabeledStageKeys, SupervisedConfig

    keys = set(LabeledStageKeys.model_fields)
    assert keys == {"teacher_run", "teacher_steps", "teacher_batch_size", "teacher_stage_momentum"}
    sections = {info.name: info.section for info in list_methods() if issubclass(info.section, LabeledStageKeys)}
    assert set(sections) == {"bcp", "cps", "fixmatch", "mean_teacher", "momentum", "unimatch"}
    for name, section in sections.items():
        declared_again = {key for cls in section.__mro__ if cls is not LabeledStageKeys and issubclass(cls, LabeledStageKeys) for key in vars(cls).get("__annotations__", {}) if key in keys}
        assert declared_again == set(), name  # inherited: one default and one meaning
        assert section().teacher_stage_momentum == SupervisedConfig().ema_momentum == 0.95

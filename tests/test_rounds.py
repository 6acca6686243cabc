"""ATSO and self-learning (TSO): schedule, subsets, provenance of real runs, resume after a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pseudoseg.run_config import config_from_dict
from pseudoseg.errors import UserError
from pseudoseg.methods.rounds import RoundPlan, atso_schedule, read_rounds, split_subsets, tso_schedule
from pseudoseg.runner import train
from tests.conftest import write_config

REPO = Path(__file__).resolve().parents[1]
DIAGNOSTICS = ("agreement_dice", "agreement_dice_pooled", "changed_fraction", "pseudo_dice", "pseudo_dice_pooled", "pseudo_dice_all", "val_dice")


# --------------------------------------------------------------------------- schedule


def plans(rows: list[tuple]) -> list[RoundPlan]:
    """(round, trained subset(s), relabelled subset, init_from, labels_from: one per trained subset)."""

    def many(value: int | tuple[int, ...]) -> tuple[int, ...]:
        return value if isinstance(value, tuple) else (value,)

    return [RoundPlan(r, many(trained), relabel, init, many(labels)) for r, trained, relabel, init, labels in rows]


def test_atso_schedule_two_subsets() -> None:
    # (round, train_subset, relabel_subset, init_from, labels_from)
    assert atso_schedule(5, 2) == plans([(1, 0, 1, 0, 0), (2, 1, 0, 0, 1), (3, 0, 1, 0, 2), (4, 1, 0, 0, 3), (5, 0, 1, 0, 4)])
    assert atso_schedule(3, 2, init="continue") == plans([(1, 0, 1, 0, 0), (2, 1, 0, 1, 1), (3, 0, 1, 2, 2)])


def test_atso_schedule_three_subsets_trains_on_the_other_two() -> None:
    # round r relabels U(r mod 3) and trains on the other two, each with its current labels
    assert atso_schedule(4, 3) == plans(
        [(1, (0, 2), 1, 0, (0, 0)), (2, (0, 1), 2, 0, (0, 1)), (3, (1, 2), 0, 0, (1, 2)), (4, (0, 2), 1, 0, (3, 2))]
    )
    assert [p.init_from for p in atso_schedule(4, 3, init="continue")] == [0, 1, 2, 3]


def test_atso_schedule_three_subsets_one_at_a_time() -> None:
    # train_on: one: U2 keeps M0's labels until round 2 relabels it; round 3 is the first to train on it
    assert atso_schedule(6, 3, train_on="one") == plans([(1, 0, 1, 0, 0), (2, 1, 2, 0, 1), (3, 2, 0, 0, 2), (4, 0, 1, 0, 3), (5, 1, 2, 0, 4), (6, 2, 0, 0, 5)])
    assert atso_schedule(5, 2, train_on="one") == atso_schedule(5, 2)  # two subsets: the same schedule


def test_atso_schedule_from_the_initial_weights() -> None:
    assert atso_schedule(3, 2, init="initial") == plans([(1, 0, 1, None, 0), (2, 1, 0, None, 1), (3, 0, 1, None, 2)])
    with pytest.raises(ValueError, match="labeled, initial, continue"):
        atso_schedule(3, 2, init="pretrained")


def test_tso_schedule_is_self_learning() -> None:
    assert tso_schedule(3) == plans([(1, 0, 0, 0, 0), (2, 0, 0, 1, 1), (3, 0, 0, 2, 2)])


@pytest.mark.parametrize("train_on", ["others", "one"])
@pytest.mark.parametrize("subsets", [2, 3, 4])
@pytest.mark.parametrize("init", ["labeled", "initial", "continue"])
def test_atso_never_relabels_what_it_trained_on(subsets: int, init: str, train_on: str) -> None:
    schedule = atso_schedule(9, subsets, init=init, train_on=train_on)
    trained = {0: (), **{p.round: p.train_subsets for p in schedule}}
    for plan in schedule:
        assert plan.relabel_subset not in plan.train_subsets
        assert len(plan.train_subsets) == (subsets - 1 if train_on == "others" else 1)
        for subset, producer in zip(plan.train_subsets, plan.labels_from):
            assert subset not in trained[producer]  # labels never come from a model fitted to those images
    with pytest.raises(ValueError):
        atso_schedule(0, 2)


def test_split_subsets_keeps_cases_whole() -> None:
    groups = [f"case{i // 5}" for i in range(40)] + [f"case{8 + i // 3}" for i in range(9)]  # 8 cases of 5, 3 of 3
    unlabeled = np.array([i for i in range(49) if groups[i] not in ("case0", "case3")])
    parts = split_subsets(unlabeled, groups, 2, seed=0)
    assert len(parts) == 2
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), unlabeled)  # disjoint and covering
    case_sets = [{groups[i] for i in part} for part in parts]
    assert not case_sets[0] & case_sets[1]
    for part in parts:
        for case in {groups[i] for i in part}:
            assert sorted(i for i in unlabeled if groups[i] == case) == sorted(i for i in part if groups[i] == case)
    assert abs(len(parts[0]) - len(parts[1])) <= 5  # balanced in slices
    assert [p.tolist() for p in split_subsets(unlabeled, groups, 2, seed=0)] == [p.tolist() for p in parts]
    three = split_subsets(unlabeled, groups, 3, seed=1)
    assert sum(len(p) for p in three) == len(unlabeled) and all(len(p) for p in three)
    with pytest.raises(UserError, match="method.subsets: 10 subsets need at least 10 unlabeled"):
        split_subsets(unlabeled, groups, 10, seed=0)


# --------------------------------------------------------------------------- tiny runs


@pytest.fixture(scope="module")
def tiny_ct(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pseudoseg.synth.ct import CtSetSpec, generate_ct_dataset

    root = tmp_path_factory.mktemp("ct") / "data"
    generate_ct_dataset(root, CtSetSpec(n_train=6, n_test=1, shape=(16, 16, 8), seed=0))
    return root


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def rounds_config(run_dir: Path, data: dict, **method) -> dict:
    return {
        "run_dir": str(run_dir),
        "seed": 0,
        "data": {"image_size": 16, "labeled_fraction": 0.2, "val_fraction": 0.2, **data},
        "model": {"name": "unet", "channels": [4, 8], "num_res_units": 1},
        "train": {"steps": 3, "val_every": 2, "log_every": 2, "batch_size": 2, "unlabeled_batch_size": 2, "amp": "off", "num_threads": 1},
        "eval": {"batch_size": 8},
        "method": {"rounds": 3, "round_steps": 2, **method},
    }


def volume_data(root: Path, cache: Path) -> dict:
    return {"kind": "volumes", "train": str(root), "normalize": "unit", "cache_dir": str(cache)}


def folder_data(root: Path, cache: Path) -> dict:
    return {"kind": "folders", "train": str(root / "TrainDataset"), "cache_dir": str(cache)}


def round_of(weights: str) -> int:
    """``round_<r>/best_raw.safetensors`` -> r (the model that a path holds)."""
    return int(Path(weights).parent.name.split("_")[1])


def provenance(run: Path) -> list[dict]:
    """What each round's stage was actually given (its done.json) and who rendered those labels (the label file's record)."""
    out = []
    for stage in sorted(run.glob("round_*/done.json"), key=lambda p: round_of(str(p))):
        describe = json.loads(stage.read_text())["describe"]
        if "labels_file" not in describe:
            continue  # round 0: labeled only
        sidecar = json.loads((run / describe["labels_file"]).with_suffix(".json").read_text())
        out.append({"round": describe["round"], "train_subset": describe["train_subset"], "init": describe["init_weights"], "labels_by": sidecar["rendered_by"]})
    return out


def check_run_files(run: Path, method: str, rounds: int, subsets: int) -> list[dict]:
    records = read_rounds(run)
    assert [r["round"] for r in records] == list(range(rounds + 1))
    for record in records:
        assert set(DIAGNOSTICS) <= set(record), record
        assert 0.0 <= record["val_dice"] <= 1.0 and 0.0 <= record["pseudo_dice"] <= 1.0
    for record in records[1:]:
        assert 0.0 <= record["agreement_dice"] <= 1.0 and 0.0 <= record["changed_fraction"] <= 1.0
    assert records[0]["agreement_dice"] is None
    assert (run / "report" / "rounds.png").stat().st_size > 1000
    split = json.loads((run / "split.json").read_text())
    recorded = json.loads((run / "labels" / "subsets.json").read_text())["subsets"]
    assert len(recorded) == subsets
    assert sorted(case for part in recorded for case in part) == sorted(split["unlabeled"])  # disjoint, covering, whole units
    steps = provenance(run)
    assert [s["round"] for s in steps] == list(range(1, rounds + 1))
    return steps


def check_atso_provenance(steps: list[dict]) -> None:
    trained = {0: None, **{s["round"]: s["train_subset"] for s in steps}}
    for step in steps:
        # the model that rendered a round's labels was never fine-tuned on those images
        assert trained[round_of(step["labels_by"])] != step["train_subset"]
        if step["round"] >= 2:  # ... nor is it the model the round starts from (M0)
            assert step["labels_by"] != step["init"]


def check_tso_provenance(steps: list[dict]) -> None:
    for step in steps:
        # every round learns from the labels of the very model it starts from ...
        assert step["labels_by"] == step["init"]
        assert round_of(step["labels_by"]) == step["round"] - 1
        if step["round"] >= 2:  # ... which had itself been fitted to those images
            assert step["train_subset"] == 0


@pytest.fixture(scope="module")
def atso_volumes(tiny_ct: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("atso") / "run"
    raw = rounds_config(run, volume_data(tiny_ct, cache), name="atso", final="ensemble")
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)
    return run, raw


def test_atso_on_volumes(atso_volumes: tuple[Path, dict]) -> None:
    from pseudoseg.inference import Predictor

    run, _ = atso_volumes
    check_atso_provenance(check_run_files(run, "atso", rounds=3, subsets=2))
    manifest = json.loads((run / "model.json").read_text())
    assert manifest["released"] == "last" and manifest["networks"]["last"] == "round_3/best_raw.safetensors"
    assert manifest["ensemble"] == ["round_2/best_raw.safetensors", "round_3/best_raw.safetensors"]  # the last K = 2 rounds
    ensemble = Predictor.load(run, device="cpu", amp="off")
    members = [Predictor.load(run / path, device="cpu", amp="off") for path in manifest["ensemble"]]
    records = np.random.default_rng(0).integers(0, 256, size=(3, 1, 16, 16), dtype=np.uint8)
    mean = (members[0].probabilities(records) + members[1].probabilities(records)) / 2
    torch.testing.assert_close(ensemble.probabilities(records), mean)


def test_tso_on_volumes(tiny_ct: Path, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(config_from_dict(rounds_config(run, volume_data(tiny_ct, cache), name="tso", rounds=2)), show_progress=False, log=lambda _: None)
    check_tso_provenance(check_run_files(run, "tso", rounds=2, subsets=1))
    assert json.loads((run / "model.json").read_text())["ensemble"] is None
    # self-learning releases a model that received every step of the run up to the last round
    # that did not keep its start (a round that kept it hands on its start's weights)
    budget = json.loads((run / "budget.json").read_text())
    kept = [r["kept_start"] for r in read_rounds(run)[1:]]
    last_own = max((r for r, k in zip((1, 2), kept) if not k), default=0)
    assert budget["kept_start"] is kept[-1]
    assert (budget["released_steps"], budget["steps"]) == (3 + 2 * last_own, 3 + 2 * 2)
    assert [(r["steps"], r["released_steps"], r["total_steps"], r.get("own_labels")) for r in read_rounds(run)] == [
        (3, 3, 3, None),
        (2, 5, 5, True),
        (2, 7, 7, True),
    ]


def _digest_of_file(raw: dict, weights: Path) -> str:
    """The digest (as in done.json's init_digest) of a network holding the weights of a file."""
    from pseudoseg.engine.checkpoint import load_weights_file
    from pseudoseg.engine.trainer import weights_digest
    from pseudoseg.models import build_model

    config = config_from_dict(raw)
    network = build_model(config.model, config.data.in_channels)
    network.load_state_dict(load_weights_file(weights)[0])
    return weights_digest(network)


@pytest.mark.parametrize("init", ["labeled", "initial", "continue"])
def test_atso_start_options_start_where_they_say(init: str, tiny_ct: Path, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    raw = rounds_config(run, volume_data(tiny_ct, cache), name="atso", init=init)
    logged: list[str] = []
    train(config_from_dict(raw), show_progress=False, log=lambda line: logged.append(str(line)))
    done = {r: json.loads((run / f"round_{r}" / "done.json").read_text()) for r in range(4)}
    started_from = {r: done[r]["init_digest"] for r in range(1, 4)}
    m0 = run / "round_0" / "best_ema.safetensors"  # M0: the labeled-only stage's released network, its momentum copy
    if init == "labeled":  # every round from M0's released weights
        assert set(started_from.values()) == {_digest_of_file(raw, m0)}
    elif init == "initial":  # every round from the weights M0 itself started from, not from M0
        assert set(started_from.values()) == {done[0]["init_digest"]}
        assert done[0]["init_digest"] != _digest_of_file(raw, m0)
    else:  # round r from round r - 1's weights
        previous = {1: m0, 2: run / "round_1" / "best_raw.safetensors", 3: run / "round_2" / "best_raw.safetensors"}
        assert started_from == {r: _digest_of_file(raw, previous[r]) for r in range(1, 4)}
    records = read_rounds(run)[1:]
    assert {r["init"] for r in records} == {init}
    assert [r["init_weights"] for r in records] == [
        {"labeled": "round_0/best_ema.safetensors", "initial": "initial", "continue": f"round_{r - 1}/best_{'ema' if r == 1 else 'raw'}.safetensors"}[init] for r in (1, 2, 3)
    ]
    # continue is flagged: each round fine-tunes the model that rendered its labels; from M0, only
    # round 1 does (M0 labelled everything); from the initial weights, none
    assert [r["own_labels"] for r in records] == {"labeled": [True, False, False], "initial": [False, False, False], "continue": [True, True, True]}[init]
    assert any("init: continue" in line and "self-training" in line for line in logged) == (init == "continue")
    # the budget: 3 steps of M0, 2 per round; what the released model received depends on the start
    assert [(r["steps"], r["total_steps"]) for r in records] == [(2, 5), (2, 7), (2, 9)]
    released = {"labeled": [5, 5, 5], "initial": [2, 2, 2], "continue": [5, 7, 9]}[init]
    assert [r["released_steps"] for r in records] == released
    # the released weights: the last round's, or where a round kept its start, that start's
    # (a round kept its start when no checkpoint of its own beat it on validation)
    kept = [r["kept_start"] for r in records]
    budget = json.loads((run / "budget.json").read_text())
    if init == "continue":  # back to the last round that did not keep its start (M0 if none)
        last_own = max((r for r, k in zip((1, 2, 3), kept) if not k), default=0)
        stages = [f"round_{r}" for r in range(last_own + 1)]
    else:  # from M0 or from the initial weights (which must beat M0)
        stages = ["round_0"] if kept[-1] else {"labeled": ["round_0", "round_3"], "initial": ["round_3"]}[init]
    assert budget["kept_start"] is kept[-1]
    assert budget["released_stages"] == stages
    assert (budget["steps"], budget["released_steps"]) == (9, sum(3 if stage == "round_0" else 2 for stage in stages))
    # the gain a round buys: its labels of the subset it relabels against the true masks, minus the previous ones'
    for record in records:
        assert record["gain"] == pytest.approx(record["pseudo_dice"] - record["previous_pseudo_dice"])
        assert record["gain_pooled"] == pytest.approx(record["pseudo_dice_pooled"] - record["previous_pseudo_dice_pooled"])


def test_ensemble_budget_counts_every_member(atso_volumes: tuple[Path, dict]) -> None:
    run, _ = atso_volumes  # final: ensemble of rounds 2 and 3, both fine-tuned from M0
    budget = json.loads((run / "budget.json").read_text())
    kept = {r["round"]: r["kept_start"] for r in read_rounds(run)[1:]}
    members = ["round_0", *(f"round_{r}" for r in (2, 3) if not kept[r])]  # a member that kept its start is M0
    assert budget["released_stages"] == members
    assert budget["released_steps"] == 3 + 2 * (len(members) - 1)


@pytest.mark.parametrize("method", ["atso", "tso"])
def test_rounds_on_folders(method: str, tiny_polyps: Path, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    raw = rounds_config(run, folder_data(tiny_polyps, cache), name=method, rounds=2, labels="soft")
    raw["data"]["image_size"] = 16
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)
    steps = check_run_files(run, method, rounds=2, subsets=2 if method == "atso" else 1)
    (check_atso_provenance if method == "atso" else check_tso_provenance)(steps)
    soft = np.load(run / "labels" / "round_1.npy")
    assert len(np.unique(soft)) > 2  # soft labels stored as 0..255 probabilities


def test_rounds_need_unlabeled_images(tiny_ct: Path, cache: Path, tmp_path: Path) -> None:
    raw = rounds_config(tmp_path / "run", volume_data(tiny_ct, cache), name="atso")
    raw["data"]["labeled_fraction"] = 1.0
    with pytest.raises(UserError, match="data.labeled_fraction: atso needs unlabeled images"):
        train(config_from_dict(raw), show_progress=False, log=lambda _: None)


def test_resume_after_kill_matches_uninterrupted(atso_volumes: tuple[Path, dict], tmp_path: Path) -> None:
    reference, raw = atso_volumes
    run = tmp_path / "run"
    config = write_config(tmp_path / "run.yaml", {**raw, "run_dir": str(run)})
    script = "import sys; from pseudoseg.run_config import load_config; from pseudoseg.runner import train; train(load_config(sys.argv[1]), show_progress=False)"
    process = subprocess.Popen([sys.executable, "-c", script, str(config)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 120
    while not (run / "round_1" / "done.json").is_file():
        assert process.poll() is None, process.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (run / "round_3" / "done.json").exists()  # killed mid-run
    round_1_done = (run / "round_1" / "done.json").stat().st_mtime_ns
    round_1_log = (run / "round_1" / "metrics.jsonl").read_bytes()

    train(config_from_dict({**raw, "run_dir": str(run)}), show_progress=False, log=lambda _: None)
    assert (run / "round_1" / "done.json").stat().st_mtime_ns == round_1_done  # finished round skipped
    assert (run / "round_1" / "metrics.jsonl").read_bytes() == round_1_log
    for r in range(4):
        ours, theirs = load_file(run / f"round_{r}" / "best_raw.safetensors"), load_file(reference / f"round_{r}" / "best_raw.safetensors")
        assert ours.keys() == theirs.keys()
        for key in ours:
            assert torch.equal(ours[key], theirs[key]), (r, key)
        np.testing.assert_array_equal(np.load(run / "labels" / f"round_{r}.npy"), np.load(reference / "labels" / f"round_{r}.npy"))
    assert read_rounds(run) == read_rounds(reference)


def test_atso_with_three_subsets_trains_each_round_on_the_other_two(tiny_polyps: Path, cache: Path, tmp_path: Path) -> None:
    run = tmp_path / "atso-k3"
    raw = rounds_config(run, folder_data(tiny_polyps, cache), name="atso", subsets=3, rounds=3)
    train(config_from_dict(raw), show_progress=False, log=lambda _: None)
    parts = json.loads((run / "labels" / "subsets.json").read_text())
    sizes, cases = parts["sizes"], parts["subsets"]
    records = read_rounds(run)[1:]
    for record in records:
        held_out = record["relabel_subset"]
        others = [k for k in range(3) if k != held_out]
        assert record["train_subsets"] == others and record["n_train_unlabeled"] == sum(sizes[k] for k in others)
        assert record["n_relabelled"] == sizes[held_out]
        # the label file of each subset trained on, rendered by a model that never trained on it
        for subset, by in zip(record["train_subsets"], record["labels_rendered_by"]):
            producer = round_of(by)
            assert producer == 0 or subset not in records[producer - 1]["train_subsets"]
    done = json.loads((run / "round_3" / "done.json").read_text())["describe"]
    assert done["train_subsets"] == [1, 2] and done["labels_files"] == ["labels/round_1.npy", "labels/round_2.npy"]
    assert sum(map(len, cases)) == sum(sizes) > 0


def test_label_files_read_as_one_give_each_index_its_own_files_labels(tmp_path: Path) -> None:
    from pseudoseg.data.store import ArrayStore
    from pseudoseg.methods.label_store import LabelFiles, PseudoLabelStore

    def label_file(name: str, indices: list[int], offset: int) -> PseudoLabelStore:
        store = ArrayStore.create(tmp_path / name, len(indices), (2, 2))
        store.write(0, np.stack([np.full((2, 2), index + offset, dtype=np.uint8) for index in indices]))
        store.close()
        return PseudoLabelStore(tmp_path / name, indices)

    # b.npy also covers 4, an index of the part a.npy labels now: a's labels count there
    a, b = label_file("a.npy", [1, 4, 7], 0), label_file("b.npy", [2, 3, 4, 9], 100)
    both = LabelFiles([(a, np.array([1, 4, 7])), (b, np.array([2, 3, 9]))])
    asked = np.array([9, 1, 4, 3, 7, 2])
    got = both.targets(asked, torch.device("cpu"))
    expected = [index + (100 if index in (2, 3, 9) else 0) for index in asked]
    assert got.shape == (6, 1, 2, 2) and torch.round(got[:, 0, 0, 0] * 255).tolist() == expected
    with pytest.raises(KeyError):
        both.targets(np.array([1, 5]), torch.device("cpu"))
    both.close()

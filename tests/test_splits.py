"""Seeded L / U / V splits, splits from lists, and their JSON manifests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from pseudoseg.data.splits import Split, load_split, make_split, save_split, split_from_lists
from pseudoseg.errors import UserError

IDS = [f"img{i:03d}" for i in range(100)]


def _parts(split: Split) -> tuple[set[str], set[str], set[str]]:
    return set(split.labeled), set(split.unlabeled), set(split.validation)


# --------------------------------------------------------------------------- make_split


def test_sizes_for_100_ids_with_defaults() -> None:
    split = make_split(IDS)
    assert (len(split.validation), len(split.labeled), len(split.unlabeled)) == (10, 18, 72)
    assert split.seed == 0 and split.labeled_fraction == 0.2 and split.val_fraction == 0.1
    assert split.source == "random"


@pytest.mark.parametrize(
    ("n", "labeled_fraction", "val_fraction", "expected"),
    [
        (100, 0.2, 0.1, (10, 18, 72)),
        (1450, 0.2, 0.1, (145, 261, 1044)),  # PraNet TrainDataset
        (25, 0.5, 0.1, (3, 11, 11)),  # 2.5 -> 3 validation, 11.0 labeled
        (10, 0.15, 0.0, (0, 2, 8)),  # 1.5 rounds half-up to 2
        (10, 0.01, 0.01, (1, 1, 8)),  # at least one validation and one labeled
        (10, 1.0, 0.1, (1, 9, 0)),  # fully supervised upper bound: U empty
        (2, 0.2, 0.5, (1, 1, 0)),
        (1, 0.2, 0.1, (0, 1, 0)),  # one id cannot also be held out
    ],
)
def test_sizes(n: int, labeled_fraction: float, val_fraction: float, expected: tuple[int, int, int]) -> None:
    ids = IDS[:n] if n <= 100 else [str(i) for i in range(n)]
    split = make_split(ids, labeled_fraction=labeled_fraction, val_fraction=val_fraction)
    assert (len(split.validation), len(split.labeled), len(split.unlabeled)) == expected


@pytest.mark.parametrize("seed", [0, 1, 123])
def test_disjoint_and_covering(seed: int) -> None:
    labeled, unlabeled, validation = _parts(make_split(IDS, seed=seed))
    assert not labeled & unlabeled and not labeled & validation and not unlabeled & validation
    assert labeled | unlabeled | validation == set(IDS)


def test_parts_are_sorted_tuples() -> None:
    split = make_split(IDS, seed=4)
    for part in (split.labeled, split.unlabeled, split.validation):
        assert isinstance(part, tuple) and list(part) == sorted(part)


def test_same_seed_same_split_and_input_order_irrelevant() -> None:
    first = make_split(IDS, seed=7)
    assert make_split(IDS, seed=7) == first
    assert make_split(list(reversed(IDS)), seed=7) == first
    assert make_split(tuple(IDS[50:] + IDS[:50]), seed=7) == first


def test_different_seeds_differ() -> None:
    splits = [make_split(IDS, seed=seed) for seed in range(5)]
    assert len({s.validation for s in splits}) == 5
    assert len({s.labeled for s in splits}) == 5


def test_validation_set_does_not_depend_on_labeled_fraction() -> None:
    reference = make_split(IDS, labeled_fraction=0.2, seed=3).validation
    for fraction in (0.05, 0.1, 0.3, 0.5, 1.0):
        assert make_split(IDS, labeled_fraction=fraction, seed=3).validation == reference


def test_fully_supervised_uses_everything_but_validation() -> None:
    split = make_split(IDS, labeled_fraction=1.0, seed=2)
    assert split.unlabeled == ()
    assert set(split.labeled) == set(IDS) - set(split.validation)


def test_no_validation_when_val_fraction_is_zero() -> None:
    split = make_split(IDS, val_fraction=0.0)
    assert split.validation == () and len(split.labeled) == 20 and len(split.unlabeled) == 80


def test_groups_keep_a_case_together() -> None:
    # 20 CT cases with 5, 6 or 7 slices each.
    groups = {f"case{c:02d}_s{s:02d}": f"case{c:02d}" for c in range(20) for s in range(5 + c % 3)}
    ids = list(groups)
    split = make_split(ids, labeled_fraction=0.25, val_fraction=0.1, seed=5, groups=groups)
    case_of_part = [{groups[i] for i in part} for part in (split.labeled, split.unlabeled, split.validation)]
    labeled_cases, unlabeled_cases, validation_cases = case_of_part
    assert not labeled_cases & unlabeled_cases and not labeled_cases & validation_cases
    assert not unlabeled_cases & validation_cases
    # Fractions count cases, not slices: 2 validation cases, then 25 % of 18 -> 5 labeled.
    assert (len(validation_cases), len(labeled_cases), len(unlabeled_cases)) == (2, 5, 13)
    # Every slice of a chosen case comes along.
    for part, cases in zip((split.labeled, split.unlabeled, split.validation), case_of_part):
        assert set(part) == {i for i in ids if groups[i] in cases}


def test_groups_must_cover_every_id() -> None:
    with pytest.raises(UserError, match="groups: id 'b' has no group"):
        make_split(["a", "b"], groups={"a": "case1"})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labeled_fraction": 0}, "labeled_fraction must be in (0, 1], got 0"),
        ({"labeled_fraction": -0.1}, "labeled_fraction must be in (0, 1], got -0.1"),
        ({"labeled_fraction": 1.5}, "labeled_fraction must be in (0, 1], got 1.5"),
        ({"labeled_fraction": float("nan")}, "labeled_fraction must be in (0, 1], got nan"),
        ({"labeled_fraction": "0.2"}, "labeled_fraction must be a number"),
        ({"val_fraction": 1.0}, "val_fraction must be in [0, 1), got 1.0"),
        ({"val_fraction": -0.5}, "val_fraction must be in [0, 1), got -0.5"),
        ({"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_bad_parameters(kwargs: dict, message: str) -> None:
    with pytest.raises(UserError, match=re.escape(message)):
        make_split(IDS, **kwargs)


def test_bad_id_pools() -> None:
    with pytest.raises(UserError, match="empty"):
        make_split([])
    with pytest.raises(UserError, match="id 'a' appears more than once"):
        make_split(["a", "b", "a"])


# --------------------------------------------------------------------------- lists


def test_split_from_lists(tmp_path: Path) -> None:
    (tmp_path / "labeled.txt").write_text(
        "# labeled images of the published split\n"
        "img003.jpg\n"
        "\n"
        "  img001  \n"
        "images/img002.png   # with a folder and a suffix\r\n"
        "img001\n"  # repeated in the same file: counted once
    )
    (tmp_path / "val.txt").write_text("img010.JPG\nimg011\n")
    split = split_from_lists(IDS[:20], labeled=tmp_path / "labeled.txt", validation=tmp_path / "val.txt")
    assert split.labeled == ("img001", "img002", "img003")
    assert split.validation == ("img010", "img011")
    assert set(split.unlabeled) == set(IDS[:20]) - {"img001", "img002", "img003", "img010", "img011"}
    assert split.source == "lists" and split.seed is None and split.labeled_fraction is None


def test_explicit_unlabeled_list_leaves_the_rest_out(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("a\n")
    (tmp_path / "u.txt").write_text("b\n")
    split = split_from_lists(["a", "b", "c"], labeled=tmp_path / "l.txt", unlabeled=tmp_path / "u.txt")
    assert (split.labeled, split.unlabeled, split.validation) == (("a",), ("b",), ())


def test_stems_with_dots_are_not_mangled(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("case.1\ncase_02.nii.gz\n")
    split = split_from_lists(["case.1", "case", "case_02"], labeled=tmp_path / "l.txt")
    assert split.labeled == ("case.1", "case_02") and split.unlabeled == ("case",)


def test_lists_round_trip_through_a_random_split(tmp_path: Path) -> None:
    original = make_split(IDS, seed=11)
    for name in ("labeled", "unlabeled", "validation"):
        (tmp_path / f"{name}.txt").write_text("\n".join(getattr(original, name)) + "\n")
    rebuilt = split_from_lists(
        IDS,
        labeled=tmp_path / "labeled.txt",
        unlabeled=tmp_path / "unlabeled.txt",
        validation=tmp_path / "validation.txt",
    )
    assert _parts(rebuilt) == _parts(original)


def test_list_with_unknown_stem_names_the_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("img001\nimg999.jpg\n")
    expected = f"{tmp_path / 'l.txt'}, line 2: 'img999.jpg' is not in the data set"
    with pytest.raises(UserError, match=re.escape(expected)):
        split_from_lists(IDS, labeled=tmp_path / "l.txt")


def test_stem_in_two_lists_names_both_files(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("img001\nimg002\n")
    (tmp_path / "v.txt").write_text("img002\n")
    expected = f"'img002' is listed in both {tmp_path / 'l.txt'} and {tmp_path / 'v.txt'}"
    with pytest.raises(UserError, match=re.escape(expected)):
        split_from_lists(IDS, labeled=tmp_path / "l.txt", validation=tmp_path / "v.txt")


def test_empty_labeled_list(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("# nothing here\n\n")
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'l.txt'}: the labeled list is empty")):
        split_from_lists(IDS, labeled=tmp_path / "l.txt")


def test_missing_list_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"split list not found: {tmp_path / 'l.txt'}")):
        split_from_lists(IDS, labeled=tmp_path / "l.txt")


# --------------------------------------------------------------------------- manifests


def test_manifest_round_trip(tmp_path: Path) -> None:
    split = make_split(IDS, labeled_fraction=0.3, val_fraction=0.15, seed=9)
    path = tmp_path / "run" / "split.json"
    save_split(split, path)
    assert load_split(path) == split
    assert load_split(path, ids=IDS) == split
    payload = json.loads(path.read_text())
    assert payload["counts"] == {"labeled": 26, "unlabeled": 59, "validation": 15}
    assert payload["seed"] == 9 and payload["source"] == "random"
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temporary file left


def test_manifest_round_trip_for_lists(tmp_path: Path) -> None:
    (tmp_path / "l.txt").write_text("img001\n")
    split = split_from_lists(IDS[:5], labeled=tmp_path / "l.txt")
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split


def test_manifest_ids_must_exist(tmp_path: Path) -> None:
    save_split(make_split(IDS, seed=1), tmp_path / "split.json")
    expected = f"{tmp_path / 'split.json'}: 50 ids in the split are not in the data set, e.g. 'img0"
    with pytest.raises(UserError, match=re.escape(expected)):
        load_split(tmp_path / "split.json", ids=IDS[:50])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"labeled": ["a"], "unlabeled": [], "validation": []}', "missing key 'source'"),
        (
            '{"labeled": ["a"], "unlabeled": ["a"], "validation": [], "source": "random",'
            ' "seed": 0, "val_fraction": 0.1, "labeled_fraction": 0.2}',
            "id 'a' is in two parts",
        ),
        (
            '{"labeled": "a", "unlabeled": [], "validation": [], "source": "random",'
            ' "seed": 0, "val_fraction": 0.1, "labeled_fraction": 0.2}',
            "'labeled' must be a list of strings",
        ),
        (
            '{"labeled": ["a"], "unlabeled": [], "validation": [], "source": "guess",'
            ' "seed": 0, "val_fraction": 0.1, "labeled_fraction": 0.2}',
            "'source' must be one of",
        ),
    ],
)
def test_bad_manifests_name_the_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "split.json"
    path.write_text(content)
    with pytest.raises(UserError, match=re.escape(str(path)) + ".*" + re.escape(message)):
        load_split(path)


def test_missing_manifest(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=re.escape(f"split manifest not found: {tmp_path / 'x.json'}")):
        load_split(tmp_path / "x.json")


def test_split_rejects_overlap_when_built_directly() -> None:
    with pytest.raises(ValueError, match="two parts"):
        Split(("a",), ("a",), (), seed=0, val_fraction=0.1, labeled_fraction=0.2, source="random")

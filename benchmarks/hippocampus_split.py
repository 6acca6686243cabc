"""Lay out the Decathlon hippocampus for the MRI recipes, with a held-out test set of whole cases.

The Medical Segmentation Decathlon's Task04 (hippocampus, 260 MRI cases) as
distributed here ships only ``imagesTr/`` and ``labelsTr/``; a run's test set
for volumes is a folder with ``imagesTs/`` and ``labelsTs/``. This script
draws a seeded fraction of the cases (default 0.2: 52 of 260) as the test set
and puts the rest in the training pool, which the run then splits by case
into labeled, unlabeled and validation cases with its own seed, as usual:

    OUT/imagesTr/  OUT/labelsTr/    the pool (208 cases by default)
    OUT/imagesTs/  OUT/labelsTs/    the held-out test cases (52)
    OUT/dataset.json                the source's, copied unchanged

    python benchmarks/hippocampus_split.py ../shared/data/hippocampus data/hippocampus
    pseudoseg train --config configs/mri_atso_hippocampus.yaml

Any data set in the Decathlon layout with only ``imagesTr/`` and ``labelsTr/``
works the same way. Image and label files are hard-linked (copied where the
file system cannot link), never modified; ``dataset.json`` is copied, so that
editing it in OUT leaves the source alone. OUT is built beside its final place
and moved there when complete: an interrupted run leaves no half layout.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
from pathlib import Path

from pseudoseg.data.volumes import discover_cases
from pseudoseg.errors import UserError
from pseudoseg.fileio import atomic_folder


def held_out_cases(case_ids: list[str], fraction: float, seed: int) -> set[str]:
    """The held-out cases: ``round(fraction * n)`` of the sorted ids (at least 1, at most n - 1), drawn with ``seed``."""
    count = min(max(round(fraction * len(case_ids)), 1), len(case_ids) - 1)
    return set(random.Random(seed).sample(sorted(case_ids), count))


def place(source: Path, target: Path) -> str:
    """Hard-link ``source`` at ``target``, or copy it where links are impossible; say which."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        return "linked"
    except OSError:  # another file system, or one without hard links
        shutil.copy2(source, target)
        return "copied"


def lay_out(source: Path, out: Path, *, test_fraction: float, seed: int, overwrite: bool) -> dict[str, object]:
    """Write the layout into ``out``; returns what was done (counts, test cases, how files were placed)."""
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"--test-fraction: must be in (0, 1), got {test_fraction}")
    cases = discover_cases(source, images_dir="imagesTr", labels_dir="labelsTr", require_labels=True)
    if len(cases) < 2:
        raise UserError(f"{source / 'imagesTr'}: {len(cases)} case; a pool and a test set need at least 2")
    held_out = held_out_cases([case.case_id for case in cases], test_fraction, seed)
    placed = {"linked": 0, "copied": 0}
    with atomic_folder(out, overwrite=overwrite) as building:
        for case in cases:
            images, labels = ("imagesTs", "labelsTs") if case.case_id in held_out else ("imagesTr", "labelsTr")
            placed[place(case.image_path, building / images / case.image_path.name)] += 1
            placed[place(case.label_path, building / labels / case.label_path.name)] += 1
        if (source / "dataset.json").is_file():
            shutil.copy2(source / "dataset.json", building / "dataset.json")
    return {"pool": len(cases) - len(held_out), "test": len(held_out), "test_cases": sorted(held_out), **placed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="Decathlon-layout folder with imagesTr/ and labelsTr/ (e.g. ../shared/data/hippocampus)")
    parser.add_argument("out", type=Path, help="output folder: imagesTr/, labelsTr/, imagesTs/, labelsTs/, dataset.json")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="fraction of the cases held out as the test set (default 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the test-case draw (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace OUT when it exists and is not empty")
    args = parser.parse_args(argv)
    try:
        done = lay_out(args.source, args.out, test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite)
    except UserError as exc:
        print(f"hippocampus_split: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    files = f"{done['linked']} files hard-linked" + (f", {done['copied']} copied (no hard links possible)" if done["copied"] else "")
    print(
        f"{args.out}: {done['pool']} pool cases (imagesTr/, labelsTr/), {done['test']} test cases (imagesTs/, labelsTs/), "
        f"test fraction {args.test_fraction}, seed {args.seed}; {files} from {args.source}"
    )
    print(f"test cases: {' '.join(done['test_cases'])}")


if __name__ == "__main__":
    main()

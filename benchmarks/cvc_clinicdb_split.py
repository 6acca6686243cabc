"""Lay out CVC-ClinicDB for the polyp recipes, with a test set of whole frame blocks.

CVC-ClinicDB's 612 frames come from a few dozen colonoscopy videos, and frames
of one video are near-duplicates: a random frame-level split puts copies of
test frames into training. The release ships no frame -> video map, but
consecutive frame numbers mostly come from the same video, so this script
holds out contiguous blocks of frames as the test set (by default the last
fifth: frames 491-612), which keeps all but the frames at a block's boundary
on one side. The training pool (frames 1-490) is split into labeled,
unlabeled and validation frames by the run's seeded split, as usual.

    python benchmarks/cvc_clinicdb_split.py ../shared/data/cvc-clinicdb data/cvc-clinicdb
    pseudoseg grid --config configs/polyp_momentum_cvc.yaml --out runs/cvc-grid --seeds 0

Files are linked (or copied where links are impossible), never modified.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
from pathlib import Path


def frame_number(path: Path) -> int:
    match = re.fullmatch(r"(\d+)", path.stem)
    if match is None:
        raise SystemExit(f"{path}: expected a frame number as the file name (CVC-ClinicDB: images/N.png)")
    return int(match.group(1))


def place(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="CVC-ClinicDB folder with images/ and masks/ (N.png)")
    parser.add_argument("out", type=Path, help="output folder: TrainDataset/ and TestDataset/CVC-ClinicDB/")
    parser.add_argument("--test-from", type=int, default=491, help="first frame of the held-out test block (default 491)")
    args = parser.parse_args()
    images = sorted((args.source / "images").glob("*.png"), key=frame_number)
    if not images:
        raise SystemExit(f"{args.source / 'images'}: no PNG frames found")
    counts = {"train": 0, "test": 0}
    for image in images:
        mask = args.source / "masks" / image.name
        if not mask.is_file():
            raise SystemExit(f"{mask}: mask not found")
        part = "test" if frame_number(image) >= args.test_from else "train"
        root = args.out / ("TestDataset/CVC-ClinicDB" if part == "test" else "TrainDataset")
        place(image, root / "images" / image.name)
        place(mask, root / "masks" / image.name)
        counts[part] += 1
    print(f"{args.out}: {counts['train']} training frames (1-{args.test_from - 1}), {counts['test']} test frames ({args.test_from}-)")


if __name__ == "__main__":
    main()

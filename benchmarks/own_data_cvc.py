"""Semi-supervised against supervised on real, partially labeled images (CVC-ClinicDB).

Builds a partially labeled copy of CVC-ClinicDB (612 colonoscopy frames
``images/N.png`` + ``masks/N.png``, N = 1..612) in OUT/data, trains online
momentum pseudo labeling on it with the shipped recipe
(``configs/polyp_momentum_cvc.yaml``, unchanged but for the paths), as a user
with such a folder would (images without a mask are the unlabeled set;
``data.labels: auto`` takes the masks as given), and puts the supervised model (the teacher stage, trained on the same
labeled frames only) beside the semi-supervised one on the test frames.

Consecutive frames come from the same video sequence, so the copy is made of
contiguous blocks, never of random frames:

* test: frames 551..612 (62 frames, the last block), with their masks;
* labeled: frames 1..20, 101..120, ..., 501..520 (6 blocks, 120 frames) keep
  their masks (validation, 10 %, is drawn among them);
* unlabeled: the other 430 frames of 1..550, whose masks are left out.

Files are symbolic links to the original data; nothing is written there.

Usage::

    python benchmarks/own_data_cvc.py ../shared/data/cvc-clinicdb /tmp/cvc-partial --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

TEST = range(551, 613)
TRAIN = range(1, 551)


def labeled(frame: int) -> bool:
    return (frame - 1) % 100 < 20


def build_copy(source: Path, data: Path) -> None:
    """The partially labeled copy: ``data/train/{images,masks}``, ``data/test/cvc-test/{images,masks}``."""
    for frame in [*TRAIN, *TEST]:
        name = f"{frame}.png"
        if not (source / "images" / name).is_file() or not (source / "masks" / name).is_file():
            sys.exit(f"{source}: expected images/{name} and masks/{name} (CVC-ClinicDB, frames 1..612)")
    for frame in TRAIN:
        _link(source / "images" / f"{frame}.png", data / "train" / "images" / f"{frame}.png")
        if labeled(frame):
            _link(source / "masks" / f"{frame}.png", data / "train" / "masks" / f"{frame}.png")
    for frame in TEST:
        for part in ("images", "masks"):
            _link(source / part / f"{frame}.png", data / "test" / "cvc-test" / part / f"{frame}.png")


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        os.symlink(target.resolve(), link)


def overrides(out: Path, threads: int) -> list[str]:
    """The shipped CVC-ClinicDB recipe, unchanged but for where the data and the run are."""
    return [
        f"run_dir={out / 'run'}",
        f"data.train={out / 'data' / 'train'}",
        f"data.test={out / 'data' / 'test'}",
        f"train.num_threads={threads}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="CVC-ClinicDB folder with images/ and masks/")
    parser.add_argument("out", type=Path, help="folder for the partial copy, the configuration and the run")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from pseudoseg.run_config import load_config
    from pseudoseg.progress import wide_console
    from pseudoseg.quickstart import compare_with_supervised, recipe_path
    from pseudoseg.runner import train

    build_copy(args.source, args.out / "data")
    recipe = recipe_path("polyp_momentum_cvc.yaml")
    settings = overrides(args.out, args.threads)
    console = wide_console()
    console.print(f"the same run: pseudoseg train --config {recipe} " + " ".join(f"--set {item}" for item in settings))
    started = time.perf_counter()
    cfg = load_config(recipe, settings)
    result = train(cfg, log=console.print)
    compare_with_supervised(result, cfg, log=console.print)
    console.print(f"wall time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()

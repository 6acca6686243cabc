"""Benchmark of pseudo-label rendering (the relabel step of ATSO / self-learning).

Measures, on the CPU (or the GPU when there is one):

1. **Throughput**: images per second of the store-writing relabel path
   (:func:`pseudoseg.methods.label_store.render_pseudo_labels`: read image
   records from disk, normalise, predict in mixed precision, encode, write
   label records) against raw batched inference of the same model on the same
   images already in memory (forward + sigmoid only), timed in adjacent pairs
   within one process (median of the per-pair ratios). Target: ratio >= 0.9.
2. **Peak resident memory** (``VmHWM``) of a fresh process relabelling 1 000
   vs 10 000 images. Target: within 10 %, i.e. memory does not grow with the
   unlabeled set.

Usage::

    python benchmarks/bench_relabel.py                 # table on stdout
    python benchmarks/bench_relabel.py --json out.json # also the numbers as JSON

Timings on a shared machine are noisy: compare the ratios measured within one
run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def make_images(path: Path, count: int, *, channels: int, size: int, seed: int = 0) -> None:
    """A record file of ``count`` smooth random images (written in chunks, never all in memory)."""
    from pseudoseg.data.store import ArrayStore

    store = ArrayStore.create(path, count, (channels, size, size))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    for start in range(0, count, 500):
        n = min(500, count - start)
        cx, cy, r = rng.uniform(0.2, 0.8, (3, n, 1, 1))
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.3 * r) ** 2).astype(np.float32)
        noise = rng.normal(0, 0.15, (n, size, size))
        image = np.clip(0.3 + 0.5 * disc + noise, 0, 1)
        store.write(start, np.repeat((image * 255).astype(np.uint8)[:, None], channels, axis=1))
    store.close()


def _setup(args: argparse.Namespace):
    import torch

    from pseudoseg.config import ModelConfig
    from pseudoseg.data.preprocessing import InputNormalizer
    from pseudoseg.engine.device import autocast, resolve_amp, resolve_device
    from pseudoseg.models import build_model

    torch.manual_seed(0)
    device = resolve_device("auto")
    amp = resolve_amp(args.amp, device)
    model = build_model(ModelConfig(name="unet", channels=tuple(args.model_channels), num_res_units=1), args.in_channels).to(device).eval()
    normalizer = InputNormalizer("unit", args.in_channels, device)
    return torch, device, model, normalizer, (lambda: autocast(device, amp)), amp


def peak_rss_mb() -> float:
    """Peak resident set size of this process (VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_memory(args: argparse.Namespace) -> dict:
    """One fresh process: relabel the first ``args.count`` images and report peak memory."""
    from pseudoseg.data.store import ArrayStore
    from pseudoseg.methods.label_store import LabelFormat, Labeler, render_pseudo_labels

    torch, device, model, normalizer, autocast, _ = _setup(args)
    images = ArrayStore(Path(args.images))
    with torch.no_grad(), autocast():  # warm up kernels so both sizes start from the same state
        model(normalizer(normalizer.to_unit(images.read(np.arange(args.batch_size)))))
    labeler = Labeler(model, normalizer, autocast, batch_size=args.batch_size)
    before = peak_rss_mb()
    start = time.perf_counter()
    store = render_pseudo_labels(labeler, images, np.arange(args.count), Path(args.out), label_format=LabelFormat("soft"))
    seconds = time.perf_counter() - start
    store.close()
    return {"count": args.count, "peak_rss_mb": peak_rss_mb(), "before_mb": before, "seconds": seconds, "label_file_mb": Path(args.out).stat().st_size / 2**20}


def throughput(args: argparse.Namespace, images_path: Path, out_dir: Path) -> dict:
    """Store path vs raw inference, interleaved, best of ``repeats`` for each."""
    from pseudoseg.data.store import ArrayStore
    from pseudoseg.methods.label_store import LabelFormat, Labeler, render_pseudo_labels

    torch, device, model, normalizer, autocast, amp = _setup(args)
    images = ArrayStore(images_path)
    indices = np.arange(args.throughput_images)
    batches = [normalizer(normalizer.to_unit(images.read(indices[s : s + args.batch_size]))) for s in range(0, len(indices), args.batch_size)]
    labeler = Labeler(model, normalizer, autocast, batch_size=args.batch_size)

    def raw() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                with autocast():
                    logits = model(batch)
                torch.sigmoid(logits.float())
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    def stored() -> float:
        start = time.perf_counter()
        render_pseudo_labels(labeler, images, indices, out_dir / "throughput.npy", label_format=LabelFormat("soft")).close()
        return time.perf_counter() - start

    raw(), stored()  # warm-up
    # Adjacent pairs see the same machine load; the order alternates so neither
    # path always runs first. The median of the per-pair ratios is robust to
    # other processes starting and stopping during the run.
    raw_times, store_times = [], []
    for trial in range(args.repeats):
        if trial % 2 == 0:
            raw_times.append(raw())
            store_times.append(stored())
        else:
            store_times.append(stored())
            raw_times.append(raw())
    n = len(indices)
    ratios = [r / s for r, s in zip(raw_times, store_times)]
    return {
        "device": str(device),
        "amp": str(amp),
        "threads": torch.get_num_threads(),
        "images": n,
        "pairs": args.repeats,
        "raw_images_per_s": n / float(np.median(raw_times)),
        "store_images_per_s": n / float(np.median(store_times)),
        "ratio": float(np.median(ratios)),
        "ratio_quartiles": [float(np.percentile(ratios, 25)), float(np.percentile(ratios, 75))],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--in-channels", type=int, default=3, help="3 = CT slice with one neighbour on each side")
    parser.add_argument("--model-channels", type=int, nargs="+", default=[8, 16, 32, 64])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--amp", default="auto")
    parser.add_argument("--throughput-images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs (raw, store) for the throughput ratio")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--images", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_memory(args)))
        return

    with tempfile.TemporaryDirectory(prefix="bench-relabel-") as tmp:
        tmp_dir = Path(tmp)
        images_path = tmp_dir / "images.npy"
        make_images(images_path, max([*args.sizes, args.throughput_images]), channels=args.in_channels, size=args.image_size)
        speed = throughput(args, images_path, tmp_dir)
        memory = []
        common = ["--image-size", str(args.image_size), "--in-channels", str(args.in_channels), "--batch-size", str(args.batch_size), "--amp", args.amp, "--model-channels", *map(str, args.model_channels)]
        for count in args.sizes:  # a fresh process per measurement: peak memory is per process
            command = [sys.executable, __file__, "--child", "--images", str(images_path), "--count", str(count), "--out", str(tmp_dir / f"labels_{count}.npy"), *common]
            result = subprocess.run(command, check=True, capture_output=True, text=True)
            memory.append(json.loads(result.stdout.strip().splitlines()[-1]))

    print(f"pseudo-label rendering, {args.image_size} px, {args.in_channels} channels, UNet {args.model_channels}, batch {args.batch_size}, "
          f"{speed['device']} ({speed['threads']} threads), amp {speed['amp']}")
    print()
    print(f"| path | images/s (median of {speed['pairs']} timed pairs of {speed['images']} images) |")
    print("|---|---|")
    print(f"| raw batched inference (in memory, no writes) | {speed['raw_images_per_s']:.0f} |")
    print(f"| relabel into the label store (read, predict, write) | {speed['store_images_per_s']:.0f} |")
    low, high = speed["ratio_quartiles"]
    print(f"| ratio store / raw (median of per-pair ratios) | {speed['ratio']:.3f} (quartiles {low:.3f} - {high:.3f}) |")
    print()
    print("| images relabelled | peak RSS (MiB) | RSS before rendering (MiB) | label file (MiB) | seconds |")
    print("|---|---|---|---|---|")
    for row in memory:
        print(f"| {row['count']} | {row['peak_rss_mb']:.1f} | {row['before_mb']:.1f} | {row['label_file_mb']:.1f} | {row['seconds']:.1f} |")
    growth = memory[-1]["peak_rss_mb"] / memory[0]["peak_rss_mb"] - 1.0
    print()
    print(f"peak memory growth {memory[0]['count']} -> {memory[-1]['count']} images: {100 * growth:+.1f} %")
    if args.json is not None:
        args.json.write_text(json.dumps({"throughput": speed, "memory": memory, "growth": growth}, indent=2) + "\n")


if __name__ == "__main__":
    main()

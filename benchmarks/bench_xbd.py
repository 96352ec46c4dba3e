"""Decoding rate of an xBD split into training tiles: cold (1 and 2 threads) and cached.

Writes ``--images`` post-disaster images of 1024² px at ``--pixel-m`` in the xBD
layout (``tests/train/xbd_data.py``: noise with rectangular buildings, five grades
each, so PNG decoding is at its slowest), then times ``load_tile_data`` as
``stmap train`` calls it: parse and fit the labels, decode, resample to 0.5 m, cut
128² tiles. The cached run reads the content-keyed cache a first run left. Run from
the repository root:

    python -m benchmarks.bench_xbd [--images 24] [--pixel-m 0.5] [--out FILE]

Prints one JSON object (and writes it to ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from stmap.train.datasets import load_tile_data
from tests.train.xbd_data import make_xbd


def timed_load(root: Path, workers: int, cache: Path | None) -> tuple[float, int]:
    start = time.perf_counter()
    data = load_tile_data(root, None, 128, workers=workers, gsd_m=0.5, cache_dir=cache)
    return time.perf_counter() - start, len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--pixel-m", type=float, default=0.5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "xbd"
        half = args.images // 2
        make_xbd(
            root,
            {"turkey-earthquake": half, "mexico-earthquake": args.images - half},
            size=1024,
            pixel_m=args.pixel_m,
        )
        runs = {}
        for workers in (1, 2):
            seconds, tiles = timed_load(root, workers, None)
            runs[f"cold_{workers}_threads"] = {
                "s": round(seconds, 3),
                "tiles_per_s": round(tiles / seconds, 1),
            }
        cache = Path(tmp) / "cache"
        timed_load(root, 2, cache)
        seconds, tiles = timed_load(root, 2, cache)
        runs["cached_2_threads"] = {
            "s": round(seconds, 3),
            "tiles_per_s": round(tiles / seconds, 1),
        }
    result = {
        "images": args.images,
        "image_px": 1024,
        "pixel_m": args.pixel_m,
        "tiles": tiles,
        "runs": runs,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "load_1min": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()

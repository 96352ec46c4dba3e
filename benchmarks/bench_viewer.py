"""What the viewer's tile pyramid (``S_map/``) costs: seconds and MB per km² at 0.5 m.

Two measurements on one synthetic city (``stmap synth``, SIZE² px at 0.5 m):

1. end to end: ``run_inference`` with the shipped demo model on the CPU, modes
   interleaved (none, lite, full, none, lite, full …) so that a loaded machine
   shifts them alike; total and finishing seconds per run, MB of ``S_map/``;
2. the sink alone: the city and the probabilities of its ``--viewer none`` run fed
   to ``MapTiles`` in the pipeline's 2048-px blocks, then its ``finish`` (the
   lower levels), single-threaded, per mode: seconds and MB per km², tiles.

Run, from the repository root (a 4096² city, two rounds):

    python benchmarks/bench_viewer.py --size 4096 --repeats 2 \
        --out benchmarks/results/cpu_viewer.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import rasterio

from stmap.io.blocks import IMAGE, LayerReader, ReadSpec
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.sinks import PROB
from stmap.runtime.viewer_tiles import MapTiles, Pyramid
from stmap.synth import generate_city
from stmap.window import lattice

BLOCK = 2048
MODES = ("lite", "full")


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def sink_cost(city: Path, probs: Path, work: Path, mode: str) -> dict[str, float]:
    """The tile sinks alone, as the pipeline drives them, then their finish."""
    with rasterio.open(city) as img:
        height, width = img.height, img.width
    root = work / f"sink-{mode}"
    shutil.rmtree(root, ignore_errors=True)
    tiles = MapTiles(root, Pyramid.for_raster(height, width, mode), value_max=255)
    spec = ReadSpec(str(city), (1, 2, 3), "uint8", False, (height, width))
    elapsed = 0.0
    with LayerReader({PROB: probs}, spec) as reader:
        windows = [w for row in lattice(0, 0, height, width, BLOCK) for w in row]
        for window, layers in reader.read(windows, {IMAGE, PROB}):
            t0 = time.perf_counter()
            tiles.image.add(window, {IMAGE: layers[IMAGE]})
            tiles.prob.add(window, {PROB: layers[PROB]})
            elapsed += time.perf_counter() - t0
    t0 = time.perf_counter()
    tiles.image.finish()  # nothing to read back: the lower levels
    tiles.prob.finish()
    finish = time.perf_counter() - t0
    km2 = height * width * 0.25 / 1e6
    count = sum(1 for p in root.rglob("*") if p.is_file())
    return {
        "streamed_s": round(elapsed, 3),
        "finish_s": round(finish, 3),
        "s_per_km2": round((elapsed + finish) / km2, 4),
        "mb": round(folder_mb(root), 2),
        "mb_per_km2": round(folder_mb(root) / km2, 3),
        "tiles": count,
    }


def end_to_end(city: Path, work: Path, repeats: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[tuple[float, float]]] = {"none": [], **{m: [] for m in MODES}}
    sizes: dict[str, float] = {}
    for _ in range(repeats):
        for mode in runs:
            out = work / f"out-{mode}"
            shutil.rmtree(out, ignore_errors=True)
            options = InferOptions(device="cpu", viewer=mode)
            summary = run_inference([str(city)], out, options)[0]
            runs[mode].append((summary["seconds"], summary["times"]["finalise"]))
            sizes[mode] = folder_mb(out / "city_map") if mode != "none" else 0.0
    return {
        mode: {
            "seconds_median": round(statistics.median(s for s, _ in values), 2),
            "finalise_s_median": round(statistics.median(f for _, f in values), 2),
            "seconds": [round(s, 2) for s, _ in values],
            "map_mb": round(sizes[mode], 2),
        }
        for mode, values in runs.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stmap-bench-viewer-"))
    try:
        city = work / "city.tif"
        generate_city(city, width=args.size, height=args.size, seed=3, workers=1)
        e2e = end_to_end(city, work, args.repeats)
        probs = work / "out-none" / "city_damage_prob.tif"
        sink = {mode: sink_cost(city, probs, work, mode) for mode in MODES}
        base = e2e["none"]["seconds_median"]
        result = {
            "size_px": args.size,
            "gsd_m": 0.5,
            "km2": args.size**2 * 0.25 / 1e6,
            "block": BLOCK,
            "sink": sink,
            "end_to_end": e2e,
            "overhead_vs_none": {m: round(e2e[m]["seconds_median"] / base - 1, 3) for m in MODES},
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "note": "shared machine (other jobs running); compare ratios within this file",
        }
        print(json.dumps(result, indent=2))
        if args.out:
            args.out.write_text(json.dumps(result, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

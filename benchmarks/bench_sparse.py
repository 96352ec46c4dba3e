"""A mostly empty mosaic runs in time proportional to its valid area.

A synthetic city (STMAP_BENCH_SIZE px square, default 2048, 0.5 m) is cut into a
4 × 4 grid of COG tiles. Two mosaics share the city's full extent: ``full`` holds
all 16 tiles, ``sparse`` only the two diagonal corner tiles (1/8 of the area), so
most of its blocks have no valid pixel and never reach the model. Both run
end to end (`run_inference`: reads, model, COGs, polygons, quicklook, summary) on
the CPU with the tests' `tiny` model, 512-px blocks. Recorded per mosaic: seconds,
valid and skipped pixels, and seconds per valid Mpx; the headline is
``time_ratio`` (sparse / full seconds) beside ``area_ratio`` (sparse / full valid
pixels). Run, from the repository root:

    python -m pytest benchmarks/bench_sparse.py --benchmark-enable -s \
        --benchmark-json=benchmarks/results/cpu_sparse.json
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from stmap.runtime.infer import InferOptions, run_inference
from tests.runtime.infer_data import make_varied_bundle
from tests.runtime.mosaic_data import cut_tile, make_city

SIZE = int(os.environ.get("STMAP_BENCH_SIZE", "2048"))
GRID = 4  # tiles per side
DATA = Path(tempfile.gettempdir()) / "stmap-bench-sparse" / str(SIZE)
SPARSE = ((0, 0), (GRID - 1, GRID - 1))  # the two corner tiles: the full extent, 1/8 the area
RESULTS: dict[str, dict[str, float]] = {}


@pytest.fixture(scope="module")
def tiles() -> dict[tuple[int, int], Path]:
    """The city's 4 × 4 COG tiles, made once and cached."""
    city = DATA / "city.tif"
    if not city.exists():
        make_city(DATA, size=SIZE)
    step = SIZE // GRID
    out = {}
    for r in range(GRID):
        for c in range(GRID):
            path = DATA / f"tile_{r}_{c}.tif"
            if not path.exists():
                cut_tile(city, path, (r * step, c * step, step, step))
            out[(r, c)] = path
    return out


@pytest.fixture(scope="module")
def bundle() -> Path:
    path = DATA / "bundle"
    return path if path.exists() else make_varied_bundle(path)


@pytest.mark.parametrize("kind", ["full", "sparse"])
def test_mosaic_time_follows_valid_area(benchmark, tiles, bundle, kind: str) -> None:
    chosen = [p for key, p in tiles.items() if kind == "full" or key in SPARSE]
    options = InferOptions(model=str(bundle), mosaic=kind, block_size=512, restart=True)
    out = DATA / f"out-{kind}"

    def run() -> dict:
        shutil.rmtree(out, ignore_errors=True)
        return run_inference([str(p) for p in chosen], out, options)[0]

    summary = benchmark.pedantic(run, rounds=1, iterations=1)
    seconds = summary["seconds"]
    facts = {
        "seconds": seconds,
        "pixels": summary["pixels"],
        "valid_pixels": summary["valid_pixels"],
        "skipped_pixels": summary["skipped_pixels"],
        "tiles": summary["tiles"],
        "s_per_valid_mpx": round(seconds / (summary["valid_pixels"] / 1e6), 4),
    }
    benchmark.extra_info.update(facts)
    RESULTS[kind] = facts
    if len(RESULTS) == 2:
        full, sparse = RESULTS["full"], RESULTS["sparse"]
        ratios = {
            "time_ratio": round(sparse["seconds"] / full["seconds"], 4),
            "area_ratio": round(sparse["valid_pixels"] / full["valid_pixels"], 4),
            "model_tiles_ratio": round(sparse["tiles"] / full["tiles"], 4),
        }
        benchmark.extra_info.update(ratios)
        print(f"\nfull {full}\nsparse {sparse}\n{ratios}")

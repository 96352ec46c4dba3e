"""`stmap infer` against the ways people map a scene without it, side by side.

Same raster (a `stmap.synth` city), same model, same machine, one process run: the
three peers in benchmarks/peers/, each written as its tool's docs teach it, and
`stmap infer` (``run_inference``, torch backend, CPU), all with the model's tiles
(128 px), stmap's default overlap (tile / 4) and the same batch size, all writing a
uint8 probability GeoTIFF:

- rasterio: the usual script: tile ``Window``s read one by one, a batch at a
  time through the model, written tile by tile (peers/rasterio_windows.py);
- torchgeo: ``RasterDataset`` + ``GridGeoSampler`` + ``DataLoader(collate_fn=
  stack_samples)``, predictions written by the samples' bounds (peers/torchgeo_grid.py);
- png: the paper's way: cut the scene into PNG tiles, a tile ``Dataset``, mosaic
  the predicted tiles back into a GeoTIFF (peers/png_tiles.py).

Every method is timed end to end with its own IO (model loading included); stmap's
time also covers what the peers do not make (the damage COG, damage polygons,
quicklook, summary), so its speed-up is a lower bound; its streaming part alone is
recorded too. Each method first runs once on a small city (kernel selection is paid
once per process), then the methods take turns for ``--rounds`` rounds; the best
round counts (the least disturbed, as ``timeit`` advises), the median is recorded.
Agreement: max and mean |Δ| of each peer's probabilities against stmap's, in
probability units; they differ by stitching (centre crop against stmap's blended
overlaps) and at the raster's edge (zero fill against stmap's mirroring), so
the mean shows that all of them computed the same map.

Script (the comparison, saved as results/cpu_peers.md and .json), from the
repository root:

    python -m benchmarks.bench_peers --size 4096 --model default --model decoder64 \
        --rounds 3 --out benchmarks/results/cpu_peers

pytest-benchmark (each method once, on a $STMAP_BENCH_SIZE city, 2048 px unless set):

    python -m pytest benchmarks/bench_peers.py --benchmark-enable --benchmark-autosave
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio

from benchmarks.peers import png_tiles, rasterio_windows, torchgeo_grid
from benchmarks.peers.common import model_geometry, stmap_grid
from benchmarks.peers.inputs import MODELS, city, model, threshold_for
from benchmarks.peers.report import (
    finish,
    markdown_table,
    provenance,
    provenance_lines,
)
from stmap.runtime.grid import AxisTiles
from stmap.runtime.infer import InferOptions, run_inference

METHODS = {
    "stmap": "`stmap infer` (torch backend): streaming blocks, all its outputs",
    "rasterio": "rasterio windows, one batch at a time, written tile by tile",
    "torchgeo": "TorchGeo RasterDataset + GridGeoSampler + DataLoader",
    "png": "PNG tiles cut first, tile Dataset + DataLoader, mosaic",
}
BATCH = 32  # stmap's automatic batch size on the CPU
WARMUP_SIZE = 512
NOISY_SPREAD = 1.3  # slowest / fastest round of one method beyond which the report warns


def torchgeo_missing() -> str | None:
    """Why the TorchGeo peer cannot run here, or None."""
    if importlib.util.find_spec("torchgeo") is None:
        return "torchgeo is not installed (pip install 'stmap[bench]')"
    return None


def run_method(
    method: str,
    image: Path,
    workdir: Path,
    bundle: Path,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[Path, dict[str, float]]:
    """Map ``image`` with ``method`` into ``workdir``: its probability raster, and for
    stmap the seconds of its streaming pipeline and of its finalisation. Every method
    runs the torch backend on ``device`` in ``precision`` (the GPU proof's peers)."""
    workdir.mkdir(parents=True, exist_ok=True)
    if method == "stmap":
        options = InferOptions(
            model=str(bundle),
            backend="torch",
            device=device,
            precision=precision,
            batch_size=batch_size,
            threshold=threshold_for(bundle),
            restart=True,
        )
        times = run_inference([str(image)], workdir, options)[0]["times"]
        stages = {"pipeline_s": times["pipeline"], "finalise_s": times["finalise"]}
        return workdir / f"{image.stem}_damage_prob.tif", stages
    output = workdir / f"{image.stem}_{method}_prob.tif"
    output.unlink(missing_ok=True)
    if method == "rasterio":
        rasterio_windows.run(image, output, bundle, batch_size, device, precision)
    elif method == "torchgeo":
        if device != "cpu":
            raise ValueError("the TorchGeo peer runs on the CPU only")
        torchgeo_grid.run(image, output, bundle, batch_size, workers)
    else:
        png_tiles.run(image, output, bundle, batch_size, workers, device, precision)
    return output, {}


def timed(
    method: str,
    image: Path,
    workdir: Path,
    bundle: Path,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> tuple[Path, dict[str, float]]:
    """``run_method`` with its wall and CPU seconds (DataLoader workers included)."""
    start, cpu = time.perf_counter(), _cpu_seconds()
    path, stages = run_method(
        method, image, workdir, bundle, batch_size, workers, device, precision
    )
    seconds = time.perf_counter() - start
    return path, {"seconds": seconds, "cpu_seconds": _cpu_seconds() - cpu, **stages}


def agreement(peer: Path, reference: Path, tile: int, overlap: int) -> dict[str, float | None]:
    """How far a peer's uint8 probability raster is from stmap's, in probability units.

    Besides the max and mean |Δ|, the max off the seams: over the pixels that one
    tile of stmap's grid alone covers (no blending) and whose tiles lie inside the
    raster (no edge fill). A peer that runs the same model on the same tiles is
    exact there; None when the raster is too small to have such pixels.
    """
    with rasterio.open(peer) as a, rasterio.open(reference) as b:
        delta = np.abs(a.read(1).astype(np.int16) - b.read(1).astype(np.int16))
        grid = stmap_grid(b.transform, b.height, b.width, tile, overlap)
    off_seams = [_single_tile_pixels(axis) for axis in (grid.rows, grid.cols)]
    inner = delta[np.ix_(*off_seams)]
    return {
        "max_abs_delta": round(float(delta.max()) / 255, 4),
        "mean_abs_delta": round(float(delta.mean()) / 255, 5),
        "max_abs_delta_off_seams": round(float(inner.max()) / 255, 4) if inner.size else None,
    }


def _single_tile_pixels(axis: AxisTiles) -> np.ndarray:
    """Indices along an axis covered by one tile of stmap's grid, a tile away from the ends.

    stmap's tile k spans [k·stride − lead, … + tile): pixel p lies in two tiles exactly
    when (p + lead) mod stride < overlap.
    """
    p = np.arange(axis.tile, axis.size - axis.tile)
    return p[(p + axis.lead) % axis.stride >= axis.overlap]


def compare(
    model_name: str,
    size: int,
    methods: list[str],
    rounds: int,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> dict[str, Any]:
    """All ``methods`` on one model and one city; per method its times and agreement.

    device, precision: where and how every method runs the model (default: the CPU
    comparison recorded in results/cpu_peers.md).
    """
    bundle, image = model(model_name), city(size)
    root = image.parent / f"peers-{model_name}-{size}"
    shutil.rmtree(root, ignore_errors=True)
    run = (batch_size, workers, device, precision)
    if size > WARMUP_SIZE:
        for method in methods:
            run_method(method, city(WARMUP_SIZE), root / "warmup", bundle, *run)
    runs: dict[str, list[dict[str, float]]] = {method: [] for method in methods}
    outputs: dict[str, Path] = {}
    for _ in range(rounds):
        for method in methods:
            outputs[method], measured = timed(method, image, root / method, bundle, *run)
            runs[method].append(measured)
    mpx = size * size / 1e6
    best_stmap = min(run["seconds"] for run in runs["stmap"]) if "stmap" in runs else None
    results = {}
    for method, measured in runs.items():
        seconds = [run["seconds"] for run in measured]
        best = min(seconds)
        results[method] = {
            "seconds": [round(s, 3) for s in seconds],
            "best_s": round(best, 3),
            "median_s": round(statistics.median(seconds), 3),
            "mpx_per_s": round(mpx / best, 3),
            "cpu_seconds": [round(run["cpu_seconds"], 2) for run in measured],
            "stmap_speedup": round(best / best_stmap, 2) if best_stmap else None,
        }
        if best_stmap and method != "stmap":
            results[method]["agreement"] = agreement(
                outputs[method], outputs["stmap"], *model_geometry(bundle)
            )
        if method == "stmap":
            fastest = measured[seconds.index(best)]
            results[method]["pipeline_s"] = fastest["pipeline_s"]
            results[method]["finalise_s"] = fastest["finalise_s"]
            results[method]["pipeline_mpx_per_s"] = round(mpx / fastest["pipeline_s"], 3)
    shutil.rmtree(root, ignore_errors=True)
    tile, overlap = model_geometry(bundle)
    return {
        "model": model_name,
        "model_description": MODELS.get(model_name, model_name),
        "tile": tile,
        "overlap": overlap,
        "size": size,
        "device": device,
        "precision": precision,
        "megapixels": round(mpx, 3),
        "results": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as people read it: one table per model."""
    parts = [
        "# `stmap infer` against its peers on the CPU",
        "",
        "Written by `benchmarks/bench_peers.py` (its docstring says how each method is "
        "measured). Speed-up: the method's best time over stmap's; stmap's time includes "
        "the outputs the peers do not make (damage COG, polygons, quicklook), so it is a "
        "lower bound. Least CPU s: the round with the least CPU time (this process and its "
        "DataLoader workers), less sensitive than wall time to other work on the machine. "
        "|Δ|: against stmap's probability raster, in probability units; off seams: over the "
        "pixels one tile of stmap's grid alone covers, a tile away from the raster's edge, "
        "where 0 means the peer computed exactly stmap's numbers.",
        "",
        provenance_lines(report["provenance"]),
        "",
        f"Batch {report['batch_size']}, DataLoader workers {report['workers']}, "
        f"{report['rounds']} round(s).",
    ]
    for comparison in report["comparisons"]:
        parts += [
            "",
            f"## {comparison['model']} ({comparison['model_description']}), "
            f"{comparison['size']}² px city ({comparison['megapixels']} Mpx), "
            f"tile {comparison['tile']} px, overlap {comparison['overlap']} px",
            "",
        ]
        rows = []
        for method, result in comparison["results"].items():
            match = result.get("agreement", {})
            rows.append(
                [
                    f"{method}: {METHODS[method]}",
                    result["best_s"],
                    result["median_s"],
                    ", ".join(str(s) for s in result["seconds"]),
                    result["mpx_per_s"],
                    min(result["cpu_seconds"]),
                    f"**{result['stmap_speedup']}×**" if method != "stmap" else "1×",
                    match.get("max_abs_delta", "–"),
                    match.get("mean_abs_delta", "–"),
                    match.get("max_abs_delta_off_seams", "–"),
                ]
            )
        header = ["method", "best s", "median s", "every round s", "Mpx/s", "least CPU s"]
        header += ["stmap speed-up"]
        header += [r"max \|Δ\|", r"mean \|Δ\|", r"max \|Δ\| off seams"]  # \| in a table
        parts.append(markdown_table(header, rows))
        if "stmap" in comparison["results"]:
            stmap = comparison["results"]["stmap"]
            parts += [
                "",
                f"stmap's fastest round: streaming pipeline {stmap['pipeline_s']} s "
                f"({stmap['pipeline_mpx_per_s']} Mpx/s), finalisation {stmap['finalise_s']} s.",
            ]
        spread = max(max(r["seconds"]) / min(r["seconds"]) for r in comparison["results"].values())
        if spread > NOISY_SPREAD:
            parts += [
                "",
                f"**Noisy:** rounds of one method differ by up to {spread:.1f}× here (other "
                "work on the machine); the speed-ups carry that uncertainty.",
            ]
    return "\n".join(parts)


# pytest-benchmark: each method once on one city, the demo bundle.

SIZE = int(os.environ.get("STMAP_BENCH_SIZE", "2048"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stmap's probability raster of the city, to check each method's output against."""
    workdir = tmp_path_factory.mktemp("reference")
    return run_method("stmap", city(SIZE), workdir, model("default"), BATCH, 0)[0]


@pytest.mark.parametrize("method", list(METHODS))
def test_end_to_end(benchmark, method: str, reference: Path, tmp_path: Path) -> None:
    if method == "torchgeo" and (reason := torchgeo_missing()):
        print(f"torchgeo peer skipped: {reason}")
        pytest.skip(reason)
    image, bundle = city(SIZE), model("default")
    path, measured = benchmark.pedantic(
        timed, args=(method, image, tmp_path, bundle, BATCH, 0), rounds=1
    )
    match = agreement(path, reference, *model_geometry(bundle))
    benchmark.extra_info.update(
        method=method,
        size=SIZE,
        batch_size=BATCH,
        mpx_per_s=round(SIZE * SIZE / 1e6 / measured["seconds"], 3),
        **match,
    )
    if method in ("rasterio", "png"):
        # stmap's tiles through the same model: identical wherever no blending or edge fill
        assert match["max_abs_delta_off_seams"] is not None, f"{SIZE} px: no pixel a tile in"
        assert match["max_abs_delta_off_seams"] == 0, match
    # TorchGeo anchors its grid elsewhere, so its tiles differ; a misplaced or flipped
    # tile would still show as a mean |Δ| near 0.1 (the map against itself shifted)
    assert match["mean_abs_delta"] < 0.06, match


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="City side, px.")
    parser.add_argument(
        "--model",
        action="append",
        help=f"{', '.join(MODELS)} or a bundle path; repeatable [default: default].",
    )
    parser.add_argument("--method", action="append", choices=list(METHODS), help="Repeatable.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=BATCH)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes.")
    parser.add_argument("--out", type=Path, help="Save OUT.json and OUT.md (else print JSON).")
    args = parser.parse_args(argv)
    methods = args.method or list(METHODS)
    if "stmap" not in methods:
        methods.insert(0, "stmap")  # the reference for speed-ups and agreement
    if "torchgeo" in methods and (reason := torchgeo_missing()):
        print(f"torchgeo peer skipped: {reason}", file=sys.stderr)
        methods.remove("torchgeo")
    report = {"provenance": provenance()}
    report.update(
        batch_size=args.batch_size,
        workers=args.workers,
        rounds=args.rounds,
        comparisons=[
            compare(name, args.size, methods, args.rounds, args.batch_size, args.workers)
            for name in args.model or ["default"]
        ],
    )
    finish(report, markdown(report), args.out)
    return 0


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


if __name__ == "__main__":
    sys.exit(main())

"""How `stmap infer`'s time and memory scale: raster size, block size, batch size.

Each point is one `stmap infer --backend torch --device cpu` in a fresh child
process, on a `stmap.synth` city (seed 0, 0.5 m) with the shipped demo bundle
(tiny backbone, 16-channel decoder): its wall time (process start and imports
included, so small rasters look slow), its own summary's time and rate, and its
peak RSS, the kernel's high-water mark for that child alone (``os.wait4``). Series:

- size: 1024² … 16384² px cities at the default block and batch sizes; peak RSS
  should not grow with the raster (issue #4: 16384² within 1.5 × 4096²);
- block: ``--block-size`` 512 … 4096 on the 4096² city;
- batch: ``--batch-size`` 1 … 64 on the 4096² city (the CPU backend pads short
  batches to a multiple of 8, never past the largest batch it has seen, so
  ``--batch-size 1`` computes one tile per forward).

Script (the series, saved as results/cpu_scaling.md and .json), from the repository
root; ``--max-size`` drops the larger cities (the 16384² one takes minutes):

    python -m benchmarks.bench_scaling --out benchmarks/results/cpu_scaling [--max-size 8192]

pytest-benchmark (one benchmark per point; lists from $STMAP_BENCH_SIZES,
$STMAP_BENCH_BLOCKS, $STMAP_BENCH_BATCHES, comma-separated, the block and batch
series on a $STMAP_BENCH_SERIES_SIZE city, cities above $STMAP_BENCH_MAX_SIZE left out):

    python -m pytest benchmarks/bench_scaling.py --benchmark-enable --benchmark-autosave
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks.peers.inputs import city
from benchmarks.peers.report import (
    finish,
    markdown_table,
    provenance,
    provenance_lines,
)
from stmap.bundle import default_bundle_path

SIZES = (1024, 2048, 4096, 8192, 16384)
BLOCKS = (512, 1024, 2048, 4096)
BATCHES = (1, 2, 4, 8, 16, 32, 64)
SERIES_SIZE = 4096
RSS_SIZES = (4096, 16384)  # issue #4: the peak RSS of the second within 1.5 × the first's


def infer_in_child(
    image: Path, outdir: Path, *, block: int | None = None, batch: int | None = None
) -> dict[str, Any]:
    """One `stmap infer` in a fresh process: its wall time, summary figures and peak RSS."""
    args = [sys.executable, "-c", "from stmap.cli import main; main()", "infer", str(image)]
    args += ["-o", str(outdir), "--model", str(default_bundle_path()), "--backend", "torch"]
    args += ["--device", "cpu", "--restart", "--json", "--quiet"]
    if block is not None:
        args += ["--block-size", str(block)]
    if batch is not None:
        args += ["--batch-size", str(batch)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        process = subprocess.Popen(args, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        if process.returncode != 0:
            raise RuntimeError(f"stmap infer failed ({process.returncode}): {err.read()[-3000:]}")
        summary = json.loads(out.read())
    mpx = summary["pixels"] / 1e6
    return {
        "megapixels": round(mpx, 3),
        "block_size": summary["block_size"],
        "batch_size": summary["batch_size"],
        "process_s": round(seconds, 2),
        "infer_s": summary["seconds"],
        "mpx_per_s": round(mpx / summary["seconds"], 3),
        "pipeline_s": summary["times"]["pipeline"],
        "finalise_s": summary["times"]["finalise"],
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # ru_maxrss is KiB on Linux
    }


def run_series(
    sizes: list[int], blocks: list[int], batches: list[int], series_size: int, workdir: Path
) -> dict[str, Any]:
    """Every point of the three series, in that order."""
    out = workdir / "out"
    report: dict[str, Any] = {"series_size": series_size}
    report["size"] = [{**infer_in_child(city(s), out), "size": s} for s in sizes]
    series = city(series_size)
    report["block"] = [infer_in_child(series, out, block=b) for b in blocks]
    report["batch"] = [infer_in_child(series, out, batch=b) for b in batches]
    peaks = {point["size"]: point["peak_rss_mib"] for point in report["size"]}
    small, large = RSS_SIZES
    if small in peaks and large in peaks:
        report["rss_ratio_16384_to_4096"] = round(peaks[large] / peaks[small], 3)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The three series as tables, with the issue #4 memory check."""
    columns = ["process s", "infer s", "Mpx/s", "pipeline s", "finalise s", "peak RSS MiB"]

    def rows(points: list[dict[str, Any]], key: str) -> list[list[Any]]:
        return [
            [
                point[key],
                point["process_s"],
                point["infer_s"],
                point["mpx_per_s"],
                point["pipeline_s"],
                point["finalise_s"],
                point["peak_rss_mib"],
            ]
            for point in points
        ]

    parts = [
        "# `stmap infer` scaling on the CPU: raster, block and batch size",
        "",
        "Written by `benchmarks/bench_scaling.py` (its docstring says how). Each row is "
        "one `stmap infer --backend torch --device cpu` in a fresh process with the demo "
        "bundle; process s includes starting Python and importing torch, infer s is the "
        "run's own summary time (Mpx/s is over it), peak RSS is that process's.",
        "",
        provenance_lines(report["provenance"]),
        "",
        "## Raster size (default block and batch size)",
        "",
        markdown_table(["city px", *columns], rows(report["size"], "size")),
    ]
    if "rss_ratio_16384_to_4096" in report:
        parts += [
            "",
            "Issue #4 (peak RSS of the 16384² city within 1.5 × that of the 4096² one): ratio "
            f"**{report['rss_ratio_16384_to_4096']}**.",
        ]
    repeats = _repeated_configurations(report)
    if repeats:
        parts += [
            "",
            "Timing noise: the same configuration ran more than once (infer s "
            + "; ".join(", ".join(str(s) for s in times) for times in repeats)
            + "); the spread is other work on the machine, which peak RSS does not feel.",
        ]
    series = report["series_size"]
    parts += [
        "",
        f"## Block size ({series}² city)",
        "",
        markdown_table(["block px", *columns], rows(report["block"], "block_size")),
        "",
        f"## Batch size ({series}² city)",
        "",
        markdown_table(["batch", *columns], rows(report["batch"], "batch_size")),
    ]
    return "\n".join(parts)


def _repeated_configurations(report: dict[str, Any]) -> list[list[float]]:
    """infer s of every (pixels, block, batch) configuration that the series ran twice or more."""
    runs: dict[tuple[float, int, int], list[float]] = {}
    for point in report["size"] + report["block"] + report["batch"]:
        key = (point["megapixels"], point["block_size"], point["batch_size"])
        runs.setdefault(key, []).append(point["infer_s"])
    return [times for times in runs.values() if len(times) > 1]


# pytest-benchmark: one benchmark per point.


def _env_list(name: str, default: tuple[int, ...]) -> list[int]:
    value = os.environ.get(name)
    return [int(x) for x in value.split(",")] if value else list(default)


MAX_SIZE = int(os.environ.get("STMAP_BENCH_MAX_SIZE", max(SIZES)))
ENV_SIZES = [s for s in _env_list("STMAP_BENCH_SIZES", SIZES) if s <= MAX_SIZE]
ENV_SERIES_SIZE = min(int(os.environ.get("STMAP_BENCH_SERIES_SIZE", SERIES_SIZE)), MAX_SIZE)


def _bench_point(benchmark, image: Path, outdir: Path, **options: int) -> None:
    point = benchmark.pedantic(infer_in_child, args=(image, outdir), kwargs=options, rounds=1)
    benchmark.extra_info.update(point)
    print(f"\n{image.name} {options or ''}: {point}")


@pytest.mark.parametrize("size", ENV_SIZES)
def test_raster_size(benchmark, size: int, tmp_path: Path) -> None:
    _bench_point(benchmark, city(size), tmp_path)


@pytest.mark.parametrize("block", _env_list("STMAP_BENCH_BLOCKS", BLOCKS))
def test_block_size(benchmark, block: int, tmp_path: Path) -> None:
    _bench_point(benchmark, city(ENV_SERIES_SIZE), tmp_path, block=block)


@pytest.mark.parametrize("batch", _env_list("STMAP_BENCH_BATCHES", BATCHES))
def test_batch_size(benchmark, batch: int, tmp_path: Path) -> None:
    _bench_point(benchmark, city(ENV_SERIES_SIZE), tmp_path, batch=batch)


def main(argv: list[str] | None = None) -> int:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=ints, default=list(SIZES), help="City sides, px.")
    parser.add_argument("--max-size", type=int, default=max(SIZES), help="Leave larger out.")
    parser.add_argument("--blocks", type=ints, default=list(BLOCKS))
    parser.add_argument("--batches", type=ints, default=list(BATCHES))
    parser.add_argument("--series-size", type=int, default=SERIES_SIZE)
    parser.add_argument("--out", type=Path, help="Save OUT.json and OUT.md (else print JSON).")
    args = parser.parse_args(argv)
    sizes = [s for s in args.sizes if s <= args.max_size]
    series_size = min(args.series_size, args.max_size)
    report: dict[str, Any] = {"provenance": provenance(), "model": "default (demo bundle)"}
    with tempfile.TemporaryDirectory(prefix="stmap-scaling-") as tmp:
        report.update(run_series(sizes, args.blocks, args.batches, series_size, Path(tmp)))
    finish(report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

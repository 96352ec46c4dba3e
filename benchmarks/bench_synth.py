"""Throughput and peak memory of `stmap synth` (generate_city) on this machine.

As a script, one run at a given size, printed (and optionally saved) as JSON:

    python benchmarks/bench_synth.py --size 8192 [--style citycentre] [--workers N]
        [--out DIR] [--json FILE]

As pytest-benchmark (a small city, saved with --benchmark-json):

    pytest benchmarks/bench_synth.py --benchmark-enable --benchmark-json=synth.json

`mpx_per_s` is output pixels over wall time for the whole job (layout, rendering,
compression, footprints). Peak RSS is the kernel's high-water mark
(getrusage ru_maxrss) of this process and of the largest worker process; with
workers, the job's peak is at most main + workers x worker.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from stmap.synth import generate_city


def run(size: int, style: str, workers: int | None, out_dir: Path) -> dict[str, Any]:
    """Generate one size² city into out_dir and measure it."""
    started, cpu = time.perf_counter(), time.process_time()
    result = generate_city(
        out_dir / f"bench_{size}.tif",
        width=size,
        height=size,
        style=style,
        workers=workers,
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    main = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    n_workers = result.workers if result.workers > 1 else 0  # 1: rendered in-process
    return {
        "size": size,
        "style": style,
        "workers": result.workers,
        "pixels": size * size,
        "seconds": round(seconds, 2),
        "mpx_per_s": round(size * size / 1e6 / seconds, 2),
        "cpu_seconds_main": round(time.process_time() - cpu, 1),
        "cpu_seconds_workers": round(children.ru_utime + children.ru_stime, 1),
        "peak_rss_mb_main": main.ru_maxrss // 1024,  # Linux reports KiB
        "peak_rss_mb_worker": children.ru_maxrss // 1024,
        "peak_rss_mb_bound": (main.ru_maxrss + n_workers * children.ru_maxrss) // 1024,
        "buildings": result.buildings,
        "image_mb": round(result.image.stat().st_size / 2**20, 1),
    }


def test_synth_throughput(benchmark, tmp_path: Path) -> None:
    """pytest-benchmark: a 2048² city, rendered in-process."""
    report = benchmark.pedantic(run, args=(2048, "citycentre", 1, tmp_path), rounds=1)
    benchmark.extra_info.update(report)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--style", default="citycentre")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Folder for the city (a temp dir).")
    parser.add_argument("--json", type=Path, default=None, help="Also save the report here.")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.size, args.style, args.workers, args.out or Path(tmp))
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

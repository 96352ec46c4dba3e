"""Soak: map many scenes in one long-lived process; memory and file descriptors must not grow.

A service that maps scene after scene must not leak: not memory (a model, a GDAL
cache or a thread pool kept per run), not file descriptors (a raster or a
GeoPackage left open), not threads. This maps ``--scenes`` synthetic cities
(``stmap.synth``, one seed each, sizes cycling through ``--sizes`` so that every
size has been seen by scene ``--from-scene``), each with its building footprints,
one ``run_inference`` call per scene in this process, on the CPU, with the shipped
demo bundle. After each scene it records the process's peak resident memory
(VmHWM, reset once the cities are made), its current resident memory (VmRSS), its
open file descriptors (/proc/self/fd) and its threads, and reports their growth
from scene ``--from-scene`` to the last. Run from the repository root:

    python benchmarks/bench_soak.py [--scenes 50] [--sizes 512,768,1024] [--from-scene 5]
        [--json benchmarks/results/cpu_soak.json] [--md benchmarks/results/cpu_soak.md] [--ray]

Prints one JSON object. ``--ray`` also maps the same scenes as one Ray job
(``stmap.runtime.distributed.run_on_ray``, local cluster) and samples the Ray
workers' memory and descriptors as scenes finish (``soak_ray``); it is skipped,
with the reason printed, where that runner or Ray is not installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from stmap.provenance import git_commit
from stmap.runtime.bench import peak_rss_mb, reset_peak_rss, versions
from stmap.runtime.infer import InferOptions, run_inference

OPTIONS = InferOptions(model="default", device="cpu", backend="torch")


def make_scenes(folder: Path, count: int, sizes: list[int]) -> list[tuple[Path, Path]]:
    """``count`` synthetic cities (image, footprints), seed i, size ``sizes[i % len]``."""
    from stmap.synth import generate_city

    scenes = []
    for i in range(count):
        size = sizes[i % len(sizes)]
        image = folder / f"scene{i:02d}.tif"
        generate_city(image, width=size, height=size, seed=i, overwrite=True)
        scenes.append((image, folder / f"scene{i:02d}_footprints.gpkg"))
    return scenes


def process_state() -> dict[str, float]:
    """This process now: peak and current resident MiB, open descriptors, threads."""
    return {
        "peak_rss_mb": round(peak_rss_mb("VmHWM"), 1),
        "rss_mb": round(peak_rss_mb("VmRSS"), 1),
        "fds": len(os.listdir("/proc/self/fd")),
        "threads": len(os.listdir("/proc/self/task")),
    }


def soak(scenes: list[tuple[Path, Path]], outdir: Path) -> list[dict[str, Any]]:
    """Map every scene in this process, one ``run_inference`` call each; a sample after each."""
    samples = []
    for i, (image, footprints) in enumerate(scenes, start=1):
        start = time.perf_counter()
        options = replace(OPTIONS, footprints=str(footprints))
        summary = run_inference([str(image)], outdir, options)[0]
        samples.append(
            {
                "scene": i,
                "pixels": summary["pixels"],
                "seconds": round(time.perf_counter() - start, 3),
                **process_state(),
            }
        )
        print(f"scene {i}: {samples[-1]}", file=sys.stderr)
    return samples


def growth(samples: list[dict[str, Any]], first: int) -> dict[str, float]:
    """How much each measure grew from scene ``first`` to the last, and the trend of the
    resident memory over those scenes (least squares; a leak is a steady climb, while
    the allocator's high-water mark rises by steps that stop)."""
    tail = [s for s in samples if s["scene"] >= first] or samples[-1:]
    start, end = tail[0], tail[-1]
    keys = [k for k in ("peak_rss_mb", "rss_mb", "fds", "threads") if k in start]
    grown: dict[str, float] = {k: round(end[k] - start[k], 1) for k in keys}
    rises = [
        s["scene"]
        for s, before in zip(tail[1:], tail, strict=False)
        if s["peak_rss_mb"] > before["peak_rss_mb"]
    ]
    grown["peak_rss_last_rise_scene"] = rises[-1] if rises else start["scene"]
    if len(tail) > 2:
        scenes, rss = [s["scene"] for s in tail], [s["rss_mb"] for s in tail]
        slope = statistics.linear_regression(scenes, rss).slope
        grown["rss_mb_per_scene"] = round(slope, 2)
    return grown


def ray_worker_state() -> dict[str, float] | None:
    """The Ray workers holding the model (``ray::MapWorker`` processes): the largest peak
    and current resident memory, and their descriptors and threads summed."""
    states = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::MapWorker"):
                continue
            status = dict(
                line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
            )
            states.append(
                (
                    int(status["VmHWM"].split()[0]) / 1024,
                    int(status["VmRSS"].split()[0]) / 1024,
                    len(os.listdir(f"/proc/{pid}/fd")),
                    len(os.listdir(f"/proc/{pid}/task")),
                )
            )
        except (OSError, KeyError, ValueError):
            continue  # a process that ended, or is not ours to read
    if not states:
        return None
    peak, rss, fds, threads = zip(*states, strict=True)
    return {
        "workers": len(states),
        "peak_rss_mb": round(max(peak), 1),
        "rss_mb": round(max(rss), 1),
        "fds": sum(fds),
        "threads": sum(threads),
    }


def soak_ray(scenes: list[tuple[Path, Path]], outdir: Path, actors: int) -> dict[str, Any]:
    """The same scenes as one Ray job; the workers sampled whenever scenes were published
    since the last look (every 0.2 s; the job's end stops the workers before its last).

    Skipped (with the reason) where ``stmap.runtime.distributed`` or Ray is missing.
    Footprints are left out: one job shares one ``--footprints`` file.
    """
    for module in ("stmap.runtime.distributed", "ray"):
        if importlib.util.find_spec(module) is None:
            reason = f"{module} is not installed"
            print(f"Ray soak skipped: {reason}", file=sys.stderr)
            return {"skipped": reason}
    from stmap.runtime.distributed import run_on_ray

    samples: list[dict[str, Any]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            published = len(list(outdir.glob("*_summary.json")))
            state = ray_worker_state()
            if state and published > len(samples):
                samples.append({"scene": published, **state})

    sampler = threading.Thread(target=sample, name="soak-ray-sampler", daemon=True)
    start = time.perf_counter()
    sampler.start()
    try:
        run_on_ray([str(image) for image, _ in scenes], outdir, OPTIONS, actors=actors)
    finally:
        done.set()
        sampler.join()
    return {"actors": actors, "seconds": round(time.perf_counter() - start, 1), "samples": samples}


def _growth_row(label: str, grown: dict[str, Any]) -> str:
    return (
        f"| {label} | {grown['peak_rss_mb']:+} | {grown['rss_mb']:+} | "
        f"{grown.get('rss_mb_per_scene', 'n/a')} | {grown['peak_rss_last_rise_scene']} | "
        f"{grown['fds']:+} | {grown['threads']:+} |"
    )


def markdown(report: dict[str, Any]) -> str:
    """The results as a page for benchmarks/results/."""
    first, samples, ray = report["from_scene"], report["samples"], report["ray"]
    rows = [s for s in samples if s["scene"] in (1, first) or s["scene"] % 5 == 0]
    table = "\n".join(
        f"| {s['scene']} | {s['pixels'] / 1e6:.2f} | {s['seconds']:.2f} | {s['peak_rss_mb']} | "
        f"{s['rss_mb']} | {s['fds']} | {s['threads']} |"
        for s in rows
    )
    growths = [_growth_row("this process", report["growth"])]
    if "growth" in ray:
        growths.append(_growth_row(f"Ray workers ({ray['actors']}, one job)", ray["growth"]))
    ray_text = (
        f"Ray: skipped, {ray['skipped']}."
        if "skipped" in ray
        else f"Ray: the same scenes (no footprints) as one job of {ray['seconds']} s on a local "
        "cluster; its workers were sampled as scenes were published."
    )
    env = ", ".join(f"{k}={v}" for k, v in report["env"].items() if v) or "none"
    return f"""# Soak: {len(samples)} scenes in one process (CPU)

    {report["command"]}

Each scene is a `stmap.synth` city (seed = scene number - 1, sizes {report["sizes"]} px
in turn) mapped with its footprints by one `run_inference` call in the same process:
the demo bundle, torch backend, CPU, fp32, {report["threads_torch"]} torch thread(s).
After each scene: peak resident memory (VmHWM, reset after the cities were made),
resident memory now (VmRSS), open file descriptors and threads of the process.
{ray_text}

Machine: {report["machine"]["platform"]}, {report["machine"]["cpu_count"]} CPUs, device
{report["device"]}; environment: {env}. Versions:
{", ".join(f"{k} {v}" for k, v in report["versions"].items())}.
Commit: {report["commit"]} (with uncommitted work of the same day). Other jobs shared
the machine, so the seconds are not clean timings; memory and descriptors do not
depend on that.

## Growth from scene {first} to the last

| | peak RSS MiB | RSS MiB | RSS trend MiB/scene | peak last rose at scene | fds | threads |
|---|---|---|---|---|---|---|
{chr(10).join(growths)}

## This process, every 5th scene

| scene | Mpx | seconds | peak RSS MiB | RSS MiB | fds | threads |
|---|---|---|---|---|---|---|
{table}
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--sizes", default="512,768,1024", help="square sizes in px, in turn")
    parser.add_argument("--from-scene", type=int, default=5, help="growth is measured from it")
    parser.add_argument("--json", type=Path, default=None, help="Also save the report here.")
    parser.add_argument("--md", type=Path, default=None, help="Also save a Markdown page here.")
    parser.add_argument("--ray", action="store_true", help="Also soak one Ray job (local).")
    parser.add_argument("--ray-actors", type=int, default=1)
    args = parser.parse_args(argv)
    if not 1 <= args.from_scene <= args.scenes:
        parser.error("--from-scene must lie between 1 and --scenes")
    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="stmap-soak-") as tmp:
        folder = Path(tmp)
        (folder / "cities").mkdir()
        scenes = make_scenes(folder / "cities", args.scenes, sizes)
        reset_peak_rss()  # the cities' making is not the soak's
        samples = soak(scenes, folder / "out")
        ray = (
            soak_ray(scenes, folder / "ray", args.ray_actors)
            if args.ray
            else {"skipped": "no --ray"}
        )
        shutil.rmtree(folder / "out", ignore_errors=True)
    if ray.get("samples"):
        ray["growth"] = growth(ray["samples"], args.from_scene)
    report = {
        "command": " ".join(["python", "benchmarks/bench_soak.py", *(argv or sys.argv[1:])]),
        "commit": git_commit(),
        "device": "cpu",
        "threads_torch": torch.get_num_threads(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MALLOC_ARENA_MAX")},
        "versions": versions(),
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "sizes": sizes,
        "from_scene": args.from_scene,
        "growth": growth(samples, args.from_scene),
        "samples": samples,
        "ray": ray,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    if args.md:
        args.md.write_text(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

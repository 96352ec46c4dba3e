"""Every file in benchmarks/ still runs, so recorded figures can be reproduced.

Benchmarks are not run by the suite, so an API change can break them silently.
Each file is run once here, in a subprocess from the repository root (as its
docstring says to run it), at the smallest size it offers: scripts with a tiny
``--size``/``--tiles`` mode, pytest-benchmark files with ``--benchmark-disable``
(each test body once, no timing). A file with no tiny mode is at least imported
and collected. A new benchmark file must be added to ``SMOKE``, or this test fails.
Files that take their sizes from the environment get them from ``ENV``; the
scripts that write results/ files are run once more, into a temporary folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PYTEST = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]

# file → (arguments to the interpreter, why it is run that way)
SMOKE: dict[str, tuple[list[str], str]] = {
    "bench_synth.py": (
        ["benchmarks/bench_synth.py", "--size", "256"],
        "script mode at 256 px",
    ),
    "bench_train_cache.py": (
        ["benchmarks/bench_train_cache.py", "--tiles", "4", "--epochs", "1", "--backbone", "tiny"],
        "script mode: 4 tiles, 1 epoch, the tiny backbone",
    ),
    "bench_backends.py": (
        [*PYTEST[1:], "benchmarks/bench_backends.py", "--benchmark-disable"],
        "no tiny mode; its four tests once each without timing (~30 s on 2 cores)",
    ),
    "bench_runtime.py": (
        [*PYTEST[1:], "benchmarks/bench_runtime.py", "--collect-only"],
        "collected only: its 4096² and 16384² px cities take minutes, it has no tiny mode",
    ),
    "gpu_backends.py": (
        ["benchmarks/gpu_backends.py", "--help"],
        "imported only (--help) here; run for real on CUDA by test_gpu_backends_runs",
    ),
    "bench_precision.py": (
        ["-m", "benchmarks.bench_precision", "--tiny"],
        "--tiny: the demo bundle in fp32/bf16/int8, a 256² city, one round",
    ),
    "gpu_proof.py": (
        ["benchmarks/gpu_proof.py", "--help"],
        "imported only (--help) here; run end to end (--dry-run) by tests/test_gpu_proof.py",
    ),
    "bench_peers.py": (
        [*PYTEST[1:], "benchmarks/bench_peers.py", "--benchmark-disable"],
        "stmap and its three peers once each on a 512² city (torchgeo skips where absent)",
    ),
    "bench_scaling.py": (
        [*PYTEST[1:], "benchmarks/bench_scaling.py", "--benchmark-disable"],
        "one `stmap infer` child per series: a 256² city, block 512, batch 8",
    ),
    "bench_viewer.py": (
        ["benchmarks/bench_viewer.py", "--size", "256", "--repeats", "1"],
        "script mode: a 256² city, each --viewer mode once",
    ),
    "bench_sparse.py": (
        [*PYTEST[1:], "benchmarks/bench_sparse.py", "--benchmark-disable"],
        "a full and a sparse mosaic of a 256² city, once each without timing",
    ),
    "bench_phase.py": (
        [
            *("-m", "benchmarks.bench_phase", "--size", "320", "--styles", "citycentre"),
            *("--offsets", "1,1", "--overlaps", "16", "--models", "default", "--diagnose"),
        ],
        "one 320² city, one crop, overlap 16, the shipped bundle, and the diagnosis",
    ),
    "bench_phase_sweep.py": (
        [
            *("-m", "benchmarks.bench_phase_sweep", "--size", "192", "--styles", "citycentre"),
            *("--margin", "16", "--models", "default"),
        ],
        "one 192² city, the shipped bundle, all 255 shifts",
    ),
    "bench_map_iou.py": (
        ["-m", "benchmarks.bench_map_iou", "--synth", "256", "--models", "default"],
        "seven 256² cities, the shipped bundle",
    ),
    "bench_shift_model.py": (
        [
            *("-m", "benchmarks.bench_shift_model", "--size", "512", "--epochs", "1"),
            *("--variants", "tiny,aa-cons", "--rounds", "1"),
        ],
        "one 512² city per style, tiny and tiny-aa + bilinear + consistency for 1 epoch",
    ),
    "bench_soak.py": (
        ["benchmarks/bench_soak.py", "--scenes", "6", "--sizes", "256"],
        "script mode: 6 scenes of 256 px, growth from scene 5 to 6",
    ),
    "bench_xbd.py": (
        ["-m", "benchmarks.bench_xbd", "--images", "2"],
        "script mode (as a module: it writes its images with the tests' xBD fixture): 2 images",
    ),
    "bench_adapt.py": (
        [
            "benchmarks/bench_adapt.py",
            *("--size", "512", "--style", "oldtown", "--n", "6", "--draws", "1"),
            *("--folds", "2", "--epochs", "1"),
        ],
        "script mode: one adaptation on 6 labels of a 512² oldtown city, 1 epoch, 2 folds",
    ),
}
# environment of the files whose pytest-benchmark tests take their sizes from it
ENV: dict[str, dict[str, str]] = {
    # pixels off the seams, a (1024-px) tile from the edges
    "bench_peers.py": {"STMAP_BENCH_SIZE": "2304"},
    "bench_sparse.py": {"STMAP_BENCH_SIZE": "256"},
    "bench_scaling.py": {
        "STMAP_BENCH_SIZES": "256",
        "STMAP_BENCH_BLOCKS": "512",
        "STMAP_BENCH_BATCHES": "8",
        "STMAP_BENCH_SERIES_SIZE": "256",
    },
}
# scripts that save results/ files as OUT.json and OUT.md: tiny arguments
REPORTS: dict[str, list[str]] = {
    "bench_peers": ["--size", "300", "--rounds", "1"],
    "bench_scaling": [
        "--sizes",
        "256",
        "--series-size",
        "256",
        "--blocks",
        "512",
        "--batches",
        "8",
    ],
}


# over 30 s (on a busy 2-core machine): deselect with -m "not slow" when in a hurry
SLOW = {"bench_backends.py", "bench_peers.py", "bench_scaling.py"}
PRINTS_JSON = {
    "bench_precision.py",
    "bench_synth.py",
    "bench_train_cache.py",
    "bench_soak.py",
    "bench_phase.py",
    "bench_phase_sweep.py",
    "bench_shift_model.py",
    "bench_map_iou.py",
}  # their script mode prints one object


def test_every_benchmark_has_a_smoke_run() -> None:
    files = sorted(p.name for p in BENCHMARKS.glob("*.py"))
    missing = [name for name in files if name not in SMOKE]
    assert not missing, f"add a smoke run to SMOKE in {Path(__file__).name} for {missing}"


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in sorted(SMOKE)],
)
def test_benchmark_runs(name: str) -> None:
    if not (BENCHMARKS / name).exists():
        pytest.skip(f"benchmarks/{name} is gone")
    args, why = SMOKE[name]
    print(f"benchmarks/{name}: {why}")
    env = {**os.environ, **ENV.get(name, {})}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    for line in done.stdout.splitlines():
        if line.startswith("SKIPPED"):
            print(line)  # e.g. the TorchGeo peer where torchgeo is not installed
    if name in PRINTS_JSON:
        json.loads(done.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(REPORTS))
def test_report_script_saves_results(module: str, tmp_path: Path) -> None:
    """The script behind a results/ file writes both files, with where they came from."""
    out = tmp_path / module
    args = ["-m", f"benchmarks.{module}", *REPORTS[module], "--out", str(out)]
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert {"device", "versions", "command", "commit"} <= report["provenance"].keys()
    assert report["provenance"]["command"] in out.with_suffix(".md").read_text()
    if module == "bench_peers":
        results = report["comparisons"][0]["results"]
        assert {"stmap", "rasterio", "png"} <= results.keys()
        assert all(result["mpx_per_s"] > 0 for result in results.values())
    else:
        for series in ("size", "block", "batch"):
            assert report[series] and all(point["peak_rss_mib"] > 0 for point in report[series])


@pytest.mark.gpu
def test_gpu_backends_runs(tmp_path: Path) -> None:
    """On a CUDA machine: every (backend, precision) pair briefly, on the demo bundle."""
    assert torch.cuda.is_available()
    out = tmp_path / "gpu.json"
    args = ["benchmarks/gpu_backends.py", "default", "--seconds", "0.2", "--json", str(out)]
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    json.loads(out.read_text())

"""Every file in benchmarks/ still runs, so recorded figures can be reproduced.

Benchmarks are not run by the suite, so an API change can break them silently.
Each file is run once here, in a subprocess from the repository root (as its
docstring says to run it), at the smallest size it offers: scripts with a tiny
``--size``/``--tiles`` mode, pytest-benchmark files with ``--benchmark-disable``
(each test body once, no timing). A file with no tiny mode is at least imported
and collected. A new benchmark file must be added to ``SMOKE``, or this test fails.
"""

from __future__ import annotations

import json
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
}


SLOW = {"bench_backends.py"}  # over 30 s: deselect with -m "not slow" when in a hurry
PRINTS_JSON = {"bench_synth.py", "bench_train_cache.py"}  # their script mode prints one object


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
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    if name in PRINTS_JSON:
        json.loads(done.stdout)


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

"""The GPU proof: one command, one device call, every figure of issue 18 in one report.

On a lent GPU machine (a bare image with PyTorch, timm and onnx, but no rasterio),
``benchmarks/gpu_proof.sh`` installs stmap and the carried wheels, then runs this
script, which runs each part in its own subprocess with its own timeout, most
telling first, and rewrites ``gpu_proof.json`` and ``gpu_proof.md`` under ``--out``
after every part:

- env: GPU, driver, versions, commit; the measured matrix-multiply rates;
- tests: ``pytest -m gpu`` (the tests that skip without CUDA), right after the
  headline ViT-L/16 bf16 compiled run, so that a hung test cannot cost that;
- bench-*: ``stmap bench`` (model-only and end-to-end Mpx/s, efficiency, fraction of
  the FLOP ceiling, peak GPU memory, the automatic batch size) for ViT-S/B/L-16 with
  random weights (128-px tiles, default overlap) in bf16 and fp16, eager
  (``STMAP_TORCH_COMPILE=off``), compiled and with CUDA graphs (``reduce-overhead``);
  ``bench-demo``: the demo bundle end to end in its own tiles (manifest
  ``tiling``, #20), where the pipeline is the limit, with its phase-shift figure;
  ``bench-filed``: the demo bundle of when #20 was filed in its 128-px tiles at
  overlap 16, run alike: #20's compute bound on the device (the report's ratio line);
- peers: ``stmap infer``, a plain rasterio window loop and the paper's PNG tiles on
  the same raster and model, on the GPU (``bench_peers.compare``);
- parity: max |Δ probability| of bf16 and fp16 against eager float32 on the CPU.

A part that fails or overruns is recorded with its error and the rest still run; a
global deadline (``--deadline-s``) stops the run before the device call's limit and
keeps what was measured: parts that no longer fit are listed as not run.

    bash benchmarks/gpu_proof.sh                      # on the GPU machine (benchmarks/README.md)
    python -m benchmarks.gpu_proof --dry-run --out /tmp/proof   # the same parts, tiny, on the CPU
    python -m benchmarks.gpu_proof --prepare-wheels   # here, before the device call: .whl/

``--inject PART=fail|hang`` replaces a part by one that fails or hangs, to check
the degradation (tests/test_gpu_proof.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WHEELS = ROOT / ".whl"  # ignored by git; named in the device call's carry
COMMIT_FILE = WHEELS / "COMMIT"  # the checkout's commit: the device's copy has no .git
# The demo bundle of when #20 was filed, in its 128-px tiles at overlap 16: the baseline
# of #20's compute bound (written by --prepare-wheels from git; the device has no .git).
FILED_BUNDLE = WHEELS / "filed_bundle"
FILED_COMMIT = "2edf88e^"
# What the GPU image lacks (KINDS.md), at the versions installed here.
WHEEL_PACKAGES = (
    "rasterio",
    "affine",
    "cligj",
    "click-plugins",
    "pyogrio",
    "shapely",
    "pyproj",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "rio-cogeo",
    "morecantile",
)
TREE_LIMIT_MIB = 64  # the device call's working tree, carried wheels included
DRY_RUN_PART_S = 600.0  # the dry run's parts take 5-30 s on an idle 2-core CPU, minutes under load
DEADLINE_S = 440.0  # of the 8 minutes, what is left after installing, with a margin
MIN_PART_S = 15.0  # a part that cannot have this long is not started
GPU_TEST_FILES = (
    "tests/runtime/test_pipeline.py",
    "tests/runtime/test_backends.py",
    "tests/export/test_backends_onnx.py",
    "tests/export/test_tensorrt.py",
    "tests/test_benchmarks_smoke.py",
)
VITS = {
    "vit_s": "vit_small_patch16_dinov3.lvd1689m",
    "vit_b": "vit_base_patch16_dinov3.lvd1689m",
    "vit_l": "vit_large_patch16_dinov3.lvd1689m",
}
COMPILE = {"eager": "off", "compiled": "default", "cudagraphs": "reduce-overhead"}
GOAL_MPX_PER_S = 100.0  # ViT-L/16 end to end on one H100 (issue 18)
GOAL_EFFICIENCY = 0.9


@dataclass
class Part:
    """One measurement, run as ``argv`` from the repository root with ``env`` added."""

    name: str
    argv: list[str]
    timeout_s: float
    env: dict[str, str] = field(default_factory=dict)
    kind: str = "json"  # "json": stdout is one JSON object; "pytest": pytest's output


def plan(dry_run: bool, filed: Path = FILED_BUNDLE) -> list[Part]:
    """Every part, most telling first: the deadline cuts the tail. ``filed``: the bundle
    ``bench-filed`` maps (``write_filed_bundle``)."""
    py = [sys.executable]
    me = [*py, "-m", "benchmarks.gpu_proof", "--part"]
    if dry_run:
        # the demo bundle stands for the ViTs: the same `stmap bench` call, seconds not minutes
        device, size, models, precisions = "cpu", 256, {}, ["fp32"]
        modes, batch, repeats = ["eager"], ["--batch-size", "4"], "1"
        tests = [*py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider"]
        tests += ["--collect-only", *GPU_TEST_FILES]
        peers = {"size": 256, "batch": 4, "precision": "fp32"}
        parity = {"models": ["default"], "precisions": ["bf16"], "samples": 6}
        env_part = {"matmul_side": 256, "precisions": ["fp32"]}
    else:
        device, size, models, precisions = "cuda", 4096, VITS, ["bf16", "fp16"]
        modes, batch, repeats = ["compiled", "eager", "cudagraphs"], [], "3"
        tests = [*py, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "-rA"]
        tests += ["--timeout", "120", *GPU_TEST_FILES]
        peers = {"size": 4096, "batch": 256, "precision": "bf16"}
        parity = {"models": ["default", *VITS.values()], "precisions": ["bf16", "fp16"]}
        parity["samples"] = 16
        env_part = {"matmul_side": 8192, "precisions": ["fp32", "bf16", "fp16"]}
    common = ["--device", device, "--backend", "torch", "--repeats", repeats, *batch, "--json"]

    bundles = {"demo": "default", "filed": str(filed)}  # the rest: random-weight ViTs

    def bench(short: str, precision: str, mode: str, timeout: float) -> Part:
        model = ["--model", bundles[short]] if short in bundles else ["--backbone", models[short]]
        argv = [*py, "-m", "stmap", "bench", *model, "--precision", precision]
        argv += ["--size", str(size)]
        env = {"STMAP_TORCH_COMPILE": COMPILE[mode]}
        return Part(f"bench-{short}-{precision}-{mode}", [*argv, *common], timeout, env)

    parts = [
        Part("env", [*me, "env", "--config", json.dumps({**env_part, "device": device})], 60),
        # the headline figure first: a hung test must not cost it
        bench("vit_l", precisions[0], modes[0], 180) if models else None,
        Part("tests", tests, 150, kind="pytest"),
        bench("vit_l", precisions[0], "eager", 120) if models else None,
        bench("demo", precisions[0], modes[0], 90),
        bench("filed", precisions[0], modes[0], 90),  # #20: the demo's cost against then
        Part(
            "peers",
            [*me, "peers", "--config", json.dumps({**peers, "device": device})],
            150,
        ),
        Part(
            "parity",
            [*me, "parity", "--config", json.dumps({**parity, "device": device})],
            120,
        ),
    ]
    done = {p.name for p in parts if p is not None}
    for short in reversed(list(models)):  # the rest of the grid, ViT-L first
        for precision in precisions:
            for mode in modes:
                part = bench(short, precision, mode, 150)
                if part.name not in done:
                    parts.append(part)
                    done.add(part.name)
    parts = [p for p in parts if p is not None]
    if dry_run:  # on a shared CPU a part is slow, not hung: one thread, and time to finish
        dry = {"OMP_NUM_THREADS": "1"}
        parts = [replace(p, timeout_s=DRY_RUN_PART_S, env={**p.env, **dry}) for p in parts]
    return parts


# -- the orchestrator ------------------------------------------------------------------


def run_all(
    out: Path, parts: list[Part], deadline_s: float, inject: dict[str, str], min_part_s: float
) -> dict[str, Any]:
    """Run ``parts`` in order within ``deadline_s``; the report, saved after every part."""
    start = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_proof.log"
    log.write_text("")
    report: dict[str, Any] = {
        "deadline_s": deadline_s,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit(),
        "parts": {},
    }
    for part in parts:
        left = deadline_s - (time.monotonic() - start)
        if left < min_part_s:
            report["parts"][part.name] = {
                "status": "not run",
                "error": f"deadline: {left:.0f} s left",
            }
            continue
        argv = _injected(part, inject.get(part.name))
        report["parts"][part.name] = run_part(part, argv, min(part.timeout_s, left), left, log)
        report["elapsed_s"] = round(time.monotonic() - start, 1)
        save(report, out)
    report["elapsed_s"] = round(time.monotonic() - start, 1)
    report["goal"] = goal(report["parts"])
    save(report, out)
    return report


def _injected(part: Part, fault: str | None) -> list[str]:
    if fault is None:
        return part.argv
    if fault == "fail":
        return [sys.executable, "-c", "import sys; sys.exit('injected failure (--inject)')"]
    if fault == "hang":
        return [sys.executable, "-c", "import time; time.sleep(3600)"]
    raise SystemExit(f"--inject {part.name}={fault}: expected fail or hang")


def run_part(part: Part, argv: list[str], timeout: float, left: float, log: Path) -> dict:
    """One part in its own process group, killed whole if it overruns ``timeout``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **part.env}
    began = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    stopped = None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the part and whatever it started
        stdout, stderr = proc.communicate()
        why = "the global deadline" if timeout >= left else "its own timeout"
        stopped = f"stopped after {timeout:.0f} s ({why})"
    seconds = round(time.monotonic() - began, 1)
    with log.open("a") as f:
        f.write(f"===== {part.name}: {' '.join(argv)} (env {part.env})\n{stdout}\n{stderr}\n")
    record: dict[str, Any] = {"seconds": seconds, "env": part.env}
    if part.kind == "pytest":  # the counts, also when some tests failed
        record["result"] = pytest_counts(stdout)
    if stopped or proc.returncode != 0:
        error = stopped or f"exit {proc.returncode}: {_last_line(stderr or stdout)}"
        return {**record, "status": "failed", "error": error, "tail": (stderr or stdout)[-2000:]}
    try:
        result = pytest_counts(stdout) if part.kind == "pytest" else json.loads(stdout)
    except ValueError as exc:
        return {**record, "status": "failed", "error": f"unreadable output: {exc}"}
    return {**record, "status": "measured", "result": result}


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:500] if lines else "(no output)"


def pytest_counts(stdout: str) -> dict[str, Any]:
    """pytest's closing counts ("3 passed, 2 skipped") and its per-test outcome lines."""
    kinds = r"(\d+)(?:/\d+)? (passed|failed|skipped|errors?|tests? collected)"
    counts = {kind: int(n) for n, kind in re.findall(kinds, stdout)}
    outcome = re.compile(r"^(PASSED|FAILED|SKIPPED|ERROR) ")
    outcomes = [line for line in stdout.splitlines() if outcome.match(line)]
    return {"counts": counts, "outcomes": outcomes[-40:]}


def goal(parts: dict[str, Any]) -> dict[str, Any]:
    """ViT-L/16 end to end against the issue's goal, from its fastest measured way."""
    rows = [
        p["result"]
        for name, p in parts.items()
        if name.startswith("bench-vit_l-") and p["status"] == "measured"
    ]
    if not rows:
        return {"measured": False}
    best = max(rows, key=lambda r: r["end_to_end_mpx_per_s"])
    return {
        "measured": True,
        "end_to_end_mpx_per_s": best["end_to_end_mpx_per_s"],
        "efficiency": best["efficiency"],
        "precision": best["precision"],
        "mpx_goal_met": best["end_to_end_mpx_per_s"] >= GOAL_MPX_PER_S,
        "efficiency_goal_met": best["efficiency"] >= GOAL_EFFICIENCY,
    }


def commit() -> str | None:
    """The checkout's commit: git where there is one, else what --prepare-wheels wrote."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        if done.returncode == 0:
            return done.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return COMMIT_FILE.read_text().strip() if COMMIT_FILE.exists() else None


# -- the report ------------------------------------------------------------------------


def save(report: dict[str, Any], out: Path) -> None:
    (out / "gpu_proof.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (out / "gpu_proof.md").write_text(markdown(report) + "\n")


def _filed_ratio(bench: dict[str, dict[str, Any]]) -> list[str]:
    """#20's compute bound on this device: the shipped default's time per mapped pixel
    over that of the default of when #20 was filed, run alike."""
    for name, demo in bench.items():
        filed = bench.get(name.replace("bench-demo-", "bench-filed-"))
        if name.startswith("bench-demo-") and filed:
            end_to_end = filed["end_to_end_mpx_per_s"] / demo["end_to_end_mpx_per_s"]
            return [
                "",
                f"#20 compute ({name[len('bench-demo-') :]}): the shipped default takes "
                f"{end_to_end:.2f}× the end-to-end time per mapped pixel of the default of "
                f"when #20 was filed (`tiny` in 128-px tiles at overlap 16; the aim: ≤ 1.5×).",
            ]
    return []


def markdown(report: dict[str, Any]) -> str:
    parts = report["parts"]
    env = parts.get("env", {}).get("result", {})
    lines = [
        "# GPU proof (benchmarks/gpu_proof.py)",
        "",
        f"Device: {env.get('device_name', '?')}, driver {env.get('driver', '?')}; "
        f"commit {report.get('commit')}; started {report['started_utc']}; "
        f"{report.get('elapsed_s', '?')} s of a {report['deadline_s']:.0f} s deadline.",
        f"Versions: {', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items() if v)}.",
        f"Matmul TFLOP/s: {env.get('matmul_tflops', '?')}.",
        "",
        "| part | status | s | figures |",
        "| --- | --- | --- | --- |",
    ]
    for name, p in parts.items():
        lines.append(f"| {name} | {p['status']} | {p.get('seconds', '')} | {_figures(name, p)} |")
    bench = [(n, p["result"]) for n, p in parts.items() if n.startswith("bench-") and "result" in p]
    if bench:
        lines += [
            "",
            "| run | backend | batch | model-only Mpx/s | end-to-end Mpx/s | streaming Mpx/s | "
            "efficiency | fraction of ceiling | peak GPU MiB | GFLOP/tile |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for name, r in bench:
            lines.append(
                f"| {name} | {r['backend']} {r['precision']} | {r['batch_size']} | "
                f"{r['model_mpx_per_s']} | {r['end_to_end_mpx_per_s']} | "
                f"{r['pipeline_mpx_per_s']} | {r['efficiency']} | "
                f"{r['fraction_of_ceiling']} | {r['peak_device_mb']} | "
                f"{round(r['flops_per_tile'] / 1e9, 2)} |"
            )
    lines += _filed_ratio(dict(bench))
    peers = parts.get("peers", {}).get("result")
    if peers:
        lines += ["", f"Peers: {peers['model']}, {peers['size']}² px, {peers['device']} "
                  f"{peers['precision']}.", "", "| method | best s | Mpx/s | stmap speed-up | "
                  "max abs Δ off seams |", "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for method, r in peers["results"].items():
            match = r.get("agreement", {})
            lines.append(
                f"| {method} | {r['best_s']} | {r['mpx_per_s']} | {r['stmap_speedup']} | "
                f"{match.get('max_abs_delta_off_seams', '–')} |"
            )
    parity = parts.get("parity", {}).get("result")
    if parity:
        lines += ["", "| model | precision | max abs Δ prob | damage flips at threshold |",
                  "| --- | --- | --- | --- |"]  # fmt: skip
        for row in parity["rows"]:
            figures = row.get("error") or f"{row['max_abs_diff']:.2e} | {row['flipped_fraction']}"
            lines.append(f"| {row['model']} | {row['precision']} | {figures} |")
    result = report.get("goal")
    if result and result.get("measured"):
        lines += [
            "",
            f"Goal (ViT-L/16, fastest way measured): end to end {result['end_to_end_mpx_per_s']} "
            f"Mpx/s (≥ {GOAL_MPX_PER_S:g}: {'met' if result['mpx_goal_met'] else 'not met'}), "
            f"efficiency {result['efficiency']} (≥ {GOAL_EFFICIENCY}: "
            f"{'met' if result['efficiency_goal_met'] else 'not met'}).",
        ]
    return "\n".join(lines)


def _figures(name: str, p: dict[str, Any]) -> str:
    if p["status"] != "measured":
        return str(p.get("error", "")).replace("|", "/")[:300]
    r = p["result"]
    if name.startswith("bench-"):
        return (
            f"model {r['model_mpx_per_s']} / e2e {r['end_to_end_mpx_per_s']} Mpx/s, "
            f"eff {r['efficiency']}, ceiling {r['fraction_of_ceiling']}, batch {r['batch_size']}"
        )
    if name == "tests":
        return ", ".join(f"{n} {k}" for k, n in r["counts"].items())
    return "see below" if name in ("peers", "parity") else ""


# -- the parts run in their own process -------------------------------------------------


def part_env(config: dict[str, Any]) -> dict[str, Any]:
    import torch

    from stmap.runtime.backends.base import resolve_device
    from stmap.runtime.bench import _device_name, measure_matmul_flops, versions

    device = resolve_device(config["device"])
    found: dict[str, Any] = {"device": str(device), "device_name": _device_name(device)}
    found["versions"] = versions()
    found["commit"] = commit()
    found["matmul_tflops"] = {
        p: round(measure_matmul_flops(device, p, config["matmul_side"]) / 1e12, 3)
        for p in config["precisions"]
    }
    if device.type == "cuda":
        found["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        found["memory_mib"] = torch.cuda.get_device_properties(device).total_memory // 2**20
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        found["driver"] = smi.stdout.strip() or None
    return found


def part_peers(config: dict[str, Any]) -> dict[str, Any]:
    from benchmarks.bench_peers import compare

    return compare(
        "default", config["size"], ["stmap", "rasterio", "png"], rounds=1,
        batch_size=config["batch"], workers=0, device=config["device"],
        precision=config["precision"],
    )  # fmt: skip


def part_parity(config: dict[str, Any]) -> dict[str, Any]:
    """Each model × precision against eager float32 on the CPU (the export parity tiles)."""
    import torch

    from stmap.bundle import open_bundle
    from stmap.runtime.backends.torch_backend import TorchBackend
    from stmap.runtime.bench import random_bundle
    from stmap.runtime.precision import measure_parity

    device = torch.device(config["device"])
    rows = []
    with tempfile.TemporaryDirectory(prefix="stmap-proof-") as tmp:
        for name in config["models"]:
            path = name if name == "default" else random_bundle(Path(tmp) / name, name, 0)
            bundle = open_bundle(path)
            for precision in config["precisions"]:
                row: dict[str, Any] = {"model": name, "precision": precision}
                try:
                    # the backend itself: the CPU's parity gate would refuse, not measure
                    backend = TorchBackend(bundle, device, precision, "uint8")
                    row.update(measure_parity(backend, bundle, config["samples"]))
                except Exception as exc:  # recorded; the other rows still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return {"reference": "PyTorch eager float32 on the CPU", "rows": rows}


PARTS = {"env": part_env, "peers": part_peers, "parity": part_parity}


# -- the wheels that travel ------------------------------------------------------------


def prepare_wheels() -> None:
    """Download the GPU image's missing packages (Python 3.12, x86-64) into .whl/.

    The versions installed here; each wheel is rewritten with LZMA compression
    (pip installs it alike, ~25 % smaller) so that all of them and the checkout fit
    the device call's 64 MiB. Also writes .whl/COMMIT.
    """
    WHEELS.mkdir(exist_ok=True)
    for old in WHEELS.glob("*.whl"):
        old.unlink()
    platforms = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64"]
    platforms += ["manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
    pins = [f"{name}=={metadata.version(name)}" for name in WHEEL_PACKAGES]
    argv = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    argv += ["--python-version", "3.12", "--implementation", "cp", "-d", str(WHEELS)]
    argv += [arg for p in platforms for arg in ("--platform", p)]
    subprocess.run([*argv, *pins], check=True)
    for wheel in WHEELS.glob("*.whl"):
        _recompress(wheel)
    COMMIT_FILE.write_text((commit() or "unknown") + "\n")
    write_filed_bundle(FILED_BUNDLE)
    wheels = sum(p.stat().st_size for p in WHEELS.rglob("*") if p.is_file()) / 2**20
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    tree = sum((ROOT / p.decode()).stat().st_size for p in tracked if p) / 2**20
    print(f"{WHEELS}: {wheels:.1f} MiB of wheels; tracked files {tree:.1f} MiB", file=sys.stderr)
    if wheels + tree > TREE_LIMIT_MIB - 1:
        raise SystemExit(f"wheels + checkout {wheels + tree:.1f} MiB: over the device's 64 MiB")


def write_filed_bundle(target: Path, source: Path | None = None) -> Path:
    """The demo bundle of when #20 was filed (``FILED_COMMIT``, from git), mapped as it
    was then: 128-px tiles at overlap 16. ``source``: another bundle in its place (the
    dry run's stand-in, the shipped one)."""
    from stmap.bundle import Tiling, open_bundle, write_retiled

    with tempfile.TemporaryDirectory() as tmp:
        if source is None:
            for name in ("manifest.json", "weights.safetensors"):
                blob = subprocess.run(
                    ["git", "show", f"{FILED_COMMIT}:src/stmap/data/demo_bundle/{name}"],
                    cwd=ROOT,
                    capture_output=True,
                    check=True,
                ).stdout
                (Path(tmp) / name).write_bytes(blob)
            source = Path(tmp)
        tiling = Tiling(tile_size=128, overlap=16)
        return write_retiled(open_bundle(source), target, tiling, overwrite=True)


def _recompress(wheel: Path) -> None:
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info), compress_type=zipfile.ZIP_LZMA)
    tmp.replace(wheel)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "gpu_proof_out")))
    parser.add_argument("--dry-run", action="store_true", help="The same parts, tiny, on the CPU.")
    parser.add_argument("--deadline-s", type=float, default=DEADLINE_S)
    parser.add_argument("--min-part-s", type=float, default=None, help="[15; dry run 1]")
    parser.add_argument("--only", action="append", help="Run only these parts (repeatable).")
    parser.add_argument("--inject", action="append", default=[], metavar="PART=fail|hang")
    parser.add_argument("--prepare-wheels", action="store_true")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--config", default="{}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.prepare_wheels:
        prepare_wheels()
        return 0
    if args.part:
        print(json.dumps(PARTS[args.part](json.loads(args.config)), default=str))
        return 0
    if args.dry_run:  # the shipped bundle in 128/16 tiles stands in for the filed one
        from stmap.bundle import default_bundle_path

        args.out.mkdir(parents=True, exist_ok=True)
        parts = plan(True, write_filed_bundle(args.out / "filed_bundle", default_bundle_path()))
    else:
        parts = plan(False)
    if args.only:
        parts = [p for p in parts if p.name in args.only]
    inject = dict(item.split("=", 1) for item in args.inject)
    min_part = (
        args.min_part_s if args.min_part_s is not None else (1.0 if args.dry_run else MIN_PART_S)
    )
    report = run_all(args.out, parts, args.deadline_s, inject, min_part)
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

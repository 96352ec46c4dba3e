"""The CPU precision ladder against fp32 PyTorch, and the cost of the stage timers.

For each model (a random-weight ViT-S/16 bundle as ``stmap bench --backbone`` makes
it, and the demo bundle, each exported with ``stmap export --format onnx --int8``),
every rung of the ladder (torch fp32, bf16, int8; ONNX Runtime fp32, int8) is built
once, its parity against eager fp32 measured as the runtime's gate measures it
(``stmap.runtime.precision.measure_parity``), then, in one process and taking turns:

- model-only: one batch of uint8 tiles through ``infer``, each precision in turn,
  for ``--rounds`` rounds; the speed-up is the median of the per-round ratios to
  fp32 (the machine is shared: a ratio within one round sees the same load);
- end to end: ``run_inference`` on a synthetic city with that backend handed in
  (``backend=``), precisions in turn, ``--e2e-rounds`` rounds.

A pair whose gate refuses it (max |Δ prob| > 2/255) is still timed, and marked so;
one that cannot be built (int8 without linear layers) is listed with the reason.
Last, what ``--backend auto --precision auto`` picks on this machine, tuned afresh.

Timers (issue 18, point 5): the demo bundle's end-to-end run with the per-stage
synchronisations on (``timings=True``) and off, in turns; on the CPU a
synchronisation is a no-op, so this measures what the timing itself costs there.

    python -m benchmarks.bench_precision --out benchmarks/results/cpu_precision
    python -m benchmarks.bench_precision --tiny          # seconds: demo bundle, 256² px
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.peers.report import finish, markdown_table, provenance, provenance_lines
from stmap.bundle import default_bundle_path, open_bundle
from stmap.cache import CACHE_ENV
from stmap.cli.bench import synthetic_city
from stmap.errors import DeviceError, InputError
from stmap.export import export_bundle
from stmap.runtime.backends.base import create_backend
from stmap.runtime.backends.onnxruntime_backend import OnnxRuntimeBackend
from stmap.runtime.backends.torch_backend import TorchBackend
from stmap.runtime.bench import random_bundle
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.precision import (
    AUTOTUNE_ENV,
    TOLERANCE,
    cpu_flags,
    measure_parity,
)

PAIRS = ("torch/fp32", "torch/bf16", "torch/int8", "onnxruntime/fp32", "onnxruntime/int8")
REFERENCE = "torch/fp32"
VIT_S = "vit_small_patch16_dinov3.lvd1689m"
CPU = torch.device("cpu")


def exported(bundle_path: Path, root: Path) -> Path:
    """A copy of the bundle with model.onnx and, where it quantises, model_int8.onnx."""
    target = root / f"{bundle_path.name}-onnx"
    try:
        export_bundle(bundle_path, formats=["onnx"], int8=True, output=target, overwrite=True)
    except InputError as exc:  # a convolutional model: nothing to quantise
        print(f"{bundle_path.name}: {exc}", file=sys.stderr)
        export_bundle(bundle_path, formats=["onnx"], output=target, overwrite=True)
    return target


def build(bundle_path: Path) -> dict[str, Any]:
    """Each pair's backend (or why it cannot run) and its parity record."""
    bundle = open_bundle(bundle_path)
    found: dict[str, Any] = {}
    for pair in PAIRS:
        name, precision = pair.split("/")
        try:
            if name == "torch":
                backend = TorchBackend(bundle, CPU, precision, "uint8")
            else:
                backend = OnnxRuntimeBackend(bundle, CPU, precision, "uint8")
        except DeviceError as exc:
            found[pair] = {"refused": str(exc)}
            continue
        parity = measure_parity(backend, bundle) if pair != REFERENCE else None
        found[pair] = {"backend": backend, "parity": parity}
    return found


def auto_choice(bundle_path: Path, root: Path) -> dict[str, Any]:
    """What `--backend auto --precision auto` picks here, tuned afresh (own cache)."""
    os.environ[CACHE_ENV] = str(root / "ladder-cache")
    os.environ[AUTOTUNE_ENV] = "on"
    backend = create_backend("auto", open_bundle(bundle_path), CPU, "auto", "uint8")
    return {"backend": backend.name, "precision": backend.precision}


def model_only(backends: dict[str, Any], batch: int, tile: int, rounds: int) -> dict[str, Any]:
    """Tiles/s per precision (median) and the median per-round speed-up over fp32."""
    generator = torch.Generator().manual_seed(0)
    tiles = torch.randint(0, 256, (batch, 3, tile, tile), generator=generator).to(torch.uint8)
    for backend in backends.values():
        backend.infer(tiles)  # warm-up
    seconds: dict[str, list[float]] = {p: [] for p in backends}
    for _ in range(rounds):
        for precision, backend in backends.items():
            start = time.perf_counter()
            backend.infer(tiles)
            seconds[precision].append(time.perf_counter() - start)
    return _summary(seconds, batch)


def end_to_end(
    backends: dict[str, Any], bundle: Path, city: Path, workdir: Path, rounds: int
) -> dict[str, Any]:
    """Mpx/s of ``run_inference`` per precision with its backend handed in, in turns."""
    seconds: dict[str, list[float]] = {p: [] for p in backends}
    pixels = 0
    for r in range(rounds):
        for precision, backend in backends.items():
            options = InferOptions(model=str(bundle), device="cpu", restart=True)
            summary = run_inference(
                [str(city)], workdir / f"{precision}-{r}", options, backend=backend
            )[0]
            seconds[precision].append(summary["seconds"])
            pixels = summary["pixels"]
    return _summary(seconds, pixels / 1e6, unit="mpx_per_s")


def timers(bundle: Path, city: Path, workdir: Path, rounds: int) -> dict[str, Any]:
    """End-to-end seconds with the per-stage synchronisations on and off, in turns."""
    seconds: dict[str, list[float]] = {"timings on": [], "timings off": []}
    for r in range(rounds):
        for label in seconds:
            options = InferOptions(
                model=str(bundle), device="cpu", backend="torch", precision="fp32",
                restart=True, timings=label == "timings on",
            )  # fmt: skip
            summary = run_inference([str(city)], workdir / f"timers-{r}", options)[0]
            seconds[label].append(summary["times"]["pipeline"])
    pairs = zip(seconds["timings on"], seconds["timings off"], strict=True)
    ratios = [on / off for on, off in pairs]
    return {
        "pipeline_s": {k: [round(s, 3) for s in v] for k, v in seconds.items()},
        "median_on_over_off": round(statistics.median(ratios), 3),
    }


def _summary(seconds: dict[str, list[float]], work: float, unit: str = "tiles_per_s") -> dict:
    rows = {}
    for precision, samples in seconds.items():
        ratios = [f / s for f, s in zip(seconds[REFERENCE], samples, strict=True)]
        rows[precision] = {
            unit: round(work / statistics.median(samples), 3),
            "seconds": [round(s, 3) for s in samples],
            "speedup_vs_fp32": round(statistics.median(ratios), 3),
        }
    return rows


def measure(name: str, bundle: Path, args: argparse.Namespace, root: Path) -> dict[str, Any]:
    bundle = exported(bundle, root)
    built = build(bundle)
    backends = {p: b["backend"] for p, b in built.items() if "backend" in b}
    tile = open_bundle(bundle).manifest.infer_tile
    city = synthetic_city(root / f"city-{args.size}.tif", args.size, 0.5, 0)
    result: dict[str, Any] = {"model": name, "size": args.size, "batch": args.batch}
    result["model_only"] = model_only(backends, args.batch, tile, args.rounds)
    result["end_to_end"] = end_to_end(backends, bundle, city, root, args.e2e_rounds)
    result["parity"] = {
        p: (b.get("parity") or {"refused": b["refused"]}) if p != REFERENCE else None
        for p, b in built.items()
    }
    result["auto"] = auto_choice(bundle, root)
    return result


def markdown(report: dict[str, Any]) -> str:
    parts = [
        "# The CPU precision ladder against fp32 PyTorch",
        "",
        "Written by `benchmarks/bench_precision.py` (its docstring says how). Speed-ups "
        "are medians of per-round ratios measured in one process, precisions taking "
        "turns; parity: max |Δ probability| against eager fp32 on the export parity "
        f"tiles, tolerance 2/255 = {TOLERANCE:.4f}.",
        "",
        provenance_lines(report["provenance"]),
        f"CPU flags: {', '.join(report['cpu_flags'])}.",
    ]
    for result in report["models"]:
        parts += [
            "",
            f"## {result['model']} (model-only: batches of {result['batch']} tiles; end to "
            f"end: a {result['size']}² px city)",
            "",
        ]
        rows = []
        for pair in PAIRS:
            parity = result["parity"].get(pair)
            mo = result["model_only"].get(pair)
            e2e = result["end_to_end"].get(pair)
            if parity and "refused" in parity:
                held = f"cannot run: {parity['refused']}"
            elif parity:
                verdict = "holds" if parity["ok"] else "refused"
                held = (
                    f"{parity['max_abs_diff']:.4f} ({verdict}; reference std "
                    f"{parity['reference_std']:.3f})"
                )
            else:
                held = "reference"
            rows.append([
                pair,
                mo["tiles_per_s"] if mo else "–",
                f"**{mo['speedup_vs_fp32']}×**" if mo else "–",
                e2e["mpx_per_s"] if e2e else "–",
                f"{e2e['speedup_vs_fp32']}×" if e2e else "–",
                held,
            ])  # fmt: skip
        header = ["backend/precision", "model-only tiles/s", "vs torch fp32", "end-to-end Mpx/s"]
        header += ["vs torch fp32", r"max \|Δ prob\|"]  # \| inside a table
        parts.append(markdown_table(header, rows))
        auto = result["auto"]
        parts += ["", f"`--backend auto --precision auto` here picks: {auto['backend']} "
                  f"{auto['precision']} (tuned afresh in this run).",]  # fmt: skip
    t = report.get("timers")
    if t:
        parts += [
            "",
            "## Stage timers (demo bundle, streaming pipeline seconds)",
            "",
            f"With the per-stage synchronisations on: {t['pipeline_s']['timings on']}; off: "
            f"{t['pipeline_s']['timings off']}; median on / off {t['median_on_over_off']}.",
        ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="Demo bundle only, 256² px, 1 round.")
    parser.add_argument("--rounds", type=int, default=5, help="Model-only rounds.")
    parser.add_argument("--e2e-rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=1024, help="City side, px.")
    parser.add_argument("--batch", type=int, default=8, help="Tiles per model-only call.")
    parser.add_argument("--out", type=Path, help="Save OUT.json and OUT.md (else print JSON).")
    args = parser.parse_args(argv)
    if args.tiny:
        args.rounds, args.e2e_rounds, args.size, args.batch = 1, 1, 256, 4
    report: dict[str, Any] = {"provenance": provenance(), "cpu_flags": sorted(cpu_flags())}
    with tempfile.TemporaryDirectory(prefix="stmap-precision-") as tmp:
        root = Path(tmp)
        models = [("demo bundle (tiny CNN)", default_bundle_path())]
        if not args.tiny:
            models.insert(0, ("ViT-S/16, random weights", random_bundle(root / "vits", VIT_S, 0)))
        report["models"] = [measure(name, path, args, root) for name, path in models]
        city = root / f"city-{args.size}.tif"
        report["timers"] = timers(default_bundle_path(), city, root, max(args.e2e_rounds, 3))
    finish(report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

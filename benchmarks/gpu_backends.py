"""Parity and model-only throughput per backend and precision on one CUDA GPU (an H100).

For every (backend, precision) pair the runtime offers — torch fp32/fp16/bf16,
onnxruntime fp32/fp16 (CUDA or TensorRT provider, IO binding), tensorrt fp32/fp16 —
it builds the backend through the runtime's registry, measures the largest probability
difference from eager float32 PyTorch on the CPU (the export parity tiles), then the
throughput of ``infer`` on resident uint8 tiles, synchronising the GPU before every
clock read. A pair the machine cannot run is listed with the reason.

    python benchmarks/gpu_backends.py BUNDLE --export --json gpu_backends.json

``--export`` first exports BUNDLE (ONNX fp32 + fp16, TensorRT fp32 + fp16 engines for
this GPU) into a copy next to the JSON file, so a bundle fresh from training works.
Needs: a CUDA GPU, onnxruntime-gpu (``stmap[gpu]``), TensorRT (``stmap[tensorrt]``).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from stmap.bundle import Bundle, open_bundle
from stmap.errors import DeviceError, MissingDependencyError
from stmap.export import export_bundle
from stmap.export.parity import TOLERANCES
from stmap.model import InferenceModel
from stmap.parity_tiles import parity_batches
from stmap.runtime.backends.base import create_backend

TOLERANCE = {**TOLERANCES, "bf16": 2e-2}  # bf16 keeps 8 mantissa bits to fp16's 11
PAIRS = [
    ("torch", "fp32"),
    ("torch", "fp16"),
    ("torch", "bf16"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "fp16"),
    ("tensorrt", "fp32"),
    ("tensorrt", "fp16"),
]


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for package in ("onnxruntime-gpu", "onnxruntime", "tensorrt", "onnx", "timm", "stmap"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    found["cuda"] = str(torch.version.cuda)
    return found


def commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def parity(backend: Any, bundle: Bundle, device: torch.device) -> float:
    """Max |Δ probability| against eager float32 on the CPU over the export parity tiles."""
    model = InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing()).eval()
    worst = 0.0
    for _, tiles in parity_batches(bundle.manifest.infer_tile, len(bundle.manifest.bands)):
        with torch.inference_mode():
            expected = model(tiles)
            actual = backend.infer(tiles.to(device)).float().cpu()
        worst = max(worst, (actual - expected).abs().max().item())
    return worst


def throughput(backend: Any, bundle: Bundle, device: torch.device, batch: int, seconds: float):
    """(tiles per second, megapixels per second) of ``infer`` on resident uint8 tiles."""
    tile = bundle.manifest.infer_tile
    shape = (batch, len(bundle.manifest.bands), tile, tile)
    tiles = torch.randint(0, 256, shape, dtype=torch.uint8, device=device)
    for _ in range(3):  # warm-up: compilation, autotuning, allocator growth
        backend.infer(tiles)
    torch.cuda.synchronize(device)
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        backend.infer(tiles)
        calls += 1
        if calls % 10 == 0:
            torch.cuda.synchronize(device)  # keep the queue short; sync before reading the clock
    torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    tiles_per_s = calls * batch / elapsed
    return tiles_per_s, tiles_per_s * tile * tile / 1e6


def measure(bundle: Bundle, device: torch.device, batch: int, seconds: float) -> list[dict]:
    rows = []
    for name, precision in PAIRS:
        row: dict[str, Any] = {"backend": name, "precision": precision}
        try:
            backend = create_backend(name, bundle, device, precision, "uint8")
        except (DeviceError, MissingDependencyError) as exc:
            rows.append({**row, "skipped": str(exc)})
            continue
        row["max_abs_diff"] = parity(backend, bundle, device)
        row["tolerance"] = TOLERANCE[precision]
        row["parity_ok"] = row["max_abs_diff"] <= row["tolerance"]
        row["tiles_per_s"], row["mpx_per_s"] = throughput(backend, bundle, device, batch, seconds)
        row["providers"] = getattr(backend, "providers", None)
        rows.append(row)
        print(json.dumps(row), flush=True)
        del backend
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        "| backend | precision | max abs diff | tolerance | tiles/s | Mpx/s |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['backend']} | {r['precision']} | skipped: {r['skipped']} | | | |")
            continue
        lines.append(
            f"| {r['backend']} | {r['precision']} | {r['max_abs_diff']:.2e} | "
            f"{r['tolerance']:g} | {r['tiles_per_s']:.0f} | {r['mpx_per_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("bundle", help="model bundle (directory or .zip; 'default')")
    parser.add_argument("--export", action="store_true", help="export ONNX + engines first")
    parser.add_argument("--batch", type=int, default=256, help="tiles per infer call")
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per pair")
    parser.add_argument("--json", type=Path, default=Path("gpu_backends.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_backends.py needs a CUDA GPU; none is visible")
    device = torch.device("cuda")
    path = args.bundle
    if args.export:
        path = str(args.json.with_name(f"{args.json.stem}_bundle"))
        # fp32 ONNX and engine into a copy, then the fp16 ONNX and engine next to them
        export_bundle(
            args.bundle,
            formats=["onnx", "tensorrt"],
            output=path,
            overwrite=True,
            max_batch=args.batch,
            log=print,
        )
        export_bundle(path, formats=["tensorrt"], fp16=True, max_batch=args.batch, log=print)
    bundle = open_bundle(path)
    report = {
        "device": torch.cuda.get_device_name(device),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
        "versions": versions(),
        "commit": commit(),
        "bundle": str(bundle.source),
        "backbone": bundle.manifest.backbone,
        "tile": bundle.manifest.infer_tile,
        "batch": args.batch,
        "rows": measure(bundle, device, args.batch, args.seconds),
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report["rows"]))


if __name__ == "__main__":
    main()

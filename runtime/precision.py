"""The CPU precision ladder: reduced precision only where it keeps the map, fastest first.

On a CPU, bf16 (where the CPU has it natively: avx512_bf16 or AMX) and int8 (dynamic
quantisation of the linear layers) can run a model faster than fp32, but only a
measurement says whether they keep its probabilities. Parity is measured as the
export stage measures ONNX's (``stmap.parity_tiles``: the same random and synthetic
city tiles against eager float32 PyTorch on the CPU): the largest |Δ probability|
must stay within ``TOLERANCE`` (2/255, two steps of the uint8 probability raster),
or the precision is refused with the figure.

``--backend auto --precision auto`` on the CPU (``tune``) builds every backend and
precision pair that can run, keeps those whose parity holds and times them on the
same tiles, taking turns; the fastest wins. Parity figures and the choice are
measured once per bundle and machine and cached in a user cache folder (never in
the bundle, which is read-only and hashed), keyed by the bundle's hash, the CPU and
the library versions. A cache that cannot be read or does not match is ignored and
rebuilt, never trusted. ``STMAP_CPU_AUTOTUNE=off`` keeps the fixed order (fp32, the
first backend that runs) for outputs that must not depend on the machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from stmap.bundle import Bundle
from stmap.cache import user_cache_dir
from stmap.errors import DeviceError, InputError, MissingDependencyError
from stmap.model import InferenceModel
from stmap.parity_tiles import DEFAULT_SAMPLES, parity_batches, torch_reference
from stmap.stage_contract import recorded_onnx

log = logging.getLogger(__name__)

TOLERANCE = 2 / 255  # max |Δ probability| against eager float32
REDUCED = ("bf16", "int8")  # the rungs below fp32 that the CPU may run
AUTOTUNE_ENV = "STMAP_CPU_AUTOTUNE"
CACHE_VERSION = 1
TUNE_BATCH = 8  # tiles per timed call while tuning
TUNE_ROUNDS = 3  # timed calls per candidate, taken in turns
SPEEDUP_MARGIN = 1.1  # a reduced precision must beat fp32 by this much to be chosen
CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
# (backend, precision) pairs ``tune`` tries on the CPU, the reference first
CANDIDATES = (
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("torch", "bf16"),
    ("torch", "int8"),
    ("onnxruntime", "int8"),
)

Build = Callable[[str, str], Any]  # (backend name, precision) → a backend


class ParityRefused(InputError):
    """A reduced precision whose probabilities differ from fp32 beyond the tolerance."""


def autotune_enabled() -> bool:
    return os.environ.get(AUTOTUNE_ENV, "on").strip().lower() not in ("0", "off", "no", "false")


def cpu_flags() -> set[str]:
    """The ladder's CPU flags this machine has (/proc/cpuinfo; torch's probes elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) & set(CPU_FLAGS)
    found = set()
    if torch.cpu._is_avx512_bf16_supported():
        found.add("avx512_bf16")
    if torch.cpu._is_amx_tile_supported():
        found.add("amx_bf16")
    return found


def native_bf16() -> bool:
    """Whether the CPU multiplies bf16 natively (else bf16 is emulated, and slower)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def measure_parity(
    backend: Any, bundle: Bundle, samples: int | None = None, input_dtype: str = "uint8"
) -> dict[str, Any]:
    """``backend`` (built for ``input_dtype`` rasters) against eager float32 on the CPU
    over the export parity tiles (uint8 values, valid in uint16 too).

    Returns max |Δ probability| (overall and per kind of tile), the fraction of
    pixels whose damage call flips at the bundle's threshold, the spread of the
    reference's probabilities, and whether it holds.
    """
    manifest = bundle.manifest
    model = InferenceModel(bundle.load_segmenter(), manifest.preprocessing(input_dtype)).eval()
    reference = torch_reference(model)
    samples = samples or DEFAULT_SAMPLES
    per_input: dict[str, float] = {}
    flipped = pixels = 0
    spread: list[float] = []
    for label, batch in parity_batches(manifest.infer_tile, len(manifest.bands), samples):
        if input_dtype != "uint8":
            batch = batch.int()  # as the pipeline hands uint16 pixels to a backend
        expected = reference(batch).float()
        spread.append(expected.std().item())
        actual = backend.infer(batch.to(backend.device)).float().cpu()
        diff = (actual - expected).abs().max().item()
        per_input[label] = max(per_input.get(label, 0.0), diff if diff == diff else float("inf"))
        threshold = manifest.threshold
        flipped += int(((actual > threshold) != (expected > threshold)).sum())
        pixels += expected.numel()
    worst = max(per_input.values())
    return {
        "max_abs_diff": worst,
        "tolerance": TOLERANCE,
        "ok": worst <= TOLERANCE,
        "samples": samples,
        "per_input": per_input,
        "flipped_fraction": round(flipped / pixels, 6),
        # how much the reference varies: a model whose output hardly depends on its
        # input (random weights) agrees with anything, and says little about parity
        "reference_std": round(max(spread), 6),
        "threshold": manifest.threshold,
        "reference": f"PyTorch {torch.__version__} eager, float32, CPU",
    }


def check_parity(
    backend: Any, bundle: Bundle, name: str, input_dtype: str = "uint8"
) -> dict[str, Any]:
    """The parity record of ``backend`` (cached), or ParityRefused with its figure."""
    record = recorded_parity(bundle, name, backend.precision)
    if record is None:
        cache = LadderCache(bundle)
        key = _parity_key(name, backend.precision, input_dtype)
        record = cache.parity(key)
        if record is None:
            record = measure_parity(backend, bundle, input_dtype=input_dtype)
            cache.set_parity(key, record)
    if not record["ok"]:
        raise ParityRefused(
            f"--precision {backend.precision}: {name} differs from fp32 by "
            f"{record['max_abs_diff']:.4f} in probability on the parity tiles "
            f"(tolerance 2/255 = {TOLERANCE:.4f}{_flips(record)}); refused for "
            f"{bundle.source}: use --precision fp32"
        )
    return record


def _parity_key(name: str, precision: str, input_dtype: str) -> str:
    return f"{name}/{precision}" + ("" if input_dtype == "uint8" else f"/{input_dtype}")


def _flips(record: dict[str, Any]) -> str:
    if "flipped_fraction" not in record:  # a record made by `stmap export`
        return ""
    return f"; {record['flipped_fraction']:.2%} of pixels change class at {record['threshold']}"


def recorded_parity(bundle: Bundle, name: str, precision: str) -> dict[str, Any] | None:
    """The parity ``stmap export`` measured and recorded in the bundle for an ONNX model.

    Export refuses a model beyond the tolerance, so a recorded one holds; the record
    is re-judged against this ladder's tolerance all the same.
    """
    if name != "onnxruntime":
        return None
    record = (recorded_onnx(bundle.manifest.exports, precision) or {}).get("parity")
    if not isinstance(record, dict) or not isinstance(record.get("max_abs_diff"), int | float):
        return None
    return {**record, "ok": record["max_abs_diff"] <= TOLERANCE}


def tune(bundle: Bundle, input_dtype: str, build: Build) -> dict[str, Any]:
    """The fastest (backend, precision) pair whose parity holds here, measured once.

    build(name, precision) makes a backend on the CPU or raises DeviceError or
    MissingDependencyError. Returns the cached or measured choice:
    {"backend", "precision", "candidates": [...]}.
    """
    cache = LadderCache(bundle)
    choice = cache.choice(input_dtype)
    if choice is not None:
        return choice
    built: dict[tuple[str, str], Any] = {}
    candidates: list[dict[str, Any]] = []
    for name, precision in CANDIDATES:
        row: dict[str, Any] = {"backend": name, "precision": precision}
        candidates.append(row)
        if precision == "bf16" and not native_bf16():
            row["refused"] = "no native bf16 on this CPU"
            continue
        try:
            backend = build(name, precision)
        except (DeviceError, MissingDependencyError) as exc:
            row["refused"] = str(exc)
            continue
        if precision != "fp32":
            key = _parity_key(name, precision, input_dtype)
            record = recorded_parity(bundle, name, precision) or cache.parity(key)
            record = record or measure_parity(backend, bundle, input_dtype=input_dtype)
            cache.set_parity(key, record)
            row["max_abs_diff"] = record["max_abs_diff"]
            if not record["ok"]:
                row["refused"] = f"parity {record['max_abs_diff']:.4f} > {TOLERANCE:.4f}"
                continue
        built[(name, precision)] = backend
    if not built:
        raise DeviceError("no backend can run on this CPU")
    speeds = time_backends(built, bundle)
    for row in candidates:
        if (row["backend"], row["precision"]) in speeds:
            row["tiles_per_s"] = round(speeds[(row["backend"], row["precision"])], 3)
    best = max(speeds, key=lambda pair: _score(pair, speeds))
    choice = {"backend": best[0], "precision": best[1], "candidates": candidates}
    cache.set_choice(input_dtype, choice)
    log.info("CPU backend chosen for %s: %s %s", bundle.manifest.name, *best)
    return choice


def _score(pair: tuple[str, str], speeds: dict[tuple[str, str], float]) -> float:
    """Speed, with reduced precisions held to a margin over the fastest fp32 pair."""
    if pair[1] == "fp32":
        return speeds[pair]
    return speeds[pair] / SPEEDUP_MARGIN


def time_backends(backends: dict[Any, Any], bundle: Bundle) -> dict[Any, float]:
    """Tiles per second of each backend on the same tiles, in turns (median of rounds)."""
    manifest = bundle.manifest
    shape = (TUNE_BATCH, len(manifest.bands), manifest.infer_tile, manifest.infer_tile)
    tiles = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0))
    tiles = tiles.to(torch.uint8)
    for backend in backends.values():
        backend.infer(tiles)  # warm-up: kernel selection, first-call allocations
    seconds: dict[Any, list[float]] = {key: [] for key in backends}
    for _ in range(TUNE_ROUNDS):
        for key, backend in backends.items():
            start = time.perf_counter()
            backend.infer(tiles)
            seconds[key].append(time.perf_counter() - start)
    return {key: TUNE_BATCH / statistics.median(s) for key, s in seconds.items()}


# -- the cache -------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the measurements depend on besides the bundle: CPU and library versions."""
    found: dict[str, Any] = {
        "cpu": cpu_model(),
        "flags": sorted(cpu_flags()),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "capability": torch.backends.cpu.get_cpu_capability(),
    }
    for package in ("stmap", "onnxruntime"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def cpu_model() -> str:
    """The CPU's model name (Linux), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class LadderCache:
    """One JSON file per bundle and machine: parity records and the tuned choice."""

    def __init__(self, bundle: Bundle):
        self.bundle_hash = bundle.hash()
        self.machine = machine()
        key = hashlib.sha256(json.dumps(self.machine, sort_keys=True).encode()).hexdigest()
        self.path = user_cache_dir("cpu-ladder") / f"{self.bundle_hash[:16]}-{key[:16]}.json"
        self.data = self._load()

    def _load(self) -> dict[str, Any]:
        fresh = {
            "version": CACHE_VERSION,
            "bundle": self.bundle_hash,
            "machine": self.machine,
            "parity": {},
            "choice": {},
        }
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return fresh
        except (OSError, ValueError) as exc:
            log.warning("ignoring the unreadable CPU ladder cache %s (%s)", self.path, exc)
            return fresh
        if not _valid(data, self.bundle_hash, self.machine):
            log.warning("ignoring the CPU ladder cache %s: it does not match", self.path)
            return fresh
        return data

    def parity(self, key: str) -> dict[str, Any] | None:
        return self.data["parity"].get(key)

    def set_parity(self, key: str, record: dict[str, Any]) -> None:
        self.data["parity"][key] = record
        self._save()

    def choice(self, input_dtype: str) -> dict[str, Any] | None:
        return self.data["choice"].get(input_dtype)

    def set_choice(self, input_dtype: str, choice: dict[str, Any]) -> None:
        self.data["choice"][input_dtype] = choice
        self._save()

    def _save(self) -> None:
        """Atomically; a cache that cannot be written only costs a measurement next time."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".ladder-", suffix=".json")
            with os.fdopen(fd, "w") as f:
                json.dump(self.data, f, indent=1, default=str)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write the CPU ladder cache %s (%s)", self.path, exc)


def _valid(data: Any, bundle_hash: str, machine_facts: dict[str, Any]) -> bool:
    """The cache's shape and keys, checked field by field: anything odd is rebuilt."""
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
        return False
    if data.get("bundle") != bundle_hash or data.get("machine") != machine_facts:
        return False
    parity, choice = data.get("parity"), data.get("choice")
    if not isinstance(parity, dict) or not isinstance(choice, dict):
        return False
    for record in parity.values():
        if not isinstance(record, dict) or not isinstance(record.get("ok"), bool):
            return False
        if not isinstance(record.get("max_abs_diff"), int | float):
            return False
    for pick in choice.values():
        if not isinstance(pick, dict) or (pick.get("backend"), pick.get("precision")) not in set(
            CANDIDATES
        ):
            return False
    return True

"""What export writes into a bundle and the runtime reads back: the stages' contract.

Export and runtime never import each other; both import this. It names the ONNX
files per precision, their input and output tensors, where the manifest records each
export, and how TensorRT engines are named by GPU and TensorRT version and chosen
from the manifest's records. Plain data and pure functions: no torch, importable by
the CLI.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stmap.errors import DeviceError, InputError

# -- ONNX ------------------------------------------------------------------------------
INPUT_NAME = "pixels"  # (batch, C, T, T) uint8
OUTPUT_NAME = "probability"  # (batch, 1, T, T) float32
BATCH_AXIS = "batch"  # the one dynamic axis, on both tensors
DYNAMIC_AXES = {INPUT_NAME: {0: BATCH_AXIS}, OUTPUT_NAME: {0: BATCH_AXIS}}
ONNX_FILES = {"fp32": "model.onnx", "fp16": "model_fp16.onnx", "int8": "model_int8.onnx"}
# where manifest.exports records each ONNX file (and its parity)
EXPORT_KEYS = {"fp32": "onnx", "fp16": "onnx_fp16", "int8": "onnx_int8"}

# -- TensorRT --------------------------------------------------------------------------
TENSORRT_KEY = "tensorrt"  # manifest.exports["tensorrt"]["engines"]: file → record
ENGINE_PRECISIONS = ("fp32", "fp16")  # no bf16: an ONNX Conv is bf16 only from opset 22
DEFAULT_MAX_BATCH = 64
REBUILD_HINT = "stmap export BUNDLE --format tensorrt [--fp16] -o NEW_BUNDLE"


def recorded_onnx(exports: Mapping[str, Any], precision: str) -> Mapping[str, Any] | None:
    """The manifest's record of the ``precision`` ONNX export, or None if it has none."""
    record = exports.get(EXPORT_KEYS.get(precision, ""))
    return record if isinstance(record, Mapping) else None


def recorded_engines(exports: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    """The manifest's TensorRT engine records, file → record (empty without any)."""
    return dict(exports.get(TENSORRT_KEY, {}).get("engines", {}))


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine accepts (min..max) and the one its kernels are tuned for.

    The pipeline feeds full batches and a short tail, so ``opt`` defaults to ``max``.
    """

    min: int = 1
    opt: int = DEFAULT_MAX_BATCH
    max: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(
                f"TensorRT batch profile min={self.min}, opt={self.opt}, max={self.max} is "
                "invalid: it needs 1 <= --min-batch <= --opt-batch <= --max-batch"
            )

    @classmethod
    def from_options(
        cls, max_batch: int = DEFAULT_MAX_BATCH, opt_batch: int | None = None, min_batch: int = 1
    ) -> BatchProfile:
        return cls(min_batch, max_batch if opt_batch is None else opt_batch, max_batch)

    def shapes(self, channels: int, tile_size: int) -> tuple[tuple[int, ...], ...]:
        """(min, opt, max) input shapes (N, C, T, T) for TensorRT's optimisation profile."""
        return tuple((n, channels, tile_size, tile_size) for n in (self.min, self.opt, self.max))

    def chunks(self, batch: int) -> list[tuple[int, int]]:
        """(start, stop) slices of a batch of ``batch`` tiles, each at most ``max`` long."""
        return [(i, min(i + self.max, batch)) for i in range(0, batch, self.max)]

    def record(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}


@dataclass(frozen=True)
class GpuTarget:
    """What an engine is compiled for: a GPU model and architecture, a TensorRT version."""

    gpu: str
    capability: tuple[int, int]
    tensorrt: str

    @property
    def slug(self) -> str:
        return gpu_slug(self.gpu)

    @property
    def sm(self) -> str:
        return f"sm{self.capability[0]}{self.capability[1]}"

    def describe(self) -> str:
        return f"{self.gpu} ({self.sm}) with TensorRT {self.tensorrt}"


def gpu_slug(name: str) -> str:
    """A file-name-safe GPU model: 'NVIDIA H100 80GB HBM3' → 'h100-80gb-hbm3'."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-").split("-")
    return "-".join(w for w in words if w not in ("nvidia", "geforce", "tesla")) or "gpu"


def engine_name(target: GpuTarget, precision: str) -> str:
    return f"engine_{target.slug}_{target.sm}_trt{target.tensorrt}_{precision}.plan"


def timing_cache_name(target: GpuTarget) -> str:
    """Timing caches are per GPU and TensorRT version too; one serves every precision."""
    return f"timing_{target.slug}_{target.sm}_trt{target.tensorrt}.cache"


def engine_record(
    target: GpuTarget, precision: str, profile: BatchProfile, **fields: Any
) -> dict[str, Any]:
    """The manifest entry of one engine (``exports['tensorrt']['engines'][file]``)."""
    return {
        "file": engine_name(target, precision),
        "precision": precision,
        "gpu": target.gpu,
        "gpu_slug": target.slug,
        "compute_capability": f"{target.capability[0]}.{target.capability[1]}",
        "tensorrt": target.tensorrt,
        "profile": profile.record(),
        **fields,
    }


def select_engine(
    engines: Mapping[str, Mapping[str, Any]], target: GpuTarget, precision: str
) -> str:
    """The engine among ``engines`` (file → record) that runs on ``target`` at ``precision``.

    Plans are tied to the exact TensorRT version and to the GPU architecture; the same
    GPU model is preferred, another model of the same architecture is accepted. None
    fits: DeviceError (so ``--backend auto`` moves on) naming the rebuild command.
    """
    usable = [
        (record.get("gpu_slug") == target.slug, name)
        for name, record in engines.items()
        if record.get("precision") == precision
        and record.get("tensorrt") == target.tensorrt
        and record.get("compute_capability") == f"{target.capability[0]}.{target.capability[1]}"
    ]
    if usable:
        return max(usable)[1]
    built = "; ".join(
        f"{name} ({r.get('gpu')}, sm {r.get('compute_capability')}, TensorRT "
        f"{r.get('tensorrt')}, {r.get('precision')})"
        for name, r in engines.items()
    )
    raise DeviceError(
        f"the bundle has no {precision} TensorRT engine for {target.describe()}"
        + (f"; it has {built}" if built else "")
        + f". Rebuild one on this machine with: {REBUILD_HINT}"
    )

"""TensorRT engines built from a bundle's verified ONNX, for the GPU they will run on.

An engine is a compiled plan for one GPU architecture and one TensorRT version, so it
is named by both (``engine_h100-80gb-hbm3_sm90_trt10.13.3.9_fp16.plan``), its manifest
record says what it was built for, and a runtime refuses an engine built for another
GPU or TensorRT with the command that rebuilds it. Networks are strongly typed (the
only kind TensorRT 11 builds; optional in 10): precision comes from the ONNX variant
the engine is built from (``model.onnx`` → fp32, ``model_fp16.onnx`` → fp16), never
from builder flags, so an engine computes in exactly the types its parity-checked
ONNX declares. bf16 engines are not offered: an ONNX Conv cannot be bf16 below opset
22, and TensorRT 11 removed the BF16 builder flag; the torch backend runs bf16.

The TensorRT package is imported lazily; without it ``stmap export --format tensorrt``
exits 2 naming ``pip install 'stmap[tensorrt]'``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from stmap.bundle import Bundle
from stmap.errors import BundleError, DeviceError, InputError, StmapError
from stmap.export.onnx_export import INPUT_NAME, OUTPUT_NAME
from stmap.export.parity import DEFAULT_SAMPLES, compare, parity_batches, torch_reference
from stmap.lazy import lazy_import

ENGINE_PRECISIONS = ("fp32", "fp16")
DEFAULT_MAX_BATCH = 64
DEFAULT_WORKSPACE_GIB = 8.0
REBUILD_HINT = "stmap export BUNDLE --format tensorrt [--fp16] -o NEW_BUNDLE"


class EngineBuildError(StmapError):
    """TensorRT could not parse the ONNX or build an engine (a bug or a TensorRT limit)."""


def require_tensorrt() -> ModuleType:
    """The ``tensorrt`` module, on a machine with a CUDA GPU to build for; else exit 2."""
    trt = lazy_import("tensorrt")
    if not torch.cuda.is_available():
        raise DeviceError(
            "TensorRT engines are built on the GPU they will run on, and this machine has "
            "no CUDA GPU; run `stmap export BUNDLE --format tensorrt` on the target machine"
        )
    return trt


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

    @classmethod
    def current(cls, trt: ModuleType, device: torch.device) -> GpuTarget:
        return cls(
            torch.cuda.get_device_name(device),
            tuple(torch.cuda.get_device_capability(device)),  # type: ignore[arg-type]
            trt.__version__,
        )

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


def build_engine(
    trt: ModuleType,
    onnx_path: Path,
    plan_path: Path,
    *,
    tile_size: int,
    channels: int,
    profile: BatchProfile,
    precision: str,
    timing_cache: bytes = b"",
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
) -> bytes:
    """Build ``onnx_path`` into ``plan_path``; returns the updated timing cache.

    ``precision`` only decides whether TF32 is allowed: an fp32 engine keeps true fp32
    math (TF32 would miss the fp32 parity tolerance); fp16 comes from the ONNX types.
    """
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(
            f"TensorRT {trt.__version__} cannot parse {onnx_path.name}: {errors}"
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    tf32 = getattr(trt.BuilderFlag, "TF32", None)
    if precision == "fp32" and tf32 is not None:
        config.clear_flag(tf32)
    shapes = builder.create_optimization_profile()
    shapes.set_shape(INPUT_NAME, *profile.shapes(channels, tile_size))
    config.add_optimization_profile(shapes)
    # a timing cache from an earlier build on this GPU skips most kernel timing
    config.set_timing_cache(config.create_timing_cache(timing_cache), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineBuildError(
            f"TensorRT {trt.__version__} could not build an engine from {onnx_path.name}; "
            "its log above says why (a larger --workspace-gib can help)"
        )
    plan_path.write_bytes(memoryview(plan))
    return bytes(memoryview(config.get_timing_cache().serialize()))


class EngineRunner:
    """A deserialised engine and one execution context running torch CUDA tensors.

    ``__call__`` takes (N, C, T, T) uint8 tiles on the engine's GPU and returns
    (N, 1, T, T) float32 probabilities, enqueued on the current CUDA stream (the
    pipeline's), so there is no synchronisation and no copy through the host.
    """

    def __init__(self, plan: bytes, device: torch.device, source: str):
        trt = lazy_import("tensorrt")
        self.device = device
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with torch.cuda.device(device):
            self.engine = self._runtime.deserialize_cuda_engine(plan)
            if self.engine is None:
                raise BundleError(
                    f"{source}: TensorRT {trt.__version__} cannot load this engine (built "
                    f"for another GPU or TensorRT version?); rebuild it with: {REBUILD_HINT}"
                )
            self.context = self.engine.create_execution_context()
        lowest, _, highest = self.engine.get_tensor_profile_shape(INPUT_NAME, 0)
        self.profile = BatchProfile(lowest[0], highest[0], highest[0])

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        n, _, h, w = tiles.shape
        out = torch.empty((n, 1, h, w), dtype=torch.float32, device=self.device)
        stream = torch.cuda.current_stream(self.device).cuda_stream
        for start, stop in self.profile.chunks(n):
            chunk = tiles[start:stop].contiguous()
            result = out[start:stop]
            if len(chunk) < self.profile.min:  # pad a short tail up to the profile's minimum
                pad = self.profile.min - len(chunk)
                chunk = torch.cat([chunk, chunk.new_zeros((pad, *chunk.shape[1:]))])
                result = out.new_empty((self.profile.min, 1, h, w))
            self.context.set_input_shape(INPUT_NAME, tuple(chunk.shape))
            self.context.set_tensor_address(INPUT_NAME, chunk.data_ptr())
            self.context.set_tensor_address(OUTPUT_NAME, result.data_ptr())
            if not self.context.execute_async_v3(stream):
                raise EngineBuildError("TensorRT failed to enqueue the engine; see its log")
            if result.data_ptr() != out[start:stop].data_ptr():
                out[start:stop] = result[: stop - start]
        return out


def export_engine(
    model: torch.nn.Module,
    bundle: Bundle,
    onnx_path: Path,
    work: Path,
    *,
    precision: str,
    profile: BatchProfile,
    samples: int = DEFAULT_SAMPLES,
    workspace_gib: float = DEFAULT_WORKSPACE_GIB,
) -> tuple[dict[str, Path], dict[str, Any]]:
    """Build an engine for this GPU into ``work``, check it against eager ``model``.

    Returns the files to add (engine, updated timing cache) and the engine's record.
    Raises ParityError when the engine's probabilities differ beyond the tolerance.
    """
    trt = require_tensorrt()
    device = torch.device("cuda", torch.cuda.current_device())
    target = GpuTarget.current(trt, device)
    manifest = bundle.manifest
    channels = len(manifest.bands)
    plan_path = work / engine_name(target, precision)
    cache_path = work / timing_cache_name(target)
    cache = (
        bundle.path_of(cache_path.name).read_bytes() if cache_path.name in manifest.files else b""
    )
    cache_path.write_bytes(
        build_engine(
            trt,
            onnx_path,
            plan_path,
            tile_size=manifest.tile_size,
            channels=channels,
            profile=profile,
            precision=precision,
            timing_cache=cache,
            workspace_gib=workspace_gib,
        )
    )
    runner = EngineRunner(plan_path.read_bytes(), device, plan_path.name)
    parity = compare(
        torch_reference(model),
        lambda batch: runner(batch.to(device)),
        parity_batches(manifest.tile_size, channels, samples),
        precision=precision,
        what=f"{plan_path.name} in TensorRT",
        runtime={"tensorrt": trt.__version__, "gpu": target.gpu, "cuda": str(torch.version.cuda)},
    )
    record = engine_record(
        target,
        precision,
        profile,
        onnx=onnx_path.name,
        timing_cache=cache_path.name,
        workspace_gib=workspace_gib,
        parity=parity.record(),
    )
    return {plan_path.name: plan_path, cache_path.name: cache_path}, record

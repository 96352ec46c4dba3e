"""TensorRT engines built from a bundle's verified ONNX, for the GPU they will run on.

An engine is a compiled plan for one GPU architecture and one TensorRT version, so it
is named by both (``engine_h100-80gb-hbm3_sm90_trt10.13.3.9_fp16.plan``), its manifest
record says what it was built for, and a runtime refuses an engine built for another
GPU or TensorRT with the command that rebuilds it (names, records and the choice:
``stmap.stage_contract``; the runner both stages use: ``stmap.tensorrt_runner``).
Networks are strongly typed (the only kind TensorRT 11 builds; optional in 10):
precision comes from the ONNX variant the engine is built from (``model.onnx`` →
fp32, ``model_fp16.onnx`` → fp16), never from builder flags, so an engine computes in
exactly the types its parity-checked ONNX declares. bf16 engines are not offered: an
ONNX Conv cannot be bf16 below opset 22, and TensorRT 11 removed the BF16 builder
flag; the torch backend runs bf16.

The TensorRT package is imported lazily; without it ``stmap export --format tensorrt``
exits 2 naming ``pip install 'stmap[tensorrt]'``.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from stmap.bundle import Bundle
from stmap.errors import DeviceError
from stmap.export.parity import compare
from stmap.lazy import lazy_import
from stmap.parity_tiles import DEFAULT_SAMPLES, parity_batches, torch_reference
from stmap.stage_contract import (
    INPUT_NAME,
    BatchProfile,
    engine_name,
    engine_record,
    timing_cache_name,
)
from stmap.tensorrt_runner import EngineRunner, TensorRTError, current_target

DEFAULT_WORKSPACE_GIB = 8.0


class EngineBuildError(TensorRTError):
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
    target = current_target(trt, device)
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
            tile_size=manifest.infer_tile,
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
        parity_batches(manifest.infer_tile, channels, samples),
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

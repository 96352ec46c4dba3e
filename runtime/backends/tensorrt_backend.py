"""The TensorRT backend: a bundle's engine for this GPU and TensorRT version.

The engine is chosen from the manifest's records (``stmap export --format tensorrt``
wrote them; ``stmap.stage_contract`` selects) and refused, with the command that
rebuilds it, when it was built for another GPU architecture or TensorRT version. It
runs on the caller's CUDA stream with the pipeline's torch tensors bound as its input
and output: no copies, no host sync.
"""

from __future__ import annotations

import torch

from stmap.bundle import Bundle
from stmap.errors import DeviceError
from stmap.lazy import lazy_import
from stmap.stage_contract import ENGINE_PRECISIONS, recorded_engines, select_engine
from stmap.tensorrt_runner import EngineRunner, current_target


class TensorRTBackend:
    """One TensorRT engine on one GPU (the registry runs it on CUDA only); see
    ``base.Backend`` for the contract."""

    name = "tensorrt"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str, input_dtype: str):
        if input_dtype != "uint8":
            raise DeviceError(
                f"TensorRT engines take uint8 pixels, the input is {input_dtype}; "
                "use --backend torch for it"
            )
        if precision not in ENGINE_PRECISIONS:
            raise DeviceError(
                f"no {precision} TensorRT engines exist (they are fp32 or fp16); use "
                "--precision fp16, or --backend torch"
            )
        trt = lazy_import("tensorrt")
        engines = recorded_engines(bundle.manifest.exports)
        name = select_engine(engines, current_target(trt, device), precision)
        self.device = device
        self.precision = precision
        self.engine_file = name
        self.runner = EngineRunner(
            bundle.path_of(name).read_bytes(), device, f"{bundle.source}/{name}"
        )

    def max_batch(self) -> int:
        return self.runner.profile.max

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, C, T, T) uint8 on ``device`` → (N, 1, T, T) float32, on the current stream."""
        return self.runner(tiles)

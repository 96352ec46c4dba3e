"""Running a TensorRT engine on torch CUDA tensors: the runtime backend and export's check.

Export runs a freshly built engine to measure its parity; the runtime runs the engine
the manifest selects. Both use this runner, so neither stage imports the other. The
TensorRT package is imported lazily.
"""

from __future__ import annotations

from types import ModuleType

import torch

from stmap.errors import BundleError, StmapError
from stmap.lazy import lazy_import
from stmap.stage_contract import INPUT_NAME, OUTPUT_NAME, REBUILD_HINT, BatchProfile, GpuTarget


class TensorRTError(StmapError):
    """TensorRT could not parse, build or run an engine (a bug or a TensorRT limit)."""


def current_target(trt: ModuleType, device: torch.device) -> GpuTarget:
    """The GPU and TensorRT version an engine must have been built for to run here."""
    return GpuTarget(
        torch.cuda.get_device_name(device),
        tuple(torch.cuda.get_device_capability(device)),  # type: ignore[arg-type]
        trt.__version__,
    )


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
                raise TensorRTError("TensorRT failed to enqueue the engine; see its log")
            if result.data_ptr() != out[start:stop].data_ptr():
                out[start:stop] = result[: stop - start]
        return out

"""The ONNX Runtime backend: the bundle's parity-checked ``model.onnx`` (or fp16 variant).

On the CPU it runs the plain ``session.run`` on numpy views of the tiles (no copy). On
CUDA it binds the pipeline's torch tensors to the session by device pointer (IO
binding), so tiles and probabilities never leave the GPU, and runs the TensorRT
execution provider where the installed ONNX Runtime has it (falling back to CUDA).
Precision is the ONNX file's: fp32 runs ``model.onnx``, fp16 ``model_fp16.onnx``, int8
``model_int8.onnx`` (the CPU only).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stmap.bundle import Bundle
from stmap.errors import DeviceError
from stmap.lazy import lazy_import
from stmap.onnx_files import checked_onnx_path
from stmap.runtime.backends.base import max_tiles
from stmap.stage_contract import INPUT_NAME, ONNX_FILES, OUTPUT_NAME, recorded_onnx


class OnnxRuntimeBackend:
    """An ONNX Runtime session on one device; see ``base.Backend`` for the contract."""

    name = "onnxruntime"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str, input_dtype: str):
        ort = lazy_import("onnxruntime")
        if precision == "int8" and device.type != "cpu":
            raise DeviceError(f"the int8 ONNX model runs on the CPU only, not on {device}")
        file = _onnx_file(bundle, precision, input_dtype)
        self.device = device
        self.precision = precision
        self.tile_size = bundle.manifest.infer_tile
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if device.type == "cuda":
            # ONNX Runtime works on its own stream; infer() orders it after the caller's
            # stream and the caller's after it, with events (no host synchronisation).
            self.stream = torch.cuda.Stream(device)
            providers = _cuda_providers(ort, bundle, device, self.stream, self.max_batch())
        else:
            providers = ["CPUExecutionProvider"]
        path = checked_onnx_path(bundle, file)
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.providers = self.session.get_providers()
        if device.type == "cuda":
            if "CUDAExecutionProvider" not in self.providers:
                raise DeviceError(
                    f"ONNX Runtime could not start on {device} (providers: "
                    f"{', '.join(self.providers)}); check CUDA/cuDNN, or use --backend torch"
                )
            self._run_options = ort.RunOptions()
            # return once the work is enqueued: the caller's stream waits on ours instead
            self._run_options.add_run_config_entry("disable_synchronize_execution_providers", "1")

    def max_batch(self) -> int:
        return max_tiles(self.device, self.tile_size)

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, C, T, T) uint8 on ``device`` → (N, 1, T, T) float32 on ``device``."""
        tiles = tiles.contiguous()
        if self.device.type != "cuda":
            (probs,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: tiles.numpy()})
            return torch.from_numpy(probs)
        n, _, h, w = tiles.shape
        out = torch.empty((n, 1, h, w), dtype=torch.float32, device=self.device)
        index = self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(
            INPUT_NAME, "cuda", index, np.uint8, tuple(tiles.shape), tiles.data_ptr()
        )
        binding.bind_output(
            OUTPUT_NAME, "cuda", index, np.float32, tuple(out.shape), out.data_ptr()
        )
        caller = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(caller)  # the tiles are written on the caller's stream
        self.session.run_with_iobinding(binding, self._run_options)
        tiles.record_stream(self.stream)  # not reused before ONNX Runtime has read them
        caller.wait_stream(self.stream)
        return out


def _onnx_file(bundle: Bundle, precision: str, input_dtype: str) -> str:
    """The bundle's ONNX file for ``precision``; DeviceError (``auto`` moves on) if none."""
    if input_dtype != "uint8":
        raise DeviceError(
            f"the exported models take uint8 pixels, the input is {input_dtype}; "
            "use --backend torch for it"
        )
    if precision not in ONNX_FILES:
        raise DeviceError(
            f"no {precision} ONNX model exists (exports are {', '.join(ONNX_FILES)}); use "
            "--precision fp16 or fp32, or --backend torch"
        )
    file = ONNX_FILES[precision]
    recorded = recorded_onnx(bundle.manifest.exports, precision)
    if file not in bundle.manifest.files or recorded is None:
        flag = {"fp16": " --fp16", "int8": " --int8"}.get(precision, "")
        raise DeviceError(
            f"{bundle.source}: the bundle has no {file}; add it with: "
            f"stmap export BUNDLE --format onnx{flag}"
        )
    return file


def _cuda_providers(
    ort: Any, bundle: Bundle, device: torch.device, stream: torch.cuda.Stream, max_batch: int
) -> list[Any]:
    """TensorRT (if this ONNX Runtime has it), then CUDA, on ``stream``; else DeviceError."""
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        raise DeviceError(
            "the installed onnxruntime has no CUDA provider; install it with: "
            "pip install 'stmap[gpu]' (onnxruntime-gpu replaces onnxruntime)"
        )
    common = {"device_id": device.index or 0, "user_compute_stream": str(stream.cuda_stream)}
    providers: list[Any] = [("CUDAExecutionProvider", common)]
    if "TensorrtExecutionProvider" in available:
        shape = f"{INPUT_NAME}:{{}}x{len(bundle.manifest.bands)}x{bundle.manifest.infer_tile}x"
        shape += str(bundle.manifest.infer_tile)
        # engines are cached per bundle outside it (a bundle is read-only and hashed);
        # one profile for every batch size, so no rebuild for a short last batch
        cache = Path(tempfile.gettempdir()) / "stmap-ort-tensorrt" / bundle.hash()[:16]
        cache.mkdir(parents=True, exist_ok=True)
        trt_options = {
            **common,
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": "True",
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": shape.format(1),
            "trt_profile_opt_shapes": shape.format(max_batch),
            "trt_profile_max_shapes": shape.format(max_batch),
        }
        providers.insert(0, ("TensorrtExecutionProvider", trt_options))
    return providers

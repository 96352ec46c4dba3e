"""The PyTorch backend: the bundle's ``InferenceModel`` in eager mode or compiled.

On CUDA it runs under autocast (bf16 or fp16) in channels-last layout and, by
default, through ``torch.compile``; on the CPU in fp32 unless asked otherwise: bf16
with the model's weights and activations in bf16 (autocast would cast them back and
forth around every op, which costs more than bf16 saves), int8 with the backbone's
linear layers dynamically quantised (``torch.ao``; the CPU only) and its decoder in
bf16 where the CPU has it natively (``Int8Model``).

``STMAP_TORCH_COMPILE`` overrides whether and how it compiles, for benchmarks that
compare the ways (``benchmarks/gpu_proof.py``): ``off`` (eager), ``default``, or a
``torch.compile`` mode such as ``reduce-overhead`` (CUDA graphs) or
``max-autotune``; unset or ``auto``: compiled (default mode) on CUDA, eager on the CPU.
"""

from __future__ import annotations

import copy
import logging
import os
import warnings

import torch
from torch import nn

from stmap.bundle import Bundle
from stmap.errors import DeviceError
from stmap.model import InferenceModel
from stmap.model.fuse import fold_batch_norms
from stmap.runtime.backends.base import max_tiles

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
BATCH_QUANTUM = 8  # eager batches are padded to a multiple of this
COMPILE_ENV = "STMAP_TORCH_COMPILE"


class TorchBackend:
    """``InferenceModel`` on one device; see ``Backend`` for the contract."""

    name = "torch"

    def __init__(self, bundle: Bundle, device: torch.device, precision: str, input_dtype: str):
        self.device = device
        self.precision = precision
        self.tile_size = bundle.manifest.infer_tile
        model = InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing(input_dtype))
        # batch norms folded into their convolutions: one pass less over each map
        model = fold_batch_norms(model.eval())
        # channels-last lets cuDNN / oneDNN pick their fastest convolution kernels.
        model = model.to(device, memory_format=torch.channels_last)
        if precision == "int8":
            model = _quantised(model, device)
        elif precision == "bf16" and device.type == "cpu":
            model = Bf16Model(model)
        self.model = model
        # on the CPU, bf16 lives in the weights (Bf16Model); int8 needs no autocast
        self.autocast = precision in _AUTOCAST and not (
            precision == "bf16" and device.type == "cpu"
        )
        mode = compile_mode(device)
        self.compiled = mode is not None
        self.cuda_graphs = mode is not None and "reduce-overhead" in mode
        self._forward = (
            torch.compile(self.model, dynamic=False, mode=None if mode == "default" else mode)
            if self.compiled
            else self.model
        )
        self._static_batch = 0

    def max_batch(self) -> int:
        return max_tiles(self.device, self.tile_size)

    @torch.inference_mode()
    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        n = len(tiles)
        # Kernels are chosen (oneDNN, cuDNN) or compiled per batch shape, a cost paid
        # again for every new shape: short batches are padded to a few sizes, to the
        # one size a compiled graph is specialised to; never past the largest batch
        # seen, or --batch-size 1 would compute 8 tiles for one.
        self._static_batch = max(self._static_batch, n)
        quantum = self._static_batch if self.compiled else min(BATCH_QUANTUM, self._static_batch)
        padded = -(-n // quantum) * quantum
        if padded > n:
            pad = tiles.new_zeros((padded - n, *tiles.shape[1:]))
            tiles = torch.cat([tiles, pad])
        with torch.autocast(
            self.device.type,
            dtype=_AUTOCAST.get(self.precision, torch.float32),
            enabled=self.autocast,
        ):
            probs = self._run(tiles.contiguous(memory_format=torch.channels_last))
        return probs[:n].float()

    def _run(self, tiles: torch.Tensor) -> torch.Tensor:
        try:
            if self.cuda_graphs:  # the previous replay's outputs were already copied out
                torch.compiler.cudagraph_mark_step_begin()
            return self._forward(tiles)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as exc:
            if not self.compiled:
                raise
            # torch.compile needs a working compiler tool chain; eager always runs.
            log.warning("torch.compile failed (%s); running the model eagerly", exc)
            self.compiled, self._forward = False, self.model
            return self._forward(tiles)


class Bf16Model(nn.Module):
    """An ``InferenceModel`` whose segmenter holds and computes in bf16 (the CPU's bf16).

    Preprocessing stays in float32 (exact), its output is cast once; the logits come
    back to float32 before the sigmoid.
    """

    def __init__(self, model: InferenceModel):
        super().__init__()
        self.normalize = model.normalize
        self.segmenter = model.segmenter.to(torch.bfloat16)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter(self.normalize(pixels).to(torch.bfloat16))
        return torch.sigmoid(logits.float())


class Int8Model(nn.Module):
    """An ``InferenceModel`` one rung below bf16 on the CPU: the backbone's linear layers
    in int8 (dynamic quantisation: int8 weights, activations quantised per call), and
    the decoder, a convolutional head with no linear layer, in bf16 where the CPU has
    it natively (else float32), as TensorRT's int8 mode keeps fp16 beside int8.
    """

    def __init__(self, model: InferenceModel, decoder_dtype: torch.dtype):
        super().__init__()
        segmenter = model.segmenter
        if not any(isinstance(m, nn.Linear) for m in segmenter.backbone.modules()):
            raise DeviceError(
                "--precision int8: the model has no linear layers to quantise (a "
                "convolutional backbone); use fp32 or bf16"
            )
        self.normalize = model.normalize
        with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
            warnings.simplefilter("ignore")
            self.backbone = torch.ao.quantization.quantize_dynamic(
                segmenter.backbone, {nn.Linear}, dtype=torch.qint8
            )
        self.decoder = copy.deepcopy(segmenter.decoder).to(decoder_dtype)  # ``model`` intact
        self.decoder_dtype = decoder_dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        features = self.backbone(self.normalize(pixels))
        logits = self.decoder.logits(features.to(self.decoder_dtype))
        return torch.sigmoid(logits.float())


def _quantised(model: InferenceModel, device: torch.device) -> Int8Model:
    """``model`` at the int8 rung (``Int8Model``); the CPU only."""
    if device.type != "cpu":
        raise DeviceError(
            "--precision int8 runs on the CPU only (dynamic quantisation); use bf16 or fp16 "
            f"on {device}"
        )
    from stmap.runtime.precision import native_bf16

    return Int8Model(model, torch.bfloat16 if native_bf16() else torch.float32)


def compile_mode(device: torch.device) -> str | None:
    """The ``torch.compile`` mode to use on ``device`` ("default" or a mode), or None: eager.

    Compiling pays off over a city's tiles on CUDA; on the CPU it is left to the user.
    """
    mode = os.environ.get(COMPILE_ENV, "auto").strip() or "auto"
    if mode == "auto":
        return "default" if device.type == "cuda" else None
    return None if mode == "off" else mode

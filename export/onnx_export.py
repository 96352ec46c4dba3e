"""Export a bundle's model to ONNX: raw uint8 tiles in, float32 probabilities out.

The graph is ``InferenceModel`` at the bundle's tile size with a dynamic batch axis:
input ``pixels`` (B, C, T, T) uint8, output ``probability`` (B, 1, T, T) float32, as
``stmap.stage_contract`` declares them for the runtime, with the file names. The
uint8 → float cast, the scaling and the normalisation live inside it, so a runtime
ships bytes and every backend computes exactly what the manifest says.

Exporter: the TorchScript-based ``torch.onnx.export(..., dynamo=False)``. In torch 2.14
both exporters give the same outputs for ``tiny`` and for the DINOv3 ViTs (RoPE), but
this one needs no extra package (the dynamo exporter needs ``onnxscript`` and
``onnx_ir``), exports the ViT-S about ten times faster (0.8 s against 7.9 s), traces the
fixed tile size into constants (RoPE tables folded away, which TensorRT likes) and
supports opsets below 18. Torch marks it deprecated; the export tests fail loudly the
day it goes, and switching is one argument plus ``onnxscript`` in the ``onnx`` extra.

Reduced precision: the fp16 variant is exported from the model itself converted to
half precision, with normalisation kept in float32 (it scales 0..255 by ~1/50, where
fp16 would round) and the sigmoid computed in float32. That keeps uint8 in and float32
out, needs no converter package and, unlike post-hoc converters with their op block
lists, states the precision of every op in the graph, which TensorRT's strongly typed
networks (the only kind from TensorRT 11 on) take as given.

int8 (the CPU's ladder): ONNX Runtime's dynamic quantiser rewrites the fp32 export's
MatMul and Gemm nodes (a ViT's linear layers) to int8 weights with activations
quantised per call; the rest stays float32. A model without such nodes is refused.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from stmap.errors import InputError
from stmap.lazy import lazy_import
from stmap.model import InferenceModel
from stmap.onnx_files import graph_tensors
from stmap.stage_contract import BATCH_AXIS, DYNAMIC_AXES, INPUT_NAME, OUTPUT_NAME

DEFAULT_OPSET = 18
# 17 brings LayerNormalization (a ViT's norms stay one fused, fp32-accumulating op in
# TensorRT); 20 is the highest opset the TorchScript exporter writes.
SUPPORTED_OPSETS = range(17, 21)
PROTOBUF_LIMIT = 2**31  # one serialised ModelProto cannot exceed 2 GiB
# No bf16 variant: ONNX Conv takes bfloat16 only from opset 22, beyond this exporter.
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
INT8_OPS = ["MatMul", "Gemm"]  # a ViT's linear layers; ONNX Runtime's ConvInteger is slow


@dataclass(frozen=True)
class OnnxExport:
    """What one export wrote: the model file, its external data file (or None), the record."""

    path: Path
    external_data: Path | None
    record: dict[str, Any]

    @property
    def files(self) -> dict[str, Path]:
        paths = [self.path] if self.external_data is None else [self.path, self.external_data]
        return {p.name: p for p in paths}


def check_opset(opset: int) -> None:
    """Refuse opsets the exporter, ONNX Runtime and TensorRT do not all handle."""
    if opset not in SUPPORTED_OPSETS:
        raise InputError(
            f"--opset {opset} is not supported; choose one of "
            f"{SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1} (default {DEFAULT_OPSET})"
        )


class ExportedModel(nn.Module):
    """(B, C, T, T) uint8 → (B, 1, T, T) float32 with the network body run in ``dtype``.

    Normalisation and sigmoid stay in float32 whatever ``dtype`` is; for float32 this
    computes exactly what ``InferenceModel`` does.
    """

    def __init__(self, model: InferenceModel, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.normalize = model.normalize
        # a converted copy for reduced precision: the caller's float32 model stays intact
        same = dtype == torch.float32
        self.segmenter = model.segmenter if same else copy.deepcopy(model.segmenter).to(dtype)
        self.dtype = dtype

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        logits = self.segmenter(self.normalize(pixels).to(self.dtype))
        return torch.sigmoid(logits.float())


def export_onnx(
    model: InferenceModel,
    path: Path,
    *,
    tile_size: int,
    channels: int,
    precision: str = "fp32",
    opset: int = DEFAULT_OPSET,
    metadata: dict[str, str] | None = None,
    external_data_bytes: int = PROTOBUF_LIMIT,
) -> OnnxExport:
    """Export, simplify with onnxslim, save and check ``model`` as ``path``.

    Weights of ``external_data_bytes`` or more go to ``<path>.data`` beside the model (a
    protobuf cannot hold 2 GiB); the checker then reads the model from its path.
    """
    check_opset(opset)
    onnx = lazy_import("onnx")
    onnxslim = lazy_import("onnxslim")
    exported = ExportedModel(model, DTYPES[precision]).eval()
    # batch 2, not 1: the tracer must not specialise anything on a batch of one
    example = torch.randint(0, 256, (2, channels, tile_size, tile_size), dtype=torch.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a scratch folder: beyond 2 GiB the exporter writes one file per tensor beside the model
    with tempfile.TemporaryDirectory(prefix=".onnx-export-", dir=path.parent) as scratch:
        raw = Path(scratch) / "raw.onnx"
        with warnings.catch_warnings(), torch.no_grad():
            # the exporter's deprecation notice and timm's tracer warnings are noise here
            warnings.simplefilter("ignore")
            torch.onnx.export(
                exported,
                (example,),
                str(raw),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=DYNAMIC_AXES,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        proto = onnx.load(str(raw))  # external data, if any, is read into memory
    proto = onnxslim.slim(proto)
    proto.producer_name = "stmap"
    for key, value in (metadata or {}).items():
        proto.metadata_props.add(key=key, value=value)
    external = weight_bytes(proto) >= external_data_bytes
    data_path = path.with_name(f"{path.name}.data") if external else None
    if data_path is not None:
        onnx.save_model(
            proto,
            str(path),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=data_path.name,
            size_threshold=1024,
        )
    else:
        onnx.save_model(proto, str(path))
    onnx.checker.check_model(str(path), full_check=True)
    record = {
        "file": path.name,
        "external_data": data_path.name if data_path else None,
        "precision": precision,
        "opset": opset,
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "shape": [BATCH_AXIS, channels, tile_size, tile_size],
        },
        "output": {
            "name": OUTPUT_NAME,
            "dtype": "float32",
            "shape": [BATCH_AXIS, 1, tile_size, tile_size],
        },
        "exporter": "torch.onnx TorchScript exporter (dynamo=False), onnxslim",
        "versions": {
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxslim": onnxslim.__version__,
        },
    }
    return OnnxExport(path, data_path, record)


def weight_bytes(proto: Any) -> int:
    """Bytes of every tensor stored in the graph (initialisers and constants)."""
    return sum(len(t.raw_data) or t.ByteSize() for t in graph_tensors(proto.graph))


def quantize_onnx(fp32: OnnxExport, path: Path) -> OnnxExport:
    """The int8 variant of the fp32 export ``fp32``, as ``path`` (ONNX Runtime's quantiser).

    Raises InputError when nothing was quantised (a convolutional model).
    """
    onnx = lazy_import("onnx")
    ort = lazy_import("onnxruntime")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with warnings.catch_warnings():  # its pre-processing advice is printed as a warning
        warnings.simplefilter("ignore")
        quantize_dynamic(
            fp32.path, path, weight_type=QuantType.QInt8, op_types_to_quantize=INT8_OPS
        )
    proto = onnx.load(str(path))
    quantised = sum(
        node.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for node in proto.graph.node
    )
    if not quantised:
        path.unlink()
        raise InputError(
            "--int8: the model has no MatMul or Gemm to quantise (a convolutional "
            "backbone); export without --int8"
        )
    onnx.checker.check_model(str(path), full_check=True)
    record = {
        **fp32.record,
        "file": path.name,
        "external_data": None,
        "precision": "int8",
        "quantizer": "onnxruntime.quantization.quantize_dynamic, QInt8 weights, "
        + "/".join(INT8_OPS),
        "quantised_nodes": quantised,
        "versions": {**fp32.record["versions"], "onnxruntime": ort.__version__},
    }
    return OnnxExport(path, None, record)

"""The inference backends and precisions, declared once; importable without torch (the CLI).

``BACKENDS`` is the one table a backend is added to: ``--backend``'s choices and help,
the registry's validation, install hints, the devices each runs on and the order
``auto`` tries them in all come from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from stmap.stage_contract import ENGINE_PRECISIONS, ONNX_FILES

PRECISIONS = ("fp32", "fp16", "bf16", "int8")  # int8: the CPU's dynamic quantisation
DEVICE_WORDS = {"cpu": "CPUs", "cuda": "CUDA GPUs"}


@dataclass(frozen=True)
class BackendSpec:
    """One backend: where its class lives and what it can run.

    factory: "module:attribute", called as ``factory(bundle, device, precision,
        input_dtype)``; imported only when the backend is asked for.
    precisions: those it can run in, in no particular order.
    devices: the device types it runs on; another is refused before its import.
    install_hint: what to install (and export) when its module is missing.
    """

    name: str
    title: str
    factory: str
    precisions: tuple[str, ...]
    devices: tuple[str, ...]
    install_hint: str | None = None

    @property
    def module(self) -> str:
        return self.factory.partition(":")[0]


# Fastest first: the order ``--backend auto`` tries them in; each refuses if it can't run.
BACKENDS: dict[str, BackendSpec] = {
    spec.name: spec
    for spec in (
        BackendSpec(
            "tensorrt",
            "TensorRT",
            "stmap.runtime.backends.tensorrt_backend:TensorRTBackend",
            ENGINE_PRECISIONS,
            ("cuda",),
            "pip install 'stmap[tensorrt]' on a CUDA machine, then "
            "`stmap export BUNDLE --format tensorrt`",
        ),
        BackendSpec(
            "onnxruntime",
            "ONNX Runtime",
            "stmap.runtime.backends.onnxruntime_backend:OnnxRuntimeBackend",
            tuple(ONNX_FILES),
            ("cpu", "cuda"),
            "pip install 'stmap[onnx]' (CPU) or 'stmap[gpu]' (CUDA), then "
            "`stmap export BUNDLE --format onnx`",
        ),
        BackendSpec(
            "torch",
            "PyTorch",
            "stmap.runtime.backends.torch_backend:TorchBackend",
            PRECISIONS,
            ("cpu", "cuda"),
        ),
    )
}

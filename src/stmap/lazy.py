"""Import heavy optional packages on first use, with the extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from stmap.errors import MissingDependencyError

_EXTRA_OF = {
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxslim": "onnx",
    "tensorrt": "tensorrt",
    "ray": "distributed",
    "sklearn": "train",
}


def lazy_import(name: str) -> ModuleType:
    """Import ``name`` or raise MissingDependencyError naming ``pip install stmap[extra]``."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        extra = _EXTRA_OF.get(top)
        hint = f"pip install 'stmap[{extra}]'" if extra else f"pip install {top}"
        raise MissingDependencyError(f"{name} is not installed; install it with: {hint}") from exc

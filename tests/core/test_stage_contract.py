"""The stages meet in the core: the runtime runs a bundle without the export stage's code."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside a function."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


@pytest.mark.parametrize(
    ("stage", "forbidden"),
    [("runtime", "stmap.export"), ("export", "stmap.runtime")],
)
def test_runtime_and_export_share_only_the_core(stage: str, forbidden: str) -> None:
    """Running an engine must not pull in the parity-check code, nor export the runtime:
    ONNX names, engine selection, parity tiles and the TensorRT runner live in stmap."""
    offenders = {
        str(path.relative_to(ROOT)): sorted(
            m for m in _imported_modules(path) if m == forbidden or m.startswith(forbidden + ".")
        )
        for path in sorted((ROOT / stage).rglob("*.py"))
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_what_export_records_is_what_the_runtime_reads(tmp_path: Path) -> None:
    """Export's ONNX record sits under the contract's key and names the contract's tensors."""
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    from stmap.bundle import open_bundle
    from stmap.export import export_bundle
    from stmap.stage_contract import INPUT_NAME, ONNX_FILES, OUTPUT_NAME, recorded_onnx
    from tests.conftest import make_tiny_bundle

    bundle = make_tiny_bundle(tmp_path / "bundle")
    export_bundle(bundle, formats=["onnx"], samples=6)
    exports = open_bundle(bundle).manifest.exports
    record = recorded_onnx(exports, "fp32")
    assert record is not None and record["file"] == ONNX_FILES["fp32"]
    assert (record["input"]["name"], record["output"]["name"]) == (INPUT_NAME, OUTPUT_NAME)
    assert recorded_onnx(exports, "fp16") is None

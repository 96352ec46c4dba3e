"""Only ``stmap.io`` opens files: no runtime module opens a raster or a file itself.

The finishing steps are sinks fed by ``stmap.io``'s readers (``LayerReader``), so
a runtime module needs neither rasterio's IO nor ``open``; rasterio's pure helpers
(``features``, ``transform``, ``crs``) stay allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNTIME = Path(__file__).parents[2] / "runtime"
IO_MODULES = ("rasterio.windows", "rasterio.vrt", "rasterio.shutil", "rasterio.io")
IO_NAMES = {"open_raster", "WarpedVRT"}
FILE_METHODS = {"read_text", "read_bytes", "write_text", "write_bytes", "open"}
# Known exceptions, owned elsewhere and left for their owners: what each opens.
ALLOWED = {
    "bench.py": "/proc files for memory figures",
    "precision.py": "its calibration cache",
    "report.py": "the quicklook PNG it embeds",
    "viewer.py": "its vendored Leaflet files (package data)",
}


def _problems(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.startswith(IO_MODULES) or (
                node.module.startswith("stmap.io") and {a.name for a in node.names} & IO_NAMES
            ):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}"
                for a in node.names
                if a.name == "rasterio" or a.name.startswith(IO_MODULES)
            ]
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in {"open", *IO_NAMES}:
                found.append(f"line {node.lineno}: {func.id}(...)")
            elif isinstance(func, ast.Attribute) and func.attr in FILE_METHODS | {"fdopen"}:
                found.append(f"line {node.lineno}: .{func.attr}(...)")
    return found


@pytest.mark.parametrize(
    "module", sorted(p.name for p in RUNTIME.glob("*.py") if p.name not in ALLOWED)
)
def test_no_runtime_module_opens_a_file(module):
    assert _problems(RUNTIME / module) == []

"""What each layer may know: facts shared by stages are defined once, in the core."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "src" / "stmap", ROOT / "runtime", ROOT / "train", ROOT / "export"]


def _modules(*folders: Path) -> list[Path]:
    return sorted(p for folder in folders for p in folder.rglob("*.py"))


def _imports(tree: ast.Module) -> set[str]:
    """Every module name the file imports, at any depth (lazy imports included)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def test_the_runtime_does_not_know_the_synthetic_generator() -> None:
    """The runtime maps any raster; the synthetic city is the bench command's to make."""
    offenders = {
        str(path.relative_to(ROOT))
        for path in _modules(ROOT / "runtime")
        if any(
            name == "stmap.synth" or name.startswith("stmap.synth.")
            for name in _imports(ast.parse(path.read_text(encoding="utf-8")))
        )
    }
    assert not offenders


def test_the_output_tile_size_and_nodata_are_defined_once() -> None:
    """Blocks, coverage maps, the memory budget and the writers must agree on them."""
    layout = ROOT / "src" / "stmap" / "io" / "layout.py"
    definitions = []
    for path in _modules(*SOURCES):
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                names = [t.id for t in node.targets if isinstance(t, ast.Name)]
                tile = node.value.value == 512 and any("TILE" in n or "COVER" in n for n in names)
                if tile or "NODATA" in names:
                    definitions.append((str(path.relative_to(ROOT)), names))
    assert [d for d in definitions if d[0] != str(layout.relative_to(ROOT))] == []

"""Reading a bundle's ONNX model safely: its external data stays inside the bundle.

The runtime opens ONNX files that export wrote; export measures the same tensors to
decide whether weights go to an external data file. Both use this, neither the other.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from stmap.bundle import Bundle
from stmap.errors import BundleError
from stmap.lazy import lazy_import


def graph_tensors(graph: Any) -> Iterator[Any]:
    """Every tensor of ``graph``: initialisers and attribute tensors, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from graph_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from graph_tensors(subgraph)


def external_data_locations(proto: Any) -> list[str]:
    """The distinct ``location`` entries of tensors stored outside ``proto``, in order."""
    external = lazy_import("onnx").TensorProto.EXTERNAL
    locations: dict[str, None] = {}
    for tensor in graph_tensors(proto.graph):
        if tensor.data_location == external:
            entry = {e.key: e.value for e in tensor.external_data}
            locations[entry.get("location", "")] = None
    return list(locations)


def checked_onnx_path(bundle: Bundle, name: str) -> Path:
    """The path of ONNX model ``name`` in ``bundle``, once its external data is known safe.

    Every external data file must be a plain name inside the bundle that the manifest
    lists (so ``open_bundle`` verified its hash): an ONNX file pointing elsewhere could
    make a runtime read arbitrary files, or weights nobody checked.
    """
    onnx = lazy_import("onnx")
    path = bundle.path_of(name)
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several types for corrupt files
        raise BundleError(f"{bundle.source}: {name} is not a readable ONNX model ({exc})") from exc
    for location in external_data_locations(proto):
        if Path(location).name != location or location in ("", ".", ".."):
            raise BundleError(
                f"{bundle.source}: {name} refers to external data {location!r} outside the "
                "bundle; refused. Re-export the model with: stmap export BUNDLE --format onnx"
            )
        if location not in bundle.manifest.files:
            raise BundleError(
                f"{bundle.source}: {name} refers to external data {location!r} that the "
                "manifest does not list (so no hash verified it); refused. Re-export with: "
                "stmap export BUNDLE --format onnx"
            )
    return path

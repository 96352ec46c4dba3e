"""Hypothesis strategies shared by the fuzzers: JSON values and mutations of valid documents."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

# small integers: a document that validates may size an allocation (a model, a tile)
leaves = (
    st.none()
    | st.booleans()
    | st.integers(-1000, 1000)
    | st.floats(allow_nan=True)
    | st.text(max_size=30)
)
json_values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=15,
)


def _keys(node: dict | list) -> list:
    return sorted(node) if isinstance(node, dict) else list(range(len(node)))


@st.composite
def mutations(draw, valid: Any) -> Any:
    """``valid`` with a few values deleted, replaced or added, at any depth."""
    document = json.loads(json.dumps(valid))
    for _ in range(draw(st.integers(1, 4))):
        node = document
        while node and draw(st.booleans()):
            key = draw(
                st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node)))
            )
            if not isinstance(node[key], dict | list):
                break
            node = node[key]
        if not isinstance(node, dict | list):
            continue
        action = draw(st.sampled_from(["delete", "replace", "add"]))
        if action == "add" or not node:
            if isinstance(node, dict):
                node[draw(st.text(max_size=12))] = draw(json_values)
            else:
                node.append(draw(json_values))
            continue
        key = draw(st.sampled_from(_keys(node)))
        if action == "delete":
            del node[key]
        else:
            node[key] = draw(json_values)
    return document


def json_documents(valid: Any) -> st.SearchStrategy[bytes]:
    """Bytes of a mutated ``valid``, of any JSON value, or any bytes at all."""
    return st.one_of(
        mutations(valid).map(lambda d: json.dumps(d).encode()),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=200),
    )


DEEP_NESTING = b"[" * 100_000  # beyond the JSON parser's recursion limit

# Pieces of names that have escaped directories, hidden files or confused GDAL and
# GeoPackage elsewhere: traversal, separators, NUL, option-like and shell signs.
PATH_PIECES = ["..", ".", "/", "\\", "\x00", "~", "-", " ", "!", ";", "\n", "/etc/passwd", "C:\\"]


def _surrogates(raw: bytes) -> str:
    """Bytes as Python names a file whose name is not UTF-8 (``os.fsdecode``)."""
    return raw.decode("utf-8", "surrogateescape")


# Output names from a stranger: STAC ids, file stems, --mosaic NAME.
hostile_names = st.one_of(
    st.text(max_size=40),
    st.lists(st.sampled_from(PATH_PIECES) | st.text(max_size=6), max_size=8).map("".join),
    st.binary(max_size=30).map(_surrogates),
    st.integers(250, 5000).map(lambda n: "x" * n),
)

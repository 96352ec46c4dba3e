"""STAC JSON from a stranger: scenes, or an InputError naming the file (exit 2).

An Item, an ItemCollection or a Catalog linking to an Item, each mutated, any JSON
or any bytes. Skipped with a reason where stmap.io.stac is not there yet.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from stmap.errors import InputError
from stmap.io.outdir import name_problem
from tests.fuzz.counting import fuzz_target
from tests.fuzz.strategies import DEEP_NESTING, hostile_names, json_documents

stac = pytest.importorskip("stmap.io.stac", reason="stmap.io.stac (read_stac) is not written yet")

ITEM = {
    "type": "Feature",
    "stac_version": "1.0.0",
    "id": "hatay-2023-02-07",
    "properties": {"datetime": "2023-02-07T08:15:00Z"},
    "assets": {"visual": {"href": "scene.tif", "roles": ["visual"]}},
    "links": [],
}
CATALOG = {
    "type": "Catalog",
    "stac_version": "1.0.0",
    "id": "quake",
    "description": "post-event scenes",
    "links": [{"rel": "item", "href": "item.json"}, {"rel": "root", "href": "catalog.json"}],
}
COLLECTION = {"type": "FeatureCollection", "features": [ITEM, ITEM]}
# Crashes the fuzzers found in src/stmap/io/stac.py, now refused with an InputError:
# each was a plain exception escaping read_stac, so `stmap infer` exited 1.
CRASHES = {
    "properties-not-an-object": (AttributeError, {**ITEM, "properties": 1}),
    "roles-not-a-list": (
        TypeError,
        {**ITEM, "assets": {"data": {"href": "scene.tif", "roles": 5}}},
    ),
    "links-not-a-list": (TypeError, {**CATALOG, "links": True}),
    "nul-in-a-link": (ValueError, {**CATALOG, "links": [{"rel": "item", "href": "a\x00.json"}]}),
    "nested-beyond-the-recursion-limit": (RecursionError, None),
}


def _read(files: dict[str, bytes], entry: str, asset: str = "visual") -> list | None:
    """read_stac on ``entry`` among ``files``; None when it refused them with an InputError."""
    with tempfile.TemporaryDirectory() as tmp:
        for name, content in files.items():
            (Path(tmp) / name).write_bytes(content)
        try:
            return stac.read_stac(Path(tmp) / entry, asset=asset)
        except InputError:
            return None


@example(json.dumps(CRASHES["properties-not-an-object"][1]).encode(), "visual")
@given(json_documents(ITEM), st.sampled_from(["visual", "data", ""]))
@fuzz_target
def test_any_item_gives_scenes_or_an_input_error(item, asset):
    scenes = _read({"item.json": item}, "item.json", asset)
    assert scenes is None or len(scenes) == 1


@example(DEEP_NESTING)
@given(json_documents(COLLECTION))
@fuzz_target
def test_any_item_collection_gives_scenes_or_an_input_error(collection):
    scenes = _read({"items.json": collection}, "items.json")
    assert scenes is None or len(scenes) >= 1


@example(json.dumps(CRASHES["links-not-a-list"][1]).encode(), b"")
@given(json_documents(CATALOG), json_documents(ITEM))
@fuzz_target
def test_any_catalog_gives_scenes_or_an_input_error(catalog, item):
    _read({"catalog.json": catalog, "item.json": item}, "catalog.json")


@pytest.mark.parametrize(
    "document",
    [pytest.param(document, id=name) for name, (_, document) in CRASHES.items()],
)
def test_stac_documents_found_by_fuzzing_are_refused(document):
    content = DEEP_NESTING if document is None else json.dumps(document).encode()
    assert _read({"doc.json": content}, "doc.json") is None


@example("./../../escape", b"")
@example("x" * 100_000, b"")
@example("", b"\xff\xfe/../")
@given(hostile_names, st.binary(max_size=20))
@fuzz_target
def test_any_item_id_gives_a_safe_output_name(name, raw):
    """An id names outputs: whatever it holds (traversal, NUL, megabytes, bytes that are
    not UTF-8 spliced into the file), the scene's name is safe, or the file is refused."""
    document = json.dumps({**ITEM, "id": name}).encode()
    inside = raw.replace(b'"', b"").replace(b"\\", b"")  # stays within the id's string
    spliced = document.replace(b'"id": "', b'"id": "' + inside, 1)
    for content in (document, spliced):
        scenes = _read({"item.json": content}, "item.json")
        assert scenes is None or all(name_problem(s.id) is None for s in scenes)
    assert _read({"item.json": document}, "item.json") is not None, "an id alone is no reason"

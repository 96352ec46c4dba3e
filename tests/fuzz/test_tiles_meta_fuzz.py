"""tiles_meta/*.json of a stranger's dataset: read, or refused with TileDataError (exit 2).

tests/train/test_tiles_io.py reads well-formed files; here they are mutated, any
JSON, or any bytes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rasterio.crs import CRS

from stmap.io.tiles import TileDataError, TilesMeta, read_tiles_meta
from tests.fuzz.counting import fuzz_target
from tests.fuzz.strategies import DEEP_NESTING, json_documents

VALID = {
    "crs": CRS.from_epsg(32637).to_wkt(),
    "transform": [0.5, 0.0, 500000.0, 0.0, -0.5, 4200000.0],
    "tiles": {
        "hatay_0001.png": {"file": "hatay_0001.png", "x0": 0, "y0": 0, "w": 128, "h": 128},
        "hatay_0002.png": {"file": "hatay_0002.png", "x0": 128, "y0": 0, "w": 128, "h": 128},
    },
}


def _read(files: dict[str, bytes]) -> TilesMeta | None:
    """read_tiles_meta over a folder holding ``files``; None when it refused them."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tiles_meta"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content)
        try:
            return read_tiles_meta(folder)
        except TileDataError:
            return None


@given(st.lists(json_documents(VALID), min_size=1, max_size=3))
@fuzz_target
def test_any_tiles_meta_is_read_or_refused_with_a_tile_data_error(documents):
    meta = _read({f"region_{i}.json": doc for i, doc in enumerate(documents)})
    if meta is not None:
        assert set(meta.extent_m) <= set(meta.bounds)
        for left, bottom, right, top in meta.bounds.values():
            assert left <= right and bottom <= top


@pytest.mark.parametrize(
    "content",
    [
        DEEP_NESTING,
        b'{"crs": "", "transform": [1, 0, 0, 0, -1, 0], "tiles": []}',
        b'{"crs": "", "transform": [1, 0, 0, 0, -1, 0], "tiles": {"a": 1}}',
        b'{"crs": "", "transform": [1, 0, 0, 0, -1, 0], "tiles": {"a": {"x0": 1e400, '
        b'"y0": 0, "w": 1e400, "h": 1}}}',
    ],
    ids=["nested-beyond-the-recursion-limit", "tiles-a-list", "tile-not-an-object", "infinite"],
)
def test_tiles_meta_found_by_fuzzing_are_refused(content):
    assert _read({"region.json": content}) is None


def test_a_folder_named_like_a_json_file_is_refused(tmp_path):
    (tmp_path / "tiles_meta" / "odd.json").mkdir(parents=True)
    with pytest.raises(TileDataError, match="odd.json"):
        read_tiles_meta(tmp_path / "tiles_meta")

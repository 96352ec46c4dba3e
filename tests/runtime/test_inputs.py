"""Expanding command-line inputs: files, folders, text files of paths, URLs, STAC."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stmap.errors import InputError, RasterError
from stmap.io.inputs import SceneInput, expand_inputs


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_files_pass_through_in_the_order_given(tmp_path: Path) -> None:
    b, a = touch(tmp_path / "b.tif"), touch(tmp_path / "a.tif")
    scenes = expand_inputs([str(b), str(a)])
    assert scenes == [SceneInput(str(b), "b"), SceneInput(str(a), "a")]


def test_a_folder_gives_its_rasters_sorted(tmp_path: Path) -> None:
    for name in ("c.TIF", "a.tif", "b.vrt", "d.tiff", "notes.txt", "x.png"):
        touch(tmp_path / "tiles" / name)
    scenes = expand_inputs([str(tmp_path / "tiles")])
    assert [s.id for s in scenes] == ["a", "b", "c", "d"]


def test_an_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"empty: a folder without rasters"):
        expand_inputs([str(tmp_path / "empty")])


def test_a_text_file_lists_paths_relative_to_itself(tmp_path: Path) -> None:
    touch(tmp_path / "data" / "one.tif")
    two = touch(tmp_path / "elsewhere" / "two.tif")
    listing = tmp_path / "data" / "list.txt"
    listing.write_text(f"# tiles\none.tif\n\n  {two}  \nhttps://example.org/c/three.tif\n")
    scenes = expand_inputs([str(listing)])
    assert [s.href for s in scenes] == [
        str(tmp_path / "data" / "one.tif"),
        str(two),
        "/vsicurl/https://example.org/c/three.tif",
    ]
    assert [s.id for s in scenes] == ["one", "two", "three"]


def test_a_text_file_naming_a_missing_raster_says_which_line(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# none here\n\nmissing.tif\n")
    with pytest.raises(RasterError, match=r"list.txt, line 3: missing.tif: file not found"):
        expand_inputs([str(listing)])


def test_an_empty_text_file_is_refused(tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    listing.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="lists no raster"):
        expand_inputs([str(listing)])


def test_urls_become_gdal_virtual_paths_and_vsi_paths_pass() -> None:
    scenes = expand_inputs(
        ["https://example.org/a/b.tif?token=1", "s3://bucket/key/c.tif", "/vsigs/x/d.tif"]
    )
    assert [s.href for s in scenes] == [
        "/vsicurl/https://example.org/a/b.tif?token=1",
        "/vsis3/bucket/key/c.tif",
        "/vsigs/x/d.tif",
    ]
    assert [s.id for s in scenes] == ["b", "c", "d"]


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(RasterError, match=r"nope.tif: file not found"):
        expand_inputs([str(tmp_path / "nope.tif")])


def test_stac_items_are_expanded_and_scene_inputs_pass_through(tmp_path: Path) -> None:
    touch(tmp_path / "a.tif")
    item = {
        "type": "Feature",
        "id": "scene-a",
        "properties": {"datetime": "2023-02-07T08:00:00Z"},
        "assets": {"visual": {"href": "a.tif"}},
    }
    (tmp_path / "item.json").write_text(json.dumps(item))
    given = SceneInput("/vsimem/x.tif", "x")
    scenes = expand_inputs([str(tmp_path / "item.json"), given])
    assert scenes[0].href == str(tmp_path / "a.tif") and scenes[0].id == "scene-a"
    assert scenes[0].datetime is not None and scenes[0].datetime.year == 2023
    assert scenes[1] is given

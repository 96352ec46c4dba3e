"""Reading scenes from local STAC JSON: items, item collections, catalogs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stmap.errors import InputError
from stmap.io.stac import read_stac


def item(name: str, assets: dict[str, Any], when: str | None = None, **properties) -> dict:
    props = {"datetime": when, **properties}
    return {"type": "Feature", "id": name, "properties": props, "assets": assets}


def write(path: Path, doc: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_an_item_collection_gives_each_items_visual_asset(tmp_path: Path) -> None:
    collection = {
        "type": "FeatureCollection",
        "features": [
            item("a", {"visual": {"href": "tiles/a.tif"}}, "2023-02-07T08:00:00Z"),
            item("b", {"visual": {"href": "/data/b.tif"}}, "2023-02-09T08:00:00+00:00"),
        ],
    }
    scenes = read_stac(write(tmp_path / "stac" / "items.json", collection))
    assert [s.id for s in scenes] == ["a", "b"]
    assert scenes[0].href == str(tmp_path / "stac" / "tiles" / "a.tif")
    assert scenes[1].href == "/data/b.tif"
    assert scenes[1].datetime == datetime(2023, 2, 9, 8, tzinfo=UTC)


def test_an_asset_is_chosen_by_key_then_by_role(tmp_path: Path) -> None:
    assets = {
        "thumbnail": {"href": "t.png", "roles": ["thumbnail"]},
        "image": {"href": "https://example.org/x/image.tif", "roles": ["data", "visual"]},
        "rgb": {"href": "rgb.tif", "roles": ["data"]},
    }
    path = write(tmp_path / "item.json", item("x", assets))
    assert read_stac(path)[0].href == "/vsicurl/https://example.org/x/image.tif"
    assert read_stac(path, asset="rgb")[0].href == str(tmp_path / "rgb.tif")
    with pytest.raises(InputError, match=r"2 assets with role 'data'"):
        read_stac(path, asset="data")


def test_an_item_without_the_asset_is_refused_with_its_assets_listed(tmp_path: Path) -> None:
    path = write(tmp_path / "item.json", item("x", {"B04": {"href": "b4.tif"}}))
    with pytest.raises(InputError, match=r"item 'x' has no asset 'visual'.*B04.*--asset"):
        read_stac(path)


def test_a_catalog_is_followed_through_local_links_without_looping(tmp_path: Path) -> None:
    write(tmp_path / "cat" / "a" / "a.json", item("a", {"visual": {"href": "./a.tif"}}))
    child = {
        "type": "Collection",
        "id": "c",
        "links": [
            {"rel": "item", "href": "./a/a.json"},
            {"rel": "parent", "href": "../catalog.json"},
            {"rel": "root", "href": "../catalog.json"},
        ],
    }
    write(tmp_path / "cat" / "child.json", child)
    catalog = {
        "type": "Catalog",
        "id": "root",
        "links": [
            {"rel": "self", "href": "./catalog.json"},
            {"rel": "child", "href": "child.json"},
        ],
    }
    scenes = read_stac(write(tmp_path / "cat" / "catalog.json", catalog))
    assert [(s.id, s.href) for s in scenes] == [("a", str(tmp_path / "cat" / "a" / "a.tif"))]


def test_start_datetime_stands_in_and_missing_optional_fields_are_tolerated(
    tmp_path: Path,
) -> None:
    doc = {
        "type": "Feature",
        "assets": {"visual": {"href": "v.tif"}},
        "properties": {"datetime": None, "start_datetime": "2023-02-06T01:17:00Z"},
    }
    scene = read_stac(write(tmp_path / "bare.json", doc))[0]
    assert scene.id == "bare"
    assert scene.datetime == datetime(2023, 2, 6, 1, 17, tzinfo=UTC)
    del doc["properties"]
    assert read_stac(write(tmp_path / "bare.json", doc))[0].datetime is None


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"type": "Feature", "id": "x", "properties": {}}, "item 'x' has no assets"),
        ({"type": "Feature", "id": "x", "assets": {"visual": {}}}, "asset 'visual' of item 'x'"),
        ({"type": "Topology"}, "not a STAC Item, ItemCollection"),
        ({"type": "FeatureCollection", "features": []}, "without any item"),
        (item("x", {"visual": {"href": "a.tif"}}, "yesterday"), "datetime 'yesterday'"),
        (
            {"type": "Catalog", "links": [{"rel": "child", "href": "https://x.org/c.json"}]},
            "remote STAC document",
        ),
    ],
)
def test_what_a_scene_needs_is_checked(tmp_path: Path, doc: dict, message: str) -> None:
    with pytest.raises(InputError, match=message):
        read_stac(write(tmp_path / "doc.json", doc))


def test_unreadable_json_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(InputError, match=r"broken.json: not a readable JSON file"):
        read_stac(tmp_path / "broken.json")
    with pytest.raises(InputError, match=r"gone.json: STAC file not found"):
        read_stac(tmp_path / "gone.json")

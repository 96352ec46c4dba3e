"""building_damage: per-footprint statistics by hand, against a brute-force reference,
and independent of the block size; through `stmap infer`: identifiers first, buffer
rings, and a grid that adds up to the building layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.transform import Affine

from stmap.cli import main
from stmap.errors import InputError
from stmap.io.footprints import read_footprints
from stmap.io.vectors import VectorTable, read_vector
from stmap.runtime.buildings import (
    buffer_metres,
    building_damage,
    damaged_fraction_histogram,
    ids_first,
    max_per_label,
    overlap_layers,
)
from stmap.runtime.vectorize import apply_affine
from tests.conftest import write_band
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

UTM = "EPSG:32637"
T = Affine(0.5, 0, 500000, 0, -0.5, 4000000)  # 0.5 m pixels


def world(geoms: list[shapely.Geometry], transform: Affine = T) -> np.ndarray:
    """Geometries drawn in pixel coordinates (x = column, y = row) -> CRS coordinates."""
    return apply_affine(np.array(geoms, dtype=object), transform)


@pytest.fixture
def prob_path(tmp_path: Path) -> Path:
    """20 x 20: top-left quarter 200 with a nodata hole, bottom-right quarter 100."""
    prob = np.zeros((20, 20), dtype=np.uint8)
    prob[0:10, 0:10] = 200
    prob[5:10, 5:10] = 255
    prob[10:20, 10:20] = 100
    return write_band(tmp_path / "prob.tif", prob)


def hand_table() -> VectorTable:
    geoms = world(
        [
            shapely.box(0, 0, 10, 10),  # 100 px: 25 nodata, 75 at 200
            shapely.box(5, 5, 15, 15),  # 100 px: 25 nodata, 50 at 0, 25 at 100
            shapely.box(18, 18, 22, 22),  # 16 px: 4 at 100, 12 outside the raster
            shapely.box(3.2, 3.2, 3.4, 3.4),  # no pixel centre: takes pixel (3, 3) = 200
            shapely.box(30, 30, 31, 31),  # wholly outside
        ]
    )
    return VectorTable(
        geoms,
        {"fid": np.arange(1, 6), "name": np.array(list("abcde"), dtype=object)},
        crs=UTM,
        fid_name="fid",
    )


def test_statistics_and_labels_by_hand(prob_path: Path):
    out = building_damage(prob_path, hand_table(), threshold=0.5)
    nan = np.nan
    assert list(out.attributes) == [
        "fid",
        "name",
        "damaged_fraction",
        "mean_prob",
        "max_prob",
        "unknown_fraction",
        "label",
    ]
    assert out.fid_name == "fid" and out.crs == UTM
    a = out.attributes
    np.testing.assert_array_equal(a["damaged_fraction"], [1.0, 0.0, 0.0, 1.0, nan])
    np.testing.assert_allclose(
        a["mean_prob"], [200 / 255, 25 * 100 / 75 / 255, 100 / 255, 200 / 255, nan]
    )
    np.testing.assert_allclose(a["max_prob"], [200 / 255, 100 / 255, 100 / 255, 200 / 255, nan])
    np.testing.assert_array_equal(a["unknown_fraction"], [0.25, 0.25, 0.75, 0.0, 1.0])
    assert a["label"].tolist() == ["damaged", "undamaged", "unknown", "damaged", "unknown"]


def test_label_fraction_and_unknown_limit_are_keywords(prob_path: Path):
    out = building_damage(
        prob_path, hand_table(), threshold=0.3, label_fraction=0.2, unknown_limit=0.8
    )
    # Footprint 2 (index 1): 25 of 75 valid pixels are 100 > 0.3 * 255.
    assert out.attributes["damaged_fraction"][1] == pytest.approx(1 / 3)
    assert out.attributes["label"].tolist() == [
        "damaged",
        "damaged",
        "damaged",
        "damaged",
        "unknown",
    ]


def test_same_result_for_every_block_size(prob_path: Path):
    table = hand_table()
    reference = building_damage(prob_path, table, threshold=0.5, buffers_m=(0, 1), block_size=1024)
    for block_size in (8, 3):
        out = building_damage(
            prob_path, table, threshold=0.5, buffers_m=(0, 1), block_size=block_size
        )
        for name, values in reference.attributes.items():
            np.testing.assert_array_equal(out.attributes[name], values, err_msg=name)


def reference_stats(prob: np.ndarray, pixel_geoms: np.ndarray, cutoff: int) -> dict:
    """Brute force: test every pixel centre of a padded grid against every geometry."""
    pad = 12
    rows, cols = np.mgrid[-pad : prob.shape[0] + pad, -pad : prob.shape[1] + pad]
    padded = np.full(rows.shape, 255, dtype=np.int64)
    padded[pad:-pad, pad:-pad] = prob
    out = {k: [] for k in ("damaged_fraction", "mean_prob", "max_prob", "unknown_fraction")}
    for geom in pixel_geoms:
        inside = shapely.contains_xy(geom, cols + 0.5, rows + 0.5)
        values = padded[inside]
        valid = values[values != 255]
        some = valid.size > 0
        out["damaged_fraction"].append((valid > cutoff).mean() if some else np.nan)
        out["mean_prob"].append(valid.mean() / 255 if some else np.nan)
        out["max_prob"].append(valid.max() / 255 if some else np.nan)
        out["unknown_fraction"].append(1 - valid.size / values.size)
    return {k: np.array(v) for k, v in out.items()}


def test_random_overlapping_footprints_match_brute_force(tmp_path: Path):
    rng = np.random.default_rng(3)
    prob = rng.integers(0, 256, (37, 29)).astype(np.uint8)
    prob[rng.random(prob.shape) < 0.1] = 255
    path = write_band(tmp_path / "prob.tif", prob)
    # Rotated rectangles overlapping each other and the raster's edges.
    centres = rng.uniform(-3, 32, (60, 2))
    pixel_geoms = np.array(
        [
            shapely.affinity.rotate(
                shapely.box(x - w, y - h, x + w, y + h), rng.uniform(0, 90), origin="center"
            )
            for (x, y), (w, h) in zip(centres, rng.uniform(1.3, 5, (60, 2)), strict=True)
        ],
        dtype=object,
    )
    table = VectorTable(world(list(pixel_geoms)), {}, crs=UTM)
    assert overlap_layers(pixel_geoms).max() > 0  # the case under test: real overlaps
    out = building_damage(path, table, threshold=0.4, buffers_m=(0, 1.5), block_size=8)

    expected = reference_stats(prob, pixel_geoms, cutoff=102)
    for name, values in expected.items():
        np.testing.assert_allclose(out.attributes[name], values, err_msg=name)
    buffered = apply_affine(buffer_metres(table.geometries, 1.5, UTM, "test"), ~T)
    np.testing.assert_allclose(
        out.attributes["damaged_fraction_b1.5m"],
        reference_stats(prob, buffered, cutoff=102)["damaged_fraction"],
    )


def test_buffer_columns_look_around_the_footprint(tmp_path: Path):
    prob = np.full((40, 40), 250, dtype=np.uint8)  # damage all around ...
    prob[15:25, 15:25] = 10  # ... but not on the building
    path = write_band(tmp_path / "prob.tif", prob)
    table = VectorTable(world([shapely.box(16, 16, 24, 24)]), {}, crs=UTM)
    out = building_damage(path, table, threshold=0.5, buffers_m=(0, 2, 5, 2))
    a = out.attributes
    assert [k for k in a if k.startswith("damaged_fraction")] == [
        "damaged_fraction",
        "damaged_fraction_b2m",
        "damaged_fraction_b5m",
    ]
    assert a["damaged_fraction"][0] == 0.0
    assert 0 < a["damaged_fraction_b2m"][0] < a["damaged_fraction_b5m"][0] < 1
    assert a["label"][0] == "undamaged"


def test_footprints_in_lonlat_are_reprojected_to_the_raster(prob_path: Path):
    table = hand_table().to_crs("EPSG:4326")
    out = building_damage(prob_path, table, threshold=0.5)
    np.testing.assert_array_equal(out.attributes["unknown_fraction"], [0.25, 0.25, 0.75, 0, 1])
    assert out.crs == UTM


def test_geographic_raster_buffers_in_metres(tmp_path: Path):
    step = 1e-5  # about 0.9 m x 1.1 m
    transform = Affine(step, 0, 37.0, 0, -step, 37.2)
    prob = np.full((60, 60), 250, dtype=np.uint8)
    prob[20:40, 20:40] = 0
    path = write_band(tmp_path / "prob.tif", prob, transform, "EPSG:4326")
    table = VectorTable(world([shapely.box(22, 22, 38, 38)], transform), {}, crs="EPSG:4326")
    out = building_damage(path, table, threshold=0.5, buffers_m=(0, 4))
    assert out.attributes["damaged_fraction"][0] == 0.0
    # A 4 m ring is about 4 pixels wide: 2 clean pixels then damage.
    assert 0.2 < out.attributes["damaged_fraction_b4m"][0] < 0.6


def test_histogram_and_bad_buffers(prob_path: Path):
    out = building_damage(prob_path, hand_table(), threshold=0.5)
    histogram = damaged_fraction_histogram(out, bins=4)
    assert histogram == {
        "edges": [0.0, 0.25, 0.5, 0.75, 1.0],
        "counts": [2, 0, 0, 2],
        "missing": 1,
    }
    with pytest.raises(InputError, match="buffers must be >= 0"):
        building_damage(prob_path, hand_table(), threshold=0.5, buffers_m=(-1,))


def test_no_footprints_give_an_empty_table_with_every_column(prob_path: Path):
    empty = hand_table().take([])
    out = building_damage(prob_path, empty, threshold=0.5, buffers_m=(0, 10))
    assert len(out) == 0
    assert list(out.attributes)[:3] == ["fid", "name", "damaged_fraction"]
    assert "damaged_fraction_b10m" in out.attributes


def test_max_per_label_matches_maximum_at():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 40, 5000)
    values = rng.integers(0, 256, 5000).astype(np.uint8)
    expected = np.full(50, -1)
    np.maximum.at(expected, labels, values.astype(int))
    np.testing.assert_array_equal(max_per_label(labels, values, 50), expected)


def test_identifier_columns_come_first_in_their_source_order():
    columns = ["name", "Height", "building_id", "fid", "ID", "full_plus_code", "osm_id", "roof"]
    ordered = ids_first({name: np.zeros(1) for name in columns}, fid_name="fid")
    assert list(ordered) == [
        "fid",
        "building_id",
        "ID",
        "full_plus_code",
        "osm_id",
        "name",
        "Height",
        "roof",
    ]


def lonlat_footprints(path: Path, scene: Path) -> list[str]:
    """A GeoJSON in WGS84 of 12 footprints over ``scene`` (UTM), the ID last; their IDs."""
    with rasterio.open(scene) as ds:
        transform, crs = ds.transform, ds.crs
    to_lonlat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    ids = [f"way/{1000 + i}" for i in range(12)]
    features = []
    for i, osm_id in enumerate(ids):
        col, row = 20 + 22 * (i % 6), 30 + 60 * (i // 6)
        ring = [transform @ xy for xy in ((col, row), (col + 14, row), (col + 14, row + 18))]
        ring = [to_lonlat.transform(x, y) for x, y in [*ring, transform @ (col, row + 18)]]
        features.append(
            {
                "type": "Feature",
                "properties": {"name": f"b{i}", "levels": i % 4, "osm_id": osm_id},
                "geometry": {"type": "Polygon", "coordinates": [[*ring, ring[0]]]},
            }
        )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return ids


def map_with_footprints(tmp_path: Path, *options: str) -> tuple[Path, dict]:
    """`stmap infer` of a small UTM scene with WGS84 footprints; (OUTDIR, summary)."""
    bundle = make_varied_bundle(tmp_path / "bundle")
    scene = write_raster(tmp_path / "city.tif", smooth_image(160, 180))
    footprints = tmp_path / "osm.geojson"
    lonlat_footprints(footprints, scene)
    out = tmp_path / "out"
    args = ["infer", str(scene), "-o", str(out), "--model", str(bundle), "--device", "cpu"]
    args += ["--footprints", str(footprints), "--threshold", "0.35", "--json", *options]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_the_cli_keeps_footprint_ids_first_and_adds_the_10_m_ring(tmp_path: Path):
    out, summary = map_with_footprints(tmp_path)
    ids = [f"way/{1000 + i}" for i in range(12)]
    buildings = read_vector(out / "city_buildings.gpkg")
    assert list(buildings.attributes)[1:] == [  # after the GeoPackage's own FID
        "osm_id",
        "name",
        "levels",
        "damaged_fraction",
        "damaged_fraction_b10m",
        "mean_prob",
        "max_prob",
        "unknown_fraction",
        "label",
    ]
    assert buildings.attributes["osm_id"].tolist() == ids
    a = buildings.attributes
    assert ((a["damaged_fraction_b10m"] >= 0) & (a["damaged_fraction_b10m"] <= 1)).all()
    assert not np.array_equal(a["damaged_fraction_b10m"], a["damaged_fraction"])
    assert summary["buildings"]["total"] == 12


def test_the_grid_sums_equal_the_building_layer_and_the_damage(tmp_path: Path):
    out, summary = map_with_footprints(tmp_path, "--grid", "20", "--building-buffer", "4")
    buildings = read_vector(out / "city_buildings.gpkg")
    assert "damaged_fraction_b4m" in buildings.attributes
    assert "damaged_fraction_b10m" not in buildings.attributes
    grid = read_vector(out / "city_grid.gpkg")
    g, labels = grid.attributes, buildings.attributes["label"]
    assert g["buildings_total"].sum() == len(buildings) == summary["grid"]["buildings_total"]
    assert g["buildings_damaged"].sum() == (labels == "damaged").sum()
    assert g["buildings_unknown"].sum() == (labels == "unknown").sum()
    assert g["damaged_area_m2"].sum() == pytest.approx(summary["damaged_area_m2"])
    assert summary["damaged_area_m2"] > 0 and (labels == "damaged").any()
    assert summary["grid"]["cells"] == len(grid)
    sides = shapely.bounds(grid.geometries)
    np.testing.assert_array_equal(sides[:, 2] - sides[:, 0], 20)


def test_a_negative_building_buffer_is_refused_before_any_work(tmp_path: Path):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    args = ["infer", str(scene), "-o", str(out), "--footprints", str(scene)]
    result = CliRunner().invoke(main, [*args, "--building-buffer", "-1"])
    assert result.exit_code == 2
    assert "--building-buffer" in result.stderr and "-1" in result.stderr
    assert not out.exists()


def stac_item(name: str, assets: dict) -> dict:
    return {"type": "Feature", "stac_version": "1.0.0", "id": name, "assets": assets}


def test_footprints_from_a_stac_document_are_its_items_footprint_assets(tmp_path: Path):
    scene = write_raster(tmp_path / "city.tif", smooth_image(160, 180))
    ids = lonlat_footprints(tmp_path / "all.geojson", scene)
    everything = json.loads((tmp_path / "all.geojson").read_text())
    for part, features in (("a", everything["features"][:5]), ("b", everything["features"][5:])):
        doc = {"type": "FeatureCollection", "features": features}
        (tmp_path / "tiles").mkdir(exist_ok=True)
        (tmp_path / "tiles" / f"{part}.geojson").write_text(json.dumps(doc))
    items = {
        "type": "FeatureCollection",
        "features": [
            stac_item("a", {"footprints": {"href": "tiles/a.geojson"}}),
            stac_item("b", {"osm": {"href": "tiles/b.geojson", "roles": ["footprints"]}}),
        ],
    }
    (tmp_path / "items.json").write_text(json.dumps(items))
    table = read_footprints(tmp_path / "items.json", crs=UTM)
    assert table.attributes["osm_id"].tolist() == ids and table.crs == UTM
    plain = read_footprints(tmp_path / "all.geojson")  # GeoJSON, not STAC
    assert plain.attributes["osm_id"].tolist() == ids

    out = tmp_path / "out"
    args = ["infer", str(scene), "-o", str(out), "--model", str(make_varied_bundle(tmp_path / "m"))]
    result = CliRunner().invoke(main, [*args, "--footprints", str(tmp_path / "items.json")])
    assert result.exit_code == 0, result.output
    assert read_vector(out / "city_buildings.gpkg").attributes["osm_id"].tolist() == ids


def test_a_stac_document_without_footprints_is_refused(tmp_path: Path):
    path = tmp_path / "imagery.json"
    path.write_text(json.dumps(stac_item("x", {"visual": {"href": "x.tif"}})))
    with pytest.raises(InputError, match=r"--footprints .*imagery.json: a STAC document, but no"):
        read_footprints(path)

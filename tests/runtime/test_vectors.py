"""read_vector / write_vector: round trips, reprojection onto a raster grid, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio.features
import shapely
from pyproj import Transformer
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io.vectors import VectorTable, read_vector, write_vector

UTM = "EPSG:32637"


def sample_table() -> VectorTable:
    parts = [
        shapely.box(500020, 4000000, 500025, 4000005),
        shapely.box(500030, 4000000, 500031, 4000001),
    ]
    geoms = np.array(
        [
            shapely.box(500000, 4000000, 500010, 4000010),
            shapely.MultiPolygon(parts),
            shapely.box(500040, 4000000, 500041, 4000001),
        ],
        dtype=object,
    )
    return VectorTable(
        geometries=geoms,
        attributes={
            "fid": np.array([7, 11, 42]),
            "name": np.array(["a", "b", "ç"], dtype=object),
            "height": np.array([3.5, np.nan, 9.0]),
            "floors": np.array([1, 2, 3], dtype=np.int64),
        },
        crs=UTM,
        fid_name="fid",
    )


def test_round_trip_keeps_geometries_attributes_order_fid_and_crs(tmp_path: Path):
    table = sample_table()
    out = tmp_path / "b.gpkg"
    write_vector(out, table)
    back = read_vector(out)
    assert list(back.attributes) == ["fid", "name", "height", "floors"]
    assert back.fid_name == "fid"
    assert back.crs == UTM
    np.testing.assert_array_equal(back.attributes["fid"], [7, 11, 42])
    np.testing.assert_array_equal(back.attributes["name"], ["a", "b", "ç"])
    np.testing.assert_array_equal(back.attributes["height"], [3.5, np.nan, 9.0])
    np.testing.assert_array_equal(back.attributes["floors"], [1, 2, 3])
    assert shapely.equals(back.geometries, table.geometries).all()
    assert pyogrio.read_info(out)["geometry_type"] == "MultiPolygon"  # inferred, promoted
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"]  # no temporary left


def test_zero_features_give_a_valid_layer_with_fields_and_crs(tmp_path: Path):
    out = tmp_path / "empty.gpkg"
    write_vector(out, sample_table().take([]), geometry_type="Polygon")
    info = pyogrio.read_info(out)
    assert info["features"] == 0
    assert info["geometry_type"] == "Polygon"
    assert info["crs"] == UTM
    assert list(info["fields"]) == ["name", "height", "floors"]  # fid is the FID column
    back = read_vector(out)
    assert len(back) == 0
    assert list(back.attributes) == ["fid", "name", "height", "floors"]


def test_write_replaces_an_existing_file(tmp_path: Path):
    out = tmp_path / "b.gpkg"
    write_vector(out, sample_table())
    write_vector(out, sample_table().take([2]))
    assert len(read_vector(out)) == 1


def test_multipolygons_refused_in_a_polygon_layer(tmp_path: Path):
    with pytest.raises(ValueError, match="MultiPolygon geometries in a Polygon layer"):
        write_vector(tmp_path / "b.gpkg", sample_table(), geometry_type="Polygon")
    assert list(tmp_path.iterdir()) == []


def test_take_and_length_checks():
    table = sample_table()
    sub = table.take(np.array([True, False, True]))
    assert len(sub) == 2
    np.testing.assert_array_equal(sub.attributes["fid"], [7, 42])
    with pytest.raises(ValueError, match="attribute 'x' has 1 values for 3 geometries"):
        VectorTable(table.geometries, {"x": np.zeros(1)})


def utm_box_as_lonlat_geojson(path: Path, box: shapely.Polygon) -> None:
    """Write `box` (UTM 37N) as a WGS84 GeoJSON polygon (RFC 7946 lon/lat)."""
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    x, y = np.asarray(box.exterior.coords).T
    lon, lat = to_lonlat.transform(x, y)
    feature = {
        "type": "Feature",
        "properties": {"name": "school"},
        "geometry": {"type": "Polygon", "coordinates": [np.column_stack([lon, lat]).tolist()]},
    }
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))


def test_lonlat_footprint_lands_on_the_right_utm_pixels(tmp_path: Path):
    transform = Affine(1.0, 0, 500000, 0, -1.0, 4000000)  # 1 m pixels, 40 x 40
    rows, cols = slice(5, 15), slice(10, 20)
    box = shapely.box(500010, 4000000 - 15, 500020, 4000000 - 5)
    path = tmp_path / "footprints.geojson"
    utm_box_as_lonlat_geojson(path, box)

    table = read_vector(path, crs=UTM)
    assert table.crs == UTM
    burnt = rasterio.features.rasterize(table.geometries, out_shape=(40, 40), transform=transform)
    expected = np.zeros((40, 40), dtype=np.uint8)
    expected[rows, cols] = 1
    np.testing.assert_array_equal(burnt, expected)


def test_bbox_is_in_the_target_crs_and_exact(tmp_path: Path):
    path = tmp_path / "footprints.geojson"
    utm_box_as_lonlat_geojson(path, shapely.box(500010, 3999985, 500020, 3999995))
    assert len(read_vector(path, crs=UTM, bbox=(500015, 3999990, 500100, 3999999))) == 1
    # Inside the footprint's lon/lat envelope but clear of the footprint itself.
    assert len(read_vector(path, crs=UTM, bbox=(500021, 3999996, 500030, 4000000))) == 0


def test_invalid_geometries_are_repaired_and_null_or_collapsed_ones_dropped(tmp_path: Path):
    bowtie = shapely.Polygon([(0, 0), (2, 2), (2, 0), (0, 2), (0, 0)])
    flat = shapely.Polygon([(0, 0), (1, 1), (2, 2), (0, 0)])
    table = VectorTable(
        np.array([bowtie, None, flat, shapely.box(5, 5, 6, 6)], dtype=object),
        {"id": np.arange(4)},
        crs=UTM,
    )
    out = tmp_path / "bad.gpkg"
    write_vector(out, table, geometry_type="Polygon")
    back = read_vector(out)
    np.testing.assert_array_equal(back.attributes["id"], [0, 3])
    assert shapely.is_valid(back.geometries).all()
    assert back.geometries[0].geom_type == "MultiPolygon"
    assert back.geometries[0].area == pytest.approx(2.0)


def test_missing_file_names_it(tmp_path: Path):
    with pytest.raises(VectorError, match=r"nope\.gpkg: file not found"):
        read_vector(tmp_path / "nope.gpkg")


def test_unreadable_file_names_it_and_is_an_input_and_os_error(tmp_path: Path):
    path = tmp_path / "garbage.geojson"
    path.write_text("this is not a vector")
    with pytest.raises(VectorError, match=r"garbage\.geojson: not a readable vector file") as info:
        read_vector(path)
    assert isinstance(info.value, InputError) and isinstance(info.value, OSError)


def test_unknown_layer_is_a_vector_error(tmp_path: Path):
    out = tmp_path / "b.gpkg"
    write_vector(out, sample_table())
    with pytest.raises(VectorError, match=r"b\.gpkg"):
        read_vector(out, layer="roads")


def test_no_crs_while_one_is_needed_explains(tmp_path: Path):
    out = tmp_path / "nocrs.gpkg"
    with pytest.warns(UserWarning, match="'crs' was not provided"):  # pyogrio's own warning
        write_vector(out, VectorTable(np.array([shapely.box(0, 0, 1, 1)]), {}, crs=None))
    assert read_vector(out).crs is None
    with pytest.raises(VectorError, match=r"nocrs\.gpkg: the layer has no CRS"):
        read_vector(out, crs=UTM)

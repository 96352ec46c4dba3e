"""damage_polygons: exact polygons, areas and mean probabilities, whatever the block size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from pyproj import Geod
from rasterio.transform import Affine

from stmap.errors import RasterError
from stmap.io.blocks import LayerReader
from stmap.io.raster import describe_raster
from stmap.io.vectors import read_vector, write_vector
from stmap.runtime.sinks import DAMAGE, PROB, feed_missing
from stmap.runtime.vectorize import (
    DamageTracer,
    damage_cutoff,
    damage_mask,
    damage_polygons,
    polygons_table,
)
from stmap.window import Window
from tests.conftest import write_band

UTM = "EPSG:32637"
UTM_TRANSFORM = Affine(0.5, 0, 500000, 0, -0.5, 4000000)  # 0.5 m pixels


def pixel_box(transform: Affine, rows: slice, cols: slice) -> shapely.Polygon:
    """The polygon covering pixels [rows, cols] in CRS coordinates."""
    x0, y0 = transform @ (cols.start, rows.start)
    x1, y1 = transform @ (cols.stop, rows.stop)
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


@pytest.fixture
def two_blobs(tmp_path: Path) -> tuple[Path, Path]:
    """Blob A inside the first 16 px block, blob B across the block edges at 16."""
    mask = np.zeros((40, 40), dtype=np.uint8)
    prob = np.full((40, 40), 30, dtype=np.uint8)
    mask[2:6, 3:9] = 1  # A: 24 px
    prob[2:6, 3:9] = 200
    mask[10:20, 12:22] = 1  # B: 100 px, crosses row 16 and column 16
    prob[10:20, 12:16] = 100  # 40 px at 100
    prob[10:20, 16:22] = 220  # 60 px at 220
    mask[30:40, 30:40] = 255  # nodata, never damage
    prob[30:40, 30:40] = 255
    return write_band(tmp_path / "mask.tif", mask), write_band(tmp_path / "prob.tif", prob)


def test_two_blobs_exactly(two_blobs: tuple[Path, Path]):
    table = damage_polygons(*two_blobs, block_size=16)
    assert len(table) == 2
    assert table.crs == UTM
    a, b = table.geometries  # top-left first
    assert a.equals(pixel_box(UTM_TRANSFORM, slice(2, 6), slice(3, 9)))
    assert b.equals(pixel_box(UTM_TRANSFORM, slice(10, 20), slice(12, 22)))
    assert b.geom_type == "Polygon" and len(b.exterior.coords) == 5  # no seam vertices
    np.testing.assert_allclose(table.attributes["area_m2"], [24 * 0.25, 100 * 0.25])
    np.testing.assert_allclose(
        table.attributes["mean_prob"], [200 / 255, (40 * 100 + 60 * 220) / 100 / 255]
    )


def test_same_polygons_for_every_block_size(two_blobs: tuple[Path, Path]):
    reference = damage_polygons(*two_blobs, block_size=1024)
    for block_size in (16, 5):
        table = damage_polygons(*two_blobs, block_size=block_size)
        assert (
            shapely.to_wkb(table.geometries).tolist()
            == shapely.to_wkb(reference.geometries).tolist()
        )
        np.testing.assert_allclose(table.attributes["mean_prob"], reference.attributes["mean_prob"])


def test_random_mask_same_polygons_for_every_block_size(tmp_path: Path):
    rng = np.random.default_rng(7)
    mask = (rng.random((61, 47)) < 0.45).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.05] = 255
    prob = rng.integers(0, 255, mask.shape).astype(np.uint8)
    paths = write_band(tmp_path / "m.tif", mask), write_band(tmp_path / "p.tif", prob)
    reference = damage_polygons(*paths, block_size=1024)
    assert shapely.is_valid(reference.geometries).all()
    np.testing.assert_allclose(reference.attributes["area_m2"].sum(), (mask == 1).sum() * 0.25)
    for block_size in (1, 7, 16):
        table = damage_polygons(*paths, block_size=block_size)
        assert (
            shapely.to_wkb(table.geometries).tolist()
            == shapely.to_wkb(reference.geometries).tolist()
        )
        np.testing.assert_allclose(table.attributes["mean_prob"], reference.attributes["mean_prob"])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_windows_traced_in_any_order_give_the_same_polygons(tmp_path: Path, seed: int):
    """The run's writer traces blocks as they come (several readers may reorder them,
    a resumed run sees only some): the rest read back, the polygons are the same."""
    rng = np.random.default_rng(seed)
    mask = (rng.random((70, 90)) < 0.5).astype(np.uint8)
    mask[rng.random(mask.shape) < 0.05] = 255
    prob = rng.integers(0, 255, mask.shape).astype(np.uint8)
    paths = write_band(tmp_path / "m.tif", mask), write_band(tmp_path / "p.tif", prob)
    reference = damage_polygons(*paths, block_size=1024)
    tracer = DamageTracer(70, 90, tile=8)
    size = int(rng.choice([8, 16, 24]))
    windows = [(r, c) for r in range(0, 70, size) for c in range(0, 90, size)]
    for k in rng.permutation(len(windows))[: len(windows) * 2 // 3]:
        r, c = windows[k]
        window = mask[r : r + size, c : c + size]
        place = Window(r, c, *window.shape)
        if (window == 1).any() or rng.random() < 0.5:
            tracer.add(place, {DAMAGE: window, PROB: prob[r : r + size, c : c + size]})
        else:
            tracer.add(place, {})  # a window without a valid pixel
    with LayerReader({DAMAGE: paths[0], PROB: paths[1]}, None) as reader:
        feed_missing([tracer], reader)  # the rest, read back
    info = describe_raster(paths[0])
    table = polygons_table(tracer.finish(), info.crs, info.transform)
    assert (
        shapely.to_wkb(table.geometries).tolist() == shapely.to_wkb(reference.geometries).tolist()
    )
    for name, values in reference.attributes.items():
        np.testing.assert_array_equal(table.attributes[name], values, err_msg=name)


def test_four_connectivity_splits_corner_neighbours(tmp_path: Path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[3, 3] = mask[4, 4] = 1  # diagonal neighbours, also across a 4-px block corner
    paths = write_band(tmp_path / "m.tif", mask), write_band(tmp_path / "p.tif", mask * 200)
    for block_size in (4, 1024):
        assert len(damage_polygons(*paths, block_size=block_size)) == 2


def test_min_area_and_empty_mask(two_blobs: tuple[Path, Path], tmp_path: Path):
    table = damage_polygons(*two_blobs, min_area_m2=10.0)
    np.testing.assert_allclose(table.attributes["area_m2"], [25.0])
    empty = damage_polygons(*two_blobs, min_area_m2=1e9)
    assert len(empty) == 0 and list(empty.attributes) == ["area_m2", "mean_prob"]
    write_vector(tmp_path / "d.gpkg", empty, geometry_type="Polygon")
    assert len(read_vector(tmp_path / "d.gpkg")) == 0


def test_geographic_crs_areas_are_geodesic_square_metres(tmp_path: Path):
    step = 1e-5  # degrees, about 0.9 m by 1.1 m at 37 N
    transform = Affine(step, 0, 37.0, 0, -step, 37.2)
    mask = np.zeros((50, 50), dtype=np.uint8)
    mask[10:40, 5:25] = 1  # 30 rows x 20 cols
    paths = (
        write_band(tmp_path / "m.tif", mask, transform, "EPSG:4326"),
        write_band(tmp_path / "p.tif", mask * 250, transform, "EPSG:4326"),
    )
    table = damage_polygons(*paths, block_size=16)
    geod = Geod(ellps="WGS84")
    lat = 37.2 - 25 * step
    width_m = geod.inv(37.0, lat, 37.0 + 20 * step, lat)[2]
    height_m = geod.inv(37.0, lat, 37.0, lat - 30 * step)[2]
    assert len(table) == 1
    assert table.attributes["area_m2"][0] == pytest.approx(width_m * height_m, rel=0.01)
    assert table.attributes["mean_prob"][0] == pytest.approx(250 / 255)


def test_rasters_on_different_grids_are_refused(tmp_path: Path):
    mask = np.zeros((8, 8), dtype=np.uint8)
    m = write_band(tmp_path / "m.tif", mask)
    p = write_band(tmp_path / "p.tif", np.zeros((8, 9), dtype=np.uint8))
    with pytest.raises(RasterError, match=r"p\.tif: not on the grid of .*m\.tif"):
        damage_polygons(m, p)


def test_damage_mask_matches_the_threshold_rule():
    assert damage_cutoff(0.5) == 127
    assert damage_cutoff(0.2) == 51  # 0.2 * 255 is 51.000000000000007 in floats
    prob = np.array([[0, 51, 52, 127, 128, 254, 255]], dtype=np.uint8)
    np.testing.assert_array_equal(damage_mask(prob, 0.2), [[0, 0, 1, 1, 1, 1, 255]])
    np.testing.assert_array_equal(damage_mask(prob, 0.5), [[0, 0, 0, 0, 1, 1, 255]])

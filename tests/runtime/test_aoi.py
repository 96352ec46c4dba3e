"""--aoi: only blocks touching the AOI are read; outside it every raster output is nodata."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from stmap.cli import main
from stmap.io.aoi import Aoi
from stmap.io.blocks import BlockReader
from stmap.io.vectors import VectorTable, read_vector, write_vector
from stmap.runtime.infer import InferOptions, run_inference
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster
from tests.runtime.mosaic_data import make_city, write_aoi

X0, Y1 = 500000.0, 4200000.0  # the rasters' top-left corner (0.5 m pixels, EPSG:32637)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "varied")


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """1024 × 1024 px: four 512-px blocks."""
    return write_raster(tmp_path / "scene.tif", smooth_image(1024, 1024))


def test_outside_the_aoi_every_raster_is_nodata_and_vectors_stay_inside(
    bundle: Path, scene: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A multipolygon stored in lon/lat: the AOI is reprojected to the raster's CRS.
    parts = [(X0 + 20, Y1 - 200, X0 + 180, Y1 - 40), (X0 + 200, Y1 - 240, X0 + 240, Y1 - 180)]
    lonlat = tmp_path / "aoi_lonlat.gpkg"
    write_vector(lonlat, read_vector(write_aoi(tmp_path / "aoi.gpkg", parts), crs="EPSG:4326"))
    read_windows: list[tuple[int, int, int, int]] = []
    original = BlockReader.read_pixels

    def spy(self, area, out=None):
        if threading.current_thread().name.startswith("stmap-reader"):  # the model's reads
            read_windows.append((area.row_off, area.col_off, area.height, area.width))
        return original(self, area, out)

    monkeypatch.setattr(BlockReader, "read_pixels", spy)
    options = InferOptions(model=str(bundle), aoi=str(lonlat), block_size=512, threshold=0.3)
    (summary,) = run_inference([str(scene)], tmp_path / "out", options)

    # Only the top-left block (rows, cols 0–512 plus its halo) touches the AOI.
    assert read_windows and all(r < 512 and c < 512 for r, c, _, _ in read_windows)
    with rasterio.open(tmp_path / "out" / "scene_damage_prob.tif") as ds:
        inside = geometry_mask(
            [shapely.union_all([shapely.box(*p) for p in parts])], ds.shape, ds.transform,
            invert=True,
        )  # fmt: skip
        prob = ds.read(1)
    with rasterio.open(tmp_path / "out" / "scene_damage.tif") as ds:
        damage = ds.read(1)
    for layer in (prob, damage):
        assert (layer[~inside] == 255).all()
        assert (layer[inside] != 255).mean() > 0.99  # edges of a reprojected AOI may differ
    assert summary["skipped_pixels"] >= 3 * 512 * 512
    assert summary["inputs"][0]["aoi"] == str(lonlat)
    polygons = read_vector(tmp_path / "out" / "scene_damage.gpkg")
    assert len(polygons) > 0
    area = shapely.union_all([shapely.box(*p) for p in parts]).buffer(1.0)
    assert shapely.within(polygons.geometries, area).all()


def test_an_aoi_that_misses_the_raster_is_refused_with_both_extents(
    bundle: Path, scene: Path, tmp_path: Path
) -> None:
    aoi = write_aoi(tmp_path / "far.gpkg", [(X0 + 5000, Y1 - 100, X0 + 5100, Y1)])
    result = _infer_with_aoi(scene, tmp_path / "out", bundle, aoi)
    assert result.exit_code == 2, result.output
    assert "does not overlap" in result.output
    assert "(505000.0, 4199900.0)" in result.output  # the AOI's extent
    assert "(500000.0, 4199488.0)" in result.output  # the raster's
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("content", [b"", b"not a vector at all", None])
def test_an_unreadable_aoi_is_refused(
    bundle: Path, scene: Path, tmp_path: Path, content: bytes | None
) -> None:
    aoi = tmp_path / "aoi.geojson"
    if content is not None:
        aoi.write_bytes(content)
    result = _infer_with_aoi(scene, tmp_path / "out", bundle, aoi)
    assert result.exit_code == 2, result.output
    assert f"--aoi {aoi}" in result.output
    assert not (tmp_path / "out").exists()


def test_only_buildings_touching_the_aoi_are_reported(bundle: Path, tmp_path: Path) -> None:
    city = make_city(tmp_path / "city", size=512)
    footprints = city.with_name("city_footprints.gpkg")
    with rasterio.open(city) as ds:
        left, _, _, top = ds.bounds
    aoi = write_aoi(tmp_path / "aoi.gpkg", [(left, top - 100, left + 100, top)])
    options = InferOptions(model=str(bundle), aoi=str(aoi), footprints=str(footprints))
    run_inference([str(city)], tmp_path / "out", options)
    buildings = read_vector(tmp_path / "out" / "city_buildings.gpkg")
    everyone = read_vector(footprints)
    area = shapely.box(left, top - 100, left + 100, top)
    assert 0 < len(buildings) < len(everyone)
    assert shapely.intersects(buildings.geometries, area).all()
    assert shapely.intersects(everyone.geometries, area).sum() == len(buildings)


@pytest.mark.parametrize(
    "window",
    [(0, 0, 300, 300), (10, 20, 64, 100), (250, 250, 50, 50), (120, 120, 20, 20), (0, 290, 9, 9)],
)
def test_a_windows_mask_is_that_part_of_the_whole_aois_mask(window) -> None:
    transform = Affine(0.5, 0, X0, 0, -0.5, Y1)
    geometry = shapely.union_all(
        [
            shapely.box(X0 + 10, Y1 - 140, X0 + 100, Y1 - 30),
            shapely.Point(X0 + 120, Y1 - 40).buffer(15),
        ]
    )
    aoi = Aoi("aoi.gpkg", geometry, "EPSG:32637")
    whole = geometry_mask([geometry], (300, 300), transform, invert=True)
    r, c, h, w = window
    part = aoi.mask(transform @ Affine.translation(c, r), h, w)
    np.testing.assert_array_equal(part, whole[r : r + h, c : c + w])


def _infer_with_aoi(scene: Path, out: Path, bundle: Path, aoi: Path):
    """``stmap infer SCENE -o OUT --model BUNDLE --aoi AOI`` through the CLI."""
    args = ["infer", str(scene), "-o", str(out), "--model", str(bundle), "--aoi", str(aoi)]
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize(
    "lonlat",
    [(-180, -90, 180, 90), (0, -90, 180, 90), (-180, 30, 180, 45)],
    ids=["world", "hemisphere", "latitude-band"],
)
def test_a_large_lonlat_aoi_holding_the_raster_maps_all_of_it(
    bundle: Path, tmp_path: Path, lonlat: tuple[float, float, float, float]
) -> None:
    """Reprojected whole to UTM, a world AOI degenerated (exit 1), a hemisphere became
    empty (exit 0, nothing mapped) and a band of latitude was refused as not overlapping."""
    scene = write_raster(tmp_path / "scene.tif", smooth_image(128, 128))  # at 39.0° E, 37.9° N
    aoi = tmp_path / "aoi.gpkg"
    write_vector(aoi, VectorTable(np.array([shapely.box(*lonlat)]), {}, "EPSG:4326"))
    options = InferOptions(model=str(bundle), aoi=str(aoi))
    (summary,) = run_inference([str(scene)], tmp_path / "out", options)
    assert summary["skipped_pixels"] == 0 and summary["valid_pixels"] == 128 * 128


def test_an_aoi_clipped_away_is_refused_as_not_overlapping(
    bundle: Path, scene: Path, tmp_path: Path
) -> None:
    aoi = tmp_path / "west.gpkg"
    write_vector(aoi, VectorTable(np.array([shapely.box(-180, -90, 0, 90)]), {}, "EPSG:4326"))
    result = _infer_with_aoi(scene, tmp_path / "out", bundle, aoi)
    assert result.exit_code == 2, result.output
    assert "does not overlap" in result.output and "the AOI spans nothing near it" in result.output
    assert not (tmp_path / "out").exists()

"""The damage grid: cells by hand, sums that match the rasters and the buildings,
and the same answer for every block size and CRS kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from click.testing import CliRunner
from pyproj import CRS
from rasterio.transform import Affine

from stmap.cli import main
from stmap.errors import InputError
from stmap.io.vectors import VectorTable
from stmap.runtime.buildings import building_damage
from stmap.runtime.density_grid import damage_grid, grid_facts
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.vectorize import apply_affine, damage_polygons
from tests.conftest import UTM_HALF_METRE, write_band
from tests.runtime.infer_data import smooth_image, write_raster

UTM = "EPSG:32637"


@pytest.fixture
def hand_prob(tmp_path: Path) -> Path:
    """40 x 40 px of 0.5 m = four 10 m cells: damage in the north-west one (10 x 10 px
    = 25 m²), the south-east one without imagery."""
    prob = np.full((40, 40), 20, dtype=np.uint8)
    prob[0:10, 0:10] = 200
    prob[20:40, 20:40] = 255
    return write_band(tmp_path / "prob.tif", prob)


def random_prob(tmp_path: Path, transform: Affine = UTM_HALF_METRE, crs: str = UTM) -> Path:
    rng = np.random.default_rng(5)
    prob = rng.integers(0, 255, (90, 130)).astype(np.uint8)
    prob[rng.random(prob.shape) < 0.1] = 255
    return write_band(tmp_path / "random.tif", prob, transform, crs)


def footprints_over(transform: Affine, crs: str, n: int = 80) -> VectorTable:
    """n random small squares over a 130 x 90 px raster (some past its edges)."""
    rng = np.random.default_rng(9)
    xy = rng.uniform(-5, 135, (n, 2)) * (1, 90 / 130)
    boxes = [shapely.box(x, y, x + 4, y + 3) for x, y in xy]
    geoms = apply_affine(np.array(boxes, dtype=object), transform)
    return VectorTable(geoms, {"osm_id": np.arange(n) + 1000}, crs=crs)


def test_cells_by_hand(hand_prob: Path):
    grid = damage_grid(hand_prob, threshold=0.5, cell_m=10)
    a = grid.attributes
    assert grid.crs == UTM and len(grid) == 4
    assert list(a) == ["cell_id", "imaged_fraction", "damaged_area_m2", "centre_lon", "centre_lat"]
    assert a["cell_id"].tolist() == [1, 2, 3, 4]  # north-west first, then east, then south
    np.testing.assert_array_equal(a["damaged_area_m2"], [25.0, 0.0, 0.0, 0.0])
    np.testing.assert_array_equal(a["imaged_fraction"], [1.0, 1.0, 1.0, 0.0])
    west, south, east, north = shapely.bounds(grid.geometries[0])
    assert (west, south, east, north) == (500000, 3999990, 500010, 4000000)
    assert a["centre_lon"][0] < a["centre_lon"][1] and a["centre_lat"][0] > a["centre_lat"][2]


def test_cells_lie_on_multiples_of_the_cell_size_whatever_the_raster_origin(tmp_path: Path):
    shifted = Affine(0.5, 0, 500003.25, 0, -0.5, 4000001.5)
    path = random_prob(tmp_path, shifted)
    grid = damage_grid(path, threshold=0.5, cell_m=25)
    bounds = shapely.bounds(grid.geometries)
    np.testing.assert_array_equal(bounds % 25, 0)
    np.testing.assert_array_equal(bounds[:, 2] - bounds[:, 0], 25)
    # x 500003.25 to 500068.25, y 3999956.5 to 4000001.5: 3 x 3 cells of 25 m.
    assert len(grid) == 9


@pytest.mark.parametrize(
    "transform",
    [UTM_HALF_METRE, UTM_HALF_METRE @ Affine.rotation(20)],
    ids=["north-up", "rotated"],
)
def test_sums_equal_the_damage_raster_and_the_building_layer(tmp_path: Path, transform: Affine):
    path = random_prob(tmp_path, transform)
    buildings = building_damage(path, footprints_over(transform, UTM), threshold=0.4)
    grid = damage_grid(path, threshold=0.4, cell_m=12, buildings=buildings, block_size=32)
    a = grid.attributes
    polygons = damage_polygons_of(path, tmp_path, threshold=0.4)
    assert a["damaged_area_m2"].sum() == pytest.approx(polygons.attributes["area_m2"].sum())
    labels = buildings.attributes["label"]
    assert a["buildings_total"].sum() == len(buildings)
    assert a["buildings_damaged"].sum() == (labels == "damaged").sum() > 0
    assert a["buildings_unknown"].sum() == (labels == "unknown").sum() > 0
    np.testing.assert_allclose(
        a["damaged_building_density_per_km2"], a["buildings_damaged"] / (12 * 12 / 1e6)
    )


def damage_polygons_of(prob_path: Path, tmp_path: Path, threshold: float) -> VectorTable:
    """The damage polygons `stmap infer` would write, from the probability raster alone."""
    import rasterio

    from stmap.runtime.vectorize import damage_mask

    with rasterio.open(prob_path) as ds:
        mask = damage_mask(ds.read(1), threshold)
        transform, crs = ds.transform, ds.crs.to_string()
    mask_path = write_band(tmp_path / "mask.tif", mask, transform, crs)
    return damage_polygons(mask_path, prob_path)


def test_the_block_size_does_not_change_the_grid(tmp_path: Path):
    path = random_prob(tmp_path)
    buildings = building_damage(path, footprints_over(UTM_HALF_METRE, UTM), threshold=0.5)
    reference = damage_grid(path, threshold=0.5, cell_m=7, buildings=buildings, block_size=1024)
    for block_size in (16, 5):
        grid = damage_grid(
            path, threshold=0.5, cell_m=7, buildings=buildings, block_size=block_size
        )
        assert shapely.equals(grid.geometries, reference.geometries).all()
        for name, values in reference.attributes.items():
            np.testing.assert_allclose(grid.attributes[name], values, err_msg=name)


def test_a_geographic_raster_is_gridded_in_its_utm_zone(tmp_path: Path):
    # ~0.5 m pixels at 36° N, 39° E: UTM zone 37 N.
    lonlat = Affine(0.5 / 90000, 0, 39.0, 0, -0.5 / 111000, 36.0)
    path = random_prob(tmp_path, lonlat, "EPSG:4326")
    grid = damage_grid(path, threshold=0.5, cell_m=20)
    assert CRS.from_user_input(grid.crs).to_epsg() == 32637
    np.testing.assert_array_equal(shapely.bounds(grid.geometries) % 20, 0)
    geodesic = damage_polygons_of(path, tmp_path, 0.5).attributes["area_m2"].sum()
    assert grid.attributes["damaged_area_m2"].sum() == pytest.approx(geodesic, rel=2e-3)
    lon, lat = grid.attributes["centre_lon"], grid.attributes["centre_lat"]
    assert (abs(lon - 39.0) < 0.001).all() and (abs(lat - 36.0) < 0.001).all()


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_a_raster_without_crs_is_gridded_at_the_assumed_gsd(tmp_path: Path):
    prob = np.full((40, 60), 200, dtype=np.uint8)
    path = write_band(tmp_path / "plain.tif", prob, Affine.identity(), None)
    grid = damage_grid(path, threshold=0.5, cell_m=10, gsd_m=0.5)
    assert grid.crs is None and len(grid) == 6  # 30 m x 20 m
    assert grid.attributes["damaged_area_m2"].sum() == 40 * 60 * 0.25
    assert np.isnan(grid.attributes["centre_lon"]).all()


def test_facts_rank_the_worst_cells(tmp_path: Path):
    path = random_prob(tmp_path)
    buildings = building_damage(path, footprints_over(UTM_HALF_METRE, UTM), threshold=0.5)
    grid = damage_grid(path, threshold=0.5, cell_m=10, buildings=buildings)
    facts = grid_facts(grid, 10.0, worst=4)
    a = grid.attributes
    assert facts["cells"] == len(grid)
    assert facts["buildings_total"] == len(buildings)
    assert facts["damaged_area_m2"] == pytest.approx(a["damaged_area_m2"].sum())
    density = [cell["damaged_building_density_per_km2"] for cell in facts["worst_cells"]]
    assert len(density) == 4 and density == sorted(density, reverse=True)
    assert density[0] == a["damaged_building_density_per_km2"].max()
    first = facts["worst_cells"][0]
    row = int(np.flatnonzero(a["cell_id"] == first["cell_id"])[0])
    assert first["centre_lat"] == pytest.approx(a["centre_lat"][row])


@pytest.mark.parametrize("value", ["0", "-250", "nan"])
def test_the_cli_refuses_a_cell_size_that_is_not_positive(tmp_path: Path, value: str):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["infer", str(scene), "-o", str(out), "--grid", value])
    assert result.exit_code == 2
    assert "--grid" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("grid_m", "message"),
    [
        (0.0, "--grid 0: the cells' side must be a positive number of metres"),
        (0.001, r"--grid 0.001: would cut .*city.tif into 1.02e\+09 cells, .*larger cells"),
    ],
)
def test_the_library_refuses_bad_cells_before_any_work(tmp_path: Path, grid_m: float, message):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    with pytest.raises(InputError, match=message):
        run_inference([str(scene)], out, InferOptions(grid_m=grid_m, device="cpu"))
    assert not out.exists()

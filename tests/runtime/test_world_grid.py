"""The tile grid is fixed in the world: a place gets one answer whatever extent is mapped.

A district mapped today and the whole city mapped tomorrow must agree on every street
both hold, as long as the pixels the tiles see are the same (a tile reaching past a
crop's edge sees mirrored pixels there, not the city: those are left out, a tile
from either edge).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.transform import Affine

from stmap.cli import main
from stmap.io.raster import crop_raster
from stmap.runtime.grid import AxisTiles, model_scale, world_shift
from stmap.synth import generate_city
from tests.runtime.infer_data import make_varied_bundle
from tests.runtime.mosaic_data import cut_tile, make_city, write_aoi, write_item_collection

TILE = 128  # the test bundle's tile


def _world_tiles(axis: AxisTiles, world_offset: int, pixel: int) -> set[int]:
    """World positions of the tiles of ``axis`` that hold ``pixel``."""
    return {axis.origin(k) + world_offset for k in axis.intersecting(pixel, pixel + 1)}


@given(
    st.integers(-(10**9), 10**9),  # where the raster's pixel 0 lies in the world's count
    st.integers(0, 5000),  # the crop's offset in the raster
    st.integers(1, 3000),  # the crop's size
    st.sampled_from([16, 128, 224]),
    st.data(),
)
def test_a_crop_has_the_rasters_tiles_over_every_pixel_they_share(world, offset, size, tile, data):
    overlap = data.draw(st.integers(0, tile // 2))
    stride = tile - overlap
    raster = AxisTiles(offset + size + data.draw(st.integers(0, 500)), tile, overlap,
                       world_shift((-world, 0), stride).shift[0])  # fmt: skip
    crop = AxisTiles(size, tile, overlap, world_shift((-(world + offset), 0), stride).shift[0])
    for pixel in range(tile, size - tile, max(1, size // 50)):  # a tile from the crop's edges
        assert _world_tiles(crop, world + offset, pixel) == _world_tiles(
            raster, world, pixel + offset
        )


def test_world_shift_snaps_an_off_grid_raster_and_says_by_how_much():
    exact = world_shift((-2_000_000.0, 1_000_000.0), 96)  # UTM 500 km E at 0.5 m, say
    assert exact.snapped_px == (0.0, 0.0)
    assert exact.shift == (2_000_000 % 96, -1_000_000 % 96)
    off = world_shift((-2_000_000.25, 1_000_000.4), 96)
    assert off.shift == exact.shift
    assert off.snapped_px == pytest.approx((0.25, -0.4))


@pytest.fixture(scope="module")
def mapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("world")
    city = make_city(root / "city", size=640, seed=5)
    bundle = make_varied_bundle(root / "bundle")
    code, output = _infer(city, "-o", root / "whole", "--model", bundle)
    assert code == 0, output
    return {"root": root, "city": city, "bundle": bundle, "whole": root / "whole"}


def _infer(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["infer", *map(str, args), "--quiet", "--viewer", "none"])
    return result.exit_code, result.output


def _prob(folder: Path, stem: str) -> np.ndarray:
    with rasterio.open(folder / f"{stem}_damage_prob.tif") as ds:
        return ds.read(1).astype(int)


def _interior(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    """(max |Δ|, share of pixels differing by more than 1/255) where both are mapped."""
    keep = (a != 255) & (b != 255)
    delta = np.abs(a - b)[keep]
    return int(delta.max()), float((delta > 1).mean())


@settings(max_examples=3, deadline=None)
@given(st.integers(1, 200), st.integers(1, 200), st.integers(2 * TILE + 8, 400))
def test_a_crop_of_the_city_maps_like_the_city_where_its_tiles_see_the_same_pixels(
    mapped, row, col, size
):
    root = mapped["root"]
    name = f"crop_{row}_{col}_{size}"
    crop = crop_raster(mapped["city"], root / f"{name}.tif", (row, col, size, size))
    code, output = _infer(crop, "-o", root / name, "--model", mapped["bundle"])
    assert code == 0, output
    ours = _prob(root / name, name)[TILE:-TILE, TILE:-TILE]
    whole = _prob(mapped["whole"], "city")
    theirs = whole[row + TILE : row + size - TILE, col + TILE : col + size - TILE]
    assert _interior(ours, theirs)[0] <= 1


def test_a_mosaic_cut_to_an_aoi_maps_like_the_single_raster_inside_it(mapped, tmp_path):
    """The case that found it: four tiles, an AOI 409 px into the city (87 % of pixels off)."""
    city, root = mapped["city"], mapped["root"]
    folder = root / "tiles"
    folder.mkdir(exist_ok=True)
    items = [
        (name, cut_tile(city, folder / f"{name}.tif", window), f"2023-02-0{i + 6}T08:00:00Z")
        for i, (name, window) in enumerate(
            {
                "a": (0, 0, 352, 352),
                "b": (0, 288, 352, 352),
                "c": (288, 0, 352, 352),
                "d": (288, 288, 352, 352),
            }.items()
        )
    ]
    stac = write_item_collection(folder / "items.json", items)
    with rasterio.open(city) as ds:
        left, top = ds.transform * (97, 109)  # an AOI off the tiles' phase on both axes
        right, bottom = ds.transform * (97 + 409, 109 + 409)
    aoi = write_aoi(tmp_path / "aoi.gpkg", [(left, bottom, right, top)])
    code, output = _infer(stac, "--mosaic", "district", "--aoi", aoi, "-o", tmp_path / "m",
                          "--model", mapped["bundle"], "--json")  # fmt: skip
    assert code == 0, output
    grid = json.loads(output)["tile_grid"]
    assert grid["anchor"] == "CRS origin" and grid["snapped_px"] == [0.0, 0.0]
    with rasterio.open(tmp_path / "m" / "district_damage_prob.tif") as ds:
        district = ds.read(1).astype(int)
        col, row = (round(v) for v in ~ds.transform * (left, top))  # the AOI's corner in it
    assert (district != 255).sum() == 409 * 409  # the AOI is mapped, its context is not
    whole = _prob(mapped["whole"], "city")
    # the mosaic keeps a tile of context around the AOI: the whole AOI matches
    beside = whole[
        109 - row : 109 - row + district.shape[0], 97 - col : 97 - col + district.shape[1]
    ]
    assert beside.shape == district.shape
    assert _interior(district, beside)[0] <= 1


GEOREFERENCING = {
    # EPSG:4326, 6e-6° a pixel at 37.6° N (0.53 × 0.67 m): how imagery often comes, and a
    # GSD the model resamples on both axes
    "geographic": ("EPSG:4326", rasterio.transform.from_origin(36.93, 37.6, 6e-6, 6e-6)),
    # 0.62 m pixels turned by 20°: the model grid follows the raster's axes
    "rotated": (
        "EPSG:32637",
        Affine.translation(500_123.4, 4_200_056.7)
        @ Affine.rotation(20)
        @ Affine.scale(0.62, -0.62),
    ),
}


def _georeferenced_copy(city: Path, path: Path, kind: str) -> Path:
    """The city's pixels under another georeferencing (``GEOREFERENCING``)."""
    crs, transform = GEOREFERENCING[kind]
    with rasterio.open(city) as src:
        profile = src.profile | {"crs": crs, "transform": transform}
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(src.read())
    return path


@pytest.mark.parametrize(
    ("gsd", "georeferencing"),
    [(0.62, None), (0.38, None), (0.5, "geographic"), (0.5, "rotated")],
    ids=["upsampled", "downsampled", "geographic", "rotated"],
)
def test_a_crop_of_a_resampled_city_maps_like_the_city(mapped, tmp_path, gsd, georeferencing):
    """Imagery off the model's GSD runs on a resampled grid; a crop of it (georeferencing
    kept, as gdal_translate -srcwin writes it) must get the model pixels the city got and
    so its answer. Before, the model grid started at each raster's corner: a crop's model
    pixels fell a fraction of a pixel elsewhere, and 2 % of the flagged pixels of a real
    0.6 m scene flipped."""
    city = generate_city(tmp_path / "city.tif", width=560, height=560, gsd=gsd, seed=9).image
    if georeferencing:
        city = _georeferenced_copy(city, tmp_path / f"{georeferencing}.tif", georeferencing)
    code, output = _infer(city, "-o", tmp_path / "whole", "--model", mapped["bundle"], "--json")
    assert code == 0, output
    facts = json.loads(output)["inputs"][0]
    assert facts["resampled"]
    assert any("m pixels fixed in the world" in note for note in facts["notes"]), facts["notes"]
    whole = _prob(tmp_path / "whole", city.stem)
    row, col, size = 37, 23, 500
    crop = crop_raster(city, tmp_path / "crop.tif", (row, col, size, size))
    code, output = _infer(crop, "-o", tmp_path / "crop", "--model", mapped["bundle"])
    assert code == 0, output
    edge = TILE + 16  # a model tile and the resampling's taps from the crop's edges, in input px
    ours = _prob(tmp_path / "crop", "crop")[edge:-edge, edge:-edge]
    theirs = whole[row + edge : row + size - edge, col + edge : col + size - edge]
    assert _interior(ours, theirs)[0] <= 1


@pytest.mark.parametrize(
    ("gsd", "resampled"), [(0.45, False), (0.62, True)], ids=["unresampled", "resampled"]
)
def test_the_tile_strides_ground_size_is_the_model_pixels(mapped, tmp_path, gsd, resampled):
    """`tile_grid.stride_m` tells a GIS analyst how far apart the tiles lie on the ground:
    stride × the model pixel (0.45 m imagery is mapped on its own pixels; 0.62 m on
    pixels of the model's GSD to a 1.1 % step), not stride × the model's nominal 0.5 m."""
    city = generate_city(tmp_path / "city.tif", width=300, height=300, gsd=gsd, seed=2).image
    code, output = _infer(city, "-o", tmp_path / "out", "--model", mapped["bundle"], "--json")
    assert code == 0, output
    summary = json.loads(output)
    assert summary["inputs"][0]["resampled"] == resampled
    grid = summary["tile_grid"]
    pixel = gsd / model_scale(gsd / 0.5) if resampled else gsd
    assert grid["stride_m"] == pytest.approx([grid["stride_px"] * pixel] * 2, abs=1e-3)

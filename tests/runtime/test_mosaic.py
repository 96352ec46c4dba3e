"""Mosaics: many COG tiles, some in another UTM zone, as one virtual scene on one grid."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.transform import from_origin

from stmap.cli import main
from stmap.errors import InputError, Interrupted, RasterError
from stmap.io.inputs import SceneInput
from stmap.io.mosaic import build_mosaic, utm_crs
from stmap.runtime.infer import InferOptions, run_inference
from tests.runtime.infer_data import make_varied_bundle
from tests.runtime.mosaic_data import (
    constant_tile,
    cut_tile,
    make_city,
    write_aoi,
    write_item_collection,
)

ORIGIN = from_origin(500000.0, 4200000.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_city(tmp_path_factory.mktemp("city"))


@pytest.fixture(scope="module")
def tiles(city: Path) -> dict[str, Path]:
    """Overlapping tiles covering the city; b has 40 nodata columns; w lies in zone 36."""
    folder = city.parent / "tiles"
    folder.mkdir(exist_ok=True)
    return {
        "a": cut_tile(city, folder / "a.tif", (0, 0, 320, 320)),
        "b": cut_tile(city, folder / "b.tif", (0, 192, 320, 320), nodata_cols=40),
        "c": cut_tile(city, folder / "c.tif", (192, 0, 320, 512)),
        "w": cut_tile(city, folder / "w.tif", (360, 360, 120, 120), crs="EPSG:32636"),
    }


def scenes(tiles: dict[str, Path], *names: str, dates: dict[str, str] | None = None):
    dates = dates or {}
    return [
        SceneInput(str(tiles[n]), n, datetime.fromisoformat(dates[n]) if n in dates else None)
        for n in names
    ]


def read_all(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with rasterio.open(path) as ds:
        return ds.read(), ds.dataset_mask() > 0


def test_tiles_on_the_citys_grid_rebuild_it_exactly(
    city: Path, tiles: dict[str, Path], tmp_path: Path
) -> None:
    mosaic = build_mosaic(scenes(tiles, "c", "b", "a"), tmp_path / "m", gsd_m=0.5)
    pixels, valid = read_all(mosaic.path)
    with rasterio.open(city) as ds:
        assert mosaic.grid.transform == ds.transform
        assert (mosaic.grid.height, mosaic.grid.width) == ds.shape
        expected = ds.read()
    assert valid.all()  # b's nodata columns fall through to a, below it in file order
    np.testing.assert_array_equal(pixels, expected)
    assert [layer["warped"] for layer in mosaic.layers] == [False, False, False]


def test_a_tile_from_the_neighbouring_zone_is_warped_onto_the_grid(
    city: Path, tiles: dict[str, Path], tmp_path: Path
) -> None:
    layers = scenes(tiles, "c", "b", "a", "w")
    mosaic = build_mosaic(layers, tmp_path / "m", gsd_m=0.5, crs="EPSG:32637")
    assert [layer["warped"] for layer in mosaic.layers] == [False, False, False, True]
    pixels, valid = read_all(mosaic.path)
    with rasterio.open(city) as ds:
        expected = ds.read()
    assert mosaic.grid.transform == ds.transform and valid.all()
    inside = np.s_[:, 365:475, 365:475]  # w, resampled twice (cut, then mosaicked): close
    assert np.abs(pixels[inside].astype(int) - expected[inside]).mean() < 12
    beyond = np.ones(expected.shape[1:], dtype=bool)
    beyond[355:485, 355:485] = False  # w's footprint, give or take its warped edge
    np.testing.assert_array_equal(pixels[:, beyond], expected[:, beyond])
    # w's corners, transparent after warping, fall through: the edges of its footprint
    # are exact where w's alpha is 0
    assert (pixels[:, 355:365, 355:485] == expected[:, 355:365, 355:485]).mean() > 0.5


def test_the_most_recent_acquisition_wins_and_nodata_falls_through(tmp_path: Path) -> None:
    old = constant_tile(tmp_path / "old.tif", 200, ORIGIN, 256)
    shifted = ORIGIN @ rasterio.Affine.translation(128, 0)
    new = constant_tile(tmp_path / "new.tif", 50, shifted, 256, nodata=50)
    fresh = constant_tile(tmp_path / "fresh.tif", 90, shifted, 256)
    items = [
        SceneInput(str(fresh), "fresh", _when("2023-02-10T00:00:00Z")),
        SceneInput(str(old), "old", _when("2023-02-01T00:00:00Z")),
        SceneInput(str(new), "new", None),
    ]
    mosaic = build_mosaic(items, tmp_path / "m", gsd_m=0.5)
    assert [layer["id"] for layer in mosaic.layers] == ["new", "old", "fresh"]
    pixels, valid = read_all(mosaic.path)
    assert pixels.shape == (3, 256, 384) and valid.all()
    assert (pixels[:, :, :128] == 200).all()  # only old there
    assert (pixels[:, :, 128:] == 90).all()  # fresh on top of old

    undated = build_mosaic(
        [SceneInput(str(fresh), "fresh"), SceneInput(str(new), "new")], tmp_path / "u", gsd_m=0.5
    )
    pixels, valid = read_all(undated.path)
    assert (pixels == 90).all()  # file order: new on top, but all nodata, so fresh shows


def test_the_grid_defaults_to_the_utm_zone_of_the_centre_and_aligns_to_the_gsd(
    tiles: dict[str, Path], tmp_path: Path
) -> None:
    assert utm_crs(36.937, 37.585).to_epsg() == 32637
    assert utm_crs(35.9, -10.0).to_epsg() == 32736
    mosaic = build_mosaic(scenes(tiles, "w"), tmp_path / "m", gsd_m=2.0)
    grid = mosaic.grid
    assert grid.crs.to_epsg() == 32637  # w is stored in zone 36, but lies in zone 37
    assert grid.transform.a == 2.0 and grid.transform.e == -2.0
    assert grid.transform.c % 2.0 == 0 and grid.transform.f % 2.0 == 0


def test_an_aoi_cuts_the_extent(tiles: dict[str, Path], tmp_path: Path) -> None:
    with rasterio.open(tiles["a"]) as ds:
        left, _, _, top = ds.bounds
    aoi = write_aoi(tmp_path / "aoi.gpkg", [(left + 10, top - 60, left + 50.2, top - 20)])
    mosaic = build_mosaic(scenes(tiles, "a", "c"), tmp_path / "m", gsd_m=0.5, aoi=str(aoi))
    assert mosaic.grid.bounds == (left + 10, top - 60, left + 50.5, top - 20)


def test_the_identity_changes_with_the_inputs_and_their_order(
    tiles: dict[str, Path], tmp_path: Path
) -> None:
    one = build_mosaic(scenes(tiles, "a", "b"), tmp_path / "m", gsd_m=0.5).identity
    assert build_mosaic(scenes(tiles, "a", "b"), tmp_path / "m", gsd_m=0.5).identity == one
    assert build_mosaic(scenes(tiles, "b", "a"), tmp_path / "m", gsd_m=0.5).identity != one
    stat = os.stat(tiles["b"])
    os.utime(tiles["b"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert build_mosaic(scenes(tiles, "a", "b"), tmp_path / "m", gsd_m=0.5).identity != one


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"crs": "EPSG:999999"}, r"--crs EPSG:999999: not a CRS"),
        ({"crs": "EPSG:4326"}, r"--crs EPSG:4326: not a projected CRS"),
        ({"gsd_m": 0.0}, r"--gsd 0.0: must be a positive"),
        ({"gsd_m": -1.0}, r"--gsd -1.0: must be a positive"),
    ],
)
def test_bad_grid_options_are_refused_before_any_write(
    tiles: dict[str, Path], tmp_path: Path, options: dict, message: str
) -> None:
    kwargs = {"gsd_m": 0.5, **options}
    with pytest.raises(InputError, match=message):
        build_mosaic(scenes(tiles, "a"), tmp_path / "m", **kwargs)
    assert not (tmp_path / "m").exists()


def test_mixed_band_counts_and_ungeoreferenced_inputs_are_refused(
    tiles: dict[str, Path], tmp_path: Path
) -> None:
    gray = tmp_path / "gray.tif"
    with rasterio.open(gray, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:32637", transform=ORIGIN) as ds:  # fmt: skip
        ds.write(np.zeros((1, 8, 8), np.uint8))
    with pytest.raises(InputError, match=r"mixed band counts: .*a.tif has 3 .*gray.tif has 1"):
        build_mosaic([*scenes(tiles, "a"), SceneInput(str(gray), "gray")], tmp_path / "m", gsd_m=1)
    bare = tmp_path / "bare.tif"
    with rasterio.open(bare, "w", driver="GTiff", width=8, height=8, count=3, dtype="uint8") as ds:
        ds.write(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(RasterError, match=r"bare.tif: has no georeferencing"):
        build_mosaic([SceneInput(str(bare), "bare")], tmp_path / "m", gsd_m=1)
    assert not (tmp_path / "m").exists()


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "varied")


def infer(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["infer", *map(str, args)])
    return result.exit_code, result.output


def test_a_stac_mosaic_maps_like_the_single_raster_where_tiles_share_its_grid(
    city: Path, tiles: dict[str, Path], bundle: Path, tmp_path: Path
) -> None:
    stac = write_item_collection(
        city.parent / "items.json",
        [
            ("c", tiles["c"], "2023-02-06T08:00:00Z"),
            ("b", tiles["b"], "2023-02-08T08:00:00Z"),
            ("a", tiles["a"], "2023-02-07T08:00:00Z"),
            ("w", tiles["w"], "2023-02-09T08:00:00Z"),  # newest: on top, warped
        ],
    )
    code, output = infer(stac, "--mosaic", "kahramanmaras", "-o", tmp_path / "m", "--model",
                         bundle, "--json", "--quiet")  # fmt: skip
    assert code == 0, output
    summary = json.loads(output)
    assert [layer["id"] for layer in summary["inputs"][0]["mosaic"]["layers"]] == list("cabw")
    code, output = infer(city, "-o", tmp_path / "single", "--model", bundle, "--quiet")
    assert code == 0, output
    mosaic = read_all(tmp_path / "m" / "kahramanmaras_damage_prob.tif")[0][0].astype(int)
    single = read_all(tmp_path / "single" / "city_damage_prob.tif")[0][0].astype(int)
    assert mosaic.shape == single.shape
    # A tile (128 px) reaches at most 128 px: beyond that from w, pixels are the city's.
    far = np.ones_like(single, dtype=bool)
    far[355 - 128 : 485 + 128, 355 - 128 : 485 + 128] = False
    assert np.abs(mosaic[far] - single[far]).max() <= 1
    assert (mosaic != 255).all()  # every pixel of the city is covered
    assert not any(p.name.startswith(".") for p in (tmp_path / "m").iterdir())  # work removed


def test_blocks_without_valid_pixels_are_skipped_and_counted(bundle: Path, tmp_path: Path) -> None:
    left = constant_tile(tmp_path / "left.tif", 120, ORIGIN, 256)
    far = ORIGIN @ rasterio.Affine.translation(1024 + 256, 0)
    right = constant_tile(tmp_path / "right.tif", 80, far, 256)
    empty = constant_tile(tmp_path / "empty.tif", 0, ORIGIN @ rasterio.Affine.translation(512, 0),
                          256, nodata=0)  # fmt: skip
    folder = tmp_path / "tiles"
    folder.mkdir()
    for tile in (left, right, empty):
        tile.rename(folder / tile.name)
    code, output = infer(folder, "--mosaic", "sparse", "-o", tmp_path / "out", "--model", bundle,
                         "--block-size", "512", "--json", "--quiet")  # fmt: skip
    assert code == 0, output
    summary = json.loads(output)
    assert summary["pixels"] == 256 * 1536
    assert summary["valid_pixels"] == 2 * 256 * 256
    # The middle block (the all-nodata tile, then a gap) never reaches the model.
    assert summary["skipped_pixels"] == 256 * 512


def test_bad_mosaic_inputs_exit_2_without_output(
    tiles: dict[str, Path], bundle: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text("nope.tif\n")
    stac = tmp_path / "items.json"
    stac.write_text(json.dumps({"type": "Feature", "id": "x", "assets": {"B04": {"href": "a"}}}))
    far = write_aoi(tmp_path / "far.gpkg", [(0.0, 0.0, 10.0, 10.0)])
    bad = tmp_path / "bad.gpkg"
    bad.write_text("nonsense")
    gray = tmp_path / "gray.tif"
    with rasterio.open(gray, "w", driver="GTiff", width=8, height=8, count=1, dtype="uint8",
                       crs="EPSG:32637", transform=ORIGIN) as ds:  # fmt: skip
        ds.write(np.zeros((1, 8, 8), np.uint8))
    one = [str(tiles["a"])]
    cases = [
        ([*one, str(gray)], [], "mixed band counts"),
        ([str(tmp_path / "empty")], [], "a folder without rasters"),
        ([str(listing)], [], "line 1: nope.tif: file not found"),
        ([str(stac)], [], "has no asset 'visual'"),
        (one, ["--aoi", str(far)], "does not overlap the inputs"),
        (one, ["--aoi", str(bad)], f"--aoi {bad}"),
        (one, ["--crs", "EPSG:nope"], "--crs EPSG:nope: not a CRS"),
        (one, ["--gsd", "0"], "--gsd 0.0: must be a positive"),
        (one, ["--gsd", "-2"], "--gsd -2.0: must be a positive"),
    ]
    for inputs, options, message in cases:
        out = tmp_path / "out"
        code, output = infer(*inputs, "--mosaic", "m", "-o", out, "--model", bundle, *options)
        assert code == 2, (message, output)
        assert message in output
        assert not out.exists()
    code, output = infer(*one, "-o", tmp_path / "out", "--model", bundle, "--gsd", "1")
    assert code == 2 and "use them with --mosaic NAME" in output


def test_a_mosaic_resumes_and_refuses_changed_inputs(
    tiles: dict[str, Path], bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs = [str(tiles["a"]), str(tiles["c"])]
    options = InferOptions(model=str(bundle), mosaic="m", block_size=512)

    def interrupted_run(out: Path) -> None:
        """Every block mapped and journalled, then stopped before the outputs."""
        with monkeypatch.context() as patch:
            patch.setattr("stmap.runtime.finish.write_cog", _interrupt)
            with pytest.raises(Interrupted, match="run the same command again to resume"):
                run_inference(inputs, out, options)
        assert (out / ".m.journal.json").exists()

    interrupted_run(tmp_path / "same")
    (summary,) = run_inference(inputs, tmp_path / "same", options)
    assert summary["resumed_blocks"] == summary["blocks"]  # the same mosaic: nothing redone

    interrupted_run(tmp_path / "changed")
    stat = os.stat(tiles["c"])
    os.utime(tiles["c"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(InputError, match=r"\.m\.journal\.json: .* another input"):
        run_inference(inputs, tmp_path / "changed", options)


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt

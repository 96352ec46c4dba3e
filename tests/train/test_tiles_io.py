"""Loading tile datasets: the release layout, rasters cut into tiles, and their errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
import torch
from PIL import Image
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io import tiles as tile_io
from stmap.synth import generate_city
from stmap.train.datasets import load_tile_data
from tests.train.conftest import GSD, ORIGIN, UTM, make_tile_dataset, write_png


def test_release_layout_loads_tiles_labels_and_building_masks(tile_root: Path):
    data = load_tile_data(tile_root, None, 128, workers=2)

    assert data.images.shape == (12, 3, 128, 128) and data.images.dtype.is_floating_point is False
    assert data.labels.shape == (12, 128, 128)
    assert set(data.labels.unique().tolist()) == {0, 1}
    assert data.tile_ids == sorted(data.tile_ids)
    assert data.region_names == ["alpha", "beta"]
    assert data.regions[:6] == ["alpha"] * 6
    assert data.gsd_m == pytest.approx(GSD)
    assert data.regions_with_footprints == {"alpha", "beta"}
    # footprints went WGS84 → UTM and were burnt all_touched: every damaged pixel lies
    # inside a building, and buildings are more than the damage
    damaged = data.labels.bool()
    assert bool((damaged & ~data.buildings).sum() == 0)
    assert data.buildings.sum() > damaged.sum()


def test_regions_are_selected_by_either_spelling(tmp_path: Path):
    root = make_tile_dataset(tmp_path, {"kahramanrarus": 2, "sakcagozu": 2, "hatay": 2})
    data = load_tile_data(root, ["kahramanmaras", "sackcagozu"], 128)
    # the region comes from the tile id, in the reference's spelling
    assert data.region_names == ["kahramanrarus", "sackcagozu"]


def test_tiles_of_another_size_are_resized(tmp_path: Path):
    root = make_tile_dataset(tmp_path, {"alpha": 2}, size=160)
    data = load_tile_data(root, None, 128)
    assert data.images.shape == (2, 3, 128, 128)
    assert set(data.labels.unique().tolist()) <= {0, 1}
    # the tile's ground extent comes from tiles_meta: 160 px at 0.5 m over 128 px
    assert data.gsd_m == pytest.approx(160 * GSD / 128)


def test_resize_matches_pillow_bilinear_for_images_and_is_nearest_for_labels():
    image = np.random.default_rng(0).integers(0, 256, (3, 200, 200), dtype=np.uint8)
    small = tile_io._resize(image, 128, "bilinear")
    pillow = Image.fromarray(image.transpose(1, 2, 0)).resize((128, 128), Image.BILINEAR)
    difference = np.abs(small.astype(int) - np.asarray(pillow).transpose(2, 0, 1))
    assert difference.max() <= 1  # antialiased like PIL, up to rounding
    label = np.array([[[0, 0, 1, 1]] * 4], np.uint8)
    np.testing.assert_array_equal(tile_io._resize(label, 2, "nearest-exact")[0], [[0, 1], [0, 1]])


def test_without_tiles_meta_or_footprints_masks_are_empty(tmp_path: Path):
    no_meta = make_tile_dataset(tmp_path / "a", {"alpha": 2}, meta=False)
    no_footprints = make_tile_dataset(tmp_path / "b", {"alpha": 2}, footprints=False)
    for root in (no_meta, no_footprints):
        data = load_tile_data(root, None, 128)
        assert not data.buildings.any()
    assert load_tile_data(no_meta, None, 128).gsd_m == 0.5  # the method's GSD when unknown


def test_tiles_meta_uses_the_first_crs_and_ignores_rotation(tmp_path: Path):
    meta = tmp_path / "meta" / "nested"
    meta.mkdir(parents=True)
    tile = {"file": "a_r0_c0.png", "x0": 10, "y0": 20, "w": 128, "h": 128}
    (meta / "a.json").write_text(
        json.dumps(
            {
                "crs": UTM.to_wkt(),
                "transform": [0.5, 0.3, 100.0, 0.2, -0.5, 900.0],
                "tiles": {"a_r0_c0": tile},
            }
        )
    )
    (meta / "b.json").write_text(
        json.dumps({"crs": "EPSG:4326", "transform": [1, 0, 0, 0, -1, 0], "tiles": {}})
    )
    read = tile_io.read_tiles_meta(tmp_path / "meta")
    assert read.crs.to_epsg() == 32637
    assert read.bounds["a_r0_c0"] == (105.0, 826.0, 169.0, 890.0)
    assert read.extent_m["a_r0_c0"] == pytest.approx(64.0)


def test_null_and_invalid_footprints_are_dropped(tmp_path: Path):
    bowtie = [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]
    square = [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]
    features = [
        {"type": "Feature", "properties": {}, "geometry": None},
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": bowtie},
        },
        {
            "type": "Feature",
            "properties": {},
            "geometry": {"type": "Polygon", "coordinates": square},
        },
    ]
    path = tmp_path / "alpha_buildings.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert len(tile_io.read_footprints([path], None).geometries) == 1
    assert tile_io.footprint_files(tmp_path) == {"alpha": [path]}


def test_missing_region_names_the_root_and_the_regions_found(tile_root: Path):
    with pytest.raises(InputError, match=r"data.*'gamma'.*alpha, beta"):
        load_tile_data(tile_root, ["alpha", "gamma"], 128)


def test_image_without_label_is_an_error(tile_root: Path):
    (tile_root / "alpha" / "labels" / "alpha_r0_c0.png").unlink()
    with pytest.raises(InputError, match=r"alpha_r0_c0\.png: no label"):
        load_tile_data(tile_root, None, 128)


def test_label_of_the_wrong_size_is_an_error(tile_root: Path):
    label = tile_root / "beta" / "labels" / "beta_r0_c1.png"
    write_png(label, np.zeros((1, 64, 64), np.uint8))
    with pytest.raises(InputError, match=r"beta_r0_c1\.png: label is 64×64 px"):
        load_tile_data(tile_root, None, 128)


def test_footprints_without_crs_are_an_error(tile_root: Path):
    shutil.rmtree(tile_root / "footprints")
    path = tile_root / "footprints" / "alpha_buildings.shp"
    path.parent.mkdir()
    box = shapely.box(*ORIGIN, ORIGIN[0] + 5, ORIGIN[1] + 5)
    with pytest.warns(UserWarning, match="crs"):
        pyogrio.raw.write(str(path), shapely.to_wkb([box]), [], [], geometry_type="Polygon")
    with pytest.raises(VectorError, match=r"alpha_buildings\.shp: the footprints have no CRS"):
        load_tile_data(tile_root, None, 128)


def write_scene(directory: Path, stem: str, width: int, height: int, label_size=None) -> None:
    rng = np.random.default_rng(0)
    transform = Affine(GSD, 0.0, ORIGIN[0], 0.0, -GSD, ORIGIN[1])
    for name, count, (w, h) in (
        (stem, 3, (width, height)),
        (f"{stem}_labels", 1, label_size or (width, height)),
    ):
        profile = {"driver": "GTiff", "width": w, "height": h, "count": count, "dtype": "uint8"}
        with rasterio.open(
            directory / f"{name}.tif", "w", crs=UTM, transform=transform, **profile
        ) as dst:
            data = rng.integers(0, 255, (count, h, w), dtype=np.uint8)
            if count == 1:
                data = (data > 200).astype(np.uint8)
            dst.write(data)


def test_rasters_are_cut_into_tiles_with_reprojected_footprints(tmp_path: Path):
    write_scene(tmp_path, "hatay", 300, 260)
    box = shapely.box(ORIGIN[0] + 10, ORIGIN[1] - 40, ORIGIN[0] + 30, ORIGIN[1] - 10)
    from stmap.io.vectors import transform_geometries

    wgs84 = transform_geometries(np.array([box]), "EPSG:32637", "EPSG:4326")
    pyogrio.raw.write(
        str(tmp_path / "hatay_footprints.gpkg"),
        shapely.to_wkb(wgs84),
        [],
        [],
        geometry_type="Polygon",
        crs="EPSG:4326",
        driver="GPKG",
    )
    data = load_tile_data(tmp_path, ["hatay"], 128)
    assert data.tile_ids == ["hatay_r0_c0", "hatay_r0_c1", "hatay_r1_c0", "hatay_r1_c1"]
    assert data.gsd_m == pytest.approx(GSD)
    # the 20 m × 30 m building is at x 20–60 px, y 20–80 px of the first tile only
    mask = data.buildings[0]
    assert mask[20:80, 20:60].all() and mask.sum() <= 42 * 62
    assert not data.buildings[1:].any()
    with rasterio.open(tmp_path / "hatay.tif") as src:
        np.testing.assert_array_equal(
            data.images[3].numpy(), src.read(window=((128, 256), (128, 256)))
        )


def test_label_raster_of_the_wrong_size_is_an_error(tmp_path: Path):
    write_scene(tmp_path, "hatay", 256, 256, label_size=(200, 256))
    with pytest.raises(InputError, match=r"hatay_labels\.tif: labels are 200×256 px"):
        load_tile_data(tmp_path, None, 128)


def test_raster_without_label_is_an_error(tmp_path: Path):
    write_scene(tmp_path, "hatay", 256, 256)
    (tmp_path / "hatay_labels.tif").unlink()
    with pytest.raises(InputError, match=r"hatay\.tif: no label raster"):
        load_tile_data(tmp_path, None, 128)


def test_synth_tiles_and_rasters_load(tmp_path: Path):
    from stmap.synth import generate_city, list_styles

    styles = sorted(list_styles())[:2]
    for style in styles:
        generate_city(
            tmp_path / "scenes" / f"{style}.tif",
            width=512,
            height=512,
            style=style,
            seed=1,
            tiles_dir=tmp_path / "tiles",
        )
    tiles = load_tile_data(tmp_path / "tiles", None, 128)
    assert tiles.region_names == styles and len(tiles) == 2 * 16
    assert tiles.regions_with_footprints == set(styles)
    damaged = tiles.labels.bool()
    assert damaged.any() and tiles.buildings.any()
    # labels add debris outside the footprints, but most damage lies on buildings
    assert (damaged & tiles.buildings).sum() > 0.5 * damaged.sum()

    # the same cities as rasters + label rasters + GeoPackage footprints, cut on the fly
    rasters = load_tile_data(tmp_path / "scenes", None, 128)
    assert rasters.tile_ids == tiles.tile_ids
    assert torch.equal(rasters.images, tiles.images)
    assert torch.equal(rasters.labels, tiles.labels)
    assert (rasters.buildings == tiles.buildings).float().mean() > 0.99


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_the_data_says_when_stmap_synth_made_it(tile_root: Path, tmp_path: Path):
    """What the model's provenance records (training_data), and its report warns of."""
    assert load_tile_data(tile_root, None, 128).kind == "tiles"
    city = generate_city(
        tmp_path / "city" / "town.tif", width=256, height=256, seed=1, tiles_dir=tmp_path / "t"
    )
    assert load_tile_data(tmp_path / "t", None, 128).kind == "synthetic"
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    shutil.copy(city.image, scenes / "town.tif")
    shutil.copy(city.labels, scenes / "town_labels.tif")
    assert load_tile_data(scenes, None, 128).kind == "synthetic"
    shutil.copy(city.image, scenes / "real.tif")
    with rasterio.open(scenes / "real.tif", "r+") as real:
        real.update_tags(GENERATOR="a camera")
    shutil.copy(city.labels, scenes / "real_labels.tif")
    assert load_tile_data(scenes, None, 128).kind == "rasters"  # one real scene among them

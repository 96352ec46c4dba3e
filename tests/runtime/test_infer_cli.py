"""`stmap infer` as users call it: options, outputs, --json, footprints, a synthetic city."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from rio_cogeo.cogeo import cog_validate

from stmap.cli import main
from stmap.io.vectors import VectorTable, read_vector, write_vector
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def infer(*args: str):
    return CliRunner().invoke(main, ["infer", *args])


def test_help_shows_the_options_and_an_example():
    result = infer("--help")
    assert result.exit_code == 0
    for option in (
        "--model",
        "--backend",
        "--device",
        "--precision",
        "--batch-size",
        "--overlap",
        "--block-size",
        "--bands",
        "--footprints",
        "--threshold",
        "--resume / --restart",
        "--allow-ungeoreferenced",
        "--workers",
        "--json",
        "--quiet",
    ):
        assert option in result.output
    assert "stmap infer city.tif -o out" in result.output


def test_json_prints_the_summary_and_quiet_prints_nothing_else(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(200, 300))
    result = infer(str(scene), "-o", str(tmp_path / "out"), "--model", str(bundle), "--json", "-q")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["pixels"] == 60000 and summary["outputs"]
    assert result.stderr == ""
    for path in summary["outputs"]:
        assert Path(path).exists()


def test_options_reach_the_run(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(300, 200))
    result = infer(
        str(scene), "-o", str(tmp_path / "out"), "--model", str(bundle), "--json",
        "--overlap", "32", "--block-size", "1024", "--batch-size", "3", "--threshold", "0.4",
        "--device", "cpu", "--precision", "fp32", "--backend", "torch", "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert (s["overlap"], s["block_size"], s["batch_size"], s["workers"]) == (32, 1024, 3, 2)
    assert s["model"]["threshold"] == 0.4 and s["backend"] == "torch"
    damage = read_band(tmp_path / "out" / "city_damage.tif")
    prob = read_band(tmp_path / "out" / "city_damage_prob.tif")
    assert np.array_equal(damage == 1, prob / 255 > 0.4)


def _footprints(path: Path, boxes, crs: str, *, to_crs: str | None = None) -> Path:
    """Boxes (minx, miny, maxx, maxy) in ``crs`` as a GeoPackage, optionally reprojected."""
    geometries = np.array([shapely.box(*b) for b in boxes], dtype=object)
    names = np.array([f"b{i}" for i in range(len(boxes))], dtype=object)
    table = VectorTable(geometries, {"name": names}, crs)
    write_vector(path, table.to_crs(to_crs) if to_crs else table)
    return path


def test_footprints_in_another_crs_give_per_building_damage(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(400, 400))  # EPSG:32637, 0.5 m
    with rasterio.open(scene) as ds:
        left, top = ds.bounds.left, ds.bounds.top
    boxes = [(left + 10 + 30 * i, top - 60, left + 25 + 30 * i, top - 40) for i in range(5)]
    footprints = _footprints(tmp_path / "lonlat.gpkg", boxes, "EPSG:32637", to_crs="EPSG:4326")
    out = tmp_path / "out"
    result = infer(
        str(scene),
        "-o",
        str(out),
        "--model",
        str(bundle),
        "--footprints",
        str(footprints),
        "--json",
    )
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["buildings"]["total"] == 5
    assert sum(s["buildings"][k] for k in ("damaged", "undamaged", "unknown")) == 5
    assert sum(s["buildings"]["damaged_fraction_histogram"]["counts"]) == 5
    table = read_vector(out / "city_buildings.gpkg")
    assert list(table.attributes["name"]) == [f"b{i}" for i in range(5)]
    fraction = table.attributes["damaged_fraction"]
    assert np.all((fraction >= 0) & (fraction <= 1))
    damage = read_vector(out / "city_damage.gpkg")
    assert "area_m2" in damage.attributes and "mean_prob" in damage.attributes


def test_footprints_elsewhere_are_a_warning_not_a_crash(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(150, 150))
    footprints = _footprints(tmp_path / "far.gpkg", [(0, 0, 10, 10)], "EPSG:32637")
    out = tmp_path / "out"
    result = infer(
        str(scene), "-o", str(out), "--model", str(bundle), "--footprints", str(footprints)
    )
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.stderr and str(footprints) in result.stderr
    assert (out / "city_damage_prob.tif").exists() and not (out / "city_buildings.gpkg").exists()


def test_unreadable_footprints_are_refused_before_the_run(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(150, 150))
    footprints = tmp_path / "buildings.gpkg"
    footprints.write_text("not a vector file")
    out = tmp_path / "out"
    result = infer(
        str(scene), "-o", str(out), "--model", str(bundle), "--footprints", str(footprints)
    )
    assert result.exit_code == 2, result.output
    assert "buildings.gpkg: not a readable vector file" in result.stderr
    assert not out.exists() or list(out.iterdir()) == []


def test_a_synthetic_city_maps_end_to_end(tmp_path, bundle):
    synth = pytest.importorskip("stmap.synth")
    city = synth.generate_city(tmp_path / "city.tif", width=640, height=576, seed=3)
    out = tmp_path / "out"
    footprints = tmp_path / "city_footprints.gpkg"
    result = infer(
        str(tmp_path / "city.tif"), "-o", str(out), "--model", str(bundle),
        "--footprints", str(footprints), "--block-size", "512", "--json",
    )  # fmt: skip
    assert city is not None and result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["valid_pixels"] == 640 * 576 and s["buildings"]["total"] > 0
    for name in ("city_damage_prob.tif", "city_damage.tif"):
        assert cog_validate(str(out / name))[0]
    assert (out / "city_quicklook.png").stat().st_size > 0

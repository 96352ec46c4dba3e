"""Hostile and odd inputs (issue 21): sidecars, bit depths, non-regular files, degenerate
georeferencing, hostile manifests and names, ground sample distance under distortion."""

from __future__ import annotations

import json
import math
import os
import re
import resource
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from pyproj import Transformer
from rasterio.transform import Affine, from_origin

from stmap.bundle import MANIFEST, open_bundle
from stmap.cli import main
from stmap.errors import BundleError, VectorError
from stmap.io.footprints import read_footprints
from stmap.io.vectors import VectorTable, write_vector
from stmap.synth import generate_city
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def city(tmp_path_factory) -> Path:
    """A 512² synthetic city at 0.5 m: the demo model maps its damage."""
    path = tmp_path_factory.mktemp("city") / "city.tif"
    generate_city(path, width=512, height=512, seed=3)
    return path


def infer(*args: str, bundle: Path | None = None):
    model = ["--model", str(bundle)] if bundle else []
    return CliRunner().invoke(main, ["infer", *args, *model, "--json"])


def assert_refused(result, *fragments: str, out: Path) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr
    assert not out.exists() or list(out.iterdir()) == [], "no output may be left behind"


def summary_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# Point 3: infer sees what GDAL sees -------------------------------------------------


def test_an_external_msk_mask_is_honoured(tmp_path, bundle):
    path = write_raster(tmp_path / "masked.tif", smooth_image(256, 256), compress="deflate")
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=False), rasterio.open(path, "r+") as ds:
        mask = np.zeros((256, 256), np.uint8)
        mask[:, :128] = 255
        ds.write_mask(mask)
    assert (tmp_path / "masked.tif.msk").exists()
    summary = summary_of(infer(str(path), "-o", str(tmp_path / "out"), bundle=bundle))
    assert summary["valid_pixels"] == 256 * 128
    with rasterio.open(tmp_path / "out" / "masked_damage_prob.tif") as ds:
        prob = ds.read(1)
    assert np.all(prob[:, 128:] == 255) and np.all(prob[:, :128] != 255)


def test_a_png_with_a_world_file_and_aux_xml_crs_is_georeferenced(tmp_path, bundle):
    transform = from_origin(500000.0, 4200000.0, 0.5, 0.5)
    path = tmp_path / "photo.png"
    with rasterio.open(
        path,
        "w",
        driver="PNG",
        width=200,
        height=160,
        count=3,
        dtype="uint8",
        crs="EPSG:32637",
        transform=transform,
        WORLDFILE="YES",
    ) as dst:
        dst.write(smooth_image(160, 200))
    assert (tmp_path / "photo.wld").exists() and (tmp_path / "photo.png.aux.xml").exists()
    summary = summary_of(infer(str(path), "-o", str(tmp_path / "out"), bundle=bundle))
    source = summary["inputs"][0]
    assert source["crs"] == "EPSG:32637" and source["transform"] == list(transform)[:6]
    with rasterio.open(tmp_path / "out" / "photo_damage.tif") as ds:
        assert ds.crs == "EPSG:32637" and ds.transform == transform


# Point 4: bit depth -------------------------------------------------------------------


def _damaged(tmp_path: Path, path: Path) -> tuple[int, dict]:
    summary = summary_of(infer(str(path), "-o", str(tmp_path / f"out_{path.stem}")))
    return summary["damaged_pixels"], summary["inputs"][0]


def _recode(city: Path, target: Path, scale, **profile) -> Path:
    with rasterio.open(city) as src:
        data, options = src.read().astype(np.int64), src.profile
    options.update(dtype="uint16", **profile)
    with rasterio.open(target, "w", **options) as dst:
        dst.write(scale(data).astype(np.uint16))
    return target


def test_full_range_16_bit_and_11_bit_imagery_map_like_the_8_bit_original(tmp_path, city):
    base, source = _damaged(tmp_path, city)
    assert base > 1000 and source["pixel_values"] == "uint8, 8-bit"
    full = _recode(city, tmp_path / "full.tif", lambda x: x * 257)
    damaged, source = _damaged(tmp_path, full)
    assert source["pixel_values"].startswith("uint16, 16-bit from sampled max ")
    assert source["value_max"] == 65535
    assert abs(damaged - base) <= 0.02 * base
    eleven = _recode(city, tmp_path / "eleven.tif", lambda x: x * 2047 // 255, NBITS=11)
    damaged, source = _damaged(tmp_path, eleven)
    assert source["pixel_values"] == "uint16, 11-bit (NBITS)" and source["value_max"] == 2047
    assert abs(damaged - base) <= 0.02 * base


def test_pixels_beyond_the_stated_nbits_are_warned_of(tmp_path, bundle):
    path = write_raster(tmp_path / "liar.tif", smooth_image(128, 128, top=4000))
    # A sidecar that states 11 bits (GDAL reports it) over pixels up to ~4000
    (tmp_path / "liar.tif.aux.xml").write_text(
        '<PAMDataset><PAMRasterBand band="1"><Metadata domain="IMAGE_STRUCTURE">'
        '<MDI key="NBITS">11</MDI></Metadata></PAMRasterBand></PAMDataset>'
    )
    summary = summary_of(infer(str(path), "-o", str(tmp_path / "out"), bundle=bundle))
    assert summary["inputs"][0]["pixel_values"] == "uint16, 11-bit (NBITS)"
    assert any("exceed the 11-bit range" in w for w in summary["warnings"]), summary["warnings"]


# Point 6: non-regular files -----------------------------------------------------------


def test_a_fifo_named_like_a_raster_is_refused_without_hanging(tmp_path, bundle):
    fifo = tmp_path / "x.tif"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    assert_refused(infer(str(fifo), "-o", str(out), bundle=bundle), "x.tif: is a FIFO", out=out)


def test_a_fifo_as_footprints_aoi_or_bundle_is_refused(tmp_path, bundle):
    scene = write_raster(tmp_path / "s.tif", smooth_image(64, 64))
    fifo = tmp_path / "pipe.gpkg"
    os.mkfifo(fifo)
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), "--aoi", str(fifo), bundle=bundle)
    assert_refused(result, "pipe.gpkg: is a FIFO", out=out)
    with pytest.raises(VectorError, match="pipe.gpkg: is a FIFO"):
        read_footprints(fifo)
    fifo_zip = tmp_path / "bundle.zip"
    os.mkfifo(fifo_zip)
    assert_refused(
        infer(str(scene), "-o", str(out), bundle=fifo_zip), "bundle.zip: is a FIFO", out=out
    )


def test_a_fifo_in_a_list_of_rasters_is_refused(tmp_path, bundle):
    os.mkfifo(tmp_path / "p.tif")
    listing = tmp_path / "list.txt"
    listing.write_text("p.tif\n")
    out = tmp_path / "out"
    assert_refused(infer(str(listing), "-o", str(out), bundle=bundle), "is a FIFO", out=out)
    os.mkfifo(tmp_path / "fifo.txt")
    result = infer(str(tmp_path / "fifo.txt"), "-o", str(out), bundle=bundle)
    assert_refused(result, "fifo.txt: is a FIFO", out=out)


def test_a_device_a_socket_and_a_directory_are_refused(tmp_path, bundle):
    out = tmp_path / "out"
    assert_refused(infer("/dev/zero", "-o", str(out), bundle=bundle), "character device", out=out)
    sock_path = tmp_path / "s.tif"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        assert_refused(infer(str(sock_path), "-o", str(out), bundle=bundle), "socket", out=out)
    folder = tmp_path / "folder.gpkg"
    folder.mkdir()
    with pytest.raises(VectorError, match="folder.gpkg: is a directory"):
        read_footprints(folder)


# Point 8: exit 2, never 1 -------------------------------------------------------------


@pytest.mark.parametrize(
    "transform",
    [
        Affine(0.0, 0.0, 500000.0, 0.0, 0.0, 4200000.0),  # zero determinant
        Affine(0.5, 1.0, 500000.0, 0.25, 0.5, 4200000.0),  # collinear axes
        Affine(float("nan"), 0.0, 500000.0, 0.0, -0.5, 4200000.0),
        Affine(0.5, 0.0, float("inf"), 0.0, -0.5, 4200000.0),
        # found by the fuzzer: 1e300 units along a column (a lattice of 1e147 grid cells)
        Affine(1.0, 1.0, 500000.0, 1e300, -0.5, 4200000.0),
    ],
)
def test_degenerate_geotransforms_are_refused(tmp_path, bundle, transform):
    path = write_raster(tmp_path / "bad.tif", smooth_image(64, 64), transform=transform)
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), bundle=bundle)
    assert_refused(result, "bad.tif: the geotransform", out=out)


def test_geographic_corners_off_the_globe_are_refused(tmp_path, bundle):
    """Found by the fuzzer: EPSG:4326 with UTM-like numbers (the viewer's reprojection of
    the damage polygons made them infinite and GEOS raised, exit 1)."""
    transform = Affine(1.0, 0.0, 500000.0, 0.0, -1.0, 4200000.0)
    path = write_raster(
        tmp_path / "lonlat.tif", smooth_image(64, 64), crs="EPSG:4326", transform=transform
    )
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), bundle=bundle)
    assert_refused(result, "lonlat.tif: the geotransform has corners at longitudes 500000", out=out)


def test_a_vrt_mixing_data_types_is_refused(tmp_path, bundle):
    byte = write_raster(tmp_path / "b.tif", smooth_image(64, 64, bands=2))
    word = write_raster(tmp_path / "w.tif", smooth_image(64, 64, bands=1, top=4000))
    vrt = tmp_path / "mixed.vrt"
    bands = [(byte, 1, "Byte"), (byte, 2, "Byte"), (word, 1, "UInt16")]
    body = "".join(
        f'<VRTRasterBand dataType="{t}" band="{i + 1}"><SimpleSource>'
        f"<SourceFilename>{p}</SourceFilename><SourceBand>{b}</SourceBand></SimpleSource>"
        "</VRTRasterBand>"
        for i, (p, b, t) in enumerate(bands)
    )
    vrt.write_text(
        f'<VRTDataset rasterXSize="64" rasterYSize="64"><SRS>EPSG:32637</SRS>'
        f"<GeoTransform>500000, 0.5, 0, 4200000, 0, -0.5</GeoTransform>{body}</VRTDataset>"
    )
    out = tmp_path / "out"
    result = infer(str(vrt), "-o", str(out), bundle=bundle)
    assert_refused(result, "mixed.vrt: its bands mix data types (uint8, uint8, uint16)", out=out)


@pytest.mark.parametrize(
    "change, fragment",
    [
        ({"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.2, 0.0, 0.2]}}, "std"),
        ({"normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.2, "NaN", 0.2]}}, "std"),
        ({"normalization": {"mean": ["Infinity", 0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "mean"),
        ({"normalization": {"mean": [0.5, 0.5], "std": [0.2, 0.2]}}, "2 values for 3 bands"),
        ({"input_scaling": {"uint8": 0.0}}, "input_scaling uint8"),
        ({"input_scaling": {"uint8": "NaN"}}, "input_scaling uint8"),
        ({"gsd_m": 1e-6}, "gsd_m 1e-06: must lie between 0.05 and 10.0"),
        ({"gsd_m": 300.0}, "gsd_m 300.0"),
        ({"gsd_m": "NaN"}, "gsd_m"),
        ({"tile_size": 100000}, "tile_size 100000"),
        # found by fuzzing: positive and finite, yet 1 / (255 × std) overflows
        ({"normalization": {"mean": [0.5] * 3, "std": [1e-12, 1e-12, 5e-324]}}, "non-finite"),
        (
            {
                "normalization": {"mean": [0.5] * 3, "std": [1e-300] * 3},
                "input_scaling": {"uint8": 1e-300},
            },
            "non-finite",
        ),
    ],
)
def test_manifests_that_are_not_self_consistent_are_refused_at_open(tmp_path, change, fragment):
    path = make_varied_bundle(tmp_path / "b")
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(change)
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="invalid manifest") as caught:
        open_bundle(path)
    assert fragment in str(caught.value)
    scene = write_raster(tmp_path / "s.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    assert_refused(infer(str(scene), "-o", str(out), bundle=path), fragment, out=out)


def test_a_file_name_that_is_not_utf8_is_refused(tmp_path, bundle):
    name = os.fsdecode(b"sc\xffne.tif")
    os.rename(write_raster(tmp_path / "scene.tif", smooth_image(64, 64)), tmp_path / name)
    out = tmp_path / "out"
    result = infer(os.path.join(str(tmp_path), name), "-o", str(out), bundle=bundle)
    assert_refused(result, "sc\\xffne.tif: the name is not valid UTF-8", out=out)
    scene = write_raster(tmp_path / "scene.tif", smooth_image(64, 64))
    out = tmp_path / os.fsdecode(b"out\xff")
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert_refused(result, "-o ", "out\\xff: the name is not valid UTF-8", out=out)
    assert not out.exists()


def test_the_crash_report_survives_undecodable_text(tmp_path, monkeypatch):
    from stmap.cli import _write_traceback

    monkeypatch.setattr("sys.argv", ["stmap", "infer", os.fsdecode(b"\xff\xfe.tif"), "\ud800"])
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    try:
        raise ValueError(os.fsdecode(b"bad \xff name"))
    except ValueError:
        log = _write_traceback()
    text = Path(log).read_text(encoding="utf-8")
    assert "\\udcff\\udcfe.tif" in text and "ValueError: bad \\udcff name" in text
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "missing"))
    try:
        raise ValueError("no place for the log")
    except ValueError:
        assert _write_traceback().startswith("stderr above")


# Point 10: ground sample distance ----------------------------------------------------


def _mercator(tmp_path: Path, name: str, size: float) -> Path:
    """A 128² raster in Web Mercator at 37.6° N with ``size``-unit pixels."""
    x, y = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True).transform(-122.4, 37.6)
    return write_raster(tmp_path / name, smooth_image(128, 128), crs="EPSG:3857",
                        transform=from_origin(x, y, size, size))  # fmt: skip


def test_web_mercator_pixels_are_taken_at_their_ground_size(tmp_path, bundle):
    cos = math.cos(math.radians(37.6))
    # 0.597 CRS metres are 0.473 m on the ground: within 10 % of the model's 0.5 m
    path = _mercator(tmp_path, "cogeo.tif", 0.597)
    summary = summary_of(infer(str(path), "-o", str(tmp_path / "o1"), bundle=bundle))
    source = summary["inputs"][0]
    assert source["gsd_m"] == pytest.approx([0.597 * cos] * 2, rel=2e-3)  # ≈ 0.473 m
    assert source["ground_pixel"]["crs_pixel_size"] == [0.597, 0.597]
    assert source["ground_pixel"]["scale_factor"][0] == pytest.approx(1 / cos, rel=1e-3)
    assert not source["resampled"] and source["model_grid"] == [128, 128]
    assert any("on the ground" in n for n in source["notes"])
    assert summary["area_km2"] == pytest.approx(128 * 128 * (0.597 * cos) ** 2 / 1e6, rel=5e-3)
    # 0.8 CRS metres are 0.634 m on the ground: resampled by that, not by 0.8
    path = _mercator(tmp_path, "coarse.tif", 0.8)
    source = summary_of(infer(str(path), "-o", str(tmp_path / "o2"), bundle=bundle))["inputs"][0]
    assert source["resampled"]
    # 163 model pixels of 0.5 m (at 0.8 CRS m it would be 205), and up to one more: the
    # grid's pixels are the world's (runtime.grid), so it may start before the raster's
    for got, g in zip(source["model_grid"], reversed(source["gsd_m"]), strict=True):
        assert math.ceil(128 * g / 0.5) == 163 and 163 <= got <= 164


def test_utm_and_geographic_pixels_keep_their_size(tmp_path, bundle):
    utm = write_raster(tmp_path / "utm.tif", smooth_image(64, 64))
    source = summary_of(infer(str(utm), "-o", str(tmp_path / "o1"), bundle=bundle))["inputs"][0]
    assert source["gsd_m"] == [0.5, 0.5] and source["ground_pixel"]["scale_factor"] is None
    step = 0.5 / 111_320  # ~0.5 m of latitude in degrees
    geo = write_raster(tmp_path / "geo.tif", smooth_image(64, 64), crs="EPSG:4326",
                       transform=from_origin(37.0, 37.6, step, step))  # fmt: skip
    source = summary_of(infer(str(geo), "-o", str(tmp_path / "o2"), bundle=bundle))["inputs"][0]
    along_row = step * 111_320 * math.cos(math.radians(37.6))
    assert source["gsd_m"][0] == pytest.approx(along_row, rel=0.01)
    assert source["gsd_m"][1] == pytest.approx(0.5, rel=0.01)


# Point 5: memory bounded by the user's choices ------------------------------------------


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--block-size", "65536"], "--block-size 65536 needs ~"),
        (["--block-size", "65536", "--memory-budget", "4G"], "(budget 4 GiB, --memory-budget)"),
        (["--overlap", "127", "--memory-budget", "4G"], "--overlap 127 needs ~"),
    ],
)
def test_sizes_beyond_the_memory_budget_are_refused_with_the_fix(tmp_path, bundle, args, fragment):
    # 70 000² px, sparse: nothing is read before the refusal
    path = tmp_path / "huge.tif"
    with rasterio.open(path, "w", driver="GTiff", width=70_000, height=70_000, count=3,
                       dtype="uint8", crs="EPSG:32637", tiled=True, SPARSE_OK=True,
                       transform=from_origin(500000.0, 4200000.0, 0.5, 0.5)):  # fmt: skip
        pass
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), *args, bundle=bundle)
    assert_refused(result, fragment, out=out)
    assert re.search(r"use (--block-size|≤) \d+", result.stderr), result.stderr


def test_a_memory_budget_that_is_not_a_size_is_refused(tmp_path, bundle):
    scene = write_raster(tmp_path / "s.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), "--memory-budget", "lots", bundle=bundle)
    assert_refused(result, "--memory-budget lots: not a size", out=out)


def test_the_automatic_block_size_shrinks_to_the_budget(tmp_path, bundle):
    scene = write_raster(tmp_path / "s.tif", smooth_image(1100, 1100), block=512)
    summary = summary_of(
        infer(str(scene), "-o", str(tmp_path / "out"), "--memory-budget", "40M", bundle=bundle)
    )
    assert summary["block_size"] == 512  # 2048 would need ~60 MiB


@pytest.mark.parametrize("gsd", [300.04, 4.5])
def test_imagery_far_coarser_than_the_model_is_refused_with_the_ratio(tmp_path, bundle, gsd):
    # rasterio's RGB.byte.tif: 300 m pixels (612 GB to resample to 0.5 m)
    path = write_raster(tmp_path / "coarse.tif", smooth_image(718, 791), gsd=gsd)
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), bundle=bundle)
    ratio = f"{gsd / 0.5:.3g}×"
    assert_refused(result, f"are {ratio} the model's 0.5 m (at most 8× is accepted)", out=out)


def _in_subprocess(code: str, limit_gib: float = 6) -> subprocess.CompletedProcess:
    """Run ``code`` with its address space limited: an unbounded allocation fails fast."""

    def limit() -> None:
        size = int(limit_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (size, size))

    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=limit,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )


def test_a_footprint_reaching_1e300_is_cut_to_the_raster(tmp_path):
    prob = tmp_path / "prob.tif"
    write_raster(prob, np.full((1, 300, 300), 200, np.uint8), nodata=255)
    code = f"""
import json, numpy as np, shapely
from stmap.io.vectors import VectorTable
from stmap.runtime.buildings import building_damage
geoms = np.array([shapely.box(500010, 4199900, 1e300, 4199950),
                  shapely.box(500010, 4199900, 500020, 4199950)], dtype=object)
out = building_damage({str(prob)!r}, VectorTable(geoms, {{}}, "EPSG:32637"),
                      threshold=0.5, buffers_m=(0, 10))
print(json.dumps([out.attributes["label"].tolist(), out.attributes["unknown_fraction"].tolist(),
                  shapely.total_bounds(out.geometries).tolist()]))
"""
    result = _in_subprocess(code)
    assert result.returncode == 0, result.stderr[-2000:]
    labels, unknown, bounds = json.loads(result.stdout)
    assert labels == ["unknown", "damaged"] and unknown[0] == pytest.approx(1.0)
    assert unknown[1] == 0 and bounds[2] < 500000 + 0.5 * (300 + 2048 + 100)


def test_many_overlapping_footprints_are_coloured_in_bounded_batches(tmp_path, monkeypatch):
    from stmap.runtime import buildings

    prob = tmp_path / "prob.tif"
    write_raster(prob, np.full((1, 64, 64), 200, np.uint8), nodata=255)
    n = 3 * buildings.LAYER_BATCH  # all overlapping: n² pairs if coloured at once
    geoms = np.array([shapely.box(500010, 4199980, 500012, 4199982)] * n, dtype=object)
    seen = []
    colour = buildings.overlap_layers
    monkeypatch.setattr(buildings, "overlap_layers", lambda g: seen.append(len(g)) or colour(g))
    out = buildings.building_damage(
        prob, VectorTable(geoms, {}, "EPSG:32637"), threshold=0.5, buffers_m=(0,)
    )
    assert max(seen) <= buildings.LAYER_BATCH and sum(seen) == n
    assert np.all(out.attributes["damaged_fraction"] == 1.0)
    assert np.all(out.attributes["unknown_fraction"] == 0.0)


def test_a_footprint_with_a_nan_vertex_is_refused_before_the_run(tmp_path, bundle):
    scene = write_raster(tmp_path / "s.tif", smooth_image(64, 64))
    path = tmp_path / "nan.gpkg"
    nan = shapely.Polygon([(500001, 4199990), (500010, 4199990), (np.nan, 4199999)])
    write_vector(path, VectorTable(np.array([nan, shapely.box(500001, 4199980, 500005, 4199985)]),
                                   {"id": np.array([1, 2])}, "EPSG:32637"))  # fmt: skip
    with pytest.raises(VectorError, match="nan.gpkg: feature 1 has a non-finite coordinate"):
        read_footprints(path)
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), "--footprints", str(path), bundle=bundle)
    assert_refused(result, "nan.gpkg: feature 1 has a non-finite coordinate", out=out)


def test_a_raster_header_claiming_billions_of_pixels_is_refused(tmp_path, bundle):
    bands = "".join(f'<VRTRasterBand dataType="Byte" band="{i}"/>' for i in (1, 2, 3))
    path = tmp_path / "giant.vrt"
    path.write_text(
        '<VRTDataset rasterXSize="2000000000" rasterYSize="2000000000"><SRS>EPSG:32637</SRS>'
        f"<GeoTransform>500000, 0.5, 0, 4200000, 0, -0.5</GeoTransform>{bands}</VRTDataset>"
    )
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), "--grid", "1e9", bundle=bundle)
    assert_refused(result, "giant.vrt: 2000000000 × 2000000000 px need ~", out=out)


def test_a_band_the_model_does_not_read_has_no_say_in_validity(tmp_path, bundle):
    data = smooth_image(128, 128, bands=4)
    data[:3, :, :64] = 0  # red, green, blue nodata on the left; band 4 valid everywhere
    data[3] = 200
    path = write_raster(tmp_path / "rgbn.tif", data, nodata=0)
    summary = summary_of(infer(str(path), "-o", str(tmp_path / "out"), bundle=bundle))
    assert summary["inputs"][0]["bands"] == {"red": 1, "green": 2, "blue": 3}
    assert summary["valid_pixels"] == 128 * 64

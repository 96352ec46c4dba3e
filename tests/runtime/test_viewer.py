"""The zoomable map: tile pyramid written while blocks stream, the page, a real browser."""

from __future__ import annotations

import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from PIL import Image
from pyproj import Transformer
from rasterio.transform import Affine

from stmap.cli import main
from stmap.errors import InputError
from stmap.io.blocks import IMAGE, VALID, LayerReader, ReadSpec
from stmap.io.vectors import VectorTable, write_vector
from stmap.runtime.infer import InferOptions, map_scenes, run_inference
from stmap.runtime.sinks import PROB, feed, feed_missing
from stmap.runtime.vectorize import apply_affine
from stmap.runtime.viewer_tiles import MapTiles, Pyramid, downsample
from stmap.window import lattice
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster
from tests.runtime.mosaic_data import write_aoi

VIEWER_DATA = Path(__file__).resolve().parents[2] / "src" / "stmap" / "data" / "viewer"


def test_vendored_leaflet_is_the_pinned_release():
    """The files are the ones whose hashes the README records (npm leaflet@1.9.4)."""
    readme = (VIEWER_DATA / "README.md").read_text()
    recorded = dict(re.findall(r"^\| (\S+) \| ([0-9a-f]{64}) \|$", readme, re.M))
    assert {"leaflet.js", "leaflet.css", "LICENSE"} <= set(recorded)
    for name, digest in recorded.items():
        assert hashlib.sha256((VIEWER_DATA / name).read_bytes()).hexdigest() == digest, name
    assert "BSD 2-Clause" in (VIEWER_DATA / "LICENSE").read_text()


def test_pyramid_levels():
    p = Pyramid.for_raster(1100, 1500, "full")
    assert (p.native, p.top) == (3, 3) and p.tiles(3) == (6, 5) and p.tiles(0) == (1, 1)
    assert p.streamed == [2, 3]  # tiles of at most 512 raster pixels
    lite = Pyramid.for_raster(1100, 1500, "lite")
    assert (lite.native, lite.top, lite.streamed) == (3, 2, [2])


def test_downsample_averages_valid_pixels_only():
    values = np.array([[[10, 20, 30], [30, 40, 50]]], np.uint8)
    valid = np.array([[True, False, True], [True, False, False]])
    assert downsample(values, valid, 2, 99).tolist() == [[[20, 30]]]
    assert downsample(values, None, 2, 99).tolist() == [[[25, 40]]]
    assert downsample(values[:, :, :2], None, 2, 99).tolist() == [[[25]]]  # integer path


def _rasters(root: Path, height: int = 1100, width: int = 1500) -> tuple[Path, Path]:
    """An image with a nodata corner, and a probability raster with nodata, same grid."""
    image = smooth_image(height, width)
    image[:, :300, :400] = 0
    img = write_raster(root / "img.tif", image, nodata=0)
    rng = np.random.default_rng(1)
    prob = rng.integers(0, 255, (1, height, width), dtype=np.uint8)
    prob[:, :, -200:] = 255
    return img, write_raster(root / "prob.tif", prob, nodata=255)


def _feed(tiles: MapTiles, img: Path, prob: Path, windows) -> None:
    """Some windows as a run streams them, then the rest read back, as the run's end does."""
    sinks = [tiles.image, tiles.prob]
    spec = ReadSpec(str(img), (1, 2, 3), "uint8", True, (1100, 1500))
    with LayerReader({PROB: prob}, spec) as reader:
        feed(sinks, reader.read(windows, {IMAGE, VALID, PROB}))
        feed_missing(sinks, reader)
    for sink in sinks:
        sink.finish()


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("mode", ["lite", "full"])
def test_streamed_resumed_and_read_back_pyramids_are_identical(tmp_path, mode):
    """Tiles cut from blocks as they pass equal those read back after a resume or by a
    worker that saw nothing: the map does not depend on how the run went."""
    img, prob = _rasters(tmp_path)
    pyramid = Pyramid.for_raster(1100, 1500, mode)
    blocks = [w for row in lattice(0, 0, 1100, 1500, 1024) for w in row]
    roots = {}
    for name, seen in (("streamed", blocks), ("resumed", blocks[1:3]), ("read back", [])):
        tiles = MapTiles(tmp_path / name, pyramid, value_max=255)
        _feed(tiles, img, prob, seen)
        roots[name] = _files(tmp_path / name)
    assert roots["streamed"] == roots["resumed"] == roots["read back"]
    files = roots["streamed"]
    for z in range(pyramid.top + 1):
        columns, rows = pyramid.tiles(z)
        assert sum(f.startswith(f"image/{z}/") for f in files) == columns * rows
    # the probabilities' tiles hold the values themselves (palette indices)
    top = tmp_path / "streamed" / "damage" / str(pyramid.top) / "0" / "0.png"
    with rasterio.open(prob) as p:
        f = pyramid.factor(pyramid.top)
        expected = downsample(p.read(window=((0, 256 * f), (0, 256 * f))), None, f, 255)[0]
    with Image.open(top) as tile:
        assert tile.mode == "P" and np.array_equal(np.asarray(tile), expected)


# -- the whole run and a real browser ---------------------------------------------

WIDTH, HEIGHT, GSD = 1300, 900, 0.5
TRANSFORM = Affine(GSD, 0, 500000.0, 0, -GSD, 4200000.0)


@pytest.fixture(scope="module")
def mapped(tmp_path_factory) -> Path:
    """A scene mapped with footprints (default viewer): the output directory."""
    root = tmp_path_factory.mktemp("viewer")
    bundle = make_varied_bundle(root / "bundle")
    scene = write_raster(root / "city.tif", smooth_image(HEIGHT, WIDTH), transform=TRANSFORM)
    boxes = [shapely.box(60 * i + 300, 420, 60 * i + 330, 450) for i in range(10)]
    footprints = VectorTable(
        apply_affine(np.array(boxes, dtype=object), TRANSFORM),
        {"osm_id": np.array([f"way/{i}" for i in range(10)], dtype=object)},
        crs="EPSG:32637",
    )
    write_vector(root / "buildings.gpkg", footprints)
    options = InferOptions(
        model=str(bundle), device="cpu", footprints=str(root / "buildings.gpkg"), grid_m=100.0
    )
    run_inference([str(scene)], root / "out", options)
    return root / "out"


def test_the_run_publishes_the_map_beside_the_report(mapped):
    assert not [p.name for p in mapped.iterdir() if p.name.startswith(".")], "work files left"
    pyramid = Pyramid.for_raster(HEIGHT, WIDTH, "lite")
    for z in range(pyramid.top + 1):
        columns, rows = pyramid.tiles(z)
        assert len(list((mapped / "city_map" / "image" / str(z)).rglob("*.jpg"))) == columns * rows
    assert not (mapped / "city_map" / "image" / str(pyramid.top + 1)).exists()  # lite
    page = (mapped / "city_report.html").read_text()
    data = json.loads(
        html.unescape(re.search(r'id="stmap-viewer-data">(.*?)</script>', page).group(1))
    )
    assert data["tiles"] == "city_map" and data["top"] == pyramid.top
    assert data["north_deg"] == 0  # north-up: the map's north arrow points up
    assert len(data["layers"]["buildings"]["features"]) == 10
    first = data["layers"]["buildings"]["features"][0]
    assert next(iter(first["properties"])) == "osm_id"  # the source's ID first
    assert first["geometry"]["coordinates"][0][0][1] in (420, 450)  # pixel rows


@pytest.fixture
def browser() -> str:
    """Headless Chromium, or a skip saying why (asked for before the scene is mapped)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    reason = "no chromium on PATH (Debian: apt-get install chromium)"
    print(f"SKIP reason: {reason}")
    pytest.skip(reason)


def _browse(browser: str, page: Path, query: str, *extra: str) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--virtual-time-budget=20000",
        "--window-size=1100,900",
        *extra,
        f"{page.as_uri()}?stmap-test={query}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def test_a_browser_renders_tiles_at_two_zooms_and_a_click_shows_the_building(browser, mapped):
    """Headless Chromium opens the report from file:// with no network."""
    dom = _browse(browser, mapped / "city_report.html", "0,2", "--dump-dom")
    found = re.search(r'<pre id="stmap-test-result"[^>]*>(.*?)</pre>', dom, re.S)
    assert found, "the page's self-test did not finish"
    result = json.loads(html.unescape(found.group(1)))
    assert int(result["loaded"]["0"]) >= 1 and int(result["loaded"]["2"]) >= 2
    assert result["clicked"]["osm_id"] == "way/0"
    assert result["popup"].startswith("Building osm_id way/0")
    lat, lon = (float(v) for v in result["cursor"].split(","))
    x, y = TRANSFORM @ (result["pointer"]["col"], result["pointer"]["row"])
    lon_, lat_ = Transformer.from_crs("EPSG:32637", "EPSG:4326", always_xy=True).transform(x, y)
    assert abs(lat - lat_) < 1e-6 and abs(lon - lon_) < 1e-6
    shots = os.environ.get("STMAP_SCREENSHOTS")
    if shots:  # for a person to look at during development
        shot = f"--screenshot={Path(shots) / 'viewer.png'}"
        _browse(browser, mapped / "city_report.html", "0,2", shot)


# -- the options and many scenes ----------------------------------------------------


def test_viewer_none_makes_no_map_and_an_unknown_mode_is_refused(tmp_path):
    bundle = make_varied_bundle(tmp_path / "bundle")
    scene = write_raster(tmp_path / "s.tif", smooth_image(200, 300))
    options = InferOptions(model=str(bundle), device="cpu", viewer="none")
    run_inference([str(scene)], tmp_path / "out", options)
    assert not (tmp_path / "out" / "s_map").exists()
    assert "stmap-viewer-data" not in (tmp_path / "out" / "s_report.html").read_text()
    with pytest.raises(InputError, match="--viewer huge: unknown mode"):
        run_inference([str(scene)], tmp_path / "o2", InferOptions(model=str(bundle), viewer="huge"))
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())


def test_many_scenes_get_one_index_page_linking_their_reports(tmp_path):
    bundle = make_varied_bundle(tmp_path / "bundle")
    scenes = [
        write_raster(tmp_path / "a.tif", smooth_image(200, 300, seed=1)),
        write_raster(tmp_path / "b.tif", smooth_image(120, 260, seed=2)),
    ]
    out = tmp_path / "out"
    combined = map_scenes([str(s) for s in scenes], out, InferOptions(model=str(bundle)))
    page = (out / "run_index.html").read_text()
    links = re.findall(r'<a href="([^"]+)">', page)
    ranked = sorted(combined["runs"], key=lambda s: -s["damaged_area_m2"])
    assert links == [f"{Path(s['inputs'][0]['path']).stem}_report.html" for s in ranked]
    assert all((out / link).exists() for link in links)
    assert "http" not in page and "<script" not in page


# `stmap` with a model slowed down, so that a run can be killed half-way.
SLOW_STMAP = """
import time
from stmap.runtime.backends import torch_backend

infer = torch_backend.TorchBackend.infer
def slow_infer(self, tiles):
    time.sleep(0.15)
    return infer(self, tiles)
torch_backend.TorchBackend.infer = slow_infer

from stmap.cli import main
main()
"""


def test_a_killed_and_resumed_run_publishes_the_same_map(tmp_path):
    """The blocks mapped before the kill are tiled from the partial rasters on resume."""
    bundle = make_varied_bundle(tmp_path / "bundle")
    scene = write_raster(tmp_path / "city.tif", smooth_image(1024, 1024))
    args = [str(scene), "--model", str(bundle), "--block-size", "512", "--batch-size", "8"]
    args += ["--viewer", "full"]
    once = tmp_path / "once"
    assert CliRunner().invoke(main, ["infer", *args, "-o", str(once)]).exit_code == 0
    out = tmp_path / "resumed"
    command = [sys.executable, "-c", SLOW_STMAP, "infer", *args, "-o", str(out)]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    journal, deadline = out / ".city.journal.json", time.monotonic() + 120
    while not (journal.exists() and json.loads(journal.read_text())["blocks"]):
        assert process.poll() is None and time.monotonic() < deadline, "no block journalled"
        time.sleep(0.05)
    process.kill()
    process.wait()
    assert not (out / "city_map").exists()
    result = CliRunner().invoke(main, ["infer", *args, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resumed_blocks"] >= 1
    assert _files(out / "city_map") == _files(once / "city_map")
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")], "work files left"


def test_with_an_aoi_the_map_shows_all_imagery_and_damage_only_inside(tmp_path):
    """The readers hand over AOI-masked blocks, so the imagery is read back whole at the
    end; damage tiles exist only where the AOI let the model run."""
    bundle = make_varied_bundle(tmp_path / "bundle")
    scene = write_raster(tmp_path / "scene.tif", smooth_image(1024, 1024))
    aoi = write_aoi(tmp_path / "aoi.gpkg", [(500000.0 + 20, 4200000.0 - 200, 500180.0, 4199960.0)])
    options = InferOptions(model=str(bundle), aoi=str(aoi), block_size=512, viewer="full")
    run_inference([str(scene)], tmp_path / "out", options)
    root = tmp_path / "out" / "scene_map"
    pyramid = Pyramid.for_raster(1024, 1024, "full")
    columns, rows = pyramid.tiles(pyramid.native)
    assert len(list((root / "image" / str(pyramid.native)).rglob("*.jpg"))) == columns * rows
    damage = {
        p.relative_to(root / "damage" / str(pyramid.native)).as_posix()
        for p in (root / "damage" / str(pyramid.native)).rglob("*.png")
    }
    # the AOI spans pixel columns 40-360 and rows 80-400: the 4 native tiles (of 16) there
    assert damage and damage <= {"0/0.png", "0/1.png", "1/0.png", "1/1.png"}

"""What the finishing steps gather while the blocks stream (thumbnails, grid tallies)
equals what reading the finished rasters back gives, however the windows came."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import Affine

import stmap.runtime.stream as stream
from stmap.io.blocks import IMAGE, VALID, LayerReader
from stmap.io.vectors import VectorTable, read_vector
from stmap.runtime.coverage import Coverage
from stmap.runtime.density_grid import GridTally, damage_grid, grid_table
from stmap.runtime.gather import Gathered
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.sinks import PROB, feed, feed_missing
from stmap.runtime.thumbnail import Thumbnail, sample_positions
from stmap.window import Window, lattice
from tests.conftest import write_band
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

UTM = "EPSG:32637"


def blocks(height: int, width: int, size: int) -> list[Window]:
    return [w for row in lattice(0, 0, height, width, size) for w in row]


def test_a_thumbnail_is_the_pixel_under_each_cell_centre_whatever_the_windows():
    image = smooth_image(1300, 1100, seed=3)
    rows, cols = sample_positions(1300, 130), sample_positions(1100, 110)
    want = image[:, rows][:, :, cols]
    some = Thumbnail(1300, 1100, (130, 110), 3, layer=IMAGE)
    windows = blocks(1300, 1100, 512)

    def layers(w: Window) -> dict[str, np.ndarray]:
        rows, cols = w.relative_to(Window(0, 0, 1300, 1100))
        return {IMAGE: image[:, rows, cols]}

    for i in (4, 0, 2):  # out of order, and not all of them
        some.add(windows[i], layers(windows[i]))
    assert not some.coverage.complete
    read = list(some.missing())
    feed([some], ((w, layers(w)) for w in read))
    assert some.coverage.complete and np.array_equal(some.finish().pixels, want)
    assert some.valid.all()
    # Only what was missing is listed: all but the three windows added.
    assert sum(w.size for w in read) == 1300 * 1100 - sum(windows[i].size for i in (4, 0, 2))


def test_a_thumbnail_keeps_validity_and_empty_windows():
    thumb = Thumbnail(1024, 1024, (64, 64), 1, layer=PROB)
    valid = np.zeros((512, 1024), dtype=bool)
    valid[:, :512] = True
    thumb.add(Window(0, 0, 512, 1024), {PROB: np.full((512, 1024), 7, np.uint8), VALID: valid})
    thumb.add(Window(512, 0, 512, 1024), {})  # no valid pixel
    assert thumb.coverage.complete
    assert thumb.valid[:32, :32].all() and not thumb.valid[:32, 32:].any()
    assert not thumb.valid[32:].any() and (thumb.pixels[0, 32:] == 255).all()


@pytest.mark.parametrize(("row", "col", "h", "w"), [(100, 0, 412, 512), (0, 0, 500, 512)])
def test_windows_off_the_512_px_tiles_are_refused(row, col, h, w):
    with pytest.raises(ValueError, match="512-px tiles"):
        Coverage(2048, 2048).add(Window(row, col, h, w))


def test_coverage_lists_exactly_the_windows_not_seen():
    coverage = Coverage(1100, 1600)
    coverage.add(Window(0, 512, 512, 512))
    coverage.add(Window(512, 0, 588, 1600))
    assert list(coverage.missing()) == [Window(0, 0, 512, 512), Window(0, 1024, 512, 576)]


def completed_grid(path: Path, tally: GridTally) -> VectorTable:
    """The tally completed from the raster, as the end of a run completes it."""
    with LayerReader({PROB: path}, None) as reader:
        feed_missing([tally], reader)
    return grid_table(tally.finish())


def random_prob(tmp_path: Path, transform: Affine, crs: str, shape=(1100, 1300)) -> Path:
    rng = np.random.default_rng(5)
    prob = rng.integers(0, 255, shape, dtype=np.uint8)
    prob[:200, :300] = 255  # nodata
    return write_band(tmp_path / "prob.tif", prob, transform, crs)


@pytest.mark.parametrize(
    "added",
    [
        pytest.param([(0, 0, 1536), (1536, 1536, 1536)], id="1536-px-blocks"),
        pytest.param([(0, 0, 512), (512, 2048, 512)], id="fill-from-an-odd-tile"),
        pytest.param([], id="nothing-added"),
    ],
)
def test_any_windowing_of_the_grid_tally_counts_every_pixel_once(tmp_path, added):
    """Windows crossing the tally's 1024-px lattice (blocks of 1536 px, or what a
    resumed run reads back from an odd tile on) are cut along it, not skipped."""
    transform = Affine(0.5, 0, 500000, 0, -0.5, 4000000)
    path = random_prob(tmp_path, transform, UTM, shape=(2300, 3100))
    reference = damage_grid(path, threshold=0.5, cell_m=25)
    with rasterio.open(path) as ds:
        prob = ds.read(1)
        tally = GridTally(ds.crs, ds.transform, ds.width, ds.height, threshold=0.5, cell_m=25)
    for r, c, size in added:
        window = prob[r : r + size, c : c + size]
        tally.add(Window(r, c, *window.shape), {PROB: window})
    grid = completed_grid(path, tally)
    assert tally.tally.pixels.sum() == prob.size
    for name, values in reference.attributes.items():
        np.testing.assert_allclose(grid.attributes[name], values, rtol=1e-12, err_msg=name)


def test_a_window_without_valid_pixels_still_counts_its_pixels(tmp_path):
    transform = Affine(0.5, 0, 500000, 0, -0.5, 4000000)
    prob = np.full((1024, 1536), 255, dtype=np.uint8)
    prob[:, 1024:] = 200
    path = write_band(tmp_path / "prob.tif", prob, transform, UTM)
    reference = damage_grid(path, threshold=0.5, cell_m=50)
    tally = GridTally(UTM, transform, 1536, 1024, threshold=0.5, cell_m=50)
    tally.add(Window(0, 0, 1024, 1024), {})  # a window without a valid pixel
    grid = completed_grid(path, tally)
    for name, values in reference.attributes.items():
        np.testing.assert_allclose(grid.attributes[name], values, rtol=1e-12, err_msg=name)


@pytest.mark.parametrize(
    ("transform", "crs"),
    [
        pytest.param(Affine(0.5, 0, 500000, 0, -0.5, 4000000), UTM, id="north-up"),
        pytest.param(
            Affine(0.5 / 90000, 0, 39.0, 0, -0.5 / 111000, 36.0), "EPSG:4326", id="lonlat"
        ),
        pytest.param(
            Affine.translation(500000, 4000000) @ Affine.rotation(20) @ Affine.scale(0.5, -0.5),
            UTM,
            id="rotated",
        ),
    ],
)
def test_a_grid_tallied_from_some_blocks_equals_one_read_from_the_raster(tmp_path, transform, crs):
    path = random_prob(tmp_path, transform, crs)
    reference = damage_grid(path, threshold=0.4, cell_m=30)
    with rasterio.open(path) as ds:
        prob = ds.read(1)
        tally = GridTally(ds.crs, ds.transform, ds.width, ds.height, threshold=0.4, cell_m=30)
    for w in blocks(1100, 1300, 512)[1::2]:  # half the blocks, as a resumed run's writer
        tally.add(w, {PROB: prob[w.relative_to(Window(0, 0, *prob.shape))]})
    grid = completed_grid(path, tally)
    assert grid.crs == reference.crs and len(grid) == len(reference)
    for name, values in reference.attributes.items():
        np.testing.assert_allclose(grid.attributes[name], values, rtol=1e-12, err_msg=name)


@pytest.fixture
def city(tmp_path: Path) -> Path:
    image = smooth_image(1100, 1300, seed=1)
    image[:, :300, :400] = 0
    return write_raster(tmp_path / "city.tif", image, nodata=0)


def test_infer_gives_the_same_outputs_with_or_without_the_sinks_streamed(
    tmp_path, city, monkeypatch
):
    bundle = make_varied_bundle(tmp_path / "bundle")
    options = InferOptions(model=str(bundle), block_size=512, grid_m=40, threshold=0.45)
    # Trace the damage in the writer too, as beside a GPU.
    spec = stream.gather_spec
    monkeypatch.setattr(stream, "gather_spec", lambda *a, **k: spec(*a, trace_damage=True))
    gathered = []
    complete = Gathered.complete

    def check_gathered(self):
        gathered.append([s.coverage.complete for s in self.all])
        return complete(self)

    monkeypatch.setattr(Gathered, "complete", check_gathered)
    run_inference([str(city)], tmp_path / "streamed", options)
    assert gathered == [[True] * 6], "the sinks saw every block of a plain run"
    # Sinks that see no block: everything comes from reading the files.
    monkeypatch.setattr(Gathered, "streamed", lambda self: [])
    run_inference([str(city)], tmp_path / "read", options)
    name = "city_quicklook.png"
    assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "read" / name).read_bytes()
    for name in ("city_grid.gpkg", "city_damage.gpkg"):
        streamed, read = (read_vector(tmp_path / d / name) for d in ("streamed", "read"))
        assert len(streamed) == len(read) > 0, name
        assert shapely.equals(streamed.geometries, read.geometries).all(), name
        for key, values in read.attributes.items():
            np.testing.assert_allclose(streamed.attributes[key], values, rtol=1e-12, err_msg=key)


def test_a_failing_sink_falls_back_to_reading_the_rasters(tmp_path, city, monkeypatch):
    bundle = make_varied_bundle(tmp_path / "bundle")
    options = InferOptions(model=str(bundle), block_size=512, grid_m=40)
    run_inference([str(city)], tmp_path / "plain", options)

    add = GridTally.add

    def broken_in_the_pipeline(self, *args):
        if threading.current_thread().name == "stmap-writer":  # the stream, not the read-back
            raise RuntimeError("a bug in a sink")
        return add(self, *args)

    monkeypatch.setattr(GridTally, "add", broken_in_the_pipeline)
    failures = []
    complete = Gathered.complete

    def note_failure(self):
        failures.append(self.failed)
        return complete(self)

    monkeypatch.setattr(Gathered, "complete", note_failure)
    run_inference([str(city)], tmp_path / "broken", options)
    assert failures == ["RuntimeError: a bug in a sink"]
    for name in ("city_quicklook.png", "city_damage_prob.tif", "city_damage.tif"):
        assert (tmp_path / "broken" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    tapped, read = (read_vector(tmp_path / d / "city_grid.gpkg") for d in ("plain", "broken"))
    for key, values in read.attributes.items():
        np.testing.assert_allclose(tapped.attributes[key], values, rtol=1e-12, err_msg=key)

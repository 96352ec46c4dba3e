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
from rasterio.windows import Window

import stmap.runtime.infer as infer
from stmap.io.vectors import read_vector
from stmap.runtime.coverage import Coverage
from stmap.runtime.density_grid import GridTally, damage_grid
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.thumbnail import Thumbnail, sample_positions
from tests.conftest import write_band
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

UTM = "EPSG:32637"


def blocks(height: int, width: int, size: int) -> list[Window]:
    return [
        Window(c, r, min(size, width - c), min(size, height - r))
        for r in range(0, height, size)
        for c in range(0, width, size)
    ]


def test_a_thumbnail_is_the_pixel_under_each_cell_centre_whatever_the_windows():
    image = smooth_image(1300, 1100, seed=3)
    rows, cols = sample_positions(1300, 130), sample_positions(1100, 110)
    want = image[:, rows][:, :, cols]
    some = Thumbnail(1300, 1100, (130, 110), 3)
    windows = blocks(1300, 1100, 512)
    for i in (4, 0, 2):  # out of order, and not all of them
        w = windows[i]
        some.add(w.row_off, w.col_off, image[:, w.row_off :, w.col_off :][:, : w.height, : w.width])
    assert not some.coverage.complete
    read = []

    def reader(w: Window):
        read.append(w)
        return image[:, w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width], None

    some.fill(reader)
    assert some.coverage.complete and np.array_equal(some.pixels, want) and some.valid.all()
    # Only what was missing was read: all but the three windows added.
    assert sum(w.width * w.height for w in read) == 1300 * 1100 - sum(
        windows[i].width * windows[i].height for i in (4, 0, 2)
    )


def test_a_thumbnail_keeps_validity_and_empty_windows():
    thumb = Thumbnail(1024, 1024, (64, 64), 1)
    valid = np.zeros((512, 1024), dtype=bool)
    valid[:, :512] = True
    thumb.add(0, 0, np.full((1, 512, 1024), 7, dtype=np.uint8), valid)
    thumb.add_empty(512, 0, 512, 1024, fill=255)
    assert thumb.coverage.complete
    assert thumb.valid[:32, :32].all() and not thumb.valid[:32, 32:].any()
    assert not thumb.valid[32:].any() and (thumb.pixels[0, 32:] == 255).all()


@pytest.mark.parametrize(("row", "col", "h", "w"), [(100, 0, 412, 512), (0, 0, 500, 512)])
def test_windows_off_the_512_px_tiles_are_refused(row, col, h, w):
    with pytest.raises(ValueError, match="512-px tiles"):
        Coverage(2048, 2048).add(row, col, h, w)


def test_coverage_lists_exactly_the_windows_not_seen():
    coverage = Coverage(1100, 1600)
    coverage.add(0, 512, 512, 512)
    coverage.add(512, 0, 588, 1600)
    assert list(coverage.missing()) == [Window(0, 0, 512, 512), Window(1024, 0, 576, 512)]


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
        tally.add(r, c, prob[r : r + size, c : c + size])
    grid = damage_grid(path, threshold=0.5, cell_m=25, tally=tally)
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
    tally.add(0, 0, np.broadcast_to(np.uint8(255), (1024, 1024)))
    grid = damage_grid(path, threshold=0.5, cell_m=50, tally=tally)
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
        window = prob[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        tally.add(w.row_off, w.col_off, window)
    grid = damage_grid(path, threshold=0.4, cell_m=30, tally=tally)
    assert grid.crs == reference.crs and len(grid) == len(reference)
    for name, values in reference.attributes.items():
        np.testing.assert_allclose(grid.attributes[name], values, rtol=1e-12, err_msg=name)


@pytest.fixture
def city(tmp_path: Path) -> Path:
    image = smooth_image(1100, 1300, seed=1)
    image[:, :300, :400] = 0
    return write_raster(tmp_path / "city.tif", image, nodata=0)


def test_infer_gives_the_same_outputs_with_or_without_the_taps(tmp_path, city, monkeypatch):
    bundle = make_varied_bundle(tmp_path / "bundle")
    options = InferOptions(model=str(bundle), block_size=512, grid_m=40, threshold=0.45)
    # Trace the damage in the writer too, as beside a GPU.
    for_input = infer.Sketches.for_input.__func__
    monkeypatch.setattr(
        infer.Sketches,
        "for_input",
        classmethod(lambda cls, *a, **k: for_input(cls, *a, **{**k, "trace_damage": True})),
    )
    gathered = []
    finish = infer._finish

    def check_gathered(plan, out, session, result, run, sketches, *rest):
        gathered.append(
            [t.coverage.complete for t in (sketches.image, sketches.prob, sketches.tracer)]
            + [sketches.grid.coverage.complete]
        )
        return finish(plan, out, session, result, run, sketches, *rest)

    monkeypatch.setattr(infer, "_finish", check_gathered)
    run_inference([str(city)], tmp_path / "tapped", options)
    assert gathered == [[True] * 4], "the taps saw every block of a plain run"
    monkeypatch.setattr(infer, "_finish", finish)

    class Blind(infer.Sketches):
        """Sketches that see no block: everything comes from reading the files."""

        def source_tap(self, block, pixels, valid):
            pass

        def output_tap(self, block, layers):
            pass

    monkeypatch.setattr(infer, "Sketches", Blind)
    run_inference([str(city)], tmp_path / "read", options)
    name = "city_quicklook.png"
    assert (tmp_path / "tapped" / name).read_bytes() == (tmp_path / "read" / name).read_bytes()
    for name in ("city_grid.gpkg", "city_damage.gpkg"):
        tapped, read = (read_vector(tmp_path / d / name) for d in ("tapped", "read"))
        assert len(tapped) == len(read) > 0, name
        assert shapely.equals(tapped.geometries, read.geometries).all(), name
        for key, values in read.attributes.items():
            np.testing.assert_allclose(tapped.attributes[key], values, rtol=1e-12, err_msg=key)


def test_a_failing_tap_falls_back_to_reading_the_rasters(tmp_path, city, monkeypatch):
    bundle = make_varied_bundle(tmp_path / "bundle")
    options = InferOptions(model=str(bundle), block_size=512, grid_m=40)
    run_inference([str(city)], tmp_path / "plain", options)

    add = GridTally.add

    def broken_in_the_pipeline(self, *args):
        if threading.current_thread().name == "stmap-writer":  # the tap, not the read-back
            raise RuntimeError("a bug in a tap")
        return add(self, *args)

    monkeypatch.setattr(GridTally, "add", broken_in_the_pipeline)
    failures = []
    finish = infer._finish

    def note_failure(plan, out, session, result, run, sketches, *rest):
        failures.append(sketches.failed)
        return finish(plan, out, session, result, run, sketches, *rest)

    monkeypatch.setattr(infer, "_finish", note_failure)
    run_inference([str(city)], tmp_path / "broken", options)
    assert failures == ["RuntimeError: a bug in a tap"]
    for name in ("city_quicklook.png", "city_damage_prob.tif", "city_damage.tif"):
        assert (tmp_path / "broken" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    tapped, read = (read_vector(tmp_path / d / "city_grid.gpkg") for d in ("plain", "broken"))
    for key, values in read.attributes.items():
        np.testing.assert_allclose(tapped.attributes[key], values, rtol=1e-12, err_msg=key)

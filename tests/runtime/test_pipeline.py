"""The streaming pipeline end to end on small rasters: no seams, masks, grids, COGs."""

from __future__ import annotations

import zipfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
import torch
from rasterio.transform import Affine, from_origin
from rio_cogeo.cogeo import cog_validate

from stmap.runtime.grid import model_scale, reflect_index
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.pipeline import mirror_pad
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster

HEIGHT, WIDTH = 600, 700  # 2 × 2 blocks of 512


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "city.tif", smooth_image(HEIGHT, WIDTH))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, bundle, scene) -> tuple[Path, dict]:
    """One run with a single block covering the whole raster."""
    out = tmp_path_factory.mktemp("reference")
    (summary,) = run_inference([str(scene)], out, InferOptions(model=str(bundle), block_size=4096))
    return out, summary


def _map(tmp_path: Path, bundle: Path, *inputs: Path, **options) -> list[dict]:
    return run_inference(
        [str(p) for p in inputs], tmp_path, InferOptions(model=str(bundle), **options)
    )


def test_probabilities_do_not_depend_on_blocks_batches_or_threads(
    tmp_path, bundle, scene, reference
):
    ref_dir, _ = reference
    expected = read_band(ref_dir / "city_damage_prob.tif").astype(int)
    assert expected.std() > 5, "the test model must vary across the image"
    (summary,) = _map(tmp_path, bundle, scene, block_size=512, batch_size=5, workers=3)
    assert summary["blocks"] == 4 and summary["batch_size"] == 5 and summary["workers"] == 3
    got = read_band(tmp_path / "city_damage_prob.tif").astype(int)
    assert np.abs(got - expected).max() <= 1


def test_a_tiling_margin_maps_every_pixel_whatever_the_blocks(tmp_path, scene):
    """A bundle whose tiling leaves each tile's outer pixels out of the blend (#20) still
    maps every pixel, the same for any block size, and unlike without the margin."""
    from stmap.bundle import Tiling

    maps = {}
    for margin in (0, 24):
        tiling = Tiling(tile_size=256, overlap=64, margin=margin)
        bundle = make_varied_bundle(tmp_path / f"b{margin}", tiling=tiling)
        for block in (512, 4096):
            out = tmp_path / f"m{margin}-{block}"
            (summary,) = _map(out, bundle, scene, block_size=block)
            assert summary["valid_pixels"] == HEIGHT * WIDTH
            assert summary["tile_grid"]["margin_px"] == margin
            maps[margin, block] = read_band(out / "city_damage_prob.tif").astype(int)
    assert (maps[24, 512] != 255).all()  # no nodata hole where only a margin lies
    assert np.abs(maps[24, 512] - maps[24, 4096]).max() <= 1
    assert np.abs(maps[24, 512] - maps[0, 512]).max() > 1  # the margin changes the blend


def test_outputs_are_valid_cogs_on_the_input_grid(reference, scene):
    out, summary = reference
    with rasterio.open(scene) as src:
        grid = (src.crs, src.transform, src.width, src.height)
    for name in ("city_damage_prob.tif", "city_damage.tif"):
        valid, errors, _ = cog_validate(str(out / name))
        assert valid, errors
        with rasterio.open(out / name) as ds:
            assert (ds.crs, ds.transform, ds.width, ds.height) == grid
            assert ds.nodata == 255 and ds.dtypes[0] == "uint8" and ds.overviews(1)
    prob = read_band(out / "city_damage_prob.tif")
    damage = read_band(out / "city_damage.tif")
    assert prob.max() < 255, "every valid pixel is predicted"
    assert set(np.unique(damage)) <= {0, 1}
    threshold = summary["model"]["threshold"]
    assert np.array_equal(damage == 1, prob / 255 > threshold)
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "city_damage.gpkg",
        "city_damage.qml",
        "city_damage.tif",
        "city_damage_prob.qml",
        "city_damage_prob.tif",
        "city_grid.gpkg",
        "city_map",
        "city_quicklook.png",
        "city_report.html",
        "city_summary.json",
    ]


def test_summary_reports_the_run(reference):
    _, s = reference
    assert s["pixels"] == s["valid_pixels"] == HEIGHT * WIDTH and s["skipped_pixels"] == 0
    assert s["backend"] == "torch" and s["device"] == "cpu" and s["precision"] == "fp32"
    assert set(s["times"]) >= {"read", "transfer", "compute", "blend", "write", "finalise"}
    assert s["mpx_per_s"] > 0 and s["km2_per_hour"] > 0
    assert s["area_km2"] == pytest.approx(HEIGHT * WIDTH * 0.25 / 1e6)
    assert s["model"]["backbone"] == "tiny" and len(s["model"]["hash"]) == 64
    assert s["inputs"][0]["gsd_m"] == [0.5, 0.5] and not s["inputs"][0]["resampled"]
    assert s["damaged_area_m2"] == pytest.approx(s["damaged_pixels"] * 0.25, rel=1e-6)


def test_a_raster_smaller_than_one_tile_is_fully_predicted(tmp_path, bundle):
    small = write_raster(tmp_path / "small.tif", smooth_image(50, 70))
    _map(tmp_path / "out", bundle, small)
    prob = read_band(tmp_path / "out" / "small_damage_prob.tif")
    assert prob.shape == (50, 70) and prob.max() < 255


def test_uint16_input_is_scaled_like_the_same_uint8_image(tmp_path, bundle):
    image8 = smooth_image(300, 260)
    image16 = (image8.astype(np.uint32) * 4095 // 255).astype(np.uint16)
    _map(tmp_path / "a", bundle, write_raster(tmp_path / "a.tif", image8))
    _map(tmp_path / "b", bundle, write_raster(tmp_path / "b.tif", image16))
    a = read_band(tmp_path / "a" / "a_damage_prob.tif").astype(int)
    b = read_band(tmp_path / "b" / "b_damage_prob.tif").astype(int)
    assert np.abs(a - b).max() <= 2


def _invalid_region(height: int, width: int) -> np.ndarray:
    invalid = np.zeros((height, width), dtype=bool)
    invalid[:, : width // 3] = True
    invalid[200:260, 400:] = True
    return invalid


@pytest.mark.parametrize("kind", ["alpha", "nodata", "internal_mask"])
def test_masked_pixels_are_nodata_in_both_outputs(tmp_path, bundle, kind):
    height, width = 560, 600
    image = smooth_image(height, width)
    invalid = _invalid_region(height, width)
    path = tmp_path / f"{kind}.tif"
    if kind == "alpha":
        alpha = np.where(invalid, 0, 255).astype(np.uint8)
        write_raster(path, np.concatenate([image, alpha[None]]), photometric="RGB", alpha="YES")
    elif kind == "nodata":
        image[:, invalid] = 0
        image[image == 0] = 1  # no valid pixel may look like nodata in every band
        image[:, invalid] = 0
        write_raster(path, image, nodata=0)
    else:
        write_raster(path, image)
        with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(path, "r+") as ds:
            ds.write_mask(np.where(invalid, 0, 255).astype(np.uint8))
    (summary,) = _map(tmp_path / "out", bundle, path, block_size=512)
    prob = read_band(tmp_path / "out" / f"{kind}_damage_prob.tif")
    damage = read_band(tmp_path / "out" / f"{kind}_damage.tif")
    assert np.all(prob[invalid] == 255) and np.all(damage[invalid] == 255)
    assert np.all(prob[~invalid] < 255) and np.all(damage[~invalid] < 2)
    assert summary["valid_pixels"] == int((~invalid).sum())
    assert summary["inputs"][0]["bands"] == {"red": 1, "green": 2, "blue": 3}


def test_blocks_without_a_valid_pixel_never_reach_the_model(tmp_path, bundle):
    image = smooth_image(600, 1100)
    image[:, :, :512] = 0  # the first column of blocks is empty
    path = write_raster(tmp_path / "edge.tif", image, nodata=0)
    (summary,) = _map(tmp_path / "out", bundle, path, block_size=512)
    assert summary["skipped_pixels"] == 600 * 512
    assert summary["valid_pixels"] == 600 * (1100 - 512)


def test_geographic_crs_works_and_reports_gsd_in_metres(tmp_path, bundle):
    # about 0.5 m at 37° N: 0.5 / 111320 degrees of latitude, more in longitude
    dlat = 0.5 / 110_990
    dlon = 0.5 / (111_320 * np.cos(np.radians(37.0)))
    transform = from_origin(37.0, 37.0, dlon, dlat)
    path = write_raster(
        tmp_path / "geo.tif", smooth_image(300, 300), crs="EPSG:4326", transform=transform
    )
    (summary,) = _map(tmp_path / "out", bundle, path)
    gsd = summary["inputs"][0]["gsd_m"]
    assert gsd == pytest.approx([0.5, 0.5], rel=0.02) and not summary["inputs"][0]["resampled"]
    with rasterio.open(tmp_path / "out" / "geo_damage_prob.tif") as ds:
        assert ds.crs.to_epsg() == 4326 and ds.transform.almost_equals(transform)


@pytest.mark.parametrize("gsd", [0.3, 0.8])
def test_a_different_gsd_is_resampled_and_brought_back_on_the_input_grid(tmp_path, bundle, gsd):
    height, width = 560, 480
    image = smooth_image(height, width)
    invalid = _invalid_region(height, width)
    image[:, invalid] = 0
    path = write_raster(tmp_path / "fine.tif", image, gsd=gsd, nodata=0)
    runs = {}
    for block in (512, 4096):
        (runs[block],) = _map(tmp_path / str(block), bundle, path, block_size=block)
    s = runs[512]
    assert s["inputs"][0]["resampled"]
    # model pixels of the model's GSD to a step (model_scale), on the world's lattice: the
    # grid starts up to one model pixel before the raster's corner
    scale = model_scale(gsd / 0.5)
    for got, size in zip(s["inputs"][0]["model_grid"], (height, width), strict=True):
        assert np.ceil(size * scale) <= got <= np.ceil(size * scale) + 1
    prob = read_band(tmp_path / "512" / "fine_damage_prob.tif")
    with rasterio.open(tmp_path / "512" / "fine_damage_prob.tif") as ds, rasterio.open(path) as src:
        assert (ds.transform, ds.width, ds.height) == (src.transform, src.width, src.height)
    valid = image.any(axis=0)
    assert np.all(prob[~valid] == 255) and np.all(prob[valid] < 255)
    other = read_band(tmp_path / "4096" / "fine_damage_prob.tif")
    assert np.abs(prob.astype(int) - other.astype(int)).max() <= 1


def test_a_rotated_geotransform_is_mapped_and_kept(tmp_path, bundle):
    transform = Affine.translation(500000, 4200000) @ Affine.rotation(20) @ Affine.scale(0.5, -0.5)
    path = write_raster(tmp_path / "rot.tif", smooth_image(200, 240), transform=transform)
    (summary,) = _map(tmp_path / "out", bundle, path)
    with rasterio.open(tmp_path / "out" / "rot_damage_prob.tif") as ds:
        assert ds.transform.almost_equals(transform)
    assert summary["inputs"][0]["gsd_m"] == pytest.approx([0.5, 0.5])
    assert any("rotated" in note for note in summary["inputs"][0]["notes"])


def test_bands_option_picks_and_orders_the_bands(tmp_path, bundle):
    image = smooth_image(200, 220, bands=5, seed=3)
    multi = write_raster(tmp_path / "multi.tif", image)
    rgb = write_raster(tmp_path / "rgb.tif", image[[3, 1, 0]])
    (summary,) = _map(tmp_path / "a", bundle, multi, bands=(4, 2, 1))
    _map(tmp_path / "b", bundle, rgb)
    assert summary["inputs"][0]["bands"] == {"red": 4, "green": 2, "blue": 1}
    a = read_band(tmp_path / "a" / "multi_damage_prob.tif")
    b = read_band(tmp_path / "b" / "rgb_damage_prob.tif")
    assert np.array_equal(a, b)


def test_several_inputs_each_get_their_outputs(tmp_path, bundle):
    one = write_raster(tmp_path / "one.tif", smooth_image(130, 140, seed=1))
    two = write_raster(tmp_path / "two.tif", smooth_image(150, 120, seed=2))
    summaries = _map(tmp_path / "out", bundle, one, two)
    assert [s["inputs"][0]["path"] for s in summaries] == [str(one), str(two)]
    for stem in ("one", "two"):
        assert (tmp_path / "out" / f"{stem}_damage_prob.tif").exists()
    assert not any(p.name.startswith(".") for p in (tmp_path / "out").iterdir())


def test_progress_counts_every_pixel_once(tmp_path, bundle, scene):
    done: list[int] = []

    @contextmanager
    def progress(name: str, total: int):
        assert (name, total) == ("city", HEIGHT * WIDTH)
        yield done.append

    run_inference(
        [str(scene)], tmp_path, InferOptions(model=str(bundle), block_size=512), progress=progress
    )
    assert sum(done) == HEIGHT * WIDTH and len(done) == 4


@pytest.mark.gpu
def test_cuda_gives_the_cpu_probabilities_within_fp_tolerance(tmp_path, bundle, scene, reference):
    ref_dir, _ = reference
    (summary,) = _map(tmp_path, bundle, scene, device="cuda", precision="fp32", block_size=512)
    assert summary["device"].startswith("cuda")
    got = read_band(tmp_path / "city_damage_prob.tif").astype(int)
    expected = read_band(ref_dir / "city_damage_prob.tif").astype(int)
    assert np.abs(got - expected).max() <= 1
    (half,) = _map(tmp_path / "auto", bundle, scene, device="cuda")
    assert half["precision"] in ("bf16", "fp16")
    got = read_band(tmp_path / "auto" / "city_damage_prob.tif").astype(int)
    assert np.percentile(np.abs(got - expected), 99.9) <= 3


def test_vrt_and_vsi_paths_are_read_like_files(tmp_path, bundle, scene, reference):
    ref_dir, _ = reference
    vrt = tmp_path / "city.vrt"
    rasterio.shutil.copy(str(scene), str(vrt), driver="VRT")
    archive = tmp_path / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.write(scene, "city.tif")
    expected = read_band(ref_dir / "city_damage_prob.tif")
    for i, path in enumerate([str(vrt), f"/vsizip/{archive}/city.tif"]):
        (summary,) = run_inference(
            [path], tmp_path / str(i), InferOptions(model=str(bundle), block_size=4096)
        )
        assert summary["inputs"][0]["path"] == path
        assert np.array_equal(read_band(tmp_path / str(i) / "city_damage_prob.tif"), expected)


def test_mirror_pad_equals_gathering_every_pixel():
    """The edge blocks' padding: a slice copy of the middle plus gathered margins must
    equal gathering each mirrored pixel, for any window on any raster (tiny ones too)."""
    rng = np.random.default_rng(0)
    checked = 0
    while checked < 300:
        height, width = (int(v) for v in rng.integers(1, 60, 2))
        r0, c0 = int(rng.integers(-50, height)), int(rng.integers(-50, width))
        r1, c1 = (
            int(rng.integers(max(r0, 0) + 1, height + 50)),
            int(rng.integers(max(c0, 0) + 1, width + 50)),
        )
        rows, cols = reflect_index(r0, r1, height), reflect_index(c0, c1, width)
        image = torch.from_numpy(rng.integers(0, 255, (3, height, width), dtype=np.uint8))
        source = image[:, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        rows, cols = rows - rows.min(), cols - cols.min()
        want = source.index_select(1, torch.from_numpy(rows))
        want = want.index_select(2, torch.from_numpy(cols))
        row_span = slice(max(0, -r0), min(r1, height) - r0)
        col_span = slice(max(0, -c0), min(c1, width) - c0)
        assert torch.equal(mirror_pad(source, rows, cols, row_span, col_span), want)
        checked += 1


@pytest.mark.parametrize("timings", [False, True])
def test_the_device_is_synchronised_per_stage_only_when_timings_are_asked_for(
    tmp_path, bundle, scene, monkeypatch, timings
):
    """Three synchronisations a mapped block with timings; none without (issue 18, point 5)."""
    calls: list[torch.device] = []
    monkeypatch.setattr("stmap.runtime.pipeline.synchronize", calls.append)
    (summary,) = _map(tmp_path, bundle, scene, block_size=512, timings=timings)
    assert summary["blocks"] == 4
    assert summary["timings"] is timings
    assert len(calls) == (3 * summary["blocks"] if timings else 0)

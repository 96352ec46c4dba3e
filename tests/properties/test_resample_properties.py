"""Resampling to the model's GSD and back keeps the input's grid, for any GSD and size.

When the input's pixels are more than 10 % off the model's GSD the model runs on a
virtual grid of model pixels counted from the CRS origin (so it starts up to one model
pixel before the raster's corner); outputs come back onto the input's grid by bilinear
interpolation. tests/runtime/test_pipeline.py maps two GSDs end to end and
tests/runtime/test_blend.py interpolates at two scales; here GSDs (anisotropic
included), sizes and scales are arbitrary.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from rasterio.transform import from_origin

from stmap.bundle import open_bundle
from stmap.runtime.blend import interpolate
from stmap.runtime.grid import (
    SCALE_STEPS,
    BlockPlan,
    TileGrid,
    bilinear_taps,
    default_overlap,
    model_grid_size,
    model_span,
)
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.plan import RESAMPLE_TOLERANCE, plan_input
from tests.conftest import make_tiny_bundle
from tests.properties.profiles import examples
from tests.runtime.infer_data import smooth_image, write_raster

MODEL_GSD = 0.5  # make_tiny_bundle's
scales = st.floats(0.2, 5.0, allow_nan=False)
offsets = st.floats(0.0, 1.0, exclude_max=True, allow_nan=False)
gsds = st.floats(0.1, 2.5, allow_nan=False)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@given(st.integers(1, 50_000), st.integers(1, 50_000), scales, scales, offsets, offsets)
def test_the_model_grid_covers_the_raster_by_less_than_one_model_pixel(
    height, width, sr, sc, off_r, off_c
):
    rows, cols = model_grid_size(height, width, (sr, sc), (off_r, off_c))
    for model, size, scale, off in ((rows, height, sr, off_r), (cols, width, sc, off_c)):
        far = size * scale + off  # the raster's far edge, in model pixels from the grid's corner
        assert model >= 1
        assert model >= far * (1 - 1e-12)  # model pixels reach the far edge
        assert model == 1 or model - 1 < far  # and not one pixel beyond


@given(st.integers(0, 3000), st.integers(1, 500), scales, st.integers(2, 5000), offsets, st.data())
def test_bilinear_resampling_reproduces_a_linear_field_between_the_edges(
    start, length, scale, model_size, offset, data
):
    """Interpolation is exact on a plane, so resampling there and back loses nothing."""
    # At scale 1 the model grid is the raster's own: output pixels lie inside it.
    assume(scale != 1.0 or start + length <= model_size)
    if scale == 1.0:
        offset = 0.0
    lo, hi = model_span(start, start + length, scale, model_size, offset)
    slope = data.draw(st.floats(-10, 10, allow_nan=False))
    field = torch.from_numpy(np.arange(lo, hi, dtype=np.float64) * slope).float()[:, None]
    taps = bilinear_taps(start, start + length, scale, model_size, lo, offset)
    got = interpolate(field, taps, bilinear_taps(0, 1, 1.0, 1, 0))[:, 0].numpy()
    centres = (np.arange(start, start + length) + 0.5) * scale + offset - 0.5  # model coords
    inside = (centres >= 0) & (centres <= model_size - 1)
    np.testing.assert_allclose(
        got[inside], centres[inside] * slope, atol=1e-4 * max(1.0, abs(slope) * model_size)
    )


@examples(ci=30)
@given(st.integers(1, 700), st.integers(1, 700), gsds, gsds)
def test_an_off_gsd_raster_is_planned_on_a_model_grid_fixed_in_the_world(
    bundle, height, width, gsd_x, gsd_y
):
    manifest = open_bundle(bundle).manifest
    transform = from_origin(500000.0, 4200000.0, gsd_x, gsd_y)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scene.tif"
        profile = dict(driver="GTiff", width=width, height=height, count=3, dtype="uint8")
        with rasterio.open(path, "w", crs="EPSG:32637", transform=transform, **profile) as dst:
            dst.write(np.full((3, height, width), 100, np.uint8))
        plan = plan_input(str(path), manifest, InferOptions(model=str(bundle)))
    ratios = (gsd_y / MODEL_GSD, gsd_x / MODEL_GSD)
    if all(abs(r - 1) <= RESAMPLE_TOLERANCE for r in ratios):
        assert plan.scale == (1.0, 1.0) and plan.model_shape == (height, width)
        return
    # the ratio rounded to a step of 2^(1/SCALE_STEPS): a model pixel within 0.55 % of the GSD
    steps = np.log2(plan.scale) * SCALE_STEPS
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-9)
    np.testing.assert_allclose(np.log2(plan.scale), np.log2(ratios), atol=0.5 / SCALE_STEPS)
    rows, cols = plan.model_shape
    model = plan.model_transform
    np.testing.assert_allclose((model.a, -model.e), (gsd_x / plan.scale[1], gsd_y / plan.scale[0]))
    # the model grid's pixels are the world's: whole model pixels from the CRS origin,
    # and the raster's corner lies less than one model pixel inside the grid's
    origin_col, origin_row = ~model * (0, 0)
    assert abs(origin_col - round(origin_col)) < 1e-6 and abs(origin_row - round(origin_row)) < 1e-6
    corner_col, corner_row = ~model * (transform * (0, 0))
    assert -1e-6 <= corner_col < 1 + 1e-6 and -1e-6 <= corner_row < 1 + 1e-6
    # the model grid ends within one model pixel past the input's far corner
    far_x, far_y = transform * (width, height)
    end_x, end_y = model * (cols, rows)
    assert far_x - 1e-6 <= end_x < far_x + model.a + 1e-6
    assert far_y + 1e-6 >= end_y > far_y + model.e - 1e-6
    # and the blocks come back as a partition of the input's own grid
    grid = TileGrid(rows, cols, manifest.tile_size, default_overlap(manifest.tile_size))
    owner = np.zeros((height, width), dtype=int)
    for block in BlockPlan(height, width, 512, grid, plan.scale, plan.model_offset):
        owner[block.out.row_off : block.out.row_stop, block.out.col_off : block.out.col_stop] += 1
        assert block.region.clip(rows, cols) == block.region
    assert np.all(owner == 1)


@examples(ci=3)
@given(st.integers(60, 300), st.integers(60, 300), gsds, gsds)
def test_maps_of_an_off_gsd_raster_come_back_on_its_grid(bundle, height, width, gsd_x, gsd_y):
    assume(any(abs(g / MODEL_GSD - 1) > RESAMPLE_TOLERANCE for g in (gsd_x, gsd_y)))
    transform = from_origin(500000.0, 4200000.0, gsd_x, gsd_y)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_raster(
            Path(tmp) / "scene.tif", smooth_image(height, width), transform=transform
        )
        (summary,) = run_inference([str(path)], Path(tmp) / "out", InferOptions(model=str(bundle)))
        with rasterio.open(Path(tmp) / "out" / "scene_damage_prob.tif") as out:
            grid = (out.crs.to_epsg(), out.transform, out.width, out.height)
            prob = out.read(1)
    assert summary["inputs"][0]["resampled"]
    assert grid == (32637, transform, width, height)
    assert prob.max() < 255, "every input pixel has a probability"


def test_a_raster_off_the_model_gsd_along_one_axis_only_is_mapped(bundle, tmp_path):
    transform = from_origin(500000.0, 4200000.0, MODEL_GSD, 0.8)  # 0.5 m across, 0.8 m down
    path = write_raster(tmp_path / "scene.tif", smooth_image(300, 1100), transform=transform)
    run_inference([str(path)], tmp_path / "out", InferOptions(model=str(bundle), block_size=512))
    with rasterio.open(tmp_path / "out" / "scene_damage_prob.tif") as out:
        assert (out.transform, out.width, out.height) == (transform, 1100, 300)

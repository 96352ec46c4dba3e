"""Blending: weights that never vanish, sum to one, and match a direct computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stmap.runtime.blend import Blender, axis_weight_sum, interpolate, ramp
from stmap.runtime.grid import BlockPlan, TileGrid, bilinear_taps, model_span


@given(st.sampled_from([16, 64, 128]), st.data())
def test_ramp_is_positive_symmetric_and_a_partition_of_unity(tile, data):
    overlap = data.draw(st.integers(0, tile // 2))
    w = ramp(tile, overlap)
    assert np.all(w > 0) and np.all(w <= 1) and np.allclose(w, w[::-1])
    stride = tile - overlap
    # where two neighbours overlap, their weights sum to exactly one
    assert np.allclose(w[stride:] + w[: tile - stride], 1.0)


@given(st.sampled_from([64, 128, 512]), st.data())
def test_a_margin_weighs_nothing_and_the_ramps_still_partition_unity(tile, data):
    overlap = data.draw(st.integers(3, tile // 2))
    margin = data.draw(st.integers(1, (overlap - 1) // 2))
    w = ramp(tile, overlap, margin)
    assert np.all(w[:margin] == 0) and np.all(w[-margin:] == 0)
    assert np.all(w[margin:-margin] > 0) and np.allclose(w, w[::-1])
    stride = tile - overlap
    assert np.allclose(w[stride:] + w[: tile - stride], 1.0)
    np.testing.assert_array_equal(ramp(tile, overlap, 0), ramp(tile, overlap))


def _reference(plan: BlockPlan, probs: dict[tuple[int, int], np.ndarray]) -> np.ndarray:
    """Blend every tile of the whole raster directly, pixel by pixel weights."""
    grid = plan.grid
    w = ramp(grid.tile, grid.overlap, grid.margin)
    w2 = np.outer(w, w)
    pad = grid.tile
    acc = np.zeros((grid.height + 2 * pad, grid.width + 2 * pad))
    norm = np.zeros_like(acc)
    for (i, j), p in probs.items():
        r, c = grid.rows.origin(i) + pad, grid.cols.origin(j) + pad
        acc[r : r + grid.tile, c : c + grid.tile] += w2 * p
        norm[r : r + grid.tile, c : c + grid.tile] += w2
    return acc[pad:-pad, pad:-pad] / norm[pad:-pad, pad:-pad]


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 700),
    st.integers(1, 700),
    st.sampled_from([(32, 8, 0), (32, 0, 0), (16, 6, 0), (32, 12, 4), (48, 20, 9)]),
)
def test_blocks_blend_exactly_like_the_whole_raster(height, width, tiling):
    tile, overlap, margin = tiling
    plan = BlockPlan(height, width, 512, TileGrid(height, width, tile, overlap, margin=margin))
    grid = plan.grid
    rng = np.random.default_rng(height * 1000 + width)
    probs = {
        (i, j): rng.random((tile, tile))
        for i in range(grid.rows.count)
        for j in range(grid.cols.count)
    }
    if margin:  # what a tile's margin holds never reaches the map
        for p in probs.values():
            p[:margin], p[-margin:], p[:, :margin], p[:, -margin:] = 1e6, 1e6, 1e6, 1e6
    expected = _reference(plan, probs)
    blender = Blender(grid, torch.device("cpu"))
    for block in plan:
        stack = np.stack([probs[(i, j)] for i in block.tile_rows for j in block.tile_cols])
        got = blender(torch.from_numpy(stack[:, None]).float(), block).numpy()
        out = block.out
        np.testing.assert_allclose(
            got, expected[out.row_off : out.row_stop, out.col_off : out.col_stop], atol=1e-5
        )
        assert np.isfinite(got).all() and got.max() <= 1.0  # every pixel weighed, no margin


def test_constant_predictions_stay_constant_up_to_the_raster_edges():
    plan = BlockPlan(300, 200, 512, TileGrid(300, 200, 128, 16))
    (block,) = plan
    n = len(block.tile_rows) * len(block.tile_cols)
    got = Blender(plan.grid, torch.device("cpu"))(torch.full((n, 1, 128, 128), 0.3), block)
    assert got.shape == (300, 200)
    np.testing.assert_allclose(got.numpy(), 0.3, rtol=1e-5)


def test_axis_weight_sum_is_one_in_the_interior():
    plan = BlockPlan(2000, 2000, 512, TileGrid(2000, 2000, 128, 16))
    block = plan.block(5)
    sums = axis_weight_sum(
        plan.grid.rows, block.tile_rows, block.region.row_off, block.region.row_stop, ramp(128, 16)
    )
    assert np.allclose(sums, 1.0)


@pytest.mark.parametrize("scale", [0.6, 1.7])
def test_interpolate_reproduces_a_linear_ramp_between_the_edges(scale):
    model = 200
    start, stop = 20, 90
    lo, hi = model_span(start, stop, scale, model)
    region = torch.arange(lo, hi, dtype=torch.float32)[:, None].repeat(1, 3)
    taps = bilinear_taps(start, stop, scale, model, lo)
    cols = bilinear_taps(0, 3, 1.0, 3, 0)
    got = interpolate(region, taps, cols)[:, 0].numpy()
    expected = (np.arange(start, stop) + 0.5) * scale - 0.5  # model coordinate of each centre
    np.testing.assert_allclose(got, expected, atol=1e-4)

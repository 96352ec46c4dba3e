"""Blending weights sum to one wherever a pixel is covered, for any tile, overlap and block.

tests/runtime/test_blend.py compares blocks with a direct blend at three tile/overlap
pairs and 512-px blocks; here the tile, the overlap (up to tile − 1, where three or
more tiles share a pixel) and the block size are arbitrary.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st

from stmap.runtime.blend import Blender, axis_weight_sum, ramp
from stmap.runtime.grid import BlockPlan, TileGrid
from tests.properties.profiles import examples

CPU = torch.device("cpu")


@st.composite
def plans(draw) -> BlockPlan:
    tile = draw(st.integers(4, 48))
    overlap = draw(st.integers(0, tile - 1))
    height, width = draw(st.integers(1, 160)), draw(st.integers(1, 160))
    block = draw(st.integers(1, 200))
    return BlockPlan(height, width, block, TileGrid(height, width, tile, overlap))


def _block_tiles(plan: BlockPlan, block, values: np.ndarray) -> torch.Tensor:
    """(N, 1, T, T) float32 tiles of ``block``, each filled with its entry of ``values``."""
    t = plan.grid.tile
    picked = values[
        block.tile_rows.start : block.tile_rows.stop, block.tile_cols.start : block.tile_cols.stop
    ]
    return torch.from_numpy(
        np.repeat(picked.reshape(-1, 1, 1, 1), t * t, axis=1).reshape(-1, 1, t, t)
    ).float()


@given(st.integers(1, 512), st.data())
def test_the_window_never_vanishes_and_neighbours_sum_to_one(tile, data):
    overlap = data.draw(st.integers(0, tile - 1))
    w = ramp(tile, overlap)
    assert w.shape == (tile,) and np.all(w > 0) and np.all(w <= 1)
    assert np.allclose(w, w[::-1])
    if 2 * overlap <= tile:  # two tiles at most share a pixel: their ramps sum to one
        stride = tile - overlap
        assert np.allclose(w[stride:] + w[: tile - stride], 1.0)


@examples(ci=60)
@given(plans(), st.floats(0.0, 1.0))
def test_normalised_weights_sum_to_one_on_every_covered_pixel(plan, value):
    """A constant prediction comes out unchanged: Σ wᵢ·c / Σ wᵢ = c on every pixel."""
    grid = plan.grid
    blender = Blender(grid, CPU)
    for block in plan:
        region = block.region
        for axis, tiles, start, stop in (
            (grid.rows, block.tile_rows, region.row_off, region.row_stop),
            (grid.cols, block.tile_cols, region.col_off, region.col_stop),
        ):
            assert axis_weight_sum(axis, tiles, start, stop, blender.window).min() > 0
        n = len(block.tile_rows) * len(block.tile_cols)
        got = blender(torch.full((n, 1, grid.tile, grid.tile), value), block)
        assert got.shape == (region.height, region.width)
        np.testing.assert_allclose(got.numpy(), value, atol=1e-5)


@examples(ci=60)
@given(plans(), st.data())
def test_a_blended_pixel_lies_between_the_tiles_that_cover_it(plan, data):
    """Weights are positive and normalised, so the blend is a convex combination."""
    grid = plan.grid
    seed = data.draw(st.integers(0, 2**32 - 1))
    values = np.random.default_rng(seed).random((grid.rows.count, grid.cols.count))
    blender = Blender(grid, CPU)
    for block in plan:
        got = blender(_block_tiles(plan, block, values), block).numpy()
        for r in range(block.region.height):
            row = block.region.row_off + r
            rows = grid.rows.intersecting(row, row + 1)
            for c in range(0, block.region.width, max(1, block.region.width // 7)):
                col = block.region.col_off + c
                cols = grid.cols.intersecting(col, col + 1)
                covering = values[rows.start : rows.stop, cols.start : cols.stop]
                assert covering.min() - 1e-5 <= got[r, c] <= covering.max() + 1e-5

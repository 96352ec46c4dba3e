"""The tile grid covers every pixel, with the declared overlap, for any size, tile and block.

tests/runtime/test_grid.py checks the tiles a block reads at the CLI's block sizes and
three tile sizes; here tile, overlap and block size are arbitrary, and coverage is
counted pixel by pixel in two dimensions.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmap.errors import InputError
from stmap.runtime.grid import AxisTiles, BlockPlan, TileGrid, check_overlap


@st.composite
def tile_and_overlap(draw, max_tile: int = 160) -> tuple[int, int]:
    """Any tile size ≥ 2 and any overlap the CLI accepts (0 ≤ overlap < tile)."""
    tile = draw(st.integers(2, max_tile))
    return tile, draw(st.integers(0, tile - 1))


@st.composite
def grids(draw, max_side: int = 400) -> TileGrid:
    tile, overlap = draw(tile_and_overlap())
    height, width = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    stride = tile - overlap
    shift = (draw(st.integers(0, stride - 1)), draw(st.integers(0, stride - 1)))
    return TileGrid(height, width, tile, overlap, shift)


def _coverage(axis: AxisTiles) -> np.ndarray:
    """(size,) how many tiles of ``axis`` hold each pixel."""
    count = np.zeros(axis.size, dtype=int)
    for k in range(axis.count):
        start = axis.origin(k)
        count[max(start, 0) : max(min(start + axis.tile, axis.size), 0)] += 1
    return count


@given(st.integers(1, 20_000), tile_and_overlap(max_tile=512))
def test_neighbouring_tiles_overlap_by_exactly_the_declared_overlap(size, tile_overlap):
    tile, overlap = tile_overlap
    axis = AxisTiles(size, tile, overlap)
    origins = np.array([axis.origin(k) for k in range(axis.count)])
    spans = np.stack([origins, origins + tile], axis=1)
    shared = spans[:-1, 1] - spans[1:, 0]
    assert np.all(shared == overlap)
    # without a shift the halo is centred: the first tile starts overlap // 2 before
    assert origins[0] == -(overlap // 2)
    assert origins[-1] < size <= origins[-1] + tile


@given(grids())
def test_every_pixel_is_covered_and_none_more_often_than_the_overlap_implies(grid):
    rows, cols = _coverage(grid.rows), _coverage(grid.cols)
    covered = np.outer(rows, cols)
    assert covered.min() >= 1
    # no pixel lies in more tiles of an axis than the overlap implies: ⌈T / S⌉
    for axis, count in ((grid.rows, rows), (grid.cols, cols)):
        assert count.max() <= -(-axis.tile // axis.stride)


@given(grids(max_side=300), st.integers(1, 400))
def test_any_block_size_partitions_the_raster_and_needs_exactly_its_tiles(grid, block_size):
    plan = BlockPlan(grid.height, grid.width, block_size, grid)
    owner = np.full((grid.height, grid.width), -1)
    used = np.zeros((grid.rows.count, grid.cols.count), dtype=bool)
    for block in plan:
        out = block.out
        window = owner[out.row_off : out.row_stop, out.col_off : out.col_stop]
        assert np.all(window == -1), "blocks never overlap"
        window[...] = block.index
        assert block.region == out  # no resampling: the block needs its own pixels
        # exactly the tiles holding a region pixel, so blending per block is blending globally
        for axis, tiles, start, stop in (
            (grid.rows, block.tile_rows, out.row_off, out.row_stop),
            (grid.cols, block.tile_cols, out.col_off, out.col_stop),
        ):
            touching = [
                k
                for k in range(axis.count)
                if axis.origin(k) < stop and axis.origin(k) + axis.tile > start
            ]
            assert list(tiles) == touching
        used[
            block.tile_rows.start : block.tile_rows.stop,
            block.tile_cols.start : block.tile_cols.stop,
        ] = True
    assert owner.min() == 0 and np.unique(owner).size == len(plan)
    assert used.all(), "every tile of the grid serves some block"


@given(st.integers(-300, 300), st.integers(1, 300))
def test_only_overlaps_from_zero_to_below_the_tile_are_accepted(overlap, tile):
    if 0 <= overlap < tile:
        assert check_overlap(overlap, tile) == overlap
    else:
        with pytest.raises(InputError, match=f"--overlap {overlap}: must be at least 0"):
            check_overlap(overlap, tile)

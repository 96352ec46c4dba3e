"""One tile grid fixed in the world, and the blocks that stream through it.

Pure geometry, no IO: frozen value objects in the manner of rasterio's ``Window``.

Tiles. The model sees T × T tiles with stride S = T − O for an overlap of O pixels;
tile k of an axis spans [k·S − pad − shift, … + T) with pad = O // 2, and as many
tiles as it takes to cover every pixel. The tiles' cores (their first S pixels past
the pad) lie on a lattice of the stride fixed in the CRS: every S-th model pixel
counted from the CRS origin (``world_shift``). Any crop, AOI, mosaic or neighbour on
the same pixel grid therefore gets the same tiles over the pixels it shares, and so
the same probabilities wherever those tiles see the same pixels: the answer at a
place does not depend on the extent processed. Pixels the tiles need beyond the
raster's edge are mirrored back into it (``reflect_index``), so a tile's input, and
hence its prediction, is a function of the raster and never of how the work is cut
up.

Blocks. Work streams in blocks of output pixels, aligned to the 512-px tiling of
the output GeoTIFFs so that every write fills whole tiles. A block needs the
model-grid pixels of its ``region`` (the block itself, or the neighbourhood that
bilinear resampling reads when the model runs on another grid); every tile of the
grid that touches the region contributes, and their union is the block's ``read``
window (region + halo). The tiles that neighbouring blocks share are computed once
and handed from one block to the next (the pipeline's ``SharedTiles``); a block that
arrives before its neighbour computes them itself, so no block waits for another and
the result is the same for any block size.

Resampling. When the input's ground sample distance differs from the model's, the
model runs on a virtual grid of model-sized pixels, ``scale`` = input pixel size /
model pixel size model pixels per input pixel (per axis, rounded to steps of 1.1 % so
that crops of one raster, whose centres give ground sizes a hair apart, get the same
pixels). That grid is fixed in the world too: its pixels are every model pixel
counted from the CRS origin, so it starts ``offset`` model pixels (in [0, 1)) before the
raster's corner, and a crop of the raster, or its neighbour on the same pixel grid,
is resampled to the same model pixels — and so gets the same tiles and the same
answer. An output pixel's probability is the bilinear interpolation, at its centre,
of the model-grid probabilities (``bilinear_taps``), clamped at the edges.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from stmap.errors import InputError
from stmap.io.layout import TILE as COG_TILE  # blocks are multiples of the output tiles
from stmap.window import Window, lattice_cell

DEFAULT_BLOCK = 2048
MAX_AUTO_BLOCK = 8192
# A resampled grid's scale is a whole power of 2^(1/SCALE_STEPS) (steps of 1.1 %): at most
# 0.55 % off the ground size (the model maps GSDs within 10 % of its own unresampled).
SCALE_STEPS = 64


@dataclass(frozen=True)
class AxisTiles:
    """The tiles of one axis: tile k spans [k·stride − pad − shift, … + tile).

    shift: in [0, stride), moves the tiles back so that their cores fall on the world
        lattice (``world_shift``); tile 0's core holds pixel 0 whatever the shift.
    """

    size: int
    tile: int
    overlap: int
    shift: int = 0
    margin: int = 0  # each tile's outer pixels that the blend gives no weight (blend.ramp)

    def __post_init__(self) -> None:
        if self.size < 1 or self.tile < 1:
            raise ValueError(f"size and tile must be positive, got {self.size}, {self.tile}")
        check_overlap(self.overlap, self.tile)
        check_margin(self.margin, self.overlap)
        if not 0 <= self.shift < self.stride:
            raise ValueError(f"shift must lie in [0, {self.stride}), got {self.shift}")

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def pad(self) -> int:
        return self.overlap // 2

    @property
    def lead(self) -> int:
        """How far tile 0 starts before pixel 0."""
        return self.pad + self.shift

    @property
    def count(self) -> int:
        """Tiles needed so that the last one reaches the last pixel with a weighted (not
        margin) pixel."""
        return (
            max(0, math.ceil((self.size + self.lead + self.margin - self.tile) / self.stride)) + 1
        )

    def origin(self, k: int) -> int:
        return k * self.stride - self.lead

    def intersecting(self, start: int, stop: int) -> range:
        """Indices of the tiles that hold at least one pixel of [start, stop)."""
        first = (start + self.lead - self.tile) // self.stride + 1
        last = -(-(stop + self.lead) // self.stride) - 1
        return range(max(first, 0), min(last, self.count - 1) + 1)

    def span(self, tiles: range) -> tuple[int, int]:
        """[start, stop) of the pixels that ``tiles`` cover together."""
        return self.origin(tiles.start), self.origin(tiles.stop - 1) + self.tile


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of a ``height`` × ``width`` (model-grid) raster.

    shift: (rows, cols) of ``AxisTiles.shift``; (0, 0) tiles from the raster's corner.
    """

    height: int
    width: int
    tile: int
    overlap: int
    shift: tuple[int, int] = (0, 0)
    margin: int = 0

    @cached_property
    def rows(self) -> AxisTiles:
        return AxisTiles(self.height, self.tile, self.overlap, self.shift[0], self.margin)

    @cached_property
    def cols(self) -> AxisTiles:
        return AxisTiles(self.width, self.tile, self.overlap, self.shift[1], self.margin)

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def count(self) -> int:
        return self.rows.count * self.cols.count


@dataclass(frozen=True)
class Block:
    """One unit of streaming work.

    out: output pixels (on the input raster's grid), inside the raster.
    region: model-grid pixels whose probabilities ``out`` needs (``out`` itself
        when the model runs on the input grid).
    tile_rows, tile_cols: global indices of the tiles that touch ``region``.
    read: model-grid pixels those tiles cover; may reach past the raster's edges.
    source: the model-grid pixels inside the raster that ``read`` mirrors from.
    """

    index: int
    out: Window
    region: Window
    tile_rows: range
    tile_cols: range
    read: Window
    source: Window

    @property
    def tiles_shape(self) -> tuple[int, int]:
        return len(self.tile_rows), len(self.tile_cols)


@dataclass(frozen=True)
class BlockPlan:
    """Square blocks of ``block_size`` output pixels, row-major, over the global grid.

    height, width: the output (input raster) size.
    grid: the tile grid on the model grid (the input grid when ``scale`` is 1, 1).
    scale: (rows, cols) model pixels per output pixel.
    offset: (rows, cols) model pixels from the model grid's corner to the output's.
    """

    height: int
    width: int
    block_size: int
    grid: TileGrid
    scale: tuple[float, float] = (1.0, 1.0)
    offset: tuple[float, float] = (0.0, 0.0)

    def __post_init__(self) -> None:
        if self.block_size < 1:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.scale == (1.0, 1.0) and (self.grid.height, self.grid.width) != (
            self.height,
            self.width,
        ):
            raise ValueError("without resampling the tile grid must match the output size")

    @property
    def resampled(self) -> bool:
        return self.scale != (1.0, 1.0)

    @property
    def block_rows(self) -> int:
        return -(-self.height // self.block_size)

    @property
    def block_cols(self) -> int:
        return -(-self.width // self.block_size)

    def __len__(self) -> int:
        return self.block_rows * self.block_cols

    def __iter__(self) -> Iterator[Block]:
        return (self.block(i) for i in range(len(self)))

    def block(self, index: int) -> Block:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} of {len(self)}")
        row, col = divmod(index, self.block_cols)
        out = lattice_cell(row, col, self.block_size, self.height, self.width)
        (sy, sx), (oy, ox), grid = self.scale, self.offset, self.grid
        r0, r1 = model_span(out.row_off, out.row_stop, sy, grid.height, oy)
        c0, c1 = model_span(out.col_off, out.col_stop, sx, grid.width, ox)
        tile_rows = self.grid.rows.intersecting(r0, r1)
        tile_cols = self.grid.cols.intersecting(c0, c1)
        (rr0, rr1), (rc0, rc1) = self.grid.rows.span(tile_rows), self.grid.cols.span(tile_cols)
        (sr0, sr1), (sc0, sc1) = (
            mirrored_span(rr0, rr1, self.grid.height),
            mirrored_span(rc0, rc1, self.grid.width),
        )
        return Block(
            index=index,
            out=out,
            region=Window(r0, c0, r1 - r0, c1 - c0),
            tile_rows=tile_rows,
            tile_cols=tile_cols,
            read=Window(rr0, rc0, rr1 - rr0, rc1 - rc0),
            source=Window(sr0, sc0, sr1 - sr0, sc1 - sc0),
        )

    def below(self, index: int) -> int | None:
        """The block under block ``index``, if any."""
        below = index + self.block_cols
        return below if below < len(self) else None

    def right(self, index: int) -> int | None:
        """The block to the right of block ``index``, if any."""
        return index + 1 if (index + 1) % self.block_cols else None

    def max_source_pixels(self) -> int:
        """The largest ``source`` window of any block, in pixels: the size of a read buffer."""
        return max(block.source.size for block in self)


def shared_count(first: range, second: range) -> int:
    """How many tile indices two ranges of tiles have in common."""
    return max(0, min(first.stop, second.stop) - max(first.start, second.start))


def model_span(
    start: int, stop: int, scale: float, model_size: int, offset: float = 0.0
) -> tuple[int, int]:
    """Model-grid pixels [lo, hi) that output pixels [start, stop) interpolate from."""
    if scale == 1.0 and offset == 0.0:
        return start, stop
    lo = math.floor((start + 0.5) * scale + offset - 0.5)
    hi = math.floor((stop - 0.5) * scale + offset - 0.5) + 2
    return min(max(lo, 0), model_size - 1), min(max(hi, 1), model_size)


def bilinear_taps(
    start: int, stop: int, scale: float, model_size: int, region_start: int, offset: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where output pixels [start, stop) of one axis sample the model grid.

    Output pixel i's centre lies at model coordinate (i + 0.5)·scale + offset; it takes
    the two model pixels around it, clamped to the raster (edge values repeat). Returns
    (stop − start,) int64 indices ``lo``, ``hi`` relative to ``region_start`` and
    float32 weights ``frac`` of ``hi``: value = (1 − frac)·p[lo] + frac·p[hi].
    """
    v = (np.arange(start, stop, dtype=np.float64) + 0.5) * scale + offset - 0.5
    below = np.floor(v)
    frac = (v - below).astype(np.float32)
    lo = np.clip(below.astype(np.int64), 0, model_size - 1)
    hi = np.clip(below.astype(np.int64) + 1, 0, model_size - 1)
    # A tap of weight 0 must not reach past the region: at scale 1 (an axis at the
    # model's GSD) the region has no halo and the pixel itself is the exact value.
    hi = np.where(frac > 0, hi, lo)
    return lo - region_start, hi - region_start, frac


def reflect_index(start: int, stop: int, size: int) -> np.ndarray:
    """(stop − start,) int64 raster indices of pixels [start, stop) mirrored into [0, size).

    Mirroring excludes the edge pixel (numpy's ``reflect``) and repeats as often as
    needed, so it is defined for any window and any raster size ≥ 1.
    """
    x = np.arange(start, stop, dtype=np.int64)
    if size == 1:
        return np.zeros_like(x)
    period = 2 * (size - 1)
    x = np.mod(x, period)
    return np.where(x < size, x, period - x)


def mirrored_span(start: int, stop: int, size: int) -> tuple[int, int]:
    """[lo, hi) of the raster pixels that ``reflect_index(start, stop, size)`` takes."""
    if start >= 0 and stop <= size:
        return start, stop
    index = reflect_index(start, stop, size)
    return int(index.min()), int(index.max()) + 1


def model_grid_size(
    height: int,
    width: int,
    scale: tuple[float, float],
    offset: tuple[float, float] = (0.0, 0.0),
) -> tuple[int, int]:
    """(rows, cols) of the model grid covering a ``height`` × ``width`` raster that
    starts ``offset`` model pixels past the grid's corner."""
    if scale == (1.0, 1.0) and offset == (0.0, 0.0):
        return height, width
    return (
        max(1, math.ceil(height * scale[0] + offset[0])),
        max(1, math.ceil(width * scale[1] + offset[1])),
    )


def model_scale(ratio: float) -> float:
    """Model pixels per input pixel for an input of ``ratio`` × the model's GSD, rounded
    to a whole power of 2^(1/SCALE_STEPS): a ratio measured at a raster's centre
    (geographic and conformal CRSs) differs between a raster and its crop by a hair,
    which the world's lattice, counted from the CRS origin millions of pixels away,
    would turn into whole pixels; rounded, both get the same grid (unless the hair
    straddles a step: about one crop in a hundred that moves its centre by a km)."""
    return 2.0 ** (round(math.log2(ratio) * SCALE_STEPS) / SCALE_STEPS)


def lattice_offset(crs_origin_px: tuple[float, float]) -> tuple[float, float]:
    """(rows, cols) in [0, 1): how far past the world's lattice of model pixels (every
    model pixel counted from the CRS origin) a raster's corner lies, given the CRS
    origin's (row, col) in model pixels from that corner; (0, 0) without one."""
    offsets = []
    for origin in crs_origin_px:
        offset = (-origin) % 1.0 if math.isfinite(origin) else 0.0
        offsets.append(0.0 if offset >= 1.0 else offset)  # -1e-20 % 1.0 is 1.0
    return offsets[0], offsets[1]


@dataclass(frozen=True)
class WorldShift:
    """Where the world's tile lattice falls on one raster's model grid.

    shift: (rows, cols) ``AxisTiles.shift`` that puts the tiles' cores on the lattice.
    snapped_px: (rows, cols) how far, in model pixels, the raster's pixel corners lie
        past the lattice's (the world count of its pixel 0 minus the nearest whole
        count, in [-0.5, 0.5]): the tiles were snapped by that much. Zero for a raster
        whose pixel corners lie on multiples of the model pixel from the CRS origin;
        rasters on one pixel grid share it, and with it their tiles.
    """

    shift: tuple[int, int]
    snapped_px: tuple[float, float]


def world_shift(crs_origin_px: tuple[float, float], stride: int) -> WorldShift:
    """The tile shift that anchors a raster's tiles to the CRS origin.

    crs_origin_px: (row, col) of the CRS origin (0, 0) in the raster's model-grid pixel
        coordinates (``~model_transform * (0, 0)``, swapped); (0, 0) for a raster
        without georeferencing, which is tiled from its corner.
    Pixel 0 of an axis is pixel −origin of the world's count; the lattice holds every
    ``stride``-th pixel of that count, so tile 0's core starts ``(−origin) mod stride``
    pixels before pixel 0 (Python's ``%`` is non-negative for a positive stride).
    """
    shifts, snaps = [], []
    for origin in crs_origin_px:
        if not math.isfinite(origin):  # refused at planning; keep the geometry defined
            origin = 0.0
        nearest = round(origin)
        shifts.append(-nearest % stride)
        snaps.append(float(nearest - origin))
    return WorldShift((shifts[0], shifts[1]), (snaps[0], snaps[1]))


def default_overlap(tile: int) -> int:
    """The overlap ``stmap infer`` uses unless told or the model's manifest says
    otherwise (``tiling``, plan.run_overlap): a quarter of the tile (32 px at 128).

    This is for models that map only their training tile (a ViT). A CNN bundle's
    tiling cuts 512-px tiles overlapping by 64 instead, which takes the tile edges out
    of the picture at fewer model pixels (bundle.ANY_TILE_INFER).

    Why a quarter here: a tile's prediction near its edges depends on where the tile
    falls (zero padding, a receptive field wider than the tile), so the map moves
    when the grid's phase shifts. With the window ramping over the whole overlap, a
    pixel's value comes mostly from tiles that hold it 16+ px inside. On the
    shipped model in 128-px tiles, against crops at eight sub-stride offsets, this
    takes the damaged flags that flip from 45 % to 41 % of the flagged pixels and
    the p99 of |Δprob| from 58 to 53 (of 255), for 1.34× the tiles of tile / 8;
    see benchmarks/results/phase_stability.md.
    """
    return tile // 4


def check_overlap(overlap: int, tile: int) -> int:
    """``overlap`` if tiles of ``tile`` px can overlap by it, else InputError."""
    if not 0 <= overlap < tile:
        raise InputError(f"--overlap {overlap}: must be at least 0 and below the tile size {tile}")
    return overlap


def check_margin(margin: int, overlap: int) -> int:
    """``margin`` if tiles overlapping by ``overlap`` can leave it out of the blend: what
    one tile leaves out its neighbour must weigh fully, so twice it stays below the
    overlap."""
    if margin < 0:
        raise InputError(f"tile margin {margin}: must be at least 0")
    if 2 * margin >= max(overlap, 1):
        raise InputError(
            f"tile margin {margin}: twice it must lie below the overlap ({overlap} px)"
        )
    return margin


def choose_block_size(requested: int | None, input_block: tuple[int, int]) -> int:
    """The block edge in output pixels: ``requested``, or one that suits the input's tiling.

    Blocks are multiples of the 512-px output tiling. Without a request: 2048, or
    the input's own square internal tile when that is larger (up to 8192), so a
    block read never splits an input tile.
    """
    if requested is not None:
        if requested < COG_TILE or requested % COG_TILE:
            raise InputError(
                f"--block-size {requested}: must be a positive multiple of {COG_TILE} "
                "(the tile size of the output GeoTIFFs)"
            )
        return requested
    rows, cols = input_block
    if rows == cols and rows % COG_TILE == 0:
        return min(max(DEFAULT_BLOCK, rows), MAX_AUTO_BLOCK)
    return DEFAULT_BLOCK

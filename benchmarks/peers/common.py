"""What the three peers share, so that they differ only in how each tool is used.

Every peer runs the same model through the same forward function as `stmap infer
--backend torch` (the bundle's ``InferenceModel``, fp32 on the CPU): the comparison
measures the pipeline around the model, never two implementations of the model.
Every peer writes what `stmap infer` writes as its probability raster: one uint8
band, probability × 255 (1.0 stored as 254, 255 is nodata), on the input's grid.

Stitching. The peers cut tiles of the model's size on a regular grid whose stride
is tile − overlap, and keep each tile's middle: ``overlap / 2`` pixels are cut off
each side that faces a neighbour, so the kept parts meet edge to edge (the usual
"centre crop" stitching; stmap blends the overlaps with a raised-cosine window
instead). The rasterio and PNG peers use stmap's grid, fixed in the world
(``stmap_grid``), so their maps differ from stmap's only in the overlaps and at the
raster's edge (zero fill against stmap's mirroring); TorchGeo's sampler anchors its
grid at the bottom-left corner, so its tiles, and hence its predictions, differ
everywhere a little.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.io import DatasetReader
from rasterio.transform import Affine
from rasterio.windows import Window

from stmap.bundle import open_bundle
from stmap.runtime.backends.base import create_backend
from stmap.runtime.grid import TileGrid, world_shift
from stmap.runtime.plan import run_overlap

Forward = Callable[[torch.Tensor], torch.Tensor]
NODATA = 255


def model_geometry(bundle: Path) -> tuple[int, int]:
    """(tile, overlap) of `stmap infer`'s defaults for this bundle (its ``tiling``)."""
    manifest = open_bundle(bundle).manifest
    return manifest.infer_tile, run_overlap(manifest, None)


def load_forward(bundle: Path, device: str = "cpu", precision: str = "fp32") -> Forward:
    """(N, 3, T, T) raw pixels (uint8, or float holding 0..255) on the CPU → (N, 1, T, T)
    probabilities on the CPU.

    The torch backend's ``infer`` on ``device`` in ``precision``: the very call stmap's
    pipeline makes per batch; on a GPU each batch goes there and comes back, as a
    script's would.
    """
    target = torch.device(device)
    backend = create_backend("torch", open_bundle(bundle), target, precision, "uint8")
    if target.type == "cpu":
        return backend.infer
    return lambda tiles: backend.infer(tiles.to(target)).cpu()


def to_uint8(probs: torch.Tensor) -> np.ndarray:
    """(N, 1, T, T) float probabilities → (N, T, T) uint8 in stmap's encoding."""
    return probs[:, 0].mul(255).round_().clamp_(0, NODATA - 1).to(torch.uint8).numpy()


def stmap_grid(transform: Affine, height: int, width: int, tile: int, overlap: int) -> TileGrid:
    """The tiles `stmap infer` cuts from a raster on the model's grid: a lattice of the
    stride fixed in the world (``runtime.grid``), whose first tiles start up to a stride
    plus ``overlap / 2`` px before the raster so that their kept middles hold pixel 0."""
    col, row = ~transform * (0.0, 0.0)
    shift = world_shift((row, col), tile - overlap).shift
    return TileGrid(height, width, tile, overlap, shift)


def tile_windows(grid: TileGrid) -> Iterator[Window]:
    """The tile windows of ``grid`` in row-major order (edge ones reach past the raster)."""
    for i in range(grid.rows.count):
        for j in range(grid.cols.count):
            yield Window(grid.cols.origin(j), grid.rows.origin(i), grid.tile, grid.tile)


def first_tiles(grid: TileGrid) -> tuple[int, int]:
    """(row, col) offsets of the grid's first tiles: their sides before them are edges."""
    return grid.rows.origin(0), grid.cols.origin(0)


def read_tile(src: DatasetReader, window: Window) -> np.ndarray:
    """(3, T, T) uint8 pixels of ``window``, zero past the raster's edge (rasterio's
    ``boundless`` read, asked for only where the window leaves the raster)."""
    outside = min(window.row_off, window.col_off) < 0 or (
        window.row_off + window.height > src.height or window.col_off + window.width > src.width
    )
    return src.read((1, 2, 3), window=window, boundless=outside, fill_value=0)


def kept_part(
    row_off: float,
    col_off: float,
    tile: int,
    overlap: int,
    height: int,
    width: int,
    first: tuple[int, int] = (0, 0),
) -> tuple[Window, tuple[slice, slice]]:
    """The window a tile at (row_off, col_off) writes, and the matching slices of the tile.

    ``overlap / 2`` px come off each side that has a neighbour; a side at or past the
    raster's edge keeps its margin (nothing else covers it), clipped to the raster.
    first: (row, col) of the first tiles (``first_tiles``); a tile there, or before
    pixel 0 (a grid of its own), has no neighbour above or to its left. Offsets are
    rounded to whole pixels (geographic bounds give floats).
    """
    row_off, col_off, margin = round(row_off), round(col_off), overlap // 2
    top = row_off + margin if row_off > max(first[0], 0) else max(row_off, 0)
    left = col_off + margin if col_off > max(first[1], 0) else max(col_off, 0)
    bottom = row_off + tile - margin if row_off + tile < height else min(row_off + tile, height)
    right = col_off + tile - margin if col_off + tile < width else min(col_off + tile, width)
    window = Window(left, top, right - left, bottom - top)
    return window, (slice(top - row_off, bottom - row_off), slice(left - col_off, right - col_off))


def output_profile(source_profile: dict[str, Any]) -> dict[str, Any]:
    """A plain tiled, compressed single-band uint8 GeoTIFF on the source's grid."""
    return {
        "driver": "GTiff",
        "height": source_profile["height"],
        "width": source_profile["width"],
        "count": 1,
        "dtype": "uint8",
        "nodata": NODATA,
        "crs": source_profile["crs"],
        "transform": source_profile["transform"],
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
    }

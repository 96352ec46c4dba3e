"""Peer (a): the usual script, as rasterio's windowed reading and writing docs teach it.

Open the scene, loop over tile ``Window``s, read each (``boundless`` where a tile
reaches past the edge, zero-filled), run the model one batch of tiles at a time,
and write each tile's kept part into the output window by window. One thread, no
prefetching: read, compute and write take turns.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window

from benchmarks.peers.common import (
    Forward,
    first_tiles,
    kept_part,
    load_forward,
    model_geometry,
    output_profile,
    read_tile,
    stmap_grid,
    tile_windows,
    to_uint8,
)
from stmap.runtime.grid import TileGrid


def run(
    image: Path,
    output: Path,
    bundle: Path,
    batch_size: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> None:
    """Map ``image`` into the probability GeoTIFF ``output``, the model on ``device``."""
    tile, overlap = model_geometry(bundle)
    forward = load_forward(bundle, device, precision)
    with rasterio.open(image) as src:
        profile = output_profile(src.profile)
        with rasterio.open(output, "w", **profile) as dst:
            grid = stmap_grid(src.transform, src.height, src.width, tile, overlap)
            batch: list[Window] = []
            for window in tile_windows(grid):
                batch.append(window)
                if len(batch) == batch_size:
                    _map_batch(src, dst, batch, forward, grid)
                    batch = []
            if batch:
                _map_batch(src, dst, batch, forward, grid)


def _map_batch(src, dst, windows: list[Window], forward: Forward, grid: TileGrid) -> None:
    """Read, predict and write one batch of tiles."""
    tiles = np.stack([read_tile(src, w) for w in windows])
    probs = to_uint8(forward(torch.from_numpy(tiles)))
    for window, prob in zip(windows, probs, strict=True):
        target, (rows, cols) = kept_part(
            window.row_off,
            window.col_off,
            grid.tile,
            grid.overlap,
            src.height,
            src.width,
            first_tiles(grid),
        )
        dst.write(prob[rows, cols], 1, window=target)

"""Which windows of a raster a finishing step has already seen while the run streamed.

Sinks that gather from the blocks as they pass (thumbnails, grid tallies, the
damage tracer, the viewer's tiles) are fed from the files only what they missed:
blocks mapped before a resume, or by other workers (``sinks.feed_missing``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np

from stmap.io.layout import TILE as COVER  # the pipeline's blocks are made of whole tiles
from stmap.window import Window

FILL_BLOCK = 2048  # what is read back is read in blocks of up to this size


class Coverage:
    """Which windows of a height × width raster something has seen, per ``tile`` px.

    Windows start on multiples of ``tile`` and end on one or at the raster's edge,
    as the pipeline's blocks do on the 512-px tiles; several threads may add
    windows at once.
    """

    def __init__(self, height: int, width: int, tile: int = COVER):
        self.height, self.width, self.tile = height, width, tile
        self._tiles = np.zeros((math.ceil(height / tile), math.ceil(width / tile)), bool)
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return bool(self._tiles.all())

    def add(self, window: Window) -> None:
        row_off, col_off, tile = window.row_off, window.col_off, self.tile
        row_stop, col_stop = window.row_stop, window.col_stop
        spans = ((row_off, row_stop, self.height), (col_off, col_stop, self.width))
        for offset, stop, size in spans:
            if offset % tile or (stop % tile and stop != size):
                raise ValueError(f"window {offset}–{stop} does not lie on the {tile}-px tiles")
        with self._lock:
            self._tiles[
                row_off // tile : math.ceil(row_stop / tile),
                col_off // tile : math.ceil(col_stop / tile),
            ] = True

    def covers(self, window: Window) -> bool:
        """Whether every tile a window touches has been seen (windows may be off the tiles)."""
        t, inside = self.tile, window.clip(self.height, self.width)
        rows = slice(inside.row_off // t, math.ceil(inside.row_stop / t))
        cols = slice(inside.col_off // t, math.ceil(inside.col_stop / t))
        return bool(self._tiles[rows, cols].all())

    def missing(self, block: int | None = None) -> Iterator[Window]:
        """Windows not yet seen, within blocks of ``block`` px (a multiple of the tile;
        default ``FILL_BLOCK`` or the tile): a wholly unseen block as one window, else
        each run of unseen tiles along a row of tiles."""
        k = max(1, (block or max(FILL_BLOCK, self.tile)) // self.tile)
        for bi in range(0, self._tiles.shape[0], k):
            for bj in range(0, self._tiles.shape[1], k):
                cell = self._tiles[bi : bi + k, bj : bj + k]
                if not cell.any():
                    yield self._window(bi, bj, bi + cell.shape[0], bj + cell.shape[1])
                    continue
                for i, row in enumerate(cell, start=bi):
                    gaps = np.flatnonzero(np.diff(np.concatenate([[1], row.view(np.int8), [1]])))
                    for start, stop in gaps.reshape(-1, 2):
                        yield self._window(i, bj + int(start), i + 1, bj + int(stop))

    def _window(self, i0: int, j0: int, i1: int, j1: int) -> Window:
        """The window of tiles [i0, i1) × [j0, j1), clipped to the raster."""
        t = self.tile
        return Window(i0 * t, j0 * t, (i1 - i0) * t, (j1 - j0) * t).clip(self.height, self.width)

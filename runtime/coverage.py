"""Which windows of a raster a finishing step has already seen while the run streamed.

Steps that gather from the blocks as they pass (thumbnails, grid tallies) read
back from the files only what they missed: blocks mapped before a resume, or by
other workers.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import numpy as np
from rasterio.windows import Window

COVER = 512  # coverage is kept per 512-px tile: blocks are made of whole tiles


class Coverage:
    """Which windows of a height × width raster something has seen, per 512-px tile.

    Windows start on multiples of ``COVER`` and end on one or at the raster's edge,
    as the pipeline's blocks do; several threads may add windows at once.
    """

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self._tiles = np.zeros((math.ceil(height / COVER), math.ceil(width / COVER)), bool)
        self._lock = threading.Lock()

    @property
    def complete(self) -> bool:
        return bool(self._tiles.all())

    def add(self, row_off: int, col_off: int, height: int, width: int) -> None:
        row_stop, col_stop = row_off + height, col_off + width
        spans = ((row_off, row_stop, self.height), (col_off, col_stop, self.width))
        for offset, stop, size in spans:
            if offset % COVER or (stop % COVER and stop != size):
                raise ValueError(f"window {offset}–{stop} does not lie on the {COVER}-px tiles")
        with self._lock:
            self._tiles[
                row_off // COVER : math.ceil(row_stop / COVER),
                col_off // COVER : math.ceil(col_stop / COVER),
            ] = True

    def missing(self) -> Iterator[Window]:
        """Windows not yet seen, one per run of unseen tiles along a row of tiles."""
        for i, row in enumerate(self._tiles):
            gaps = np.flatnonzero(np.diff(np.concatenate([[1], row.view(np.int8), [1]])))
            for start, stop in gaps.reshape(-1, 2):
                r0, c0 = i * COVER, int(start) * COVER
                yield Window(
                    c0, r0, min(int(stop) * COVER, self.width) - c0, min(COVER, self.height - r0)
                )

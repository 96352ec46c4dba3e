"""Decimated copies of a raster, sampled from its blocks as a run streams them.

The quicklook shows the whole scene at about 1024 px. Reading the input again
after the run would decode every one of its tiles a second time (with a light
model on two CPU cores, a third of the run); instead the reader threads keep the
sampled pixels of each block they decode anyway, and the writer thread those of
the probabilities. A thumbnail pixel is the source pixel under its centre (nearest
neighbour, as GDAL's decimated reads pick it), so a block gives the same pixels
whichever run reads it, and what a run did not see (blocks mapped before a resume,
or by other workers) is read back from the file at the end with ``fill``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from rasterio.windows import Window

from .coverage import Coverage


def sample_positions(size: int, samples: int) -> np.ndarray:
    """(samples,) int64 source index under the centre of each of ``samples`` cells."""
    return np.minimum(((np.arange(samples) + 0.5) * size / samples).astype(np.int64), size - 1)


class Thumbnail:
    """A (bands, rows, cols) decimated copy of a height × width raster, filled by windows.

    ``valid`` says where the source has data. Windows lie on the 512-px tiles
    (``Coverage``); threads may add disjoint windows concurrently.
    """

    def __init__(
        self, height: int, width: int, shape: tuple[int, int], bands: int, dtype: str = "uint8"
    ):
        self.height, self.width = height, width
        self.rows, self.cols = sample_positions(height, shape[0]), sample_positions(width, shape[1])
        self.pixels = np.zeros((bands, *shape), dtype=dtype)
        self.valid = np.zeros(shape, dtype=bool)
        self.coverage = Coverage(height, width)

    def add(
        self, row_off: int, col_off: int, pixels: np.ndarray, valid: np.ndarray | None = None
    ) -> None:
        """Take the samples inside a window: (bands, h, w) ``pixels``, (h, w) ``valid``.

        valid: None when every pixel of the window has data.
        """
        h, w = pixels.shape[-2:]
        rows, cols = self._span(self.rows, row_off, h), self._span(self.cols, col_off, w)
        r, c = self.rows[rows] - row_off, self.cols[cols] - col_off
        self.pixels[:, rows, cols] = pixels[:, r[:, None], c[None, :]]
        self.valid[rows, cols] = True if valid is None else valid[r[:, None], c[None, :]]
        self.coverage.add(row_off, col_off, h, w)

    def add_empty(self, row_off: int, col_off: int, height: int, width: int, fill: int) -> None:
        """A window without data: its samples are ``fill`` and not valid."""
        rows, cols = self._span(self.rows, row_off, height), self._span(self.cols, col_off, width)
        self.pixels[:, rows, cols] = fill
        self.valid[rows, cols] = False
        self.coverage.add(row_off, col_off, height, width)

    def fill(self, read: Callable[[Window], tuple[np.ndarray, np.ndarray | None]]) -> None:
        """Add every window not yet covered: ``read(window)`` → (pixels, valid or None)."""
        for window in self.coverage.missing():
            pixels, valid = read(window)
            self.add(window.row_off, window.col_off, pixels, valid)

    @staticmethod
    def _span(positions: np.ndarray, offset: int, size: int) -> slice:
        """The thumbnail indices whose source position lies in [offset, offset + size)."""
        return slice(
            int(np.searchsorted(positions, offset)), int(np.searchsorted(positions, offset + size))
        )

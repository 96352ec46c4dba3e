"""Decimated copies of a raster, sampled from its blocks as a run streams them.

The quicklook shows the whole scene at about 1024 px. Reading the input again
after the run would decode every one of its tiles a second time (with a light
model on two CPU cores, a third of the run); instead the reader threads hand the
``Thumbnail`` of the input each block they decode anyway, and the writer thread
that of the probabilities each block it writes. A thumbnail pixel is the source
pixel under its centre (nearest neighbour, as GDAL's decimated reads pick it), so
a block gives the same pixels whichever run reads it, and what a run did not see
is read back by the finishing step into the same sink (``sinks.feed_missing``).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from stmap.io.blocks import IMAGE, VALID
from stmap.io.writers import NODATA
from stmap.window import Window

from .coverage import Coverage
from .sinks import PROB, Layers


def sample_positions(size: int, samples: int) -> np.ndarray:
    """(samples,) int64 source index under the centre of each of ``samples`` cells."""
    return np.minimum(((np.arange(samples) + 0.5) * size / samples).astype(np.int64), size - 1)


class Thumbnail:
    """A (bands, rows, cols) decimated copy of one layer of a height × width raster.

    layer: ``image`` (the input, (bands, h, w), with its validity) or ``prob``
    ((h, w) uint8). ``valid`` says where the source has data. Windows lie on the
    512-px tiles (``Coverage``); threads may add disjoint windows concurrently.
    """

    def __init__(
        self,
        height: int,
        width: int,
        shape: tuple[int, int],
        bands: int = 1,
        dtype: str = "uint8",
        *,
        layer: str = PROB,
    ):
        self.height, self.width, self.layer = height, width, layer
        self.needs = frozenset({IMAGE, VALID} if layer == IMAGE else {layer})
        self.fill = 0 if layer == IMAGE else NODATA  # the samples of a window without data
        self.rows, self.cols = sample_positions(height, shape[0]), sample_positions(width, shape[1])
        self.pixels = np.zeros((bands, *shape), dtype=dtype)
        self.valid = np.zeros(shape, dtype=bool)
        self.coverage = Coverage(height, width)

    def add(self, window: Window, layers: Layers) -> None:
        """Take the samples inside ``window`` (no layers: it has no data)."""
        rows, cols = (
            self._span(self.rows, window.row_off, window.height),
            self._span(self.cols, window.col_off, window.width),
        )
        if not layers:
            self.pixels[:, rows, cols] = self.fill
            self.valid[rows, cols] = False
        else:
            pixels = layers[self.layer]
            pixels = pixels[None] if pixels.ndim == 2 else pixels
            valid = layers.get(VALID)
            r, c = self.rows[rows] - window.row_off, self.cols[cols] - window.col_off
            self.pixels[:, rows, cols] = pixels[:, r[:, None], c[None, :]]
            self.valid[rows, cols] = True if valid is None else valid[r[:, None], c[None, :]]
        self.coverage.add(window)

    def missing(self) -> Iterator[Window]:
        return self.coverage.missing()

    def finish(self) -> Thumbnail:
        """The complete thumbnail (``pixels``, ``valid``)."""
        if not self.coverage.complete:
            raise RuntimeError("the thumbnail has not seen every window of the raster")
        return self

    @staticmethod
    def _span(positions: np.ndarray, offset: int, size: int) -> slice:
        """The thumbnail indices whose source position lies in [offset, offset + size)."""
        return slice(
            int(np.searchsorted(positions, offset)), int(np.searchsorted(positions, offset + size))
        )

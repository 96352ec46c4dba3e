"""The viewer's tile pyramid (``S_map/``), written as a sink of the block stream.

The pyramid is a local pixel pyramid over the raster's own grid, as Leaflet's
``L.CRS.Simple`` shows it, not Web Mercator: no resampling, so a tile pixel is
exactly 1, 2, 4 … raster pixels, the tiles of a block are cut from the block
itself, and a rotated or ungeoreferenced raster is shown as stored. The page
converts the cursor's pixel position to latitude and longitude (``viewer``).
Reprojecting to Web Mercator would only buy a base map, which an offline page
cannot have anyway.

Level ``native`` is the raster at full resolution; each level below halves it.
The top levels, whose tiles span at most 512 raster pixels (the pipeline's blocks
are made of whole 512-px tiles), are written from each block as it passes, in the
reader thread (imagery) and the writer thread (probabilities): memory stays one
block. What a run did not see (blocks mapped before a resume, strips of other
workers, or everything when gathering was off) is read back from the input and
the partial raster at the end, through the same ``Coverage`` as the thumbnails.
The levels below are then built from the level above, four tiles at a time.

``--viewer lite`` (the default) stops at half resolution, 1 m per pixel at 0.5 m:
a building still spans tens of pixels, the browser magnifies the last level, and
the pyramid costs a quarter of the full one. ``full`` adds the native level.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rasterio.windows import Window

from stmap.io.pyramid import TILE, TileStore
from stmap.io.raster import open_raster
from stmap.io.writers import NODATA

from .coverage import COVER, Coverage
from .quicklook import NO_IMAGE
from .styles import prob_lut

VIEWER_MODES = ("none", "lite", "full")
DEFAULT_VIEWER = "lite"


@dataclass(frozen=True)
class Pyramid:
    """The pyramid's geometry: the raster's size and the zoom levels written.

    native: the level at which one tile pixel is one raster pixel.
    top: the highest level written (native, or one below for ``lite``).
    """

    height: int
    width: int
    native: int
    top: int

    @classmethod
    def for_raster(cls, height: int, width: int, mode: str) -> Pyramid:
        native = max(0, math.ceil(math.log2(max(height, width) / TILE)))
        top = native if mode == "full" else max(0, native - 1)
        return cls(height, width, native, top)

    def factor(self, z: int) -> int:
        """Raster pixels per tile pixel at level ``z``."""
        return 2 ** (self.native - z)

    def tiles(self, z: int) -> tuple[int, int]:
        """(columns, rows) of tiles at level ``z``."""
        span = TILE * self.factor(z)
        return math.ceil(self.width / span), math.ceil(self.height / span)

    @property
    def streamed(self) -> list[int]:
        """Levels cut from each block: their tiles span at most ``COVER`` raster pixels."""
        return [z for z in range(self.top + 1) if TILE * self.factor(z) <= COVER]


class MapTiles:
    """Writes the pyramid of one input into ``root`` while its blocks stream.

    bands: how many bands the readers hand over (1: grey; else the first three
    are red, green, blue); value_max: the input value shown as white.
    """

    def __init__(self, root: Path, pyramid: Pyramid, *, value_max: float):
        self.root, self.pyramid, self.value_max = root, pyramid, value_max
        self.store = TileStore(root, prob_lut())
        self.image = Coverage(pyramid.height, pyramid.width)
        self.prob = Coverage(pyramid.height, pyramid.width)

    # -- the taps (see Sketches) ----------------------------------------------------

    def add_image(
        self,
        row_off: int,
        col_off: int,
        height: int,
        width: int,
        pixels: np.ndarray | None,
        valid: np.ndarray | None = None,
    ) -> None:
        """A window of the input: (C, h, w) ``pixels`` (None: no data), (h, w) ``valid``
        (None: all valid)."""
        if pixels is not None:
            rgb = self._rgb(pixels)
            for z in self.pyramid.streamed:
                self._cut_image(z, row_off, col_off, rgb, valid)
        self.image.add(row_off, col_off, height, width)

    def add_prob(
        self, row_off: int, col_off: int, height: int, width: int, prob: np.ndarray | None
    ) -> None:
        """A window of probabilities, (h, w) uint8 with 255 nodata (None: all nodata)."""
        if prob is not None:
            valid = prob != NODATA
            for z in self.pyramid.streamed:
                f = self.pyramid.factor(z)
                values = downsample(prob[None], _valid(valid), f, NODATA)
                self._cut_prob(z, row_off, col_off, values[0])
        self.prob.add(row_off, col_off, height, width)

    # -- the end of the run ---------------------------------------------------------

    def finish(self, image_path: str, prob_path: Path, bands: Sequence[int]) -> None:
        """Read back what the run did not see, then build the lower levels."""
        with open_raster(image_path) as img, open_raster(prob_path) as prob_ds:
            for window in self.image.missing():
                pixels = img.read(list(bands), window=window)
                valid = img.dataset_mask(window=window) > 0
                self.add_image(*_place(window), pixels, _valid(valid))
            for window in self.prob.missing():
                self.add_prob(*_place(window), prob_ds.read(1, window=window))
        for z in range(min(self.pyramid.streamed, default=self.pyramid.top + 1) - 1, -1, -1):
            self._build_level(z)

    # -- tiles ------------------------------------------------------------------------

    def _rgb(self, pixels: np.ndarray) -> np.ndarray:
        """(3, h, w) uint8 of the input's pixels, ``value_max`` as 255."""
        rgb = pixels[:3] if len(pixels) >= 3 else np.repeat(pixels[:1], 3, axis=0)
        if rgb.dtype == np.uint8:
            return rgb
        scaled = np.clip(rgb.astype(np.float32) * (255 / self.value_max), 0, 255)
        return np.rint(scaled).astype(np.uint8)

    def _cut_image(
        self, z: int, row_off: int, col_off: int, rgb: np.ndarray, valid: np.ndarray | None
    ) -> None:
        f = self.pyramid.factor(z)
        level = downsample(rgb, valid, f, NO_IMAGE)
        for x, y, tile in _tiles(level, row_off // f, col_off // f, NO_IMAGE):
            self.store.write_image(z, x, y, np.ascontiguousarray(tile.transpose(1, 2, 0)))

    def _cut_prob(self, z: int, row_off: int, col_off: int, values: np.ndarray) -> None:
        f = self.pyramid.factor(z)
        for x, y, tile in _tiles(values[None], row_off // f, col_off // f, NODATA):
            if np.any((tile[0] != 0) & (tile[0] != NODATA)):  # a clear tile is left out
                self.store.write_prob(z, x, y, tile[0])

    def _build_level(self, z: int) -> None:
        """Level ``z`` from the four tiles under each of its tiles at ``z + 1``."""
        columns, rows = self.pyramid.tiles(z)
        for x in range(columns):
            for y in range(rows):
                image = self._children(
                    z, x, y, lambda *k: _chw(self.store.read_image(*k)), 3, NO_IMAGE
                )
                if image is not None:
                    merged = downsample(
                        image, _valid(~np.all(image == NO_IMAGE, axis=0)), 2, NO_IMAGE
                    )
                    self.store.write_image(z, x, y, np.ascontiguousarray(merged.transpose(1, 2, 0)))
                prob = self._children(z, x, y, lambda *k: _chw(self.store.read_prob(*k)), 1, NODATA)
                if prob is not None:
                    merged = downsample(prob, _valid(prob[0] != NODATA), 2, NODATA)[0]
                    if np.any((merged != 0) & (merged != NODATA)):
                        self.store.write_prob(z, x, y, merged)

    def _children(
        self, z: int, x: int, y: int, read: Callable[..., np.ndarray | None], bands: int, fill: int
    ) -> np.ndarray | None:
        """(bands, 512, 512) uint8 of the four tiles under (z, x, y); None if none exists."""
        out = np.full((bands, 2 * TILE, 2 * TILE), fill, np.uint8)
        found = False
        for dx in (0, 1):
            for dy in (0, 1):
                tile = read(z + 1, 2 * x + dx, 2 * y + dy)
                if tile is not None:
                    out[:, dy * TILE : (dy + 1) * TILE, dx * TILE : (dx + 1) * TILE] = tile
                    found = True
        return out if found else None


def _valid(mask: np.ndarray) -> np.ndarray | None:
    """``mask``, or None when it is all True (``downsample``'s integer path)."""
    return None if mask.all() else mask


def _place(window: Window) -> tuple[int, int, int, int]:
    return window.row_off, window.col_off, window.height, window.width


def _chw(tile: np.ndarray | None) -> np.ndarray | None:
    if tile is None or tile.ndim == 2:
        return tile
    return tile.transpose(2, 0, 1)


def downsample(values: np.ndarray, valid: np.ndarray | None, f: int, fill: int) -> np.ndarray:
    """(C, ceil(h/f), ceil(w/f)) uint8: the mean of the valid pixels of each f × f box.

    values: (C, h, w) uint8; valid: (h, w) bool, None when all are valid. Boxes
    without a valid pixel get ``fill``; boxes cut by the window's edge average what
    they hold.
    """
    c, h, w = values.shape
    if f == 1:
        if valid is None:
            return values
        out = values.copy()
        out[:, ~valid] = fill
        return out
    hh, ww = math.ceil(h / f), math.ceil(w / f)
    if valid is None and h % f == 0 and w % f == 0:  # the usual case: integers only
        sums = np.zeros((c, hh, ww), np.uint16)
        for i in range(f):  # f² strided adds: 10× faster than a reshaped sum over two axes
            for j in range(f):
                sums += values[:, i::f, j::f]
        return ((sums + f * f // 2) // (f * f)).astype(np.uint8)
    if valid is None:
        valid = np.ones((h, w), bool)
    padded = np.zeros((c, hh * f, ww * f), np.float32)
    weights = np.zeros((hh * f, ww * f), np.float32)
    padded[:, :h, :w] = values
    weights[:h, :w] = valid
    sums = (padded * weights).reshape(c, hh, f, ww, f).sum(axis=(2, 4))
    counts = weights.reshape(hh, f, ww, f).sum(axis=(1, 3))
    out = np.full((c, hh, ww), fill, np.uint8)
    some = counts > 0
    out[:, some] = np.floor(sums[:, some] / counts[some] + 0.5)  # as the integer path
    return out


def _tiles(
    level: np.ndarray, row0: int, col0: int, fill: int
) -> Iterator[tuple[int, int, np.ndarray]]:
    """(x, y, (C, 256, 256) tile) of a (C, h, w) window at (row0, col0) on a level's pixels.

    The window starts on tile boundaries; tiles it ends inside are padded with ``fill``
    (it ends there only at the raster's edge).
    """
    c, h, w = level.shape
    for r in range(0, h, TILE):
        for q in range(0, w, TILE):
            part = level[:, r : r + TILE, q : q + TILE]
            if part.shape[1:] != (TILE, TILE):
                tile = np.full((c, TILE, TILE), fill, np.uint8)
                tile[:, : part.shape[1], : part.shape[2]] = part
                part = tile
            yield (col0 + q) // TILE, (row0 + r) // TILE, part

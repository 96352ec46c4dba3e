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
block. The imagery and the probabilities are two sinks of the block stream
(``MapTiles.image``, ``MapTiles.prob``): what a run did not see (blocks mapped
before a resume, strips of other workers, or everything when gathering failed) is
fed to them from the input and the partial raster at the end. Their ``finish``
builds the levels below from the level above, four tiles at a time.

``--viewer lite`` (the default) stops at half resolution, 1 m per pixel at 0.5 m:
a building still spans tens of pixels, the browser magnifies the last level, and
the pyramid costs a quarter of the full one. ``full`` adds the native level.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stmap.io.blocks import IMAGE, VALID
from stmap.io.pyramid import TILE, TileStore
from stmap.io.writers import NODATA
from stmap.window import Window

from .coverage import COVER, Coverage
from .quicklook import NO_IMAGE
from .sinks import PROB, Layers
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
    """The pyramid of one input, written into ``root`` while its blocks stream.

    Two sinks: ``image`` (the input's pixels: 1 band is grey, else the first three
    are red, green, blue; ``value_max`` is the input value shown as white) and
    ``prob``; each builds its lower levels when it finishes.
    """

    def __init__(self, root: Path, pyramid: Pyramid, *, value_max: float):
        self.root, self.pyramid, self.value_max = root, pyramid, value_max
        self.store = TileStore(root, prob_lut())
        self.image = _ImageTiles(self)
        self.prob = _ProbTiles(self)


class _LayerTiles:
    """One layer of the pyramid as a sink: the streamed levels cut from each window."""

    needs: frozenset[str]
    fill: int
    bands: int

    def __init__(self, tiles: MapTiles):
        self.tiles, self.pyramid, self.store = tiles, tiles.pyramid, tiles.store
        self.coverage = Coverage(self.pyramid.height, self.pyramid.width)

    def add(self, window: Window, layers: Layers) -> None:
        if layers:
            values, valid = self._values(layers)
            for z in self.pyramid.streamed:
                f = self.pyramid.factor(z)
                level = downsample(values, valid, f, self.fill)
                for x, y, tile in _tiles(
                    level, window.row_off // f, window.col_off // f, self.fill
                ):
                    self._write(z, x, y, tile)
        self.coverage.add(window)

    def missing(self) -> Iterator[Window]:
        return self.coverage.missing()

    def finish(self) -> None:
        """Build the levels below the streamed ones, from the level above."""
        if not self.coverage.complete:
            raise RuntimeError("the map has not seen every window of the raster")
        for z in range(min(self.pyramid.streamed, default=self.pyramid.top + 1) - 1, -1, -1):
            columns, rows = self.pyramid.tiles(z)
            for x in range(columns):
                for y in range(rows):
                    children = self._children(z, x, y)
                    if children is not None:
                        merged = downsample(
                            children, _valid(self._has_data(children)), 2, self.fill
                        )
                        self._write(z, x, y, merged)

    def _children(self, z: int, x: int, y: int) -> np.ndarray | None:
        """(bands, 512, 512) uint8 of the four tiles under (z, x, y); None if none exists."""
        out = np.full((self.bands, 2 * TILE, 2 * TILE), self.fill, np.uint8)
        found = False
        for dx in (0, 1):
            for dy in (0, 1):
                tile = _chw(self._read(z + 1, 2 * x + dx, 2 * y + dy))
                if tile is not None:
                    out[:, dy * TILE : (dy + 1) * TILE, dx * TILE : (dx + 1) * TILE] = tile
                    found = True
        return out if found else None

    def _values(self, layers: Layers) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def _has_data(self, values: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _read(self, z: int, x: int, y: int) -> np.ndarray | None:
        raise NotImplementedError

    def _write(self, z: int, x: int, y: int, tile: np.ndarray) -> None:
        raise NotImplementedError


class _ImageTiles(_LayerTiles):
    needs = frozenset({IMAGE, VALID})
    fill, bands = NO_IMAGE, 3

    def _values(self, layers: Layers) -> tuple[np.ndarray, np.ndarray | None]:
        """(3, h, w) uint8 of the input's pixels, ``value_max`` as 255, and validity."""
        pixels = layers[IMAGE]
        rgb = pixels[:3] if len(pixels) >= 3 else np.repeat(pixels[:1], 3, axis=0)
        if rgb.dtype != np.uint8:
            scaled = np.clip(rgb.astype(np.float32) * (255 / self.tiles.value_max), 0, 255)
            rgb = np.rint(scaled).astype(np.uint8)
        valid = layers.get(VALID)
        return rgb, None if valid is None else _valid(valid)

    def _has_data(self, values: np.ndarray) -> np.ndarray:
        return ~np.all(values == NO_IMAGE, axis=0)

    def _read(self, z: int, x: int, y: int) -> np.ndarray | None:
        return self.store.read_image(z, x, y)

    def _write(self, z: int, x: int, y: int, tile: np.ndarray) -> None:
        self.store.write_image(z, x, y, np.ascontiguousarray(tile.transpose(1, 2, 0)))


class _ProbTiles(_LayerTiles):
    needs = frozenset({PROB})
    fill, bands = NODATA, 1

    def _values(self, layers: Layers) -> tuple[np.ndarray, np.ndarray | None]:
        prob = layers[PROB]
        return prob[None], _valid(prob != NODATA)

    def _has_data(self, values: np.ndarray) -> np.ndarray:
        return values[0] != NODATA

    def _read(self, z: int, x: int, y: int) -> np.ndarray | None:
        return self.store.read_prob(z, x, y)

    def _write(self, z: int, x: int, y: int, tile: np.ndarray) -> None:
        if np.any((tile[0] != 0) & (tile[0] != NODATA)):  # a clear tile is left out
            self.store.write_prob(z, x, y, tile[0])


def _valid(mask: np.ndarray) -> np.ndarray | None:
    """``mask``, or None when it is all True (``downsample``'s integer path)."""
    return None if mask.all() else mask


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

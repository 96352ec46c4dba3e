"""The one window type of stmap: a rectangle of pixels, rows first.

Pure geometry, no IO, shared by ``stmap.io`` and the runtime. rasterio's own
``Window`` (columns first) appears only inside ``stmap.io``, at the rasterio call
(``stmap.io.raster.rio_window``), so no module holds both.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """A rectangle of pixels, ``row_off``/``col_off`` possibly negative or past the raster."""

    row_off: int
    col_off: int
    height: int
    width: int

    @property
    def row_stop(self) -> int:
        return self.row_off + self.height

    @property
    def col_stop(self) -> int:
        return self.col_off + self.width

    @property
    def size(self) -> int:
        return self.height * self.width

    def clip(self, height: int, width: int) -> Window:
        """The part inside a ``height`` × ``width`` raster (empty windows have size 0)."""
        r0, c0 = max(self.row_off, 0), max(self.col_off, 0)
        r1, c1 = min(self.row_stop, height), min(self.col_stop, width)
        return Window(r0, c0, max(r1 - r0, 0), max(c1 - c0, 0))

    def relative_to(self, outer: Window) -> tuple[slice, slice]:
        """(rows, cols) slices of this window inside an array holding ``outer``."""
        r, c = self.row_off - outer.row_off, self.col_off - outer.col_off
        return slice(r, r + self.height), slice(c, c + self.width)


def lattice_cell(row: int, col: int, size: int, height: int, width: int) -> Window:
    """Window (``row``, ``col``) of the ``size`` × ``size`` lattice anchored at pixel
    (0, 0), cut at a ``height`` × ``width`` raster's far edges."""
    r, c = row * size, col * size
    return Window(r, c, min(size, height - r), min(size, width - c))


def lattice(
    row_start: int, col_start: int, row_stop: int, col_stop: int, size: int
) -> list[list[Window]]:
    """Rows of the ``size`` × ``size`` windows anchored on multiples of ``size`` from
    pixel (0, 0) that cover rows [row_start, row_stop) × cols [col_start, col_stop),
    top to bottom, each cut at the stops (the last ones of a raster are smaller).

    Every blocking in stmap is this one: the pipeline's blocks, the read-back of what
    a run missed, the damage grid's fitted blocks, the buildings' blocks.
    """
    return [
        [
            lattice_cell(r, c, size, row_stop, col_stop)
            for c in range(col_start // size, -(-col_stop // size))
        ]
        for r in range(row_start // size, -(-row_stop // size))
    ]

"""``S_grid.gpkg``: damage tallied on square cells, as emergency mapping services grade it.

Conventions:
- Cells are squares of ``cell_m`` metres whose edges lie on multiples of ``cell_m``
  in the grid's CRS: the raster's own CRS when it is projected (so two runs on the
  same CRS share cells), the UTM zone of the raster's centre when it is geographic,
  and the raster's own coordinates, at the assumed GSD, when it has no CRS.
- A pixel belongs to the cell that holds its centre. A geographic raster's pixel
  centres are mapped to UTM block by block through an affine transform fitted to
  the block's corners (the projection is that flat over a block: errors far below
  a millimetre); areas are then UTM areas, within 0.2 % of geodesic ones.
- A building belongs to the cell that holds its ``point_on_surface``.
- Kept: the cells that hold a raster pixel centre or a building.

Windows are tallied as they come (``GridTally``, a sink of the block stream): a
run's writer hands over each block while it streams, and only what it did not see
is read back from the raster afterwards; memory is one block plus a few numbers
per cell.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from rasterio.transform import Affine

from stmap.io.blocks import LayerReader
from stmap.io.raster import describe_raster
from stmap.io.vectors import VectorTable, crs_string
from stmap.window import Window, lattice

from .coverage import Coverage
from .sinks import PROB, Layers, feed_missing
from .vectorize import NODATA, damage_cutoff

WORST_CELLS = 10  # cells listed in the summary and the report


@dataclass(frozen=True)
class CellFrame:
    """Where cells live: the grid's CRS (None: the raster's own coordinates) and scale."""

    crs: CRS | None
    metres_per_unit: float

    def cell_units(self, cell_m: float) -> float:
        return cell_m / self.metres_per_unit


def cell_frame(
    raster_crs: Any, transform: Affine, width: int, height: int, gsd_m: float
) -> CellFrame:
    """The grid's CRS for a raster (see the module's conventions).

    gsd_m: the ground size of a pixel assumed for a raster without CRS.
    """
    if raster_crs is None:
        return CellFrame(None, gsd_m / math.sqrt(abs(transform.determinant)))
    crs = CRS.from_user_input(raster_crs)
    if crs.is_projected:
        return CellFrame(crs, crs.axis_info[0].unit_conversion_factor)
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(
        *(transform @ (width / 2, height / 2))
    )
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CellFrame(CRS.from_epsg((32600 if lat >= 0 else 32700) + zone), 1.0)


class GridTally:
    """Per-cell sums over a probability raster, gathered window by window.

    A sink of ``prob``: the run's writer hands each block to ``add`` as it passes,
    and what it did not see is fed from the finished raster (``missing``). Pixel
    centres map to grid coordinates through
    one affine per ``block_size`` block of the raster's own block lattice, fitted
    once, so the cells a pixel falls in do not depend on how it was windowed.
    """

    def __init__(
        self,
        crs: Any,
        transform: Affine,
        width: int,
        height: int,
        *,
        threshold: float,
        cell_m: float,
        gsd_m: float = 0.5,
        block_size: int = 1024,
    ):
        if cell_m <= 0:
            raise ValueError(f"cell_m must be positive, got {cell_m}")
        self.frame = cell_frame(crs, transform, width, height, gsd_m)
        self.cell_m = cell_m
        self.to_grid = _to_grid(crs, self.frame)
        self.block_size = block_size
        self.cutoff = damage_cutoff(threshold)
        windows = [w for row in lattice(0, 0, height, width, block_size) for w in row]
        self._affines = {
            (w.row_off, w.col_off): _block_affine(
                transform @ Affine.translation(w.col_off, w.row_off), w, self.to_grid
            )
            for w in windows
        }
        self.lattice = _Lattice.covering(
            list(self._affines.values()), windows, np.empty((0, 2)), self.frame.cell_units(cell_m)
        )
        self.tally = _Tally.zeros(self.lattice.size)
        self.coverage = Coverage(height, width)

    needs = frozenset({PROB})

    def add(self, window: Window, layers: Layers) -> None:
        """Tally a window's (h, w) uint8 probabilities × 255 (nodata 255); a window
        without valid pixels (no layers) still counts its pixels for the cells."""
        shape = (window.height, window.width)
        prob = layers[PROB] if layers else np.broadcast_to(np.uint8(NODATA), shape)
        for affine, (rows, cols) in self._chunks(window.row_off, window.col_off, *shape):
            chunk = prob[rows, cols]
            pixel_m2 = abs(affine.determinant) * self.frame.metres_per_unit**2
            self.tally.add_chunk(self.lattice, affine, chunk, self.cutoff, pixel_m2)
        self.coverage.add(window)

    def missing(self) -> Iterator[Window]:
        return self.coverage.missing()

    def finish(self) -> GridTally:
        """The complete tally (see ``damage_grid``)."""
        if not self.coverage.complete:
            raise RuntimeError("the grid has not seen every window of the raster")
        return self

    def _chunks(self, row_off: int, col_off: int, height: int, width: int):
        """The window cut along the block lattice: each chunk's affine (pixel → grid)
        and its (rows, cols) slices within the window."""
        size = self.block_size
        r = row_off
        while r < row_off + height:
            r_stop = min((r // size + 1) * size, row_off + height)
            c = col_off
            while c < col_off + width:
                c_stop = min((c // size + 1) * size, col_off + width)
                r0, c0 = r // size * size, c // size * size
                affine = self._affines[(r0, c0)] @ Affine.translation(c - c0, r - r0)
                window = (
                    slice(r - row_off, r_stop - row_off),
                    slice(c - col_off, c_stop - col_off),
                )
                yield affine, window
                c = c_stop
            r = r_stop


def damage_grid(
    prob_path: str | os.PathLike[str],
    *,
    threshold: float,
    cell_m: float = 250.0,
    buildings: VectorTable | None = None,
    gsd_m: float = 0.5,
    block_size: int = 1024,
) -> VectorTable:
    """Damage per square cell over a uint8 probability raster (× 255, nodata 255).

    threshold: a pixel is damaged when prob / 255 > threshold (the damage raster's test).
    gsd_m: the pixel size assumed for a raster without CRS.
    block_size: the blocks each fitted affine covers (see ``GridTally``).
    See ``grid_table`` for the rest.
    """
    info = describe_raster(prob_path)
    tally = GridTally(
        info.crs,
        info.transform,
        info.width,
        info.height,
        threshold=threshold,
        cell_m=cell_m,
        gsd_m=gsd_m,
        block_size=block_size,
    )
    with LayerReader({PROB: prob_path}, None) as reader:
        feed_missing([tally], reader)
    return grid_table(tally.finish(), buildings)


def grid_table(tally: GridTally, buildings: VectorTable | None = None) -> VectorTable:
    """The cells of a complete tally, with the buildings in them.

    buildings: the building layer (``building_damage``'s table, with ``label``), or None.

    Returns Polygon cells, north to south then west to east, with ``cell_id`` (int64
    from 1), float64 ``imaged_fraction`` (area of valid pixels / cell area, at most
    1), ``damaged_area_m2``; with buildings, int64 ``buildings_total``,
    ``buildings_damaged``, ``buildings_unknown`` and float64
    ``damaged_building_density_per_km2`` (damaged buildings / cell area); and float64
    ``centre_lon``, ``centre_lat`` (WGS84; NaN without CRS). Sums over the cells
    equal the raster's damaged area and the building layer's counts.
    """
    cell_m = tally.cell_m
    points = _building_points(buildings, tally.to_grid)
    lattice, sums = tally.lattice.extended(points), tally.tally
    sums = sums.moved(tally.lattice, lattice)
    keep = sums.pixels > 0
    columns: dict[str, np.ndarray] = {}
    if buildings is not None:
        cells = lattice.index(points)
        labels = np.asarray(buildings.attributes["label"])
        counts = {
            "buildings_total": np.bincount(cells, minlength=lattice.size),
            "buildings_damaged": np.bincount(cells[labels == "damaged"], minlength=lattice.size),
            "buildings_unknown": np.bincount(cells[labels == "unknown"], minlength=lattice.size),
        }
        keep |= counts["buildings_total"] > 0
        columns = {k: v.astype(np.int64) for k, v in counts.items()}
    order = lattice.north_to_south(np.flatnonzero(keep))
    cell_area = cell_m**2
    attributes: dict[str, np.ndarray] = {
        "cell_id": np.arange(1, len(order) + 1, dtype=np.int64),
        "imaged_fraction": np.minimum(sums.imaged_m2[order] / cell_area, 1.0),
        "damaged_area_m2": sums.damaged_m2[order],
    }
    attributes.update({k: v[order] for k, v in columns.items()})
    if columns:
        attributes["damaged_building_density_per_km2"] = attributes["buildings_damaged"] / (
            cell_area / 1e6
        )
    boxes = lattice.boxes(order)
    attributes["centre_lon"], attributes["centre_lat"] = _lonlat(
        shapely.get_coordinates(shapely.centroid(boxes)), tally.frame.crs
    )
    crs = tally.frame.crs
    return VectorTable(boxes, attributes, crs_string(crs) if crs else None)


def grid_facts(grid: VectorTable, cell_m: float, worst: int = WORST_CELLS) -> dict[str, Any]:
    """The grid's figures for the summary and the report.

    Cells with damage are ranked by damaged buildings per km² (when the grid has
    buildings), then by damaged area; the first ``worst`` are listed with their
    centre's coordinates.
    """
    a = grid.attributes
    area = a["damaged_area_m2"]
    with_buildings = "buildings_total" in a
    damaged = area > 0
    if with_buildings:
        damaged |= a["buildings_damaged"] > 0
        ranking = np.lexsort((-area, -a["damaged_building_density_per_km2"]))
    else:
        ranking = np.argsort(-area, kind="stable")
    ranked = [int(i) for i in ranking if damaged[i]][:worst]
    fields = ["cell_id", "centre_lon", "centre_lat", "damaged_area_m2", "imaged_fraction"]
    if with_buildings:
        fields += ["buildings_total", "buildings_damaged", "damaged_building_density_per_km2"]
    facts: dict[str, Any] = {
        "cell_m": cell_m,
        "crs": grid.crs,
        "cells": len(grid),
        "cells_with_damage": int(damaged.sum()),
        "damaged_area_m2": round(float(area.sum()), 3),
        "worst_cells": [{f: _plain(a[f][i]) for f in fields} for i in ranked],
    }
    if with_buildings:
        facts["buildings_total"] = int(a["buildings_total"].sum())
        facts["buildings_damaged"] = int(a["buildings_damaged"].sum())
    return facts


def _plain(value: Any) -> Any:
    """A JSON-ready number: ints as int, floats rounded to 6 decimals, NaN as None."""
    if isinstance(value, np.integer):
        return int(value)
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


@dataclass(frozen=True)
class _Lattice:
    """The cells that may be touched: columns ix0.., rows iy0.. of side ``cell`` units.

    Cell (ix, iy) covers x in [ix·cell, (ix+1)·cell) and y in [iy·cell, (iy+1)·cell);
    its flat index is (iy - iy0)·ncols + (ix - ix0).
    """

    cell: float
    ix0: int
    iy0: int
    ncols: int
    nrows: int

    @classmethod
    def covering(
        cls,
        affines: list[Affine],
        windows: list[Window],
        points: np.ndarray,
        cell: float,
    ) -> _Lattice:
        corners = [
            affine @ (c, r)
            for affine, w in zip(affines, windows, strict=True)
            for c in (0, w.width)
            for r in (0, w.height)
        ]
        xy = np.concatenate([np.array(corners, dtype=np.float64).reshape(-1, 2), points])
        lo = np.floor(xy.min(axis=0) / cell).astype(np.int64) - 1  # margin for rounding
        hi = np.floor(xy.max(axis=0) / cell).astype(np.int64) + 1
        return cls(cell, int(lo[0]), int(lo[1]), int(hi[0] - lo[0] + 1), int(hi[1] - lo[1] + 1))

    @property
    def size(self) -> int:
        return self.ncols * self.nrows

    def extended(self, points: np.ndarray) -> _Lattice:
        """This lattice grown to hold (N, 2) grid coordinates ``points`` too."""
        if len(points) == 0:
            return self
        lo = np.floor(points.min(axis=0) / self.cell).astype(np.int64) - 1
        hi = np.floor(points.max(axis=0) / self.cell).astype(np.int64) + 1
        ix0, iy0 = min(self.ix0, int(lo[0])), min(self.iy0, int(lo[1]))
        ix1 = max(self.ix0 + self.ncols - 1, int(hi[0]))
        iy1 = max(self.iy0 + self.nrows - 1, int(hi[1]))
        return _Lattice(self.cell, ix0, iy0, ix1 - ix0 + 1, iy1 - iy0 + 1)

    def index(self, xy: np.ndarray) -> np.ndarray:
        """(N,) int64 flat cell index of (N, 2) grid coordinates."""
        ix = np.floor(xy[:, 0] / self.cell).astype(np.int64) - self.ix0
        iy = np.floor(xy[:, 1] / self.cell).astype(np.int64) - self.iy0
        return iy * self.ncols + ix

    def north_to_south(self, flat: np.ndarray) -> np.ndarray:
        """Flat indices ordered by row from the north, then from the west."""
        return flat[np.lexsort((flat % self.ncols, -(flat // self.ncols)))]

    def boxes(self, flat: np.ndarray) -> np.ndarray:
        """(N,) Polygon cells of flat indices, in grid coordinates."""
        x0 = (flat % self.ncols + self.ix0) * self.cell
        y0 = (flat // self.ncols + self.iy0) * self.cell
        return shapely.box(x0, y0, x0 + self.cell, y0 + self.cell)


@dataclass
class _Tally:
    """Per-cell sums over the lattice: (M,) arrays."""

    pixels: np.ndarray  # int64 pixel centres inside the raster, nodata included
    imaged_m2: np.ndarray  # float64 area of valid pixels
    damaged_m2: np.ndarray  # float64 area of damaged pixels

    @classmethod
    def zeros(cls, size: int) -> _Tally:
        return cls(np.zeros(size, dtype=np.int64), np.zeros(size), np.zeros(size))

    def moved(self, source: _Lattice, target: _Lattice) -> _Tally:
        """These sums, kept on ``source``, on the larger lattice ``target``."""
        if source == target:
            return self
        flat = np.arange(source.size)
        iy = flat // source.ncols + source.iy0 - target.iy0
        ix = flat % source.ncols + source.ix0 - target.ix0
        into = iy * target.ncols + ix
        moved = _Tally.zeros(target.size)
        moved.pixels[into], moved.imaged_m2[into], moved.damaged_m2[into] = (
            self.pixels,
            self.imaged_m2,
            self.damaged_m2,
        )
        return moved

    def add_chunk(
        self, lattice: _Lattice, affine: Affine, prob: np.ndarray, cutoff: int, pixel_m2: float
    ) -> None:
        """Tally an (h, w) uint8 chunk whose pixel (c, r) maps to grid ``affine @ (c, r)``."""
        valid = prob != NODATA
        damaged = valid & (prob > cutoff)
        if affine.b == 0 and affine.d == 0:
            self._add_separable(lattice, affine, valid, damaged, pixel_m2)
            return
        cells = _cell_of_pixels(lattice, affine, *prob.shape)
        lo = int(cells.min())
        flat = cells.ravel() - lo  # tally only the span of cells the chunk touches
        pixels = np.bincount(flat)
        span = slice(lo, lo + len(pixels))
        self.pixels[span] += pixels
        self.imaged_m2[span] += (
            np.bincount(flat, weights=valid.ravel(), minlength=len(pixels)) * pixel_m2
        )
        self.damaged_m2[span] += (
            np.bincount(flat, weights=damaged.ravel(), minlength=len(pixels)) * pixel_m2
        )

    def _add_separable(
        self,
        lattice: _Lattice,
        affine: Affine,
        valid: np.ndarray,
        damaged: np.ndarray,
        pixel_m2: float,
    ) -> None:
        """North-up in the grid's CRS: a cell is a run of rows × a run of columns.

        Per-cell sums are then two ``reduceat`` over the runs, several times faster
        than a per-pixel cell index and ``bincount`` (and, unlike a product with
        0/1 run matrices, free of BLAS threads that would fight the model's).
        """
        h, w = valid.shape
        iy = np.floor((affine.e * (np.arange(h) + 0.5) + affine.f) / lattice.cell)
        ix = np.floor((affine.a * (np.arange(w) + 0.5) + affine.c) / lattice.cell)
        row_starts, row_cells = _runs(iy.astype(np.int64) - lattice.iy0)
        col_starts, col_cells = _runs(ix.astype(np.int64) - lattice.ix0)
        flat = (row_cells[:, None] * lattice.ncols + col_cells[None, :]).ravel()
        row_lengths = np.diff(np.append(row_starts, h))
        col_lengths = np.diff(np.append(col_starts, w))
        self.pixels[flat] += np.outer(row_lengths, col_lengths).ravel()
        for sums, mask in ((self.imaged_m2, valid), (self.damaged_m2, damaged)):
            counts = np.add.reduceat(mask.view(np.uint8), row_starts, axis=0, dtype=np.int32)
            counts = np.add.reduceat(counts, col_starts, axis=1)
            sums[flat] += counts.ravel() * pixel_m2


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N,) monotonic values → where each run of equal values starts, and its value."""
    starts = np.flatnonzero(np.concatenate([[True], np.diff(values) != 0]))
    return starts, values[starts]


def _cell_of_pixels(lattice: _Lattice, affine: Affine, height: int, width: int) -> np.ndarray:
    """(h, w) int64 flat cell index of each pixel centre of a block."""
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    if affine.b == 0 and affine.d == 0:  # north-up in the grid's CRS: one axis each
        ix = np.floor((affine.a * cols + affine.c) / lattice.cell).astype(np.int64)
        iy = np.floor((affine.e * rows + affine.f) / lattice.cell).astype(np.int64)
        return (iy[:, None] - lattice.iy0) * lattice.ncols + (ix[None, :] - lattice.ix0)
    x = affine.a * cols[None, :] + affine.b * rows[:, None] + affine.c
    y = affine.d * cols[None, :] + affine.e * rows[:, None] + affine.f
    ix = np.floor(x / lattice.cell).astype(np.int64) - lattice.ix0
    iy = np.floor(y / lattice.cell).astype(np.int64) - lattice.iy0
    return iy * lattice.ncols + ix


def _to_grid(raster_crs: Any, frame: CellFrame) -> Transformer | None:
    """Raster CRS → grid CRS, or None when they are the same (or there is no CRS)."""
    if frame.crs is None or CRS.from_user_input(raster_crs) == frame.crs:
        return None
    return Transformer.from_crs(CRS.from_user_input(raster_crs), frame.crs, always_xy=True)


def _block_affine(block_transform: Affine, window: Window, to_grid: Transformer | None) -> Affine:
    """Block pixel (c, r) → grid coordinates: exact in the raster's CRS, else fitted.

    The fit is least squares over a 3 × 3 lattice of the block's points mapped
    exactly through the projection.
    """
    if to_grid is None:
        return block_transform
    c, r = np.meshgrid([0, window.width / 2, window.width], [0, window.height / 2, window.height])
    c, r = c.ravel(), r.ravel()
    x, y = to_grid.transform(*(block_transform @ (c, r)))
    design = np.column_stack([c, r, np.ones_like(c)])
    (a, b, xoff), *_ = np.linalg.lstsq(design, x, rcond=None)
    (d, e, yoff), *_ = np.linalg.lstsq(design, y, rcond=None)
    return Affine(a, b, xoff, d, e, yoff)


def _building_points(buildings: VectorTable | None, to_grid: Transformer | None) -> np.ndarray:
    """(N, 2) grid coordinates of each building's ``point_on_surface``.

    The buildings are in the raster's CRS (``building_damage`` returns them so).
    """
    if buildings is None or len(buildings) == 0:
        return np.empty((0, 2))
    xy = shapely.get_coordinates(shapely.point_on_surface(buildings.geometries))
    if to_grid is None:
        return xy
    return np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1]))


def _lonlat(xy: np.ndarray, crs: CRS | None) -> tuple[np.ndarray, np.ndarray]:
    """(N,) longitudes and latitudes (WGS84) of (N, 2) grid coordinates; NaN without CRS."""
    if crs is None:
        nan = np.full(len(xy), np.nan)
        return nan, nan.copy()
    lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xy[:, 0], xy[:, 1])
    return np.asarray(lon, dtype=np.float64), np.asarray(lat, dtype=np.float64)

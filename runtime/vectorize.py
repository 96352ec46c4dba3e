"""Damaged areas as polygons, traced window by window (``DamageTracer``, a sink of
the block stream): from the blocks as a run streams them (beside a GPU), and from
the finished rasters for what it did not see.

Connectivity: 4 (edge neighbours), for the polygons and for joining pieces across
block edges alike, as `rasterio.features.shapes` does by default; two damaged
pixels that meet only at a corner belong to different polygons.

Each block is polygonised in pixel coordinates (integers, exact), so pieces of one
region cut by block edges share their vertices exactly and `shapely.union_all`
glues them without slivers; coordinates go through the raster's transform once, at
the end. Pieces are joined when their pixels are 4-neighbours across a window edge
(read from the label strips along the edges, not from geometry tests), in whatever
order the windows come, and a group is finished as soon as none of its pieces lies
on an edge whose neighbour is still to come: in row-major order only the pieces
along one row of window edges wait in memory. Vertices on straight edges are
dropped and rings normalised, so the polygons are the same for every windowing,
vertex for vertex.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import rasterio.features
import shapely
from pyproj import CRS, Geod
from rasterio.crs import CRS as RioCRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from scipy import ndimage

from stmap.errors import RasterError
from stmap.io.blocks import LayerReader
from stmap.io.layout import NODATA
from stmap.io.raster import RasterInfo, describe_raster
from stmap.io.vectors import VectorTable, crs_string
from stmap.window import Window

from .coverage import COVER, Coverage
from .sinks import DAMAGE, PROB, Layers, feed_missing

CONNECTIVITY = 4
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity for labelling


def damage_cutoff(threshold: float) -> int:
    """The largest uint8 probability that is not damage: damaged <=> prob > cutoff.

    prob / 255 > threshold holds for integer prob exactly when prob > floor(threshold
    * 255); the tiny epsilon keeps 0.2 * 255 = 51.000000000000007 at 51.
    """
    return int(np.floor(threshold * 255 + 1e-9))


def damage_mask(prob: np.ndarray, threshold: float) -> np.ndarray:
    """(H, W) uint8 damage mask from (H, W) uint8 probability × 255 (nodata 255).

    1 where prob / 255 > threshold, 0 elsewhere, 255 where prob is nodata.
    """
    mask = (prob > damage_cutoff(threshold)).astype(np.uint8)
    mask[prob == NODATA] = NODATA
    return mask


def damage_polygons(
    mask_path: str | os.PathLike[str],
    prob_path: str | os.PathLike[str],
    *,
    block_size: int = 2048,
    min_area_m2: float = 0.0,
) -> VectorTable:
    """Polygons of the damaged regions (value 1) of a uint8 damage mask on disk.

    mask_path: single-band uint8 raster, 1 damaged, 0 not, 255 nodata.
    prob_path: single-band uint8 probability × 255 on the same grid (nodata 255).
    Returns Polygons in the mask's CRS, top-left first, with float64 attributes
    `area_m2` (geodesic on the CRS's ellipsoid for a geographic CRS, planar area ×
    unit factor² for a projected one, NaN without CRS) and `mean_prob` (mean of
    prob / 255 over the polygon's pixels, nodata excluded; NaN if none), keeping
    those with area_m2 >= min_area_m2. Working memory, reading in row-major order:
    one block of each raster plus the pieces along one row of block edges,
    whatever the raster size.
    block_size: the windows read (and traced) from the rasters.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    mask, prob = describe_raster(mask_path), describe_raster(prob_path)
    _check_same_grid(mask, prob)
    tracer = DamageTracer(mask.height, mask.width, tile=block_size, read_block=block_size)
    with LayerReader({DAMAGE: mask_path, PROB: prob_path}, None) as reader:
        feed_missing([tracer], reader)
    return polygons_table(tracer.finish(), mask.crs, mask.transform, min_area_m2)


def polygons_table(
    pieces: tuple[np.ndarray, np.ndarray, np.ndarray],
    crs: Any,
    transform: Affine,
    min_area_m2: float = 0.0,
) -> VectorTable:
    """The traced regions (``DamageTracer.finish``) as ``damage_polygons`` returns them."""
    pixel_polys, sums, counts = pieces
    bounds = shapely.bounds(pixel_polys).reshape(-1, 4)
    order = np.lexsort((bounds[:, 0], bounds[:, 1]))  # top row first, then left
    pixel_polys, sums, counts = pixel_polys[order], sums[order], counts[order]
    area = pixel_area_m2(pixel_polys, crs, transform)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_prob = sums / counts / 255.0
    keep = ~(area < min_area_m2)
    return VectorTable(
        geometries=apply_affine(pixel_polys[keep], transform),
        attributes={"area_m2": area[keep], "mean_prob": mean_prob[keep]},
        crs=crs_string(crs) if crs is not None else None,
        fid_name=None,
    )


def _check_same_grid(mask: RasterInfo, prob: RasterInfo) -> None:
    """Raise RasterError unless the two rasters share size, transform and CRS."""
    if (mask.width, mask.height, mask.transform, mask.crs) != (
        prob.width,
        prob.height,
        prob.transform,
        prob.crs,
    ):
        raise RasterError(
            f"{prob.path}: not on the grid of {mask.path} (size, transform and CRS must match)"
        )


@dataclass
class _Pieces:
    """Pieces of damaged regions cut by block edges, waiting for their neighbours.

    A union-find over piece ids: `groups` maps each root to its member ids and
    `data` each id to (geometry in pixel coordinates, prob sum, pixel count).
    """

    data: dict[int, tuple[shapely.Geometry, float, float]] = field(default_factory=dict)
    parent: dict[int, int] = field(default_factory=dict)
    groups: dict[int, list[int]] = field(default_factory=dict)

    def add(self, gid: int, piece: tuple[shapely.Geometry, float, float]) -> None:
        self.data[gid] = piece
        self.parent[gid] = gid
        self.groups[gid] = [gid]

    def find(self, gid: int) -> int:
        while self.parent[gid] != gid:
            self.parent[gid] = self.parent[self.parent[gid]]
            gid = self.parent[gid]
        return gid

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.groups[ra].extend(self.groups.pop(rb))

    def pop_finished(self, live: Iterable[int]) -> list[tuple[shapely.Geometry, float, float]]:
        """Merge and forget every group none of whose pieces is in `live`."""
        keep = {self.find(g) for g in live}
        merged = []
        for root in [r for r in self.groups if r not in keep]:
            members = self.groups.pop(root)
            parts = [self.data.pop(g) for g in members]
            for g in members:
                del self.parent[g]
            geoms = [p[0] for p in parts]
            geom = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
            merged.append((geom, sum(p[1] for p in parts), sum(p[2] for p in parts)))
        return merged


@dataclass
class _Edge:
    """The piece ids along one side of a window: the row (or column) of pixels
    ``line``, from ``start`` along it, waiting for the window across."""

    line: int
    start: int
    ids: np.ndarray

    @property
    def stop(self) -> int:
        return self.start + len(self.ids)


# A window's side → the side it faces across the edge, and which way the neighbour lies.
_FACING = {"top": ("bottom", -1), "bottom": ("top", 1), "left": ("right", -1), "right": ("left", 1)}


class DamageTracer:
    """Damaged regions traced window by window, in any order, joined across windows.

    A sink of ``prob`` and ``damage``: the run's writer hands each block to ``add``
    as it passes, what it did not see is fed from the finished rasters
    (``missing``), and ``finish`` merges what remains. A piece
    waits while one of its pixels lies on a window side whose neighbour has not
    come yet; sides are matched pixel by pixel (4-neighbours across the edge), not
    by geometry tests. In row-major order only one row of windows' sides waits.
    """

    def __init__(self, height: int, width: int, tile: int = COVER, read_block: int | None = None):
        """tile: the windows' lattice; read_block: the windows ``missing`` lists (a
        multiple of ``tile``; default ``Coverage.missing``'s)."""
        self.read_block = read_block
        self.height, self.width = height, width
        self.coverage = Coverage(height, width, tile)
        self._pending = _Pieces()
        self._done: list[tuple[shapely.Geometry, float, float]] = []
        self._next_id = 1
        self._sides: dict[str, list[_Edge]] = {side: [] for side in _FACING}

    needs = frozenset({PROB, DAMAGE})

    def add(self, window: Window, layers: Layers) -> None:
        """Trace a window: (h, w) uint8 ``damage`` (1 damaged) and ``prob`` × 255
        (nodata 255); no layers: nothing valid, so no damage."""
        self.coverage.add(window)
        if layers:
            damaged = layers[DAMAGE] == 1
            if damaged.any():
                self._trace(window.row_off, window.col_off, damaged, layers[PROB])
        self._settle()

    def missing(self) -> Iterator[Window]:
        return self.coverage.missing(self.read_block)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every region, once all windows are in: (N,) Polygons in pixel coordinates
        (x = column, y = row, integer vertices), prob sums and valid pixel counts."""
        if not self.coverage.complete:
            raise RuntimeError("the tracer has not seen every window of the raster")
        done = self._done + self._pending.pop_finished([])
        geoms = np.array([p[0] for p in done], dtype=object)
        # Drop vertices on straight edges (including those left at window edges), then
        # normalise ring order and start, so every windowing gives the same polygons.
        geoms = shapely.normalize(shapely.simplify(geoms, 0.0))
        sums = np.array([p[1] for p in done], dtype=np.float64)
        counts = np.array([p[2] for p in done], dtype=np.float64)
        return geoms, sums, counts

    def _trace(self, row_off: int, col_off: int, damaged: np.ndarray, prob: np.ndarray) -> None:
        h, w = damaged.shape
        pieces, labels = _block_pieces(damaged, prob, col_off, row_off)
        first = self._next_id
        self._next_id += len(pieces)

        def ids(strip: np.ndarray) -> np.ndarray:  # piece numbers → ids, on one side only
            return np.where(strip > 0, strip.astype(np.int64) + (first - 1), 0)

        sides = {  # the sides this window shares with another window
            "top": _Edge(row_off, col_off, ids(labels[0])) if row_off > 0 else None,
            "bottom": _Edge(row_off + h - 1, col_off, ids(labels[-1]))
            if row_off + h < self.height
            else None,
            "left": _Edge(col_off, row_off, ids(labels[:, 0])) if col_off > 0 else None,
            "right": _Edge(col_off + w - 1, row_off, ids(labels[:, -1]))
            if col_off + w < self.width
            else None,
        }
        edges = [e for e in sides.values() if e is not None and e.ids.any()]
        on_sides = set(np.concatenate([e.ids for e in edges] + [[0]]).tolist())
        for gid, piece in enumerate(pieces, start=first):
            if gid in on_sides:
                self._pending.add(gid, piece)
            else:
                self._done.append(piece)
        for side, edge in sides.items():
            if edge is not None and edge.ids.any():
                self._join(edge, *_FACING[side])
                self._sides[side].append(edge)

    def _settle(self) -> None:
        """Forget the sides now matched and finish the regions no longer waiting."""
        self._forget_matched()
        self._done.extend(self._pending.pop_finished(self._waiting_ids()))

    def _join(self, edge: _Edge, across: str, step: int) -> None:
        """Join the pieces on ``edge`` with those on the waiting sides facing it."""
        for other in self._sides[across]:
            lo, hi = max(edge.start, other.start), min(edge.stop, other.stop)
            if other.line != edge.line + step or lo >= hi:
                continue
            mine = edge.ids[lo - edge.start : hi - edge.start]
            theirs = other.ids[lo - other.start : hi - other.start]
            pairs = np.column_stack([mine, theirs])
            for a, b in np.unique(pairs[(pairs > 0).all(axis=1)], axis=0).tolist():
                self._pending.join(a, b)

    def _forget_matched(self) -> None:
        """Drop the sides whose neighbouring pixels have all been traced."""
        for side, edges in self._sides.items():
            step = _FACING[side][1]
            self._sides[side] = [
                e
                for e in edges
                if not (
                    self.coverage.covers(Window(e.line + step, e.start, 1, len(e.ids)))
                    if side in ("top", "bottom")
                    else self.coverage.covers(Window(e.start, e.line + step, len(e.ids), 1))
                )
            ]

    def _waiting_ids(self) -> list[int]:
        ids = [e.ids[e.ids > 0] for edges in self._sides.values() for e in edges]
        return np.unique(np.concatenate(ids)).tolist() if ids else []


def _block_pieces(
    damaged: np.ndarray, prob: np.ndarray, col_off: int, row_off: int
) -> tuple[list[tuple[shapely.Geometry, float, float]], np.ndarray]:
    """The damaged regions of one window and the (h, w) int32 raster of their numbers.

    Returns N pieces (Polygon in global pixel coordinates, prob sum, valid prob
    pixel count) and their 1-based numbers per pixel (0 where not damaged).
    """
    if not damaged.any():
        return [], np.zeros(damaged.shape, dtype=np.int32)
    polys, labels = _label_block(damaged, col_off, row_off)
    # Only damaged pixels carry a polygon number: gather those, not the whole window.
    inside = damaged & (prob != NODATA)
    numbers = labels[inside]
    psum = np.bincount(numbers, weights=prob[inside], minlength=len(polys) + 1)
    pcount = np.bincount(numbers, minlength=len(polys) + 1)
    pieces = [(g, float(psum[k]), float(pcount[k])) for k, g in enumerate(polys, start=1)]
    return pieces, labels


def _label_block(
    damaged: np.ndarray, col_off: int, row_off: int
) -> tuple[list[shapely.Geometry], np.ndarray]:
    """Polygonise one block's damaged pixels and label each pixel with its polygon.

    damaged: (h, w) bool. Returns the N Polygons in global pixel coordinates and an
    (h, w) int32 raster of 1-based polygon numbers (0 = not damaged). The pixels are
    labelled first (4-connected components) and the labels traced, so each polygon
    comes with its number and no rasterisation back is needed.
    """
    labels, count = ndimage.label(damaged, structure=_CROSS)
    labels = labels.astype(np.int32, copy=False)
    pieces: list[shapely.Geometry] = [None] * count
    with warnings.catch_warnings():
        # The window at (0, 0) has the identity transform, which rasterio takes for
        # "not georeferenced": these are pixel coordinates on purpose.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        for geom, number in rasterio.features.shapes(
            labels,
            mask=damaged,
            connectivity=CONNECTIVITY,
            transform=Affine.translation(col_off, row_off),
        ):
            pieces[int(number) - 1] = shapely.geometry.shape(geom)
    return pieces, labels


def apply_affine(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """(N,) geometries through an affine transform.

    `transform` maps pixel (column, row) to CRS coordinates; `~transform` the reverse.
    """
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geoms, lambda xy: xy @ matrix + (c, f))


def pixel_area_m2(pixel_geoms: np.ndarray, crs: RioCRS | None, transform: Affine) -> np.ndarray:
    """(N,) float64 areas in m² of (N,) polygons given in pixel coordinates.

    Projected CRS: pixel-space area × |det(transform)| × (metres per unit)².
    Geographic CRS: geodesic area on the CRS's ellipsoid. No CRS: NaN.
    """
    if crs is None:
        return np.full(len(pixel_geoms), np.nan)
    if crs.is_projected:
        unit = crs.linear_units_factor[1]
        return shapely.area(pixel_geoms) * abs(transform.determinant) * unit**2
    geod: Geod = CRS.from_user_input(crs).get_geod()
    world = shapely.orient_polygons(apply_affine(pixel_geoms, transform))
    return np.array([geod.geometry_area_perimeter(g)[0] for g in world], dtype=np.float64)

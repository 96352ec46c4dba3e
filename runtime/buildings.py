"""Per-building damage from the probability raster, block by block (``BuildingDamage``,
a sink of ``prob``, fed by the finishing step or from a raster on disk).

Conventions (one rule each, applied everywhere):
- Pixel membership: a pixel belongs to a footprint when its centre lies inside it
  (`rasterize(all_touched=False)`; a centre on a shared edge goes to one side).
- Overlaps: every footprint gets all of its pixels, shared or not. Footprints whose
  bounding boxes overlap are rasterised in different passes ("layers", a greedy
  colouring), so a pixel inside two buildings (or two buffers) counts for both.
- Sub-pixel footprints: one that contains no pixel centre takes the pixel holding
  its `point_on_surface` (a point inside it, unlike the centroid of an L shape);
  so does a buffered footprint without a pixel centre.
- Damaged pixel: prob / 255 > threshold, the same test as the damage mask
  (`damage_cutoff`). Nodata is prob 255; pixels outside the raster count as nodata.
- Label: "unknown" when more than `unknown_limit` of the footprint is nodata or
  outside; else "damaged" when damaged_fraction >= `label_fraction`; else
  "undamaged".
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio.features
import shapely
from pyproj import CRS
from rasterio.transform import Affine

from stmap.errors import InputError, RasterError
from stmap.io.blocks import LayerReader
from stmap.io.raster import RasterInfo, describe_raster
from stmap.io.vectors import VectorTable, crs_string, transform_geometries
from stmap.window import Window, lattice

from .coverage import Coverage
from .sinks import PROB, Layers, feed_missing
from .vectorize import NODATA, apply_affine, damage_cutoff

LABEL_FRACTION = 0.25  # damaged_fraction from which a building is labelled "damaged"
# Footprints coloured into non-overlapping layers together, per block window: the
# colouring holds every overlapping pair of them, at most LAYER_BATCH² (16 MB of
# indices), however many footprints overlap.
LAYER_BATCH = 1024
LABELS = ("damaged", "undamaged", "unknown")
# Footprint identifiers, matched lower-case, besides any "*_id" column: GeoPackage and
# Esri FIDs, OpenStreetMap (osm_id; @id and id from Overpass), Overture (id, a GERS
# ID), Google Open Buildings (full_plus_code). Microsoft's footprints carry no ID.
ID_COLUMNS = ("fid", "objectid", "gid", "id", "@id", "uuid", "osm_id", "osmid", "full_plus_code")


def buffer_column(metres: float) -> str:
    """The column name for the damaged fraction within `metres` of a footprint."""
    return f"damaged_fraction_b{metres:g}m"


def building_damage(
    prob_path: str | os.PathLike[str],
    footprints: VectorTable,
    *,
    threshold: float,
    buffers_m: Sequence[float] = (0.0,),
    label_fraction: float = LABEL_FRACTION,
    unknown_limit: float = 0.5,
    block_size: int = 2048,
) -> VectorTable:
    """Damage statistics for every footprint over a uint8 probability raster on disk.

    prob_path: single-band uint8 probability × 255, nodata 255. See ``BuildingDamage``.
    """
    sink = BuildingDamage(
        describe_raster(prob_path),
        footprints,
        threshold=threshold,
        buffers_m=buffers_m,
        label_fraction=label_fraction,
        unknown_limit=unknown_limit,
        block_size=block_size,
    )
    with LayerReader({PROB: prob_path}, None) as reader:
        feed_missing([sink], reader)
    return sink.finish()


class BuildingDamage:
    """Damage statistics for every footprint, tallied from the ``prob`` windows added.

    raster: the probability raster's grid (size, CRS, transform; the input's).
    footprints: N features, reprojected to the raster's CRS when their CRS differs
        (a table without CRS is taken to be in the raster's CRS already).
    threshold: a pixel is damaged when prob / 255 > threshold.
    buffers_m: distances in metres; each M > 0 adds `damaged_fraction_b{M}m`, the
        damaged fraction of the footprint buffered by M metres (in the raster's
        CRS when projected, else in the local UTM zone). 0 is the footprint itself.
    label_fraction: damaged_fraction from which a building is labelled "damaged".
    unknown_limit: unknown_fraction above which a building is labelled "unknown".
    block_size: the windows ``missing`` lists, and the blocks beyond the raster's
        edges whose pixels count as nodata.

    ``finish`` returns the N footprints in the raster's CRS (cut near it,
    `clip_to_raster`), in input order, with every source attribute (identifiers
    first, see `ids_first`; a source column with a result's name is replaced)
    followed by float64 `damaged_fraction` (damaged / valid pixels),
    `damaged_fraction_b{M}m`..., `mean_prob`, `max_prob` (prob / 255 over valid
    pixels; NaN without any), `unknown_fraction` (nodata or outside pixels / all
    pixels) and the str `label`. Footprints found in a window are coloured and burnt
    in batches of LAYER_BATCH, so memory does not grow with how many overlap.
    """

    needs = frozenset({PROB})

    def __init__(
        self,
        raster: RasterInfo,
        footprints: VectorTable,
        *,
        threshold: float,
        buffers_m: Sequence[float] = (0.0,),
        label_fraction: float = LABEL_FRACTION,
        unknown_limit: float = 0.5,
        block_size: int = 2048,
    ):
        if block_size < 1:
            raise ValueError(f"block_size must be positive, got {block_size}")
        if any(m < 0 for m in buffers_m):
            raise InputError(f"building buffers must be >= 0 metres, got {list(buffers_m)}")
        self.footprints, self.block_size = footprints, block_size
        self.label_fraction, self.unknown_limit = label_fraction, unknown_limit
        self.cutoff = damage_cutoff(threshold)
        self.height, self.width = raster.height, raster.width
        self.extra = list(dict.fromkeys(float(m) for m in buffers_m if m > 0))
        geoms = _in_raster_crs(footprints, raster)
        gsd = raster.gsd_m
        margin = block_size + (max(self.extra, default=0.0) / gsd if gsd else 0.0)
        self.clipped, self.outside = clip_to_raster(
            geoms, raster.transform, raster.width, raster.height, margin
        )
        sets = [self.clipped] + [
            buffer_metres(self.clipped, m, raster.crs, raster.path) for m in self.extra
        ]
        self.pixel_sets = [apply_affine(g, ~raster.transform) for g in sets]
        self.crs = crs_string(raster.crs) if raster.crs is not None else footprints.crs
        raster_box = shapely.box(0, 0, raster.width, raster.height)
        n = len(self.pixel_sets[0])
        self.usable = [np.flatnonzero(shapely.intersects(g, raster_box)) for g in self.pixel_sets]
        self.trees = [
            shapely.STRtree(g[u]) for g, u in zip(self.pixel_sets, self.usable, strict=True)
        ]
        self.counts = [_Counts.zeros(n) for _ in self.pixel_sets]
        # The pixel under each footprint's inner point, for footprints without a pixel.
        self.point_prob = np.full(n, NODATA, dtype=np.uint8)
        self.cols, self.rows = _inner_pixels(self.pixel_sets[0], raster.width, raster.height)
        parts = [raster_box, *(g[u] for g, u in zip(self.pixel_sets, self.usable, strict=True))]
        self.bounds = shapely.total_bounds(np.concatenate([np.atleast_1d(p) for p in parts]))
        self.coverage = Coverage(raster.height, raster.width, block_size)

    def add(self, window: Window, layers: Layers) -> None:
        """Tally one window of the raster: (h, w) uint8 ``prob`` (none: all nodata)."""
        shape = (window.height, window.width)
        prob = layers[PROB] if layers else np.broadcast_to(np.uint8(NODATA), shape)
        self._tally(window, prob)
        self.coverage.add(window)

    def missing(self) -> Iterator[Window]:
        return self.coverage.missing(self.block_size)

    def finish(self) -> VectorTable:
        """The building table, once every window of the raster was added."""
        if not self.coverage.complete:
            raise RuntimeError("the buildings have not seen every window of the raster")
        # Pixels beyond the raster, within the blocks the footprints reach, are nodata.
        minx, miny, maxx, maxy = self.bounds
        for row in lattice(
            math.floor(miny), math.floor(minx), math.ceil(maxy), math.ceil(maxx), self.block_size
        ):
            for window in row:
                if window.clip(self.height, self.width) != window:
                    nodata = np.broadcast_to(np.uint8(NODATA), (window.height, window.width))
                    self._tally(window, nodata, beyond_only=True)
        for count in self.counts:
            count.fill_empty(self.point_prob, self.cutoff)
            count.total += self.outside  # the pixels beyond the clip are outside, hence nodata
        return self._table()

    def _tally(self, win: Window, prob: np.ndarray, *, beyond_only: bool = False) -> None:
        """Burn the footprints found in ``win`` and count their pixels of ``prob``;
        beyond_only: only the pixels outside the raster."""
        c0, r0 = win.col_off, win.row_off
        box = shapely.box(c0, r0, win.col_stop, win.row_stop)
        found = [tree.query(box) for tree in self.trees]  # indices into usable
        if not any(len(f) for f in found):
            return
        if not beyond_only:  # a footprint's inner point lies in a window where it is found
            near = self.usable[0][found[0]]
            near = near[(self.cols[near] >= c0) & (self.cols[near] < win.col_stop)]
            near = near[(self.rows[near] >= r0) & (self.rows[near] < win.row_stop)]
            self.point_prob[near] = prob[self.rows[near] - r0, self.cols[near] - c0]
        sets = zip(self.pixel_sets, self.usable, found, self.counts, strict=True)
        for geoms, u, local, count in sets:
            local = np.sort(local)
            for start in range(0, len(local), LAYER_BATCH):  # memory bounded by the batch
                batch = u[local[start : start + LAYER_BATCH]]
                layer = overlap_layers(geoms[batch])
                for value in np.unique(layer).tolist():
                    sel = batch[layer == value]
                    burnt = _burn_ids(geoms[sel], win)
                    if burnt is not None:
                        ids, part = burnt
                        if beyond_only:
                            inside = part.clip(self.height, self.width)
                            ids[inside.relative_to(part)] = 0
                        count.add_block(sel, ids, prob[part.relative_to(win)], self.cutoff)

    def _table(self) -> VectorTable:
        base = self.counts[0]
        columns = {"damaged_fraction": base.damaged_fraction}
        columns.update(
            {
                buffer_column(m): s.damaged_fraction
                for m, s in zip(self.extra, self.counts[1:], strict=True)
            }
        )
        unknown = base.unknown_fraction
        label = np.where(base.damaged_fraction >= self.label_fraction, "damaged", "undamaged")
        label = np.where(unknown > self.unknown_limit, "unknown", label).astype(object)
        columns.update(
            mean_prob=base.mean_prob, max_prob=base.max_prob, unknown_fraction=unknown, label=label
        )
        footprints = self.footprints
        attributes = ids_first(
            {k: v for k, v in footprints.attributes.items() if k not in columns},
            footprints.fid_name,
        )
        return VectorTable(
            geometries=self.clipped,
            attributes={**attributes, **columns},
            crs=self.crs,
            fid_name=footprints.fid_name,
        )


def ids_first(attributes: dict[str, np.ndarray], fid_name: str | None) -> dict[str, np.ndarray]:
    """The columns with the footprints' identifiers first (the FID first of them).

    Identifiers are the FID column, the names of ``ID_COLUMNS`` and any ``*_id``; the
    other columns keep their source order after them.
    """

    def rank(name: str) -> int:
        lower = name.lower()
        return 0 if name == fid_name else 1 if lower in ID_COLUMNS or lower.endswith("_id") else 2

    return {name: attributes[name] for name in sorted(attributes, key=rank)}


def building_facts(table: VectorTable) -> dict[str, Any]:
    """The building layer's figures for the summary: counts per label and the histogram."""
    labels = list(table.attributes["label"])
    return {
        "total": len(table),
        **{name: labels.count(name) for name in LABELS},
        "damaged_fraction_histogram": damaged_fraction_histogram(table),
    }


def damaged_fraction_histogram(table: VectorTable, bins: int = 10) -> dict[str, list | int]:
    """Histogram of `damaged_fraction` over [0, 1] for the summary and the report.

    Returns {"edges": bins + 1 floats, "counts": bins ints, "missing": number of
    buildings without a valid pixel (NaN fraction)}.
    """
    values = np.asarray(table.attributes["damaged_fraction"], dtype=np.float64)
    finite = np.isfinite(values)
    counts, edges = np.histogram(values[finite], bins=bins, range=(0.0, 1.0))
    return {
        "edges": edges.tolist(),
        "counts": counts.tolist(),
        "missing": int((~finite).sum()),
    }


def _in_raster_crs(footprints: VectorTable, raster: RasterInfo) -> np.ndarray:
    """(N,) footprint geometries in the raster's CRS."""
    if footprints.crs is None:
        return footprints.geometries
    if raster.crs is None:
        raise RasterError(
            f"{raster.path}: has no CRS, so footprints in {footprints.crs} cannot be placed on it"
        )
    return transform_geometries(footprints.geometries, footprints.crs, raster.crs)


def buffer_metres(geoms: np.ndarray, metres: float, crs: object, source: str) -> np.ndarray:
    """(N,) geometries buffered by `metres`, returned in `crs`.

    Buffers in `crs` itself when it is projected (metres converted to its unit),
    otherwise in the UTM zone at the geometries' centre. Raises RasterError for
    a raster without CRS (`source` names it).
    """
    if crs is None:
        raise RasterError(f"{source}: has no CRS, so buffers in metres are undefined")
    parsed = CRS.from_user_input(crs)
    if len(geoms) == 0:
        return geoms
    if parsed.is_projected:
        unit = parsed.axis_info[0].unit_conversion_factor
        return shapely.buffer(geoms, metres / unit)
    lonlat = transform_geometries(geoms, parsed, "EPSG:4326")
    minx, miny, maxx, maxy = shapely.total_bounds(lonlat)
    lon, lat = (minx + maxx) / 2, (miny + maxy) / 2
    utm = (32600 if lat >= 0 else 32700) + min(int((lon + 180) // 6) + 1, 60)
    local = transform_geometries(geoms, parsed, f"EPSG:{utm}")
    return transform_geometries(shapely.buffer(local, metres), f"EPSG:{utm}", parsed)


def clip_to_raster(
    geoms: np.ndarray, transform: Affine, width: int, height: int, margin: float
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) geometries cut to the box around the raster grown by ``margin`` pixels, and
    (N,) int64 pixels of each left beyond the cut (by area; footprints inside the box
    are returned unchanged).

    A footprint reaching x = 1e300 would otherwise make the block grid, and memory,
    as large as it; its pixels beyond the raster count as nodata either way.
    """
    corners = [
        transform @ (c, r) for c in (-margin, width + margin) for r in (-margin, height + margin)
    ]
    xs, ys = zip(*corners, strict=True)
    frame = (min(xs), min(ys), max(xs), max(ys))
    beyond = ~shapely.within(geoms, shapely.box(*frame)) & ~shapely.is_empty(geoms)
    outside = np.zeros(len(geoms), dtype=np.int64)
    if not beyond.any():
        return geoms, outside
    clipped = geoms.copy()
    # A rectangle clip only interpolates along edges: no overlay arithmetic to overflow.
    clipped[beyond] = shapely.clip_by_rect(geoms[beyond], *frame)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    with np.errstate(over="ignore", invalid="ignore"):
        lost = (shapely.area(geoms[beyond]) - shapely.area(clipped[beyond])) / pixel_area
    outside[beyond] = np.rint(np.clip(np.nan_to_num(lost, posinf=2.0**62), 0, 2.0**62))
    return clipped, outside


def overlap_layers(pixel_geoms: np.ndarray) -> np.ndarray:
    """(N,) int64 layer per geometry; no two in one layer have overlapping bounds.

    A greedy colouring in input order: each geometry takes the lowest layer that
    no earlier geometry with strictly overlapping bounds holds. Bounds that only
    touch may share a layer (the pixel-centre rule gives a centre to one side).
    """
    n = len(pixel_geoms)
    layers = np.zeros(n, dtype=np.int64)
    i, j = shapely.STRtree(pixel_geoms).query(pixel_geoms)
    bounds = shapely.bounds(pixel_geoms)
    strict = (
        (j < i)
        & (bounds[i, 0] < bounds[j, 2])
        & (bounds[j, 0] < bounds[i, 2])
        & (bounds[i, 1] < bounds[j, 3])
        & (bounds[j, 1] < bounds[i, 3])
    )
    i, j = i[strict], j[strict]
    order = np.argsort(i, kind="stable")
    i, j = i[order], j[order]
    starts = np.searchsorted(i, np.arange(n + 1))
    for k in np.unique(i).tolist():
        taken = layers[j[starts[k] : starts[k + 1]]]
        free = np.ones(len(taken) + 1, dtype=bool)
        free[taken[taken <= len(taken)]] = False
        layers[k] = int(np.argmax(free))
    return layers


def max_per_label(labels: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(n,) int64 maximum of uint8 `values` per label in 0..n-1, -1 for absent labels.

    labels, values: (P,) arrays. Two histograms of 16 bins per label (high nibble,
    then low nibble within the top bin) instead of `np.maximum.at`, which is ~10x
    slower: memory stays 16 counts per label.
    """
    labels = labels.astype(np.int64)
    high, low = values >> 4, values & 15
    coarse = np.bincount(labels * 16 + high, minlength=n * 16).reshape(n, 16)
    top = 15 - np.argmax(coarse[:, ::-1] > 0, axis=1)
    at_top = high == top[labels]
    fine = np.bincount(labels[at_top] * 16 + low[at_top], minlength=n * 16).reshape(n, 16)
    best = top * 16 + 15 - np.argmax(fine[:, ::-1] > 0, axis=1)
    return np.where(coarse.any(axis=1), best, -1)


@dataclass
class _Counts:
    """Per-footprint pixel tallies for one geometry set; all (N,) arrays."""

    total: np.ndarray  # int64 pixels whose centre is inside (incl. nodata, outside)
    valid: np.ndarray  # int64 of those with a prob value
    damaged: np.ndarray  # int64 of those with prob > cutoff
    prob_sum: np.ndarray  # float64 sum of prob over valid pixels
    prob_max: np.ndarray  # int64 max prob over valid pixels, -1 without any

    @classmethod
    def zeros(cls, n: int) -> _Counts:
        z = np.zeros(n, dtype=np.int64)
        return cls(z.copy(), z.copy(), z.copy(), np.zeros(n), np.full(n, -1, dtype=np.int64))

    def add_block(self, sel: np.ndarray, ids: np.ndarray, prob: np.ndarray, cutoff: int) -> None:
        """Add one rasterised layer: ids (h, w) int32 1-based into `sel`, prob (h, w)."""
        burnt = ids > 0
        lab, p = ids[burnt], prob[burnt]
        ok = p != NODATA
        lab_ok, p_ok = lab[ok], p[ok]
        k = len(sel) + 1
        self.total[sel] += np.bincount(lab, minlength=k)[1:]
        self.valid[sel] += np.bincount(lab_ok, minlength=k)[1:]
        self.damaged[sel] += np.bincount(lab_ok, weights=p_ok > cutoff, minlength=k)[1:].astype(
            np.int64
        )
        self.prob_sum[sel] += np.bincount(lab_ok, weights=p_ok, minlength=k)[1:]
        local_max = max_per_label(lab_ok, p_ok, k)
        self.prob_max[sel] = np.maximum(self.prob_max[sel], local_max[1:])

    def fill_empty(self, point_prob: np.ndarray, cutoff: int) -> None:
        """Footprints without a pixel take the (N,) uint8 prob at their inner point."""
        empty = self.total == 0
        p = point_prob[empty].astype(np.int64)
        ok = p != NODATA
        self.total[empty] = 1
        self.valid[empty] = ok
        self.damaged[empty] = ok & (p > cutoff)
        self.prob_sum[empty] = np.where(ok, p, 0)
        self.prob_max[empty] = np.where(ok, p, -1)

    @property
    def damaged_fraction(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.damaged / self.valid

    @property
    def mean_prob(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.prob_sum / self.valid / 255.0

    @property
    def max_prob(self) -> np.ndarray:
        return np.where(self.prob_max >= 0, self.prob_max / 255.0, np.nan)

    @property
    def unknown_fraction(self) -> np.ndarray:
        return (self.total - self.valid) / self.total


def _burn_ids(pixel_geoms: np.ndarray, win: Window) -> tuple[np.ndarray, Window] | None:
    """Rasterise K non-overlapping geometries as ids 1..K (pixel-centre rule).

    Only the part of window `win` that their bounds cover is burnt. Returns the
    (h', w') int32 ids and that part, or None when it is empty.
    """
    minx, miny, maxx, maxy = shapely.total_bounds(pixel_geoms)
    c0 = max(math.floor(minx), win.col_off)
    r0 = max(math.floor(miny), win.row_off)
    c1 = min(math.ceil(maxx), win.col_stop)
    r1 = min(math.ceil(maxy), win.row_stop)
    if c1 <= c0 or r1 <= r0:
        return None
    ids = rasterio.features.rasterize(
        zip(pixel_geoms, range(1, len(pixel_geoms) + 1), strict=True),
        out_shape=(r1 - r0, c1 - c0),
        transform=Affine.translation(c0, r0),
        fill=0,
        all_touched=False,
        dtype=np.int32,
    )
    return ids, Window(r0, c0, r1 - r0, c1 - c0)


def _inner_pixels(
    pixel_geoms: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """(N,) int64 column and row of the pixel under each geometry's inner point.

    -1 for empty geometries and points outside the width × height raster.
    """
    cols = np.full(len(pixel_geoms), -1, dtype=np.int64)
    rows = cols.copy()
    present = ~shapely.is_empty(pixel_geoms)
    xy = shapely.get_coordinates(shapely.point_on_surface(pixel_geoms[present]))
    cols[present], rows[present] = np.floor(xy).astype(np.int64).T
    outside = (cols < 0) | (cols >= width) | (rows < 0) | (rows >= height)
    cols[outside], rows[outside] = -1, -1
    return cols, rows

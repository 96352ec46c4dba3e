"""Per-building damage from the probability raster, block by block.

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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from pyproj import CRS
from rasterio.transform import Affine
from rasterio.windows import Window

from stmap.errors import InputError, RasterError
from stmap.io.raster import ground_sample_distance, open_raster
from stmap.io.vectors import VectorTable, crs_string, transform_geometries

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
    """Damage statistics for every footprint over a uint8 probability raster.

    prob_path: single-band uint8 probability × 255, nodata 255.
    footprints: N features, reprojected to the raster's CRS when their CRS differs
        (a table without CRS is taken to be in the raster's CRS already).
    threshold: a pixel is damaged when prob / 255 > threshold.
    buffers_m: distances in metres; each M > 0 adds `damaged_fraction_b{M}m`, the
        damaged fraction of the footprint buffered by M metres (in the raster's
        CRS when projected, else in the local UTM zone). 0 is the footprint itself.
    label_fraction: damaged_fraction from which a building is labelled "damaged".
    unknown_limit: unknown_fraction above which a building is labelled "unknown".

    Returns the N footprints in the raster's CRS (cut near it, `clip_to_raster`), in
    input order, with every source attribute (identifiers first, see `ids_first`; a
    source column with a result's name is replaced) followed by float64
    `damaged_fraction` (damaged / valid pixels), `damaged_fraction_b{M}m`...,
    `mean_prob`, `max_prob` (prob / 255 over valid pixels; NaN without any),
    `unknown_fraction` (nodata or outside pixels / all pixels) and the str `label`.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    if any(m < 0 for m in buffers_m):
        raise InputError(f"building buffers must be >= 0 metres, got {list(buffers_m)}")
    extra = list(dict.fromkeys(float(m) for m in buffers_m if m > 0))
    with open_raster(prob_path) as ds:
        geoms = _in_raster_crs(footprints, ds)
        margin = block_size + _metres_in_pixels(max(extra, default=0.0), ds)
        clipped, outside = clip_to_raster(geoms, ds.transform, ds.width, ds.height, margin)
        sets = [clipped] + [buffer_metres(clipped, m, ds.crs, ds.name) for m in extra]
        pixel_sets = [apply_affine(g, ~ds.transform) for g in sets]
        stats = _accumulate(ds, pixel_sets, block_size, damage_cutoff(threshold))
        for count in stats:  # the pixels beyond the clip are outside, hence nodata
            count.total += outside
        crs = crs_string(ds.crs) if ds.crs is not None else footprints.crs

    base = stats[0]
    columns = {"damaged_fraction": base.damaged_fraction}
    columns.update(
        {buffer_column(m): s.damaged_fraction for m, s in zip(extra, stats[1:], strict=True)}
    )
    unknown = base.unknown_fraction
    label = np.where(base.damaged_fraction >= label_fraction, "damaged", "undamaged")
    label = np.where(unknown > unknown_limit, "unknown", label).astype(object)
    columns.update(
        mean_prob=base.mean_prob, max_prob=base.max_prob, unknown_fraction=unknown, label=label
    )
    attributes = ids_first(
        {k: v for k, v in footprints.attributes.items() if k not in columns}, footprints.fid_name
    )
    return VectorTable(
        geometries=clipped,
        attributes={**attributes, **columns},
        crs=crs,
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


def _in_raster_crs(footprints: VectorTable, ds: rasterio.DatasetReader) -> np.ndarray:
    """(N,) footprint geometries in the raster's CRS."""
    if footprints.crs is None:
        return footprints.geometries
    if ds.crs is None:
        raise RasterError(
            f"{ds.name}: has no CRS, so footprints in {footprints.crs} cannot be placed on it"
        )
    return transform_geometries(footprints.geometries, footprints.crs, ds.crs)


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


def _metres_in_pixels(metres: float, ds: rasterio.DatasetReader) -> float:
    """How many pixels ``metres`` span on the ground at the raster's centre."""
    gsd = ground_sample_distance(ds.crs, ds.transform, ds.width, ds.height)
    return metres / gsd if gsd else 0.0


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


def _accumulate(
    ds: rasterio.DatasetReader, pixel_sets: list[np.ndarray], block_size: int, cutoff: int
) -> list[_Counts]:
    """Tally every geometry set over the raster, one block window at a time.

    pixel_sets: S arrays of the same N features in pixel coordinates (set 0 the
    footprints, the others their buffers), clipped near the raster
    (``clip_to_raster``). Footprints found in a window are coloured and burnt in
    batches of LAYER_BATCH, so memory does not grow with how many overlap. The block
    grid starts at pixel (0, 0)
    and extends past the raster where footprints do, so their pixels outside it
    count as nodata; geometries that miss the raster entirely are not rasterised.
    """
    raster_box = shapely.box(0, 0, ds.width, ds.height)
    n = len(pixel_sets[0])
    usable = [np.flatnonzero(shapely.intersects(g, raster_box)) for g in pixel_sets]
    trees = [shapely.STRtree(g[u]) for g, u in zip(pixel_sets, usable, strict=True)]
    counts = [_Counts.zeros(n) for _ in pixel_sets]

    # The pixel under each footprint's inner point, for footprints without a pixel.
    point_prob = np.full(n, NODATA, dtype=np.uint8)
    cols, rows = _inner_pixels(pixel_sets[0], ds.width, ds.height)

    parts = [raster_box, *(g[u] for g, u in zip(pixel_sets, usable, strict=True))]
    bounds = shapely.total_bounds(np.concatenate([np.atleast_1d(p) for p in parts]))
    for win in _grid_windows(*bounds, block_size):
        c0, r0 = win.col_off, win.row_off
        box = shapely.box(c0, r0, c0 + block_size, r0 + block_size)
        found = [tree.query(box) for tree in trees]  # indices into usable
        if not any(len(f) for f in found):
            continue
        prob = _read_block(ds, win)
        # A footprint's inner point lies in a block where the footprint is found.
        near = usable[0][found[0]]
        near = near[(cols[near] >= c0) & (cols[near] < c0 + block_size)]
        near = near[(rows[near] >= r0) & (rows[near] < r0 + block_size)]
        point_prob[near] = prob[rows[near] - r0, cols[near] - c0]
        for geoms, u, local, count in zip(pixel_sets, usable, found, counts, strict=True):
            local = np.sort(local)
            for start in range(0, len(local), LAYER_BATCH):  # memory bounded by the batch
                batch = u[local[start : start + LAYER_BATCH]]
                layer = overlap_layers(geoms[batch])
                for value in np.unique(layer).tolist():
                    sel = batch[layer == value]
                    burnt = _burn_ids(geoms[sel], win, prob.shape)
                    if burnt is not None:
                        ids, part = burnt
                        count.add_block(sel, ids, prob[part], cutoff)
    for count in counts:
        count.fill_empty(point_prob, cutoff)
    return counts


def _burn_ids(
    pixel_geoms: np.ndarray, win: Window, shape: tuple[int, int]
) -> tuple[np.ndarray, tuple[slice, slice]] | None:
    """Rasterise K non-overlapping geometries as ids 1..K (pixel-centre rule).

    Only the part of the (h, w) block window `win` that their bounds cover is
    burnt. Returns the (h', w') int32 ids and the (rows, cols) slices of that part
    within the block, or None when it is empty.
    """
    minx, miny, maxx, maxy = shapely.total_bounds(pixel_geoms)
    c0 = max(math.floor(minx), win.col_off)
    r0 = max(math.floor(miny), win.row_off)
    c1 = min(math.ceil(maxx), win.col_off + shape[1])
    r1 = min(math.ceil(maxy), win.row_off + shape[0])
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
    rows = slice(r0 - win.row_off, r1 - win.row_off)
    cols = slice(c0 - win.col_off, c1 - win.col_off)
    return ids, (rows, cols)


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


def _grid_windows(
    minx: float, miny: float, maxx: float, maxy: float, block_size: int
) -> list[Window]:
    """Square windows of the block grid anchored at pixel (0, 0) covering the bounds."""
    c0 = math.floor(minx / block_size) * block_size
    r0 = math.floor(miny / block_size) * block_size
    return [
        Window(col, row, block_size, block_size)
        for row in range(r0, math.ceil(maxy), block_size)
        for col in range(c0, math.ceil(maxx), block_size)
    ]


def _read_block(ds: rasterio.DatasetReader, win: Window) -> np.ndarray:
    """(h, w) uint8 prob for a window that may reach past the raster (nodata there)."""
    out = np.full((int(win.height), int(win.width)), NODATA, dtype=np.uint8)
    c0, r0 = max(win.col_off, 0), max(win.row_off, 0)
    c1 = min(win.col_off + win.width, ds.width)
    r1 = min(win.row_off + win.height, ds.height)
    if c1 > c0 and r1 > r0:
        out[r0 - win.row_off : r1 - win.row_off, c0 - win.col_off : c1 - win.col_off] = ds.read(
            1, window=Window(c0, r0, c1 - c0, r1 - r0)
        )
    return out

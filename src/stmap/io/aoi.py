"""An area of interest: the polygons a run is limited to, and their per-window masks.

Read once from any OGR vector into the raster's CRS; the block reader then asks,
per window, whether the window touches it (blocks that do not are never read) and
which of its pixels lie inside (pixel centres, as GDAL rasterises).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io.vectors import read_vector, transform_geometries

Bounds = tuple[float, float, float, float]  # (minx, miny, maxx, maxy)
CLIP_MARGIN = 0.1  # of the raster's extent: the clip's cut lies outside the raster


@dataclass(frozen=True, eq=False)
class Aoi:
    """The union of an AOI file's polygons in one CRS.

    path: the file it came from (for messages); geometry: polygonal, valid.
    """

    path: str
    geometry: shapely.Geometry
    crs: Any

    def __post_init__(self) -> None:
        shapely.prepare(self.geometry)  # every block asks intersects/contains: index it once

    @property
    def bounds(self) -> Bounds:
        return tuple(self.geometry.bounds)

    @property
    def key(self) -> str:
        """A digest of the geometry (and CRS): what a resumed run must find unchanged."""
        return hashlib.sha256(shapely.to_wkb(self.geometry) + str(self.crs).encode()).hexdigest()

    def touches(self, geometries: np.ndarray) -> np.ndarray:
        """(N,) bool: which of (N,) geometries (in the AOI's CRS) intersect it."""
        return shapely.intersects(geometries, self.geometry)

    def mask(self, transform: Affine, height: int, width: int) -> np.ndarray:
        """(height, width) bool: pixels of a window (``transform``) whose centres are inside."""
        corners = np.array([transform @ (c, r) for c in (0, width) for r in (0, height)])
        window = shapely.box(*corners.min(axis=0), *corners.max(axis=0))  # holds a rotated one
        if not self.geometry.intersects(window):
            return np.zeros((height, width), dtype=bool)
        if self.geometry.contains(window):
            return np.ones((height, width), dtype=bool)
        part = shapely.clip_by_rect(self.geometry, *window.bounds)  # rasterise only the window
        return geometry_mask([part], (height, width), transform, invert=True)

    def check_overlap(self, bounds: Bounds, what: str) -> None:
        """Refuse an AOI that misses ``bounds`` (of ``what``, in the AOI's CRS)."""
        if not self.geometry.intersects(shapely.box(*bounds)):
            spans = "nothing near it" if self.geometry.is_empty else _extent(self.bounds)
            raise InputError(
                f"--aoi {self.path}: does not overlap {what}: the AOI spans "
                f"{spans}, {what} spans {_extent(bounds)} ({_crs_name(self.crs)}); "
                "give an AOI inside the imagery"
            )


def read_aoi(path: str | os.PathLike[str], crs: Any, within: Bounds | None = None) -> Aoi:
    """The polygons of ``path`` (any OGR vector, any CRS) as one Aoi in ``crs``.

    within: the extent that matters (the raster's, in ``crs``). The AOI is clipped to
    it, with a margin, in its own CRS before it is reprojected: a world or hemisphere
    AOI in lon/lat has corners no projected CRS can hold (a UTM zone sends them to
    infinity and the polygon degenerates), while its part around the raster
    reprojects well. Raises VectorError naming the file when it cannot be read, has
    no CRS, or holds no polygon.
    """
    try:
        table = read_vector(path, crs=crs if within is None else None)
        if within is not None and table.crs is None:
            read_vector(path, crs=crs)  # raises: the layer has no CRS
    except VectorError as exc:
        raise VectorError(f"--aoi {exc}") from exc
    types = shapely.get_type_id(table.geometries)
    polygonal = np.isin(types, (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON))
    if not polygonal.any():
        raise VectorError(f"--aoi {os.fspath(path)}: holds no polygon; an AOI is one or more")
    geometry = shapely.union_all(table.geometries[polygonal])
    if within is not None:
        geometry = _reproject_within(geometry, table.crs, crs, within)
    return Aoi(os.fspath(path), geometry, crs)


def _reproject_within(geometry: shapely.Geometry, source: Any, target: Any, within: Bounds):
    """``geometry`` from ``source`` to ``target``, keeping only its part near ``within``."""
    source_crs, target_crs = CRS.from_user_input(source), CRS.from_user_input(target)
    if source_crs == target_crs:
        return geometry
    minx, miny, maxx, maxy = within
    margin = max(maxx - minx, maxy - miny) * CLIP_MARGIN
    grown = (minx - margin, miny - margin, maxx + margin, maxy + margin)
    try:
        box = Transformer.from_crs(target_crs, source_crs, always_xy=True).transform_bounds(
            *grown, densify_pts=21
        )
    except ProjError:
        box = None
    if box is not None and all(np.isfinite(box)) and box[0] < box[2]:  # not across 180°
        geometry = shapely.clip_by_rect(geometry, *box)
    projected = transform_geometries(np.array([geometry]), source_crs, target_crs)[0]
    return shapely.make_valid(projected) if not projected.is_valid else projected


def _extent(bounds: Bounds) -> str:
    return "({:.1f}, {:.1f}) – ({:.1f}, {:.1f})".format(*bounds)


def _crs_name(crs: Any) -> str:
    return CRS.from_user_input(crs).name

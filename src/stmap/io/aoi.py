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
from rasterio.features import geometry_mask
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io.vectors import read_vector

Bounds = tuple[float, float, float, float]  # (minx, miny, maxx, maxy)


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
            raise InputError(
                f"--aoi {self.path}: does not overlap {what}: the AOI spans "
                f"{_extent(self.bounds)}, {what} spans {_extent(bounds)} ({_crs_name(self.crs)}); "
                "give an AOI inside the imagery"
            )


def read_aoi(path: str | os.PathLike[str], crs: Any) -> Aoi:
    """The polygons of ``path`` (any OGR vector, any CRS) as one Aoi in ``crs``.

    Raises VectorError naming the file when it cannot be read, has no CRS, or holds
    no polygon.
    """
    try:
        table = read_vector(path, crs=crs)
    except VectorError as exc:
        raise VectorError(f"--aoi {exc}") from exc
    types = shapely.get_type_id(table.geometries)
    polygonal = np.isin(types, (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON))
    if not polygonal.any():
        raise VectorError(f"--aoi {os.fspath(path)}: holds no polygon; an AOI is one or more")
    return Aoi(os.fspath(path), shapely.union_all(table.geometries[polygonal]), crs)


def _extent(bounds: Bounds) -> str:
    return "({:.1f}, {:.1f}) – ({:.1f}, {:.1f})".format(*bounds)


def _crs_name(crs: Any) -> str:
    from pyproj import CRS

    return CRS.from_user_input(crs).name

"""Open rasters and describe them: size, bands, CRS, GSD in metres, blocks and masks."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from stmap.errors import RasterError


@dataclass(frozen=True)
class RasterInfo:
    """What infer needs to know about an input raster before reading a pixel."""

    path: str
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    transform: Affine
    gsd_m: float | None  # mean pixel size in metres (geodesic for geographic CRSs)
    block_shape: tuple[int, int]  # (rows, cols) of band 1's internal blocks
    nodata: float | None
    has_alpha: bool
    has_mask: bool  # an internal or sidecar per-dataset mask
    compression: str | None
    overviews: tuple[int, ...]
    driver: str

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity

    @property
    def is_north_up(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0 and self.transform.e < 0


def open_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a GDAL-readable path, turning GDAL's errors into one that names the file."""
    text = os.fspath(path)
    if not text.startswith("/vsi") and not os.path.exists(text):
        raise RasterError(f"{text}: file not found")
    try:
        return rasterio.open(text)
    except RasterioIOError as exc:
        raise RasterError(f"{text}: not a readable raster ({exc})") from exc


def describe_raster(path: str | os.PathLike[str]) -> RasterInfo:
    with open_raster(path) as ds:
        from rasterio.enums import ColorInterp, MaskFlags

        flags = ds.mask_flag_enums[0] if ds.count else []
        return RasterInfo(
            path=os.fspath(path),
            width=ds.width,
            height=ds.height,
            count=ds.count,
            dtype=ds.dtypes[0],
            crs=ds.crs,
            transform=ds.transform,
            gsd_m=ground_sample_distance(ds.crs, ds.transform, ds.width, ds.height),
            block_shape=tuple(ds.block_shapes[0]),
            nodata=ds.nodata,
            has_alpha=ColorInterp.alpha in ds.colorinterp,
            has_mask=MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags,
            compression=ds.compression.value if ds.compression else None,
            overviews=tuple(ds.overviews(1)) if ds.count else (),
            driver=ds.driver,
        )


def ground_sample_distance(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> float | None:
    """Mean pixel size in metres at the raster's centre; None without georeferencing.

    Projected CRSs use their linear unit; geographic CRSs (degrees) measure the
    geodesic length of one pixel step on the CRS's ellipsoid.
    """
    size = ground_pixel_size(crs, transform, width, height)
    return None if size is None else (size[0] + size[1]) / 2


def ground_pixel_size(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> tuple[float, float] | None:
    """(along a row, along a column): the ground length in metres of one pixel step.

    The first is the step from one column to the next, the second from one row to
    the next, measured at the raster's centre (geodesic for geographic CRSs); None
    without georeferencing.
    """
    if crs is None or transform.is_identity:
        return None
    col_step = math.hypot(transform.a, transform.d)
    row_step = math.hypot(transform.b, transform.e)
    if crs.is_projected:
        factor = crs.linear_units_factor[1]
        return col_step * factor, row_step * factor
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = transform @ (width / 2, height / 2)
    lon_e, lat_e = transform @ (width / 2 + 1, height / 2)
    lon_s, lat_s = transform @ (width / 2, height / 2 + 1)
    dx = geod.inv(lon, lat, lon_e, lat_e)[2]
    dy = geod.inv(lon, lat, lon_s, lat_s)[2]
    return dx, dy


def read_pixels(path: str | os.PathLike[str]) -> np.ndarray:
    """(bands, height, width) pixels of a whole raster."""
    with open_raster(path) as ds:
        return ds.read()


def read_band(path: str | os.PathLike[str], band: int = 1) -> np.ndarray:
    """(height, width) pixels of one band of a raster."""
    with open_raster(path) as ds:
        return ds.read(band)


def crop_raster(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    window: tuple[int, int, int, int],
) -> Path:
    """A GeoTIFF of ``source``'s (row, col, height, width) window, georeferenced in place.

    Same bands, data type, CRS and nodata; the transform is the window's, so the crop's
    pixels lie on the source's pixel grid (a user's crop or AOI of the same image).
    """
    row, col, height, width = window
    with open_raster(source) as src:
        area = Window(col, row, width, height)
        data = src.read(window=area)
        profile = dict(
            driver="GTiff",
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.window_transform(area),
            width=width,
            height=height,
            nodata=src.nodata,
            tiled=True,
            blockxsize=512,
            blockysize=512,
        )
    with rasterio.open(target, "w", **profile) as out:
        out.write(data)
    return Path(target)

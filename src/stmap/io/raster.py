"""Open rasters and describe them: size, bands, CRS, GSD in metres, blocks and masks."""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.crs import CRS
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window as RioWindow

from stmap.errors import RasterError
from stmap.io.paths import check_input_path, is_remote, printable
from stmap.window import Window

SCALE_TOLERANCE = 0.01  # projection scale factors closer to 1 are taken as 1 (see ground_pixel)


@dataclass(frozen=True)
class RasterInfo:
    """What infer needs to know about an input raster before reading a pixel."""

    path: str
    width: int
    height: int
    count: int
    dtype: str  # band 1's
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
    dtypes: tuple[str, ...] = ()  # every band's

    @property
    def is_georeferenced(self) -> bool:
        return self.crs is not None and not self.transform.is_identity

    @property
    def is_north_up(self) -> bool:
        return self.transform.b == 0 and self.transform.d == 0 and self.transform.e < 0


def rio_window(window: Window) -> RioWindow:
    """rasterio's window (columns first) for stmap's (rows first): the one place they meet."""
    return RioWindow(window.col_off, window.row_off, window.width, window.height)


def open_raster(path: str | os.PathLike[str]) -> rasterio.DatasetReader:
    """Open a GDAL-readable path, turning GDAL's errors into one that names the file.

    Only regular files, GDAL virtual paths and URLs are opened (``check_input_path``).
    A local file is opened with its folder listed, whatever the streaming settings
    say for remote ones, so GDAL finds its sidecars (``.msk`` masks, world files,
    ``.aux.xml`` CRSs, ``.ovr`` overviews) exactly as ``gdalinfo`` and ``stmap info`` do.
    """
    text = check_input_path(path, RasterError)
    try:
        if is_remote(text):
            return rasterio.open(text)
        if threading.current_thread() is threading.main_thread():
            # rasterio sets the main thread's options process-wide, and unsets them on
            # leaving: that would lift the streaming settings for every reader thread.
            # Other threads' options are their own, so a local file is opened in one.
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(_open_listing_folder, text).result()
        return _open_listing_folder(text)
    except RasterioIOError as exc:
        raise RasterError(f"{printable(text)}: not a readable raster ({exc})") from exc


def _open_listing_folder(text: str) -> rasterio.DatasetReader:
    """Open a local file with its folder listed (this thread's GDAL options only)."""
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="NO"):
        return rasterio.open(text)


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
            dtypes=tuple(ds.dtypes),
        )


def ground_sample_distance(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> float | None:
    """Mean pixel size in metres on the ground at the raster's centre (``ground_pixel``);
    None without usable georeferencing."""
    size = ground_pixel_size(crs, transform, width, height)
    return None if size is None else (size[0] + size[1]) / 2


def ground_pixel_size(
    crs: CRS | None, transform: Affine, width: int, height: int
) -> tuple[float, float] | None:
    """(along a row, along a column): the ground length in metres of one pixel step
    at the raster's centre (``ground_pixel``); None without usable georeferencing."""
    pixel = ground_pixel(crs, transform, width, height)
    return None if pixel is None else pixel.size_m


@dataclass(frozen=True)
class GroundPixel:
    """One pixel's size: in the CRS's units, the projection's scale there, on the ground.

    size_m: (along a row, along a column) ground metres of one pixel step.
    crs_size: the same steps in the CRS's units (metres, feet, degrees).
    scale: (along x, along y) CRS metres per ground metre at the centre (pyproj's
        parallel and meridional scale factors), applied only when one departs from 1
        by more than SCALE_TOLERANCE; None for geographic CRSs (measured geodesically).
    """

    size_m: tuple[float, float]
    crs_size: tuple[float, float]
    scale: tuple[float, float] | None

    def describe(self) -> dict[str, Any]:
        return {
            "crs_pixel_size": [round(v, 9) for v in self.crs_size],
            "scale_factor": None if self.scale is None else [round(v, 6) for v in self.scale],
            "ground_gsd_m": [round(v, 6) for v in self.size_m],
        }


def ground_pixel(crs: CRS | None, transform: Affine, width: int, height: int) -> GroundPixel | None:
    """How big one pixel is on the ground at the raster's centre; None without usable
    georeferencing (no CRS, an identity or degenerate geotransform).

    Projected CRSs: the pixel steps in the CRS's linear unit, divided by the
    projection's scale factors at the centre, so a Web Mercator pixel of 0.597 CRS
    metres at 37.6° N is 0.473 m on the ground. Below SCALE_TOLERANCE (UTM's 0.9996
    to 1.001 within its zone) the CRS metre is taken as the ground metre, so nominal
    GSDs stay exact. Geographic CRSs (degrees): the geodesic length of one pixel
    step on the WGS84 ellipsoid.
    """
    if crs is None or transform.is_identity or geotransform_problem(transform) is not None:
        return None
    col_step = math.hypot(transform.a, transform.d)
    row_step = math.hypot(transform.b, transform.e)
    centre = transform @ (width / 2, height / 2)
    if crs.is_projected:
        factor = crs.linear_units_factor[1]
        metres = (col_step * factor, row_step * factor)
        scale = projection_scale(crs, *centre)
        if scale is None:
            return GroundPixel(metres, (col_step, row_step), None)
        k, h = scale  # ground step: each CRS component shrunk by the scale along it
        a, d, b, e = (v * factor for v in (transform.a, transform.d, transform.b, transform.e))
        ground = (math.hypot(a / k, d / h), math.hypot(b / k, e / h))
        return GroundPixel(ground, (col_step, row_step), scale)
    from pyproj import Geod

    geod = Geod(ellps="WGS84")
    lon, lat = centre
    lon_e, lat_e = transform @ (width / 2 + 1, height / 2)
    lon_s, lat_s = transform @ (width / 2, height / 2 + 1)
    dx = geod.inv(lon, lat, lon_e, lat_e)[2]
    dy = geod.inv(lon, lat, lon_s, lat_s)[2]
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        return None
    return GroundPixel((dx, dy), (col_step, row_step), None)


def projection_scale(crs: CRS, x: float, y: float) -> tuple[float, float] | None:
    """(along x, along y) scale factors of a projected CRS at (x, y), or None when they
    are within SCALE_TOLERANCE of 1 or cannot be computed there (outside the
    projection's domain)."""
    from pyproj import CRS as ProjCRS
    from pyproj import Proj, Transformer
    from pyproj.exceptions import CRSError, ProjError

    try:
        projected = ProjCRS.from_user_input(crs.to_wkt())
        lon, lat = Transformer.from_crs(
            projected, projected.geodetic_crs, always_xy=True
        ).transform(x, y, errcheck=True)
        factors = Proj(projected).get_factors(lon, lat, errcheck=True)
    except (CRSError, ProjError):
        return None
    scale = (factors.parallel_scale, factors.meridional_scale)
    if not all(math.isfinite(v) and v > 0 for v in scale):
        return None
    if all(abs(v - 1) <= SCALE_TOLERANCE for v in scale):
        return None
    return scale


# Pixels longer along one side than this many times the other are no imagery's: a
# geotransform that says so is broken (real products stay within 2:1; resampled test
# rasters reach 50:1, a fuzzed one 1e300:1, which would make a grid of 1e147 cells).
MAX_PIXEL_ASPECT = 1000.0


def geotransform_problem(transform: Affine) -> str | None:
    """Why a geotransform cannot place pixels (non-finite, without area, or pixels far
    longer than wide), or None."""
    coefficients = list(transform)[:6]
    if not all(math.isfinite(v) for v in coefficients):
        return f"non-finite coefficients {coefficients}"
    determinant = transform.a * transform.e - transform.b * transform.d
    if not (math.isfinite(determinant) and determinant != 0):
        return f"a zero determinant (pixels without area): {coefficients}"
    steps = math.hypot(transform.a, transform.d), math.hypot(transform.b, transform.e)
    if max(steps) > MAX_PIXEL_ASPECT * min(steps):
        return (
            f"pixels {steps[0]:.4g} × {steps[1]:.4g} units, more than "
            f"{MAX_PIXEL_ASPECT:g} times longer than wide: {coefficients}"
        )
    return None


def bounds_problem(info: RasterInfo) -> str | None:
    """Why a geographic raster's corners cannot be longitudes and latitudes, or None."""
    if info.crs is None or not info.crs.is_geographic:
        return None
    corners = [info.transform @ (c, r) for c in (0, info.width) for r in (0, info.height)]
    lons, lats = [x for x, _ in corners], [y for _, y in corners]
    if min(lons) < -360 or max(lons) > 360 or min(lats) < -90.001 or max(lats) > 90.001:
        return (
            f"corners at longitudes {min(lons):.6g} to {max(lons):.6g} and latitudes "
            f"{min(lats):.6g} to {max(lats):.6g}, outside the globe of its CRS {info.crs}"
        )
    return None


def check_geotransform(info: RasterInfo) -> None:
    """RasterError naming the file when its geotransform cannot place pixels."""
    problem = geotransform_problem(info.transform) or bounds_problem(info)
    if problem is not None:
        raise RasterError(
            f"{printable(info.path)}: the geotransform has {problem}; fix its "
            "georeferencing (gdal_edit.py -a_ullr or -a_srs) or remove it"
        )


# Bit depths that sensors deliver in 16-bit containers; a sampled maximum picks the
# smallest that holds it.
SENSOR_BITS = (8, 10, 11, 12, 14, 16)
SAMPLE_PIXELS = 1 << 22  # at most 4 Mpx per band are read to find the data's range
SAMPLE_WINDOWS = 4  # per axis, when no overview gives a reduced image


@dataclass(frozen=True)
class BitDepth:
    """The range an integer raster's pixels are taken to fill: 0 to 2**bits - 1.

    source: "NBITS" (the TIFF tag, GDAL's IMAGE_STRUCTURE metadata), "sampled" (the
        smallest of SENSOR_BITS holding the maximum of a bounded sample) or "dtype"
        (bytes, and floats: the manifest's scaling applies).
    sampled_max: the largest valid value seen in the sample (None when not sampled).
    """

    dtype: str
    bits: int
    source: str
    sampled_max: int | None

    @property
    def value_max(self) -> float:
        return float(2**self.bits - 1)

    def describe(self) -> str:
        """E.g. "uint16, 11-bit (NBITS)", "uint16, 16-bit from sampled max 65535"."""
        if self.source == "NBITS":
            return f"{self.dtype}, {self.bits}-bit (NBITS)"
        if self.source == "sampled":
            return f"{self.dtype}, {self.bits}-bit from sampled max {self.sampled_max}"
        return f"{self.dtype}, {self.bits}-bit"


def bit_depth(path: str, bands: tuple[int, ...]) -> BitDepth:
    """The bit depth of an integer raster's ``bands``: NBITS when the file states it,
    else the smallest of SENSOR_BITS holding the largest valid value of a bounded
    sample (an overview-sized read when the file has overviews, else SAMPLE_WINDOWS²
    windows spread over it; at most SAMPLE_PIXELS per band either way)."""
    with open_raster(path) as ds:
        dtype = ds.dtypes[bands[0] - 1]
        nbits = ds.tags(bands[0], ns="IMAGE_STRUCTURE").get("NBITS")
        top = _sample_max(ds, bands)  # also to warn of pixels beyond NBITS
        if nbits is not None and nbits.isdigit() and 1 <= int(nbits) <= 32:
            return BitDepth(dtype, int(nbits), "NBITS", top)
        full = 8 * np.dtype(dtype).itemsize
        bits = next((b for b in SENSOR_BITS if top < 2**b), full)
        return BitDepth(dtype, min(bits, full), "sampled", top)


def _sample_max(ds: rasterio.DatasetReader, bands: tuple[int, ...]) -> int:
    """The largest valid value (masks and nodata honoured) of a bounded sample."""
    side = math.isqrt(SAMPLE_PIXELS)
    if ds.overviews(bands[0]) or (ds.width * ds.height <= SAMPLE_PIXELS):
        scale = max(1.0, max(ds.width, ds.height) / side)
        shape = (len(bands), max(1, int(ds.height / scale)), max(1, int(ds.width / scale)))
        data = ds.read(list(bands), out_shape=shape, masked=True)
        return _masked_max(data)
    tile = side // SAMPLE_WINDOWS
    top = 0
    for i in range(SAMPLE_WINDOWS):
        for j in range(SAMPLE_WINDOWS):
            row = (ds.height - tile) * i // max(SAMPLE_WINDOWS - 1, 1)
            col = (ds.width - tile) * j // max(SAMPLE_WINDOWS - 1, 1)
            window = rio_window(
                Window(max(row, 0), max(col, 0), min(tile, ds.height), min(tile, ds.width))
            )
            top = max(top, _masked_max(ds.read(list(bands), window=window, masked=True)))
    return top


def _masked_max(data: np.ma.MaskedArray) -> int:
    return 0 if data.count() == 0 else int(data.max())


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
    *,
    at_origin: bool = False,
) -> Path:
    """A GeoTIFF of ``source``'s (row, col, height, width) window, georeferenced in place.

    Same bands, data type, CRS and nodata; the transform is the window's, so the crop's
    pixels lie on the source's pixel grid (a user's crop or AOI of the same image).
    at_origin: georeference it at the source's corner instead — the same pixels moved
        on the ground, so a tile grid fixed in the world falls elsewhere over them.
    """
    row, col, height, width = window
    with open_raster(source) as src:
        area = rio_window(Window(row, col, height, width))
        data = src.read(window=area)
        profile = dict(
            driver="GTiff",
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            transform=src.transform if at_origin else src.window_transform(area),
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

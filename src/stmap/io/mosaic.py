"""Many rasters as one virtual scene: a GDAL VRT on one grid, the latest acquisition on top.

An input already on the mosaic's grid (same CRS and pixel size, origin on a grid
corner) is placed as it is; any other is warped onto the grid by a ``WarpedVRT``
(cubic, as the block reader resamples: bilinear softens detail by where the grid's
pixels fall between the input's, ``io.blocks``; with an alpha band saying where it
has data), saved beside the mosaic.
The mosaic VRT lists its sources oldest first: GDAL draws them in that order, so the
most recent acquisition ends on top, and ``UseMaskBand`` lets a source's nodata,
masked or transparent pixels fall through to the one below. The mosaic's mask band
is the union of its sources' masks. This is all GDAL's machinery: the block reader
reads the VRT window by window like any raster, and no pixel is mosaicked in Python.

The grid: ``crs`` (default the UTM zone of the AOI's centre, else of the inputs'),
pixels of ``gsd_m`` metres aligned to multiples of it, covering the inputs (cut to
the AOI's bounds, grown by ``context_m``, when there is one: the model's tiles near
the AOI's edge then see the ground around it, as they would in the whole scene).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import rasterio
import rasterio.shutil
from rasterio.crs import CRS
from rasterio.dtypes import _gdal_typename
from rasterio.enums import ColorInterp
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds

from stmap.errors import InputError, RasterError
from stmap.io.aoi import Bounds, read_aoi
from stmap.io.blocks import IMAGE_RESAMPLING
from stmap.io.inputs import SceneInput
from stmap.io.paths import is_virtual
from stmap.io.raster import open_raster
from stmap.io.sources import content_digest, dataset_files
from stmap.io.writers import remove

log = logging.getLogger(__name__)

MOSAIC_FILE = "mosaic.vrt"
_ALIGN_EPS = 1e-6  # pixels: offsets closer than this to a whole pixel are whole
_LONLAT = CRS.from_epsg(4326)
_OLDEST = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class MosaicGrid:
    """The mosaic's pixels: north-up, square, aligned to multiples of their size."""

    crs: CRS
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> Bounds:
        (x0, y1), (x1, y0) = self.transform @ (0, 0), self.transform @ (self.width, self.height)
        return x0, y0, x1, y1


@dataclass(frozen=True)
class _Source:
    """One input as the mosaic needs it (its header, read once)."""

    scene: SceneInput
    crs: CRS
    transform: Affine
    width: int
    height: int
    dtype: str
    image_bands: tuple[int, ...]  # 1-based, alpha left out
    colors: tuple[ColorInterp, ...]  # of the image bands
    has_alpha: bool

    @property
    def bounds(self) -> Bounds:
        corners = [self.transform @ (c, r) for c in (0, self.width) for r in (0, self.height)]
        xs, ys = zip(*corners, strict=True)
        return min(xs), min(ys), max(xs), max(ys)

    def bounds_in(self, crs: CRS) -> Bounds:
        if crs == self.crs:
            return self.bounds
        return transform_bounds(self.crs, crs, *self.bounds, densify_pts=21)


@dataclass(frozen=True)
class Mosaic:
    """A written mosaic: its VRT, grid, sources (bottom to top) and resume identity."""

    path: Path
    grid: MosaicGrid
    layers: tuple[dict[str, Any], ...]
    identity: dict[str, Any]

    @property
    def workdir(self) -> Path:
        return self.path.parent

    def describe(self) -> dict[str, Any]:
        """Facts for the summary: grid and sources, bottom (oldest) to top."""
        return {
            "crs": self.grid.crs.to_string(),
            "gsd": self.grid.transform.a,
            "bounds": list(self.grid.bounds),
            "layers": list(self.layers),
        }


def build_mosaic(
    scenes: Sequence[SceneInput],
    workdir: Path,
    *,
    gsd_m: float,
    crs: str | None = None,
    aoi: str | None = None,
    context_m: float = 0.0,
) -> Mosaic:
    """Write the VRT of ``scenes`` as one scene into ``workdir`` (emptied first).

    Every check comes before the first write. Raises InputError (exit 2) naming the
    input or option: an invalid or geographic ``crs``, ``gsd_m`` ≤ 0, an input
    without georeferencing, mixed band counts or data types, an AOI that does not
    overlap the inputs (both extents named) or cannot be read.
    context_m: metres of the inputs kept around the AOI's bounds (outside the AOI:
        read as context, mapped as nodata).
    """
    if not gsd_m > 0:
        raise InputError(f"--gsd {gsd_m}: must be a positive number of metres")
    sources = [_describe(scene) for scene in scenes]
    if not sources:
        raise InputError("--mosaic: no input raster given")
    _check_compatible(sources)
    target = _target_crs(crs, aoi, sources)
    step = gsd_m / target.linear_units_factor[1]
    context = context_m / target.linear_units_factor[1]
    union = _union([s.bounds_in(target) for s in sources])
    extent = union
    if aoi is not None:
        area = read_aoi(aoi, target, within=union)
        area.check_overlap(union, "the inputs")
        minx, miny, maxx, maxy = area.bounds
        grown = (minx - context, miny - context, maxx + context, maxy + context)
        extent = _intersection(grown, union)
    grid = aligned_grid(extent, target, step)
    layers = sorted(range(len(sources)), key=lambda i: (_acquired(sources[i].scene), i))
    try:
        return _write(workdir, grid, [sources[i] for i in layers])
    except BaseException:
        remove(workdir)  # no half-written mosaic
        raise


def utm_crs(lon: float, lat: float) -> CRS:
    """The WGS 84 UTM zone holding (lon, lat): EPSG 326zz north, 327zz south."""
    zone = min(int((lon + 180) // 6) + 1, 60)
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def aligned_grid(bounds: Bounds, crs: CRS, step: float) -> MosaicGrid:
    """The smallest grid of ``step``-sized pixels at multiples of ``step`` covering ``bounds``."""
    minx, miny, maxx, maxy = bounds
    x0 = math.floor(minx / step + _ALIGN_EPS) * step
    y1 = math.ceil(maxy / step - _ALIGN_EPS) * step
    width = max(1, math.ceil((maxx - x0) / step - _ALIGN_EPS))
    height = max(1, math.ceil((y1 - miny) / step - _ALIGN_EPS))
    return MosaicGrid(crs, Affine(step, 0.0, x0, 0.0, -step, y1), width, height)


def _describe(scene: SceneInput) -> _Source:
    with open_raster(scene.href) as ds:
        if ds.crs is None or ds.transform.is_identity:
            raise RasterError(
                f"{scene.href}: has no georeferencing (CRS and geotransform), so it cannot "
                "be placed in a mosaic; georeference it or map it on its own"
            )
        colors = tuple(ds.colorinterp)
        image = tuple(i for i in ds.indexes if colors[i - 1] != ColorInterp.alpha)
        return _Source(
            scene=scene,
            crs=ds.crs,
            transform=ds.transform,
            width=ds.width,
            height=ds.height,
            dtype=ds.dtypes[0],
            image_bands=image,
            colors=tuple(colors[i - 1] for i in image),
            has_alpha=len(image) < ds.count,
        )


def _check_compatible(sources: Sequence[_Source]) -> None:
    first = sources[0]
    for other in sources[1:]:
        if len(other.image_bands) != len(first.image_bands):
            raise InputError(
                f"mixed band counts: {first.scene.href} has {len(first.image_bands)} image "
                f"bands, {other.scene.href} has {len(other.image_bands)}; every input of a "
                "mosaic needs the same bands"
            )
        if other.dtype != first.dtype:
            raise InputError(
                f"mixed data types: {first.scene.href} is {first.dtype}, {other.scene.href} is "
                f"{other.dtype}; convert them to one (gdal_translate -ot)"
            )


def _target_crs(requested: str | None, aoi: str | None, sources: Sequence[_Source]) -> CRS:
    """``--crs``, else the UTM zone of the AOI's centre, else of the inputs' centre."""
    if requested is not None:
        try:
            crs = CRS.from_user_input(requested)
        except (CRSError, ValueError) as exc:  # pyproj raises either
            raise InputError(
                f"--crs {requested}: not a CRS ({exc}); give one such as EPSG:32637"
            ) from exc
        if not crs.is_projected:
            raise InputError(
                f"--crs {requested}: not a projected CRS; the mosaic's pixels are measured in "
                "metres: give one such as the UTM zone of the area (EPSG:326NN)"
            )
        return crs
    if aoi is not None:
        minx, miny, maxx, maxy = read_aoi(aoi, _LONLAT).bounds
    else:
        minx, miny, maxx, maxy = _union([s.bounds_in(_LONLAT) for s in sources])
    return utm_crs((minx + maxx) / 2, (miny + maxy) / 2)


def _acquired(scene: SceneInput) -> datetime:
    """Sort key: undated scenes below dated ones; a time without zone is taken as UTC."""
    when = scene.datetime
    if when is None:
        return _OLDEST
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _write(workdir: Path, grid: MosaicGrid, sources: Sequence[_Source]) -> Mosaic:
    """The VRT files of ``sources`` (bottom to top) on ``grid``; sources off the grid left out."""
    remove(workdir)  # what an earlier run left
    workdir.mkdir(parents=True)
    root = ET.Element("VRTDataset", rasterXSize=str(grid.width), rasterYSize=str(grid.height))
    ET.SubElement(root, "SRS").text = grid.crs.to_wkt()
    ET.SubElement(root, "GeoTransform").text = ", ".join(repr(v) for v in grid.transform.to_gdal())
    first = sources[0]
    bands = [
        ET.SubElement(root, "VRTRasterBand", dataType=_gdal_typename(first.dtype), band=str(k + 1))
        for k in range(len(first.image_bands))
    ]
    for band, color in zip(bands, first.colors, strict=True):
        ET.SubElement(band, "ColorInterp").text = color.name.capitalize()
    mask = ET.SubElement(ET.SubElement(root, "MaskBand"), "VRTRasterBand", dataType="Byte")
    digest = hashlib.sha256()
    layers, files = [], []
    for order, source in enumerate(sources):
        placed = _place(source, grid, workdir / f"source_{order:04d}.vrt")
        if placed is None:
            log.info("%s: outside the mosaic's extent; left out", source.scene.href)
            continue
        filename, relative, bands_in_file, src_rect, dst_rect = placed
        for band, index in zip(bands, bands_in_file, strict=True):
            _source(band, filename, relative, str(index), src_rect, dst_rect, use_mask=True)
        # The mask band: 255 wherever any source has a valid pixel (0 never overwrites).
        _source(mask, filename, relative, "mask,1", src_rect, dst_rect, use_mask=False)
        if relative:
            digest.update((workdir / filename).read_bytes())
            files.append(filename)
        layers.append(
            {
                "id": source.scene.id,
                "href": source.scene.href,
                "datetime": source.scene.datetime.isoformat() if source.scene.datetime else None,
                "warped": relative,
            }
        )
    if not layers:
        raise InputError("--mosaic: no input reaches the mosaic's extent")
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    path = workdir / MOSAIC_FILE
    path.write_text(text, encoding="utf-8")
    digest.update(text.encode())
    identity = {
        "mosaic": digest.hexdigest(),
        "sources": [_file_stamp(s.scene.href) for s in sources],
    }
    return Mosaic(path, grid, tuple(layers), identity)


def _place(
    source: _Source, grid: MosaicGrid, warped_path: Path
) -> tuple[str, bool, tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None:
    """Where ``source`` goes on ``grid``: (file, relative to the VRT?, its bands, source
    rectangle, destination rectangle), rectangles as (x, y, width, height); None when it
    misses the grid. Sources off the grid are warped onto it into ``warped_path``."""
    offset = _grid_offset(source, grid)
    if offset is not None:
        col, row = offset
        c0, r0 = max(col, 0), max(row, 0)
        c1, r1 = min(col + source.width, grid.width), min(row + source.height, grid.height)
        if c1 <= c0 or r1 <= r0:
            return None
        src_rect = (c0 - col, r0 - row, c1 - c0, r1 - r0)
        return _abs(source.scene.href), False, source.image_bands, src_rect, (c0, r0, *src_rect[2:])
    window = _grid_window(source.bounds_in(grid.crs), grid)
    if window is None:
        return None
    c0, r0, width, height = window
    with open_raster(_abs(source.scene.href)) as ds:
        warped = WarpedVRT(
            ds,
            crs=grid.crs,
            transform=grid.transform @ Affine.translation(c0, r0),
            width=width,
            height=height,
            resampling=IMAGE_RESAMPLING,
            add_alpha=not source.has_alpha,  # an alpha band of its own is carried over
        )
        with warped:
            rasterio.shutil.copy(warped, warped_path, driver="VRT")
    return warped_path.name, True, source.image_bands, (0, 0, width, height), window


def _grid_offset(source: _Source, grid: MosaicGrid) -> tuple[int, int] | None:
    """(col, row) of ``source``'s origin on ``grid`` when it shares the grid's pixels."""
    t, g = source.transform, grid.transform
    step = g.a
    same_pixels = (
        source.crs == grid.crs
        and t.b == 0
        and t.d == 0
        and abs(t.a - step) <= _ALIGN_EPS * step
        and abs(t.e + step) <= _ALIGN_EPS * step
    )
    if not same_pixels:
        return None
    col, row = (t.c - g.c) / step, (g.f - t.f) / step
    if abs(col - round(col)) > _ALIGN_EPS or abs(row - round(row)) > _ALIGN_EPS:
        return None
    return round(col), round(row)


def _grid_window(bounds: Bounds, grid: MosaicGrid) -> tuple[int, int, int, int] | None:
    """(col, row, width, height) of the grid pixels ``bounds`` touches; None if none."""
    inverse = ~grid.transform
    (ca, ra), (cb, rb) = inverse @ (bounds[0], bounds[3]), inverse @ (bounds[2], bounds[1])
    c0, r0 = max(math.floor(min(ca, cb)), 0), max(math.floor(min(ra, rb)), 0)
    c1, r1 = min(math.ceil(max(ca, cb)), grid.width), min(math.ceil(max(ra, rb)), grid.height)
    if c1 <= c0 or r1 <= r0:
        return None
    return c0, r0, c1 - c0, r1 - r0


def _source(
    band: ET.Element,
    filename: str,
    relative: bool,
    source_band: str,
    src_rect: tuple[int, ...],
    dst_rect: tuple[int, ...],
    *,
    use_mask: bool,
) -> None:
    """One ComplexSource: with ``use_mask``, the source's masked pixels are transparent;
    without, 0 is (the mask band's sources)."""
    element = ET.SubElement(band, "ComplexSource")
    ET.SubElement(element, "SourceFilename", relativeToVRT=str(int(relative))).text = filename
    ET.SubElement(element, "SourceBand").text = source_band
    keys = ("xOff", "yOff", "xSize", "ySize")
    ET.SubElement(element, "SrcRect", dict(zip(keys, map(str, src_rect), strict=True)))
    ET.SubElement(element, "DstRect", dict(zip(keys, map(str, dst_rect), strict=True)))
    if use_mask:
        ET.SubElement(element, "UseMaskBand").text = "true"
    else:
        ET.SubElement(element, "NODATA").text = "0"


def _file_stamp(href: str) -> dict[str, Any]:
    """What identifies an input for resuming: a local file's size, modification time and
    a digest of its content (and of the files GDAL reads with it)."""
    if not os.path.exists(href):
        return {"href": href}
    stat = os.stat(href)
    return {
        "href": os.path.abspath(href),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "content": content_digest(dataset_files(href)),
    }


def _abs(href: str) -> str:
    return href if is_virtual(href) else os.path.abspath(href)


def _union(boxes: Sequence[Bounds]) -> Bounds:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _intersection(a: Bounds, b: Bounds) -> Bounds:
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])

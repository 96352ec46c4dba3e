"""Read and write vector layers (footprints, AOIs, damage polygons) as plain arrays.

The only place stmap opens vector files. Any OGR format is read with pyogrio's raw
(array) interface into a `VectorTable`; outputs are GeoPackages written atomically.
Geometries are shapely 2 objects in a NumPy object array, attributes one NumPy
array per field, so the runtime works on whole columns and never on features.
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import shapely
from pyogrio import raw
from pyogrio.errors import DataLayerError, DataSourceError, FieldError, GeometryError
from pyproj import CRS, Transformer

from stmap.errors import VectorError
from stmap.io.paths import check_input_path
from stmap.io.styles import VectorStyle, add_layer_style
from stmap.io.writers import write_failure

log = logging.getLogger(__name__)

_OGR_ERRORS = (DataSourceError, DataLayerError, FieldError, GeometryError)
_POLYGON, _MULTIPOLYGON = shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON
_OGR_TYPE_NAMES = {
    shapely.GeometryType.POINT: "Point",
    shapely.GeometryType.LINESTRING: "LineString",
    shapely.GeometryType.LINEARRING: "LineString",
    shapely.GeometryType.POLYGON: "Polygon",
    shapely.GeometryType.MULTIPOINT: "MultiPoint",
    shapely.GeometryType.MULTILINESTRING: "MultiLineString",
    shapely.GeometryType.MULTIPOLYGON: "MultiPolygon",
    shapely.GeometryType.GEOMETRYCOLLECTION: "GeometryCollection",
}


@dataclass(frozen=True, eq=False)
class VectorTable:
    """Features as columns: geometries, attributes in source order, CRS, FID column.

    geometries: (N,) object array of shapely geometries.
    attributes: field name -> (N,) array, in the source's column order; when the
        source has a named FID column (GeoPackage's `fid`), it comes first under
        `fid_name` and is written back as the FID.
    crs: WKT or an authority string ("EPSG:32637"); None when unknown.
    """

    geometries: np.ndarray
    attributes: dict[str, np.ndarray]
    crs: str | None = None
    fid_name: str | None = None

    def __post_init__(self) -> None:
        n = len(self.geometries)
        for name, values in self.attributes.items():
            if len(values) != n:
                raise ValueError(f"attribute {name!r} has {len(values)} values for {n} geometries")

    def __len__(self) -> int:
        return len(self.geometries)

    def take(self, indices: np.ndarray | Sequence[int]) -> VectorTable:
        """The features at `indices` (integer positions or a boolean mask), in that order."""
        idx = np.asarray(indices)
        if idx.dtype != bool:
            idx = idx.astype(np.intp, copy=False)  # [] would index as float
        return VectorTable(
            geometries=self.geometries[idx],
            attributes={k: v[idx] for k, v in self.attributes.items()},
            crs=self.crs,
            fid_name=self.fid_name,
        )

    def to_crs(self, crs: Any) -> VectorTable:
        """The same features reprojected to `crs` (rasterio/pyproj CRS, WKT or "EPSG:x").

        Raises ValueError when this table has no CRS.
        """
        if self.crs is None:
            raise ValueError("cannot reproject a table without a CRS")
        target = CRS.from_user_input(crs)
        return VectorTable(
            geometries=transform_geometries(self.geometries, self.crs, target),
            attributes=self.attributes,
            crs=crs_string(target),
            fid_name=self.fid_name,
        )


def crs_string(crs: Any) -> str:
    """An authority string ("EPSG:32637") when the CRS has one, else its WKT."""
    parsed = CRS.from_user_input(crs)
    authority = parsed.to_authority(min_confidence=100)
    return ":".join(authority) if authority else parsed.to_wkt()


def transform_geometries(geometries: np.ndarray, src_crs: Any, dst_crs: Any) -> np.ndarray:
    """(N,) shapely geometries from `src_crs` to `dst_crs` (x = easting/longitude).

    Returns the input array itself when the two CRSs are the same.
    """
    src, dst = CRS.from_user_input(src_crs), CRS.from_user_input(dst_crs)
    if src == dst:
        return geometries
    transformer = Transformer.from_crs(src, dst, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = transformer.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geometries, project)


def read_vector(
    path: str | os.PathLike[str],
    *,
    crs: Any = None,
    bbox: tuple[float, float, float, float] | None = None,
    layer: str | int | None = None,
    report: dict[str, int] | None = None,
) -> VectorTable:
    """Read one layer of any OGR vector file into a `VectorTable`.

    crs: target CRS (rasterio/pyproj CRS, WKT or "EPSG:x"); features are
        reprojected to it when the file's CRS differs.
    bbox: (minx, miny, maxx, maxy) in the target CRS (the file's CRS without
        `crs`); only features intersecting it are kept.
    layer: layer name or index; the first layer by default.
    report: when given, filled with ``repaired`` and ``dropped`` (null, empty or
        collapsed) geometry counts, for callers that must tell the user.

    Null and empty geometries are dropped; invalid polygons are repaired with
    `shapely.make_valid` keeping their polygonal parts (dropped if none is left).
    Raises VectorError naming the file for a missing or unreadable file, an
    unknown layer, or a layer without CRS when `crs` is given.
    """
    text = check_input_path(path, VectorError)
    try:
        if layer is None:
            layer = _data_layer(text)
        info = pyogrio.read_info(text, layer=layer)
    except _OGR_ERRORS as exc:
        raise VectorError(f"{text}: not a readable vector file ({exc})") from exc
    source_crs = info["crs"]
    target = CRS.from_user_input(crs) if crs is not None else None
    if target is not None and source_crs is None:
        raise VectorError(
            f"{text}: the layer has no CRS, so it cannot be matched to {crs_string(target)};"
            " assign one (e.g. ogr2ogr -a_srs EPSG:4326) and retry"
        )
    read_bbox = None
    if bbox is not None:
        read_bbox = tuple(bbox)
        if target is not None and CRS.from_user_input(source_crs) != target:
            transformer = Transformer.from_crs(target, source_crs, always_xy=True)
            read_bbox = transformer.transform_bounds(*bbox, densify_pts=21)
    try:
        _, fids, wkb, fields = raw.read(text, layer=layer, bbox=read_bbox, return_fids=True)
    except _OGR_ERRORS as exc:
        raise VectorError(f"{text}: not a readable vector file ({exc})") from exc

    with np.errstate(invalid="ignore"):  # NaN coordinates are refused just below
        parsed = shapely.from_wkb(wkb) if wkb is not None else np.full(len(fids), None)
    _check_finite(parsed, fids, text, "has")
    geometries, keep = _repair(parsed, text, report)
    fid_name = info["fid_column"] or None
    attributes = {fid_name: np.asarray(fids, dtype=np.int64)} if fid_name else {}
    attributes.update(zip(info["fields"].tolist(), fields, strict=True))
    table = VectorTable(geometries, attributes, source_crs, fid_name).take(keep)
    if target is not None:
        table = table.to_crs(target)
        _check_finite(table.geometries, fids[keep], text, f"in {crs_string(target)} has")
    if bbox is not None:
        table = table.take(shapely.intersects(table.geometries, shapely.box(*bbox)))
    return table


def _check_finite(geometries: np.ndarray, fids: np.ndarray, source: str, has: str) -> None:
    """VectorError naming the first feature with a NaN or infinite coordinate: GEOS
    cannot compute with one, and no raster could hold it."""
    coords = shapely.get_coordinates(geometries)
    bad = ~np.isfinite(coords).all(axis=1)
    if not bad.any():
        return
    owner = np.repeat(np.arange(len(geometries)), shapely.get_num_coordinates(geometries))
    first = int(owner[np.argmax(bad)])
    raise VectorError(
        f"{source}: feature {int(fids[first])} {has} a non-finite coordinate "
        f"({coords[np.argmax(bad)].tolist()}); fix or drop it"
    )


def _data_layer(path: str) -> str | None:
    """The one data layer of a file whose other layer holds QGIS styles (``layer_styles``,
    as stmap's GeoPackages have); None (the first layer) otherwise."""
    layers = [name for name, _ in pyogrio.list_layers(path) if name != "layer_styles"]
    return layers[0] if len(layers) == 1 else None


def _repair(
    geometries: np.ndarray, source: str, report: dict[str, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Repair invalid geometries and find the usable ones.

    geometries: (N,) object array, None for null. Invalid polygonal geometries are
    repaired with the "structure" method without collapsed parts, so they stay
    polygonal (or become empty). Returns the (N,) repaired geometries and the (K,)
    int64 indices of those neither null nor empty.
    """
    present = ~(shapely.is_missing(geometries) | shapely.is_empty(geometries))
    invalid = present & ~shapely.is_valid(geometries)
    repaired = geometries.copy()
    if invalid.any():
        broken = geometries[invalid]
        polygonal = np.isin(shapely.get_type_id(broken), (_POLYGON, _MULTIPOLYGON))
        fixed = shapely.make_valid(broken)
        fixed[polygonal] = shapely.make_valid(
            broken[polygonal], method="structure", keep_collapsed=False
        )
        repaired[invalid] = fixed
        present &= ~shapely.is_empty(repaired)
        log.info("%s: repaired %d invalid geometries", source, int(invalid.sum()))
    dropped = len(geometries) - int(present.sum())
    if report is not None:
        report.update(repaired=int(invalid.sum()), dropped=dropped)
    if dropped:
        log.info("%s: dropped %d null, empty or collapsed geometries", source, dropped)
    return repaired, np.flatnonzero(present)


def write_vector(
    path: str | os.PathLike[str],
    table: VectorTable,
    *,
    layer: str | None = None,
    geometry_type: str | None = None,
    style: VectorStyle | None = None,
) -> None:
    """Write `table` as the only layer of a GeoPackage at `path`, atomically.

    The file is written under a temporary name in the same directory and renamed
    over `path` once complete, so `path` never holds a half-written file.
    geometry_type: the layer's OGR type ("Polygon", "MultiPolygon", "Point", ...);
        inferred from the geometries by default (Polygon mixed with MultiPolygon ->
        MultiPolygon; no features -> "Unknown"). A Multi* type promotes single parts.
    layer: defaults to the file's stem.
    A table without features still gives a valid layer with its fields and CRS.
    style: stored as the layer's default QGIS style (``styles.add_layer_style``).
    NaN floats are written as NULL. Raises VectorError naming the file when GDAL
    fails, ValueError for Multi* geometries in a single-part layer.
    """
    target = Path(path)
    layer_type = geometry_type or _infer_geometry_type(table.geometries)
    multi = layer_type.startswith("Multi")
    if not multi and f"Multi{layer_type}" in _type_names(table.geometries):
        raise ValueError(f"{target}: Multi{layer_type} geometries in a {layer_type} layer")
    # A field named like the FID column is written as the FID itself.
    layer_options = {"FID": table.fid_name} if table.fid_name in table.attributes else None
    tmp = target.with_name(f".{target.stem}.{uuid.uuid4().hex[:12]}.tmp.gpkg")
    try:
        raw.write(
            str(tmp),
            shapely.to_wkb(table.geometries),
            list(table.attributes.values()),
            list(table.attributes),
            layer=layer or target.stem,
            driver="GPKG",
            geometry_type=layer_type,
            crs=table.crs,
            promote_to_multi=multi,
            layer_options=layer_options,
        )
        if style is not None:
            geometry_column = pyogrio.read_info(str(tmp))["geometry_name"] or "geom"
            add_layer_style(tmp, layer or target.stem, geometry_column, style)
        os.replace(tmp, target)
    except (*_OGR_ERRORS, OSError) as exc:
        raise VectorError(write_failure(Path(target), exc, " the GeoPackage")) from exc
    finally:
        for leftover in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal")):
            leftover.unlink(missing_ok=True)


def _type_names(geometries: np.ndarray) -> set[str]:
    """The OGR type names ("Polygon", "MultiPolygon", ...) present in (N,) geometries."""
    ids = np.unique(shapely.get_type_id(geometries[~shapely.is_missing(geometries)]))
    return {_OGR_TYPE_NAMES[shapely.GeometryType(i)] for i in ids.tolist()}


def _infer_geometry_type(geometries: np.ndarray) -> str:
    """The OGR layer type for (N,) geometries: their one type, or its Multi* promotion."""
    names = _type_names(geometries)
    if len(names) == 1:
        return names.pop()
    for single in ("Point", "LineString", "Polygon"):
        if names == {single, f"Multi{single}"}:
            return f"Multi{single}"
    return "Unknown"

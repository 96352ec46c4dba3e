"""The xBD (xView2) layout: post-disaster PNG tiles with building polygons in JSON.

``<root>/<split>/images/<disaster>_<id>_{pre,post}_disaster.png`` with
``<root>/<split>/labels/<same stem>.json`` (``root`` may also be one split folder).
A label JSON carries each building twice, ``features.xy`` in image pixels and
``features.lng_lat`` in EPSG:4326, with ``properties.subtype`` (no-damage,
minor-damage, major-damage, destroyed, un-classified) and ``metadata`` (disaster,
disaster_type, gsd, ...).

``metadata.gsd`` is the sensor's multispectral GSD (e.g. 2.65 m), not the size of
the delivered pixel (~0.5 m for the pansharpened tiles), so it is never used: the
pixel size and a georeference follow from a least-squares fit of the ``xy`` ↔
``lng_lat`` vertex pairs to a north-up grid in the local UTM zone. Images without
buildings take their disaster's median fitted size and no georeference.

Only post-disaster images are read (stmap maps post-event imagery); pre-disaster
ones are counted, not refused. A label that does not parse, a polygon that is not
valid WKT, an image without its label or a label without its image is skipped and
counted with its reason; nothing usable left is an InputError (exit 2).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning
from rasterio.features import rasterize
from rasterio.transform import Affine

from stmap.errors import InputError

IMAGE_DIR, LABEL_DIR = "images", "labels"
_STEM = re.compile(r"^(?P<disaster>.+)_(?P<id>\d+)_(?P<phase>pre|post)_disaster$")

DAMAGED_SUBTYPES = frozenset({"major-damage", "destroyed"})
UNDAMAGED_SUBTYPES = frozenset({"no-damage", "minor-damage"})
IGNORED_SUBTYPES = frozenset({"un-classified"})
IGNORE = 255  # label value of pixels that are neither damaged nor undamaged

MIN_FIT_VERTICES = 4
MAX_FIT_RMS_PX = 1.5  # a north-up grid explains xBD's vertex pairs to sub-pixel accuracy
MAX_ANISOTROPY = 0.1  # x and y pixel sizes may differ by 10 % at most


class XbdError(InputError):
    """An xBD folder with nothing usable in it (exit 2); the message names the folder."""


@dataclass(frozen=True)
class Building:
    """One building polygon in image pixels (x = column, y = row) with its xBD subtype."""

    polygon: shapely.Polygon
    subtype: str | None
    uid: str


@dataclass(frozen=True)
class PixelFit:
    """A north-up grid fitted to the ``xy`` ↔ ``lng_lat`` vertex pairs of one image."""

    crs: CRS  # the local UTM zone
    transform: Affine  # image pixel (col, row) → UTM metres
    pixel_size_m: float
    rms_px: float
    max_px: float
    vertices: int

    @property
    def anisotropy(self) -> float:
        """|a| / |e| − 1: how far the fitted pixels are from square."""
        return abs(abs(self.transform.a) / abs(self.transform.e) - 1.0)


@dataclass(frozen=True)
class XbdImage:
    """One post-disaster image with its buildings and (when it has enough) its fit."""

    stem: str
    split: str
    disaster: str
    disaster_type: str
    image: Path
    label: Path
    width: int
    height: int
    buildings: tuple[Building, ...]
    fit: PixelFit | None
    metadata_gsd: float | None  # recorded only to show it is not the pixel size


@dataclass
class XbdCatalog:
    """The usable images of an xBD folder and what was skipped, with reasons."""

    images: list[XbdImage]
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    pre_disaster: int = 0

    def skip_counts(self) -> Counter[str]:
        """How many files were skipped for each kind of reason."""
        return Counter(reason.split(":")[0] for _, reason in self.skipped)


def is_xbd(root: Path) -> bool:
    """True when ``root`` (or a split folder in it) holds ``labels/*_disaster.json``."""
    return bool(_split_folders(root))


def read_catalog(root: Path, disaster_types: frozenset[str] | None = None) -> XbdCatalog:
    """Every usable post-disaster image under ``root``, its buildings parsed and fitted.

    ``disaster_types`` (e.g. ``{"earthquake"}``) keeps only those events. Raises
    XbdError naming ``root`` when no usable image remains.
    """
    catalog = XbdCatalog(images=[])
    for split, folder in _split_folders(root).items():
        images = _files(folder / IMAGE_DIR, ".png")
        labels = _files(folder / LABEL_DIR, ".json")
        for stem in sorted(images.keys() | labels.keys()):
            match = _STEM.match(stem)
            if match is None:
                named = images.get(stem) or labels[stem]
                catalog.skipped.append((named, "name: not <disaster>_<id>_post_disaster"))
                continue
            if match["phase"] == "pre":
                catalog.pre_disaster += 1
                continue
            if stem not in labels:
                catalog.skipped.append((images[stem], f"no label: labels/{stem}.json is missing"))
                continue
            if stem not in images:
                catalog.skipped.append((labels[stem], f"no image: images/{stem}.png is missing"))
                continue
            try:
                image = _read_label(stem, split, images[stem], labels[stem])
            except _SkipError as exc:
                catalog.skipped.append((labels[stem], str(exc)))
                continue
            if disaster_types is None or image.disaster_type in disaster_types:
                catalog.images.append(image)
    if not catalog.images:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(catalog.skip_counts().items()))
        wanted = f" of type {', '.join(sorted(disaster_types))}" if disaster_types else ""
        raise XbdError(
            f"{root}: no usable post-disaster xBD image{wanted} "
            f"(skipped: {counts or 'none'}; pre-disaster: {catalog.pre_disaster})"
        )
    return catalog


def fallback_pixel_sizes(images: list[XbdImage]) -> dict[str, float]:
    """Each disaster's median fitted pixel size, for its images without a fit."""
    sizes: dict[str, list[float]] = {}
    for image in images:
        if image.fit is not None:
            sizes.setdefault(image.disaster, []).append(image.fit.pixel_size_m)
    return {disaster: statistics.median(values) for disaster, values in sizes.items()}


def label_arrays(image: XbdImage) -> tuple[np.ndarray, np.ndarray]:
    """(labels, buildings) at the image's own pixels.

    labels (H, W) uint8: 1 major-damage/destroyed, 0 no/minor damage and background,
    255 un-classified buildings (ignored); buildings (H, W) bool: every building.
    """
    shape = (image.height, image.width)
    labels = np.zeros(shape, np.uint8)
    buildings = np.zeros(shape, bool)
    if not image.buildings:
        return labels, buildings
    burn_order = sorted(image.buildings, key=lambda b: _burn_rank(b.subtype))
    shapes = [(b.polygon, _label_value(b.subtype)) for b in burn_order]
    # Identity transform: polygons are in pixels. Damaged burns last so that it wins
    # where polygons of different grades overlap.
    rasterize(shapes, out=labels, transform=Affine.identity())
    rasterize(
        [(b.polygon, 1) for b in image.buildings],
        transform=Affine.identity(),
        out=buildings.view(np.uint8),
    )
    return labels, buildings


def fit_pixel_grid(pairs: np.ndarray) -> PixelFit:
    """Fit (col, row) → UTM (x, y) north-up to ``pairs`` (N, 4): col, row, lon, lat.

    x = a·col + c and y = e·row + f by least squares in the UTM zone of the pairs'
    mean longitude and latitude; residuals are reported in fitted pixels.
    """
    lon, lat = float(np.mean(pairs[:, 2])), float(np.mean(pairs[:, 3]))
    crs = _utm_crs(lon, lat)
    to_utm = Transformer.from_crs("EPSG:4326", crs, always_xy=True)
    x, y = to_utm.transform(pairs[:, 2], pairs[:, 3])
    col, row = pairs[:, 0], pairs[:, 1]
    (a, c), *_ = np.linalg.lstsq(np.column_stack([col, np.ones_like(col)]), x, rcond=None)
    (e, f), *_ = np.linalg.lstsq(np.column_stack([row, np.ones_like(row)]), y, rcond=None)
    size = (abs(a) + abs(e)) / 2
    residual = np.hypot(x - (a * col + c), y - (e * row + f)) / size
    return PixelFit(
        crs=crs,
        transform=Affine(a, 0.0, c, 0.0, e, f),
        pixel_size_m=float(size),
        rms_px=float(np.sqrt(np.mean(residual**2))),
        max_px=float(residual.max()),
        vertices=len(pairs),
    )


def fit_problem(fit: PixelFit) -> str | None:
    """Why a fit cannot be trusted, or None: too few vertices, residuals, rotation, skew."""
    if fit.vertices < MIN_FIT_VERTICES:
        return f"{fit.vertices} vertex pairs (≥ {MIN_FIT_VERTICES} needed)"
    if fit.transform.a <= 0 or fit.transform.e >= 0:
        return "not north-up (x grows with column, y falls with row expected)"
    if fit.rms_px > MAX_FIT_RMS_PX:
        return f"RMS residual {fit.rms_px:.2f} px (≤ {MAX_FIT_RMS_PX} accepted)"
    if fit.anisotropy > MAX_ANISOTROPY:
        return f"pixels {fit.anisotropy:.0%} from square (≤ {MAX_ANISOTROPY:.0%} accepted)"
    return None


# ---- reading ---------------------------------------------------------------------------


class _SkipError(Exception):
    """One file that is skipped (not a user error: the rest of the split is used)."""


def _split_folders(root: Path) -> dict[str, Path]:
    """Split name → folder holding ``images``/``labels``; ``root`` itself may be one."""
    if not root.is_dir():
        return {}
    candidates = [root, *sorted(p for p in root.iterdir() if p.is_dir())]
    return {
        (folder.name if folder != root else root.name): folder
        for folder in candidates
        if (folder / LABEL_DIR).is_dir() and any((folder / LABEL_DIR).glob("*_disaster.json"))
    }


def _files(folder: Path, suffix: str) -> dict[str, Path]:
    """Stem → regular file with ``suffix`` in ``folder`` (empty when it is missing)."""
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix == suffix and p.is_file()}


def _read_label(stem: str, split: str, image: Path, label: Path) -> XbdImage:
    """Parse one label JSON into an XbdImage; raises _SkipError with the reason."""
    try:
        document = json.loads(label.read_bytes())
        metadata = document.get("metadata") or {}
        features = document.get("features") or {}
        xy, lng_lat = features.get("xy") or [], features.get("lng_lat") or []
        width, height = int(metadata.get("width", 1024)), int(metadata.get("height", 1024))
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as exc:
        raise _SkipError(f"unreadable label: {type(exc).__name__}: {exc}") from None
    if not (isinstance(xy, list) and isinstance(lng_lat, list)):
        raise _SkipError("unreadable label: features.xy / features.lng_lat are not lists")
    if not (0 < width <= 16384 and 0 < height <= 16384):
        raise _SkipError(f"unreadable label: metadata size {width}×{height} out of range")
    buildings, pairs = [], []
    lonlat_by_uid = {_uid(f): f for f in lng_lat if isinstance(f, dict)}
    for feature in xy:
        building = _building(feature)
        if building is None:
            continue
        buildings.append(building)
        geographic = lonlat_by_uid.get(building.uid)
        if geographic is not None:
            pairs += _vertex_pairs(building.polygon, geographic)
    fit = fit_pixel_grid(np.asarray(pairs, float)) if len(pairs) >= MIN_FIT_VERTICES else None
    if fit is not None and (problem := fit_problem(fit)) is not None:
        raise _SkipError(f"poor pixel fit: {problem}")
    gsd = metadata.get("gsd")
    match = _STEM.match(stem)
    assert match is not None  # checked by the caller
    return XbdImage(
        stem=stem,
        split=split,
        disaster=str(metadata.get("disaster") or match["disaster"]),
        disaster_type=str(metadata.get("disaster_type") or "unknown"),
        image=image,
        label=label,
        width=width,
        height=height,
        buildings=tuple(buildings),
        fit=fit,
        metadata_gsd=float(gsd) if isinstance(gsd, int | float) else None,
    )


def _building(feature: object) -> Building | None:
    """A building polygon from one ``xy`` feature; raises _SkipError on invalid WKT."""
    if not isinstance(feature, dict):
        raise _SkipError("unreadable label: a feature is not an object")
    properties = feature.get("properties") or {}
    if properties.get("feature_type", "building") != "building":
        return None
    try:
        geometry = shapely.from_wkt(str(feature.get("wkt")))
    except shapely.errors.GEOSException as exc:
        raise _SkipError(f"invalid WKT: {exc}") from None
    if not isinstance(geometry, shapely.Polygon) or geometry.is_empty:
        raise _SkipError(f"invalid WKT: {geometry.geom_type} where a POLYGON is expected")
    if not np.isfinite(shapely.get_coordinates(geometry)).all():
        raise _SkipError("invalid WKT: non-finite coordinates")
    subtype = properties.get("subtype")
    return Building(geometry, str(subtype) if subtype is not None else None, _uid(feature))


def _uid(feature: dict) -> str:
    return str((feature.get("properties") or {}).get("uid", ""))


def _vertex_pairs(pixel: shapely.Polygon, feature: dict) -> list[tuple[float, float, float, float]]:
    """(col, row, lon, lat) for each exterior vertex of a building seen both ways."""
    try:
        geographic = shapely.from_wkt(str(feature.get("wkt")))
    except shapely.errors.GEOSException:
        return []
    if not isinstance(geographic, shapely.Polygon):
        return []
    a = shapely.get_coordinates(pixel.exterior)
    b = shapely.get_coordinates(geographic.exterior)
    if len(a) != len(b) or not np.isfinite(b).all():
        return []
    return [(c, r, lon, lat) for (c, r), (lon, lat) in zip(a[:-1], b[:-1], strict=True)]


def _utm_crs(lon: float, lat: float) -> CRS:
    """The UTM zone (WGS 84) that holds ``lon``, ``lat``."""
    zone = min(60, max(1, math.floor((lon + 180.0) / 6.0) + 1))
    return CRS.from_epsg((32600 if lat >= 0 else 32700) + zone)


def _label_value(subtype: str | None) -> int:
    if subtype in DAMAGED_SUBTYPES:
        return 1
    if subtype in UNDAMAGED_SUBTYPES:
        return 0
    return IGNORE  # un-classified, and anything unknown: never taken as a negative


def _burn_rank(subtype: str | None) -> int:
    """Burn order: ignored first, undamaged next, damaged last (wins on overlap)."""
    return {0: 1, 1: 2}.get(_label_value(subtype), 0)


# ---- tiles at the training GSD ---------------------------------------------------------


@dataclass(frozen=True)
class XbdTiles:
    """Complete ``size``² tiles of the post-disaster images at ``gsd_m``.

    images (N, 3, S, S) uint8 RGB; labels (N, S, S) uint8 (1 damaged, 0 not, 255
    ignored); buildings (N, S, S) bool; tile_ids ``<disaster>_r<row>_c<col>_<split><id>``
    (the region is the disaster); pixel_sizes: the metres per pixel each image was
    resampled from (fitted, or its disaster's median); skipped: unreadable images.
    """

    tile_ids: list[str]
    images: np.ndarray
    labels: np.ndarray
    buildings: np.ndarray
    pixel_sizes: dict[str, float]
    skipped: list[tuple[Path, str]]
    georef: dict[str, tuple[CRS, Affine]]  # tile id → CRS and transform, for fitted images


def xbd_tiles(
    catalog: XbdCatalog, size: int, gsd_m: float, workers: int = 1, cache_dir: Path | None = None
) -> XbdTiles:
    """Resample every image from its fitted pixel size to ``gsd_m`` and cut it into tiles.

    Images are decoded in ``workers`` threads (GDAL releases the GIL); with
    ``cache_dir`` each image's tiles are kept under a key of the image's and label's
    bytes, the tile size and the GSD, so a second run decodes nothing. An image
    that cannot be decoded is skipped with its reason.
    """
    from concurrent.futures import ThreadPoolExecutor

    fallback = fallback_pixel_sizes(catalog.images)
    sizes = {
        i.stem: i.fit.pixel_size_m if i.fit else fallback.get(i.disaster, gsd_m)
        for i in catalog.images
    }

    def one(image: XbdImage) -> _ImageTiles | str:
        try:
            return _image_tiles(image, sizes[image.stem], size, gsd_m, cache_dir)
        except _SkipError as exc:
            return str(exc)

    # PNGs and pixel-space polygons carry no georeferencing, which is expected. (Filters
    # are process-wide, so they are set here, around the threads, not inside them.)
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, workers)) as pool:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        parts = list(pool.map(one, catalog.images))
    tile_ids, kept, skipped, georef = [], [], [], {}
    for image, part in zip(catalog.images, parts, strict=True):
        if isinstance(part, str):
            skipped.append((image.image, part))
            continue
        kept.append(part)
        number = _STEM.match(image.stem)["id"]  # type: ignore[index]
        for k in range(len(part.images)):
            row, col = divmod(k, part.columns)
            tile_id = f"{image.disaster}_r{row}_c{col}_{image.split}{number}"
            tile_ids.append(tile_id)
            if image.fit is not None:
                # the resampled grid spans the image: its pixel is W / out_w image pixels
                scale = Affine.scale(image.width / part.width, image.height / part.height)
                corner = Affine.translation(col * size, row * size)
                georef[tile_id] = (image.fit.crs, image.fit.transform @ scale @ corner)
    return XbdTiles(
        tile_ids=tile_ids,
        images=_concatenate([p.images for p in kept], (0, 3, size, size), np.uint8),
        labels=_concatenate([p.labels for p in kept], (0, size, size), np.uint8),
        buildings=_concatenate([p.buildings for p in kept], (0, size, size), bool),
        pixel_sizes=sizes,
        skipped=skipped,
        georef=georef,
    )


@dataclass(frozen=True)
class _ImageTiles:
    images: np.ndarray
    labels: np.ndarray
    buildings: np.ndarray
    columns: int  # tiles per row, to name them
    width: int  # the resampled image's size in pixels
    height: int


def _image_tiles(
    image: XbdImage, pixel_m: float, size: int, gsd_m: float, cache_dir: Path | None
) -> _ImageTiles:
    """The tiles of one image, from the cache when it has them."""
    cached = (
        None if cache_dir is None else cache_dir / f"{_cache_key(image, pixel_m, size, gsd_m)}.npz"
    )
    if cached is not None and cached.is_file():
        try:
            with np.load(cached) as stored:
                return _ImageTiles(
                    stored["images"],
                    stored["labels"],
                    stored["buildings"],
                    *(int(stored[k]) for k in ("columns", "width", "height")),
                )
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is rebuilt, never trusted
    pixels = _read_png(image)
    labels, buildings = label_arrays(image)
    out_h = max(size, round(image.height * pixel_m / gsd_m))
    out_w = max(size, round(image.width * pixel_m / gsd_m))
    pixels = _resize(pixels, (out_h, out_w), "bilinear")
    labels = _resize(labels[None], (out_h, out_w), "nearest-exact")[0]
    buildings = _resize(buildings[None].astype(np.uint8), (out_h, out_w), "nearest-exact")[0]
    corners = [
        (y, x) for y in range(0, out_h - size + 1, size) for x in range(0, out_w - size + 1, size)
    ]
    tiles = _ImageTiles(
        np.stack([pixels[:, y : y + size, x : x + size] for y, x in corners]),
        np.stack([labels[y : y + size, x : x + size] for y, x in corners]),
        np.stack([buildings[y : y + size, x : x + size] for y, x in corners]).astype(bool),
        out_w // size,
        out_w,
        out_h,
    )
    if cached is not None:
        _save_npz(cached, tiles)
    return tiles


def _concatenate(parts: list[np.ndarray], empty: tuple[int, ...], dtype: type) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(empty, dtype)


def _read_png(image: XbdImage) -> np.ndarray:
    """The image's first three bands, (3, H, W) uint8; raises _SkipError with the reason."""
    import rasterio
    from rasterio.errors import RasterioIOError

    try:
        with rasterio.open(image.image) as src:
            if src.count < 3 or src.dtypes[0] != "uint8":
                raise _SkipError(f"unreadable image: {src.count} × {src.dtypes[0]}, not RGB")
            if (src.width, src.height) != (image.width, image.height):
                raise _SkipError(
                    f"unreadable image: {src.width}×{src.height} px but its label says "
                    f"{image.width}×{image.height}"
                )
            return src.read([1, 2, 3])
    except RasterioIOError as exc:
        raise _SkipError(f"unreadable image: {exc}") from None


def _resize(array: np.ndarray, shape: tuple[int, int], mode: str) -> np.ndarray:
    """(C, H, W) uint8 → (C, *shape) uint8; bilinear is antialiased."""
    import torch
    import torch.nn.functional as F

    if array.shape[1:] == shape:
        return array
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    out = F.interpolate(tensor, size=shape, mode=mode, antialias=mode == "bilinear")
    return out[0].numpy()


def _cache_key(image: XbdImage, pixel_m: float, size: int, gsd_m: float) -> str:
    """SHA-256 of the image and label bytes and of what the tiles depend on."""
    import hashlib

    digest = hashlib.sha256(f"xbd-tiles-v2 {size} {gsd_m!r} {pixel_m!r}".encode())
    for path in (image.image, image.label):
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _save_npz(path: Path, tiles: _ImageTiles) -> None:
    """Write a cache entry atomically (a killed run leaves no half entry)."""
    import os
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz.part")
    try:
        with os.fdopen(handle, "wb") as out:
            np.savez(
                out,
                images=tiles.images,
                labels=tiles.labels,
                buildings=tiles.buildings,
                columns=tiles.columns,
                width=tiles.width,
                height=tiles.height,
            )
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise

"""Training tiles on disk: the ST_Turkey_2023 release layout, or rasters cut into tiles.

Two layouts are read (``detect_layout`` tells them apart):

- **tiles** (the paper's release): ``<root>/<region>/images/<id>.png`` and
  ``<root>/<region>/labels/<id>.png`` (same file name; label > 0 = damaged);
  ``tiles_meta/*.json`` searched recursively (``crs`` WKT, the parent raster's
  ``transform`` a, b, c, d, e, f, and ``tiles`` {stem: {file, x0, y0, w, h}}; ``stmap
  synth`` adds ``generator``); as the reference, only the first file's CRS is used and
  rotation is ignored.
- **rasters**: ``<root>/<scene>.tif`` with ``<root>/<scene>_labels.tif`` (same size;
  > 0 = damaged), cut on the fly into complete, non-overlapping tiles named
  ``<scene>_r<row>_c<col>`` (tile row and column).

Building footprints are any OGR vector, one file (or more) per region, the region
being the file stem before the first ``_``; null and invalid geometries are dropped,
as the reference does, and the rest reprojected to the tiles' CRS.

This module only reads and writes files and returns arrays: which region a tile
belongs to, aliases and folds are the training stage's business. It also holds the
few other files training writes (overlays, reports, checkpoints, the feature store),
so that nothing else in the training stage opens a file.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import shapely
import torch
import torch.nn.functional as F
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window

from stmap.errors import InputError, RasterError, VectorError
from stmap.io.raster import ground_sample_distance
from stmap.io.synth_writers import SYNTHETIC_GENERATOR

IMAGE_DIR, LABEL_DIR = "images", "labels"
LABEL_SUFFIX = "_labels"
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img")
VECTOR_SUFFIXES = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".gml", ".kml", ".sqlite")


class TileDataError(InputError):
    """A tile dataset that is incomplete or inconsistent (exit 2); the message names the path."""


@dataclass(frozen=True)
class TileRef:
    """One training tile: where its pixels are and where it lies on the ground.

    image, label: a PNG each (tiles layout) or the scene raster and its label raster.
    window: the tile's pixel window in the scene (rasters layout); None for a PNG.
    bounds: (left, bottom, right, top) in the dataset CRS; None when unknown.
    extent_m: the tile's width on the ground in metres; None when unknown.
    """

    tile_id: str
    image: Path
    label: Path
    window: Window | None = None
    bounds: tuple[float, float, float, float] | None = None
    extent_m: float | None = None


@dataclass(frozen=True)
class TilesMeta:
    """Georeferencing of PNG tiles: the first file's CRS, bounds and width in metres by
    stem; and the stems that a file says ``stmap synth`` generated."""

    crs: CRS | None
    bounds: dict[str, tuple[float, float, float, float]]
    extent_m: dict[str, float]
    synthetic: frozenset[str] = frozenset()


# ---- the tiles layout ------------------------------------------------------------------


def detect_layout(root: Path) -> Literal["tiles", "rasters"]:
    """``tiles`` when any ``<root>/*/images`` folder exists, ``rasters`` when scenes do."""
    if not root.is_dir():
        raise TileDataError(f"{root}: data_root is not a directory")
    if any((child / IMAGE_DIR).is_dir() for child in root.iterdir()):
        return "tiles"
    if list_scenes(root):
        return "rasters"
    raise TileDataError(
        f"{root}: neither <region>/images/*.png folders nor <scene>.tif rasters with "
        f"<scene>{LABEL_SUFFIX}.tif labels; see `stmap train --help` for the layouts"
    )


def region_folders(root: Path) -> dict[str, Path]:
    """Folder name → folder, for every ``<root>/<name>`` that holds an ``images`` folder."""
    return {p.name: p for p in sorted(root.iterdir()) if (p / IMAGE_DIR).is_dir()}


def list_region_tiles(folder: Path) -> list[tuple[str, Path, Path]]:
    """(tile id, image PNG, label PNG) for every image of a region folder, sorted by id.

    Raises TileDataError naming the image when its label is missing.
    """
    tiles = []
    for image in sorted((folder / IMAGE_DIR).glob("*.png")):
        label = folder / LABEL_DIR / image.name
        if not label.is_file():
            raise TileDataError(f"{image}: no label; expected {label}")
        tiles.append((image.stem, image, label))
    if not tiles:
        raise TileDataError(f"{folder / IMAGE_DIR}: no PNG tiles")
    return tiles


def read_tiles_meta(directory: Path | None) -> TilesMeta:
    """Georeferencing from every ``*.json`` under ``directory`` (recursively), keyed by stem.

    As the reference: the CRS of the first file (sorted by path) serves all tiles and
    the transform's rotation terms b, d are ignored. No directory → nothing known.
    """
    if directory is None or not directory.is_dir():
        return TilesMeta(None, {}, {})
    crs: CRS | None = None
    bounds: dict[str, tuple[float, float, float, float]] = {}
    extent: dict[str, float] = {}
    synthetic: set[str] = set()
    for path in sorted(directory.rglob("*.json")):
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
            a, _, c, _, e, f = (float(v) for v in meta["transform"][:6])
            tiles = [
                (stem, [float(tile[k]) for k in ("x0", "y0", "w", "h")])
                for stem, tile in meta["tiles"].items()
            ]
            if not all(math.isfinite(v) for v in (a, c, e, f, *(n for _, t in tiles for n in t))):
                raise ValueError("transform and tile windows must be finite numbers")
            if crs is None:
                crs = CRS.from_wkt(meta["crs"])
        except (
            OSError,  # a folder named *.json, or unreadable
            ValueError,
            KeyError,
            TypeError,
            AttributeError,  # "tiles" not an object
            RecursionError,  # JSON nested beyond the parser's limit
            rasterio.errors.CRSError,
        ) as exc:
            raise TileDataError(
                f"{path}: not a tiles_meta file ({type(exc).__name__}: {exc})"
            ) from exc
        for stem, (x0, y0, w, h) in tiles:
            xs, ys = (c + a * x0, c + a * (x0 + w)), (f + e * y0, f + e * (y0 + h))
            key = Path(stem).stem
            bounds[key] = (min(xs), min(ys), max(xs), max(ys))
            gsd = ground_sample_distance(crs, Affine(a, 0.0, xs[0], 0.0, e, ys[0]), int(w), int(h))
            if gsd:
                extent[key] = gsd * w
            if meta.get("generator") == SYNTHETIC_GENERATOR:
                synthetic.add(key)
    return TilesMeta(crs, bounds, extent, frozenset(synthetic))


def tile_refs(tiles: Iterable[tuple[str, Path, Path]], meta: TilesMeta) -> list[TileRef]:
    """TileRefs for PNG tiles, georeferenced where ``meta`` knows their stem."""
    return [
        TileRef(tile_id, image, label, None, meta.bounds.get(tile_id), meta.extent_m.get(tile_id))
        for tile_id, image, label in tiles
    ]


# ---- the rasters layout ----------------------------------------------------------------


def list_scenes(root: Path) -> list[tuple[str, Path, Path]]:
    """(scene stem, image raster, label raster) for the rasters of ``root``.

    Raises TileDataError naming the image when its ``<stem>_labels`` raster is missing.
    """
    rasters = {p.stem: p for p in sorted(root.iterdir()) if p.suffix.lower() in RASTER_SUFFIXES}
    scenes = []
    for stem, image in rasters.items():
        if stem.endswith(LABEL_SUFFIX):
            continue
        label = rasters.get(stem + LABEL_SUFFIX)
        if label is None:
            raise TileDataError(f"{image}: no label raster; expected {stem}{LABEL_SUFFIX}.tif")
        scenes.append((stem, image, label))
    return scenes


def is_synthetic_scene(image: Path) -> bool:
    """The scene raster says ``stmap synth`` generated it (its GENERATOR tag)."""
    with _open(image) as src:
        return src.tags().get("GENERATOR") == SYNTHETIC_GENERATOR


def scene_tiles(stem: str, image: Path, label: Path, size: int) -> tuple[list[TileRef], CRS]:
    """Cut a scene into complete ``size``² tiles (row-major); the partial edge is left out.

    Returns the tiles and the scene's CRS. Raises TileDataError when the label raster's
    size differs from the image's or the scene has no CRS.
    """
    with _open(image) as src, _open(label) as lab:
        if (lab.width, lab.height) != (src.width, src.height):
            raise TileDataError(
                f"{label}: labels are {lab.width}×{lab.height} px but {image.name} is "
                f"{src.width}×{src.height}; a label raster must match its image"
            )
        if src.crs is None:
            raise TileDataError(f"{image}: the raster has no CRS; footprints cannot be placed")
        crs, transform, width, height = src.crs, src.transform, src.width, src.height
    gsd = ground_sample_distance(crs, transform, width, height)
    tiles = []
    for row in range(height // size):
        for col in range(width // size):
            (x0, y0), (x1, y1) = (
                transform @ (col * size, row * size),
                transform @ ((col + 1) * size, (row + 1) * size),
            )
            tiles.append(
                TileRef(
                    f"{stem}_r{row}_c{col}",
                    image,
                    label,
                    Window(col * size, row * size, size, size),
                    (min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)),
                    gsd * size if gsd else None,
                )
            )
    return tiles, crs


# ---- pixels ----------------------------------------------------------------------------


def read_tiles(
    tiles: Sequence[TileRef], size: int, workers: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Pixels and labels of ``tiles`` at ``size``² px.

    Returns images (N, 3, size, size) uint8 RGB and labels (N, size, size) uint8 in
    {0, 1} (1 = label > 0). Tiles of another size are resized: bilinear, antialiased
    on uint8 for images, nearest for labels. Raises TileDataError naming the label
    when its size differs from its image's.
    """
    images = np.empty((len(tiles), 3, size, size), np.uint8)
    labels = np.empty((len(tiles), size, size), np.uint8)

    def read_one(i: int) -> None:
        images[i], labels[i] = read_tile(tiles[i], size)

    # PNG tiles carry no georeferencing, which is expected. (Filters are process-wide, so
    # they are set here, around the threads, and not inside them.)
    with warnings.catch_warnings(), ThreadPoolExecutor(max(1, workers)) as pool:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        list(pool.map(read_one, range(len(tiles))))  # GDAL decodes with the GIL released
    return images, labels


def read_tile(tile: TileRef, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One tile: image (3, size, size) uint8 RGB and label (size, size) uint8 in {0, 1}."""
    image = _read_bands(tile.image, tile.window, bands=3)
    label = _read_bands(tile.label, tile.window, bands=1)[0]
    if label.shape != image.shape[1:]:
        raise TileDataError(
            f"{tile.label}: label is {label.shape[1]}×{label.shape[0]} px but its image "
            f"{tile.image.name} is {image.shape[2]}×{image.shape[1]}"
        )
    label = (label > 0).astype(np.uint8)
    if image.shape[1:] != (size, size):
        image = _resize(image, size, "bilinear")
        label = _resize(label[None], size, "nearest-exact")[0]
    return image, label


def _read_bands(path: Path, window: Window | None, bands: int) -> np.ndarray:
    """The first ``bands`` bands of a raster (or of its ``window``) as (bands, H, W) uint8."""
    with _open(path) as src:
        if src.count < bands:
            raise TileDataError(f"{path}: {src.count} band(s); {bands} (RGB) expected")
        if src.dtypes[0] != "uint8":
            raise TileDataError(f"{path}: {src.dtypes[0]} pixels; 8-bit tiles expected")
        return src.read(list(range(1, bands + 1)), window=window)


def _open(path: Path) -> rasterio.DatasetReader:
    """Open a PNG or raster, with an error that names the file."""
    try:
        return rasterio.open(path)
    except RasterioIOError as exc:
        raise RasterError(f"{path}: not a readable image ({exc})") from exc


def _resize(array: np.ndarray, size: int, mode: str) -> np.ndarray:
    """(C, H, W) uint8 → (C, size, size) uint8; bilinear is antialiased as PIL's."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))[None]
    antialias = mode == "bilinear"
    out = F.interpolate(tensor, size=(size, size), mode=mode, antialias=antialias)
    return out[0].numpy()


# ---- footprints ------------------------------------------------------------------------


def footprint_files(directory: Path | None) -> dict[str, list[Path]]:
    """Vector files of ``directory`` by region, the region being the stem before the first ``_``."""
    found: dict[str, list[Path]] = {}
    if directory is None or not directory.is_dir():
        return found
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() in VECTOR_SUFFIXES and path.is_file():
            found.setdefault(path.stem.split("_")[0], []).append(path)
    return found


def read_footprints(paths: Sequence[Path], crs: CRS | None) -> shapely.STRtree:
    """Valid footprint polygons of ``paths``, reprojected to ``crs``, in a spatial index.

    Null and invalid geometries are dropped (as the reference). Raises VectorError
    naming the file when it cannot be read or its CRS is unknown while ``crs`` is known.
    """
    import pyogrio
    from pyogrio.errors import DataLayerError, DataSourceError

    from stmap.io.vectors import transform_geometries

    parts = []
    for path in paths:
        try:
            info = pyogrio.read_info(path)
            _, _, wkb, _ = pyogrio.raw.read(path, columns=[])
        except (DataSourceError, DataLayerError) as exc:
            raise VectorError(f"{path}: not a readable vector file ({exc})") from exc
        geometries = shapely.from_wkb(wkb)
        geometries = geometries[~shapely.is_missing(geometries)]
        geometries = geometries[shapely.is_valid(geometries) & ~shapely.is_empty(geometries)]
        if crs is not None:
            if info["crs"] is None:
                raise VectorError(
                    f"{path}: the footprints have no CRS, so they cannot be placed on the "
                    "tiles; assign one (e.g. ogr2ogr -a_srs EPSG:4326) and retry"
                )
            geometries = transform_geometries(geometries, info["crs"], crs)
        parts.append(geometries)
    return shapely.STRtree(np.concatenate(parts) if parts else np.empty(0, object))


def building_mask(
    footprints: shapely.STRtree | None,
    bounds: tuple[float, float, float, float] | None,
    size: int,
) -> np.ndarray:
    """(size, size) bool: footprints rasterised (all_touched) straight over the tile's bounds.

    Empty without footprints or without known bounds (a tile with no triplets for DPT).
    """
    mask = np.zeros((size, size), bool)
    if footprints is None or bounds is None:
        return mask
    hits = footprints.geometries.take(footprints.query(shapely.box(*bounds)))
    if len(hits):
        left, bottom, right, top = bounds
        transform = Affine((right - left) / size, 0.0, left, 0.0, (bottom - top) / size, top)
        mask = rasterize(hits, (size, size), transform=transform, all_touched=True, dtype="uint8")
    return mask.astype(bool)


# ---- files the training stage writes ---------------------------------------------------


def read_yaml(path: Path) -> Any:
    """A YAML document; raises InputError naming the file when it is missing or malformed."""
    import yaml

    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path}: not valid YAML ({exc})") from exc


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file renamed over ``path``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_png(path: Path, image: np.ndarray, georef: tuple[Any, Affine] | None = None) -> None:
    """Write (3, H, W) uint8 RGB as a PNG; with ``georef`` (CRS, transform) GDAL adds a
    world file and an ``.aux.xml`` with the CRS, so GIS software places it on the map."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile: dict[str, Any] = {"driver": "PNG", "width": image.shape[2], "height": image.shape[1]}
    if georef is not None:
        crs, transform = georef
        profile.update(crs=CRS.from_user_input(crs), transform=transform, worldfile="YES")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", count=3, dtype="uint8", **profile) as dst:
            dst.write(image)


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Write tensors as safetensors (checkpoints never pickle code)."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


def open_array_store(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> np.memmap:
    """A new ``.npy`` file of ``shape`` and ``dtype``, memory-mapped for writing and reading."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)

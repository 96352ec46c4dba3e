"""Test data for mosaics: a small synthetic city cut into overlapping COG tiles, and STAC.

Tiles are windows of one city raster, written as COGs (the last one optionally
reprojected into the neighbouring UTM zone, with an alpha band where it has data),
so a mosaic of tiles that share the city's grid must reproduce the city exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp, Resampling
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from stmap.synth import generate_city

RGB = (ColorInterp.red, ColorInterp.green, ColorInterp.blue)


def make_city(folder: Path, size: int = 512, seed: int = 3) -> Path:
    """A ``size`` × ``size`` synthetic city at 0.5 m in EPSG:32637 (zone 37, near zone 36)."""
    folder.mkdir(parents=True, exist_ok=True)
    return generate_city(folder / "city.tif", width=size, height=size, seed=seed).image


def cut_tile(
    city: Path,
    path: Path,
    window: tuple[int, int, int, int],
    *,
    crs: str | None = None,
    nodata_cols: int = 0,
) -> Path:
    """A COG of the city's (row, col, height, width) window.

    crs: reproject it there (bilinear, with an alpha band marking where it has data);
    nodata_cols: that many columns on its left are set to nodata 0 (a declared nodata).
    """
    row, col, height, width = window
    with rasterio.open(city) as src:
        data = src.read(window=Window(col, row, width, height))
        transform = window_transform(Window(col, row, width, height), src.transform)
        profile = dict(driver="GTiff", count=3, dtype="uint8", crs=src.crs, transform=transform,
                       width=width, height=height)  # fmt: skip
    if nodata_cols:
        data[:, :, :nodata_cols] = 0
        profile["nodata"] = 0
    mem = rasterio.MemoryFile()
    with mem.open(**profile) as tile:
        tile.write(data)
        tile.colorinterp = RGB
    with mem.open() as tile:
        if crs is None:
            rasterio.shutil.copy(tile, path, driver="COG", blocksize=128)
        else:
            with WarpedVRT(tile, crs=crs, resampling=Resampling.bilinear, add_alpha=True) as vrt:
                rasterio.shutil.copy(vrt, path, driver="COG", blocksize=128)
    mem.close()
    return path


def constant_tile(path: Path, value: int, transform: Affine, size: int, **profile) -> Path:
    """A size × size RGB COG of one value (an acquisition easy to recognise)."""
    data = np.full((3, size, size), value, dtype=np.uint8)
    options = dict(driver="GTiff", count=3, dtype="uint8", crs="EPSG:32637", width=size,
                   height=size, transform=transform, **profile)  # fmt: skip
    mem = rasterio.MemoryFile()
    with mem.open(**options) as tile:
        tile.write(data)
        tile.colorinterp = RGB
    with mem.open() as tile:
        rasterio.shutil.copy(tile, path, driver="COG", blocksize=128)
    mem.close()
    return path


def write_item_collection(path: Path, items: list[tuple[str, Path, str | None]]) -> Path:
    """A STAC ItemCollection of (id, raster, datetime) items, hrefs relative to ``path``."""
    features = [
        {
            "type": "Feature",
            "stac_version": "1.0.0",
            "id": name,
            "properties": {"datetime": when},
            "assets": {
                "visual": {"href": str(raster.relative_to(path.parent)), "roles": ["visual"]}
            },
        }
        for name, raster, when in items
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def write_aoi(path: Path, boxes: list[tuple[float, float, float, float]], crs: str = "EPSG:32637"):
    """An AOI file of one (multi)polygon: the union of ``boxes`` in ``crs``."""
    import shapely

    from stmap.io.vectors import VectorTable, write_vector

    geometry = shapely.union_all([shapely.box(*b) for b in boxes])
    write_vector(path, VectorTable(np.array([geometry]), {"name": np.array(["aoi"])}, crs))
    return path

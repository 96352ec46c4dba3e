"""Files written by `stmap synth`: the city GeoTIFFs, its footprints and a tile dataset.

Everything appears under its final name only once complete: each file is written under
a hidden temporary name in the same folder and renamed (atomic on POSIX), so a crash
never leaves a half-written output where a later step would trust it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pyogrio.raw
import rasterio
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.transform import Affine
from rasterio.windows import Window

from stmap.io.layout import TILE  # tiled as the outputs are: a block reads whole tiles

# The mark of a synthetic city on its rasters (GDAL metadata GENERATOR) and tile datasets
# ("generator" in tiles_meta), so that a model trained on them can say so (training_data).
SYNTHETIC_GENERATOR = "stmap synth"
# GDAL's block cache defaults to 5 % of RAM; a streaming writer needs a few tile rows.
_ENV = {"GDAL_CACHEMAX": 64, "GDAL_PAM_ENABLED": "NO"}


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` that is renamed to it when the block succeeds and
    removed when it fails. The suffix is kept, since GDAL drivers look at it."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class CityRasterWriter:
    """Streams the city's RGB GeoTIFF and its label GeoTIFF window by window.

    OUT.tif: RGB uint8, tiled 512², DEFLATE with horizontal predictor, photometric RGB.
    OUT_labels.tif: uint8, 1 = damaged-building pixel, 0 other, tiled 512², DEFLATE.
    Both carry the CRS, the transform and the GENERATOR tag ``SYNTHETIC_GENERATOR``, and
    exist under their names only when complete.
    """

    def __init__(
        self, image: Path, labels: Path, width: int, height: int, crs: CRS, transform: Affine
    ) -> None:
        common = dict(
            driver="GTiff",
            width=width,
            height=height,
            dtype="uint8",
            crs=crs,
            transform=transform,
            tiled=True,
            blockxsize=TILE,
            blockysize=TILE,
            compress="deflate",
            bigtiff="IF_SAFER",
            num_threads="ALL_CPUS",
        )
        self._profiles = (
            (
                Path(image),
                dict(common, count=3, photometric="RGB", interleave="pixel", predictor=2),
            ),
            (Path(labels), dict(common, count=1)),
        )
        self._stack = ExitStack()

    def __enter__(self) -> CityRasterWriter:
        with ExitStack() as stack:
            stack.enter_context(rasterio.Env(**_ENV))
            self._rgb, self._lab = (
                stack.enter_context(rasterio.open(stack.enter_context(atomic_path(p)), "w", **prof))
                for p, prof in self._profiles
            )
            for dataset in (self._rgb, self._lab):
                dataset.update_tags(GENERATOR=SYNTHETIC_GENERATOR)
            self._stack = stack.pop_all()
        return self

    def write(self, row: int, col: int, rgb: np.ndarray, label: np.ndarray) -> None:
        """Write a window: rgb (h, w, 3) uint8 and label (h, w) uint8 at (row, col)."""
        h, w = label.shape
        window = Window(col, row, w, h)
        self._rgb.write(np.moveaxis(rgb, -1, 0), window=window)
        self._lab.write(label, 1, window=window)

    def __exit__(self, *exc: object) -> None:
        # closing in reverse order flushes each dataset before its rename (or removal)
        self._stack.__exit__(*exc)


def write_footprints(
    path: Path,
    polygons_wkb: np.ndarray,
    fields: dict[str, np.ndarray],
    crs: CRS,
    *,
    driver: str = "GPKG",
    layer: str = "buildings",
    geometry_type: str = "Polygon",
) -> None:
    """Building footprints, one polygon per row (or, with ``geometry_type="Point"``,
    grading points); GeoJSON is written per RFC 7946 (reprojected to EPSG:4326 by
    GDAL), GeoPackage in `crs`."""
    options = {"RFC7946": "YES"} if driver == "GeoJSON" else None
    with atomic_path(Path(path)) as tmp, _fixed_date():
        pyogrio.raw.write(
            tmp,
            polygons_wkb,
            field_data=list(fields.values()),
            fields=list(fields),
            layer=layer,
            driver=driver,
            geometry_type=geometry_type,
            crs=crs.to_wkt(),
            layer_options=options,
        )


@contextmanager
def _fixed_date() -> Iterator[None]:
    """GeoPackages record when they were written; a fixed date keeps same seed, same bytes."""
    key = "OGR_CURRENT_DATE"
    before = pyogrio.get_gdal_config_option(key)
    pyogrio.set_gdal_config_options({key: "2023-02-06T01:17:00Z"})  # the mainshock, UTC
    try:
        yield
    finally:
        pyogrio.set_gdal_config_options({key: before})


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=1) + "\n")


def existing_tiles(root: Path, region: str) -> list[Path]:
    """Files a tile dataset for `region` already has under `root`."""
    root = Path(root)
    found = [
        root / "tiles_meta" / f"{region}.json",
        root / "footprints" / f"{region}_buildings.geojson",
    ]
    for sub in ("images", "labels"):
        folder = root / region / sub
        if folder.is_dir():
            found += sorted(folder.glob(f"{region}_r*_c*.png"))
    return [p for p in found if p.exists()]


def write_tiles(
    image: Path,
    labels: Path,
    root: Path,
    region: str,
    tile: int,
    footprints_wkb: np.ndarray,
    footprint_fields: dict[str, np.ndarray],
) -> int:
    """A tile dataset in the ST_Turkey_2023 release layout, cut from the finished rasters.

    Writes ``root/<region>/images/<region>_r<row>_c<col>.png`` (RGB) and the same name
    under ``labels/`` (uint8, 1 = damaged), complete `tile`² tiles only (the partial
    edge is dropped), ``root/tiles_meta/<region>.json`` (generator, CRS WKT, parent
    transform, per-tile pixel offsets) and ``root/footprints/<region>_buildings.geojson`` (RFC 7946,
    EPSG:4326). Existing tiles of the region are replaced. Returns the tile count.
    """
    root = Path(root)
    folders = {sub: root / region / sub for sub in ("images", "labels")}
    for folder in (*folders.values(), root / "tiles_meta", root / "footprints"):
        folder.mkdir(parents=True, exist_ok=True)
    for old in existing_tiles(root, region):
        old.unlink()
    meta: dict[str, Any] = {}
    with rasterio.Env(**_ENV), rasterio.open(image) as src, rasterio.open(labels) as lab:
        meta_head = {"crs": src.crs.to_wkt(), "transform": list(src.transform)[:6]}
        for r in range(src.height // tile):
            window = Window(0, r * tile, (src.width // tile) * tile, tile)
            strip, strip_lab = src.read(window=window), lab.read(1, window=window)
            for c in range(src.width // tile):
                stem = f"{region}_r{r}_c{c}"
                cols = slice(c * tile, (c + 1) * tile)
                _png(folders["images"] / f"{stem}.png", strip[:, :, cols])
                _png(folders["labels"] / f"{stem}.png", strip_lab[None, :, cols])
                meta[stem] = {
                    "file": f"{stem}.png",
                    "x0": c * tile,
                    "y0": r * tile,
                    "w": tile,
                    "h": tile,
                }
    head = {"generator": SYNTHETIC_GENERATOR, **meta_head}
    write_json(root / "tiles_meta" / f"{region}.json", {**head, "tiles": meta})
    write_footprints(
        root / "footprints" / f"{region}_buildings.geojson",
        footprints_wkb,
        footprint_fields,
        CRS.from_wkt(meta_head["crs"]),
        driver="GeoJSON",
    )
    return len(meta)


def _png(path: Path, bands: np.ndarray) -> None:
    """A PNG of (bands, h, w) uint8, no georeferencing (the tiles_meta file carries it)."""
    count, h, w = bands.shape
    with warnings.catch_warnings(), atomic_path(path) as tmp:
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            tmp, "w", driver="PNG", width=w, height=h, count=count, dtype="uint8"
        ) as dst:
            dst.write(bands)

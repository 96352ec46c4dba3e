"""Synthetic, georeferenced post-earthquake cities: the test bed of every stmap check.

`generate_city` lays a whole city out as vectors (districts, streets, blocks, buildings,
trees, cars, damage; `layout`), then renders it window by window (`render`) and streams
the windows to disk (`stmap.io.synth_writers`). Every pixel is a pure function of the
layout, the seed and its global position, so the output is the same bytes whatever the
window size or the number of worker processes: same seed, same city.

Outputs, beside OUT.tif: OUT_labels.tif (1 = damaged-building pixel: the intact
footprint of a damaged building plus its visible debris heap outside it) and
OUT_footprints.gpkg (intact outlines with `building_id`, `damaged`, `damage`,
`storeys`, `height_m`, `roof`, `fabric`); optionally a tile dataset in the
ST_Turkey_2023 release layout, and OUT_grading.gpkg: one Copernicus EMS grading
point per building (`damage_gra`), as a responder would receive them.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from rasterio.crs import CRS
from rasterio.errors import CRSError
from rasterio.transform import Affine
from rasterio.warp import transform as warp_points

from stmap.errors import InputError, OutputExistsError
from stmap.io import synth_writers as writers
from stmap.synth import damage
from stmap.synth.geometry import rect_corners
from stmap.synth.layout import ROOF_NAMES, CityLayout, build_layout
from stmap.synth.render import render_window
from stmap.synth.styles import CHARACTERS, STYLES

__all__ = ["STYLES", "Grading", "SynthResult", "generate_city", "list_styles"]

# The city is placed around central Kahramanmaraş (lon, lat), whatever the CRS.
CENTRE_LONLAT = (36.937, 37.585)
_REGION = re.compile(r"^[A-Za-z0-9-]+$")
_SERIAL_BELOW_PX = 8 * 2**20  # smaller cities render in-process: workers cost more than they save


@dataclass(frozen=True)
class SynthResult:
    """What `generate_city` wrote, and what is in it."""

    image: Path
    labels: Path
    footprints: Path
    tiles_dir: Path | None
    grading: Path | None
    region: str
    style: str
    width: int
    height: int
    gsd: float
    crs: str
    seed: int
    damage_rate: float
    buildings: int
    damaged_buildings: int
    damaged_pixels: int
    tiles: int
    workers: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths as strings."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Grading:
    """Copernicus EMS grading points drawn from each building's true state.

    One point per building, on its footprint, field ``damage_gra``: collapsed →
    "Destroyed", partly collapsed or soft-storey → "Damaged", intact → "No visible
    damage"; then a share ``possibly`` of all buildings, drawn at random, becomes
    "Possibly damaged" and a share ``wrong`` of the rest takes the wrong grade
    (damaged → "No visible damage", intact → "Damaged"), as analysts' errors would.
    ``building_id`` joins a point to its footprint; ``true_damaged`` keeps the truth.
    """

    possibly: float = 0.1
    wrong: float = 0.0

    def check(self) -> None:
        for name, value in (("--possibly-damaged", self.possibly), ("--wrong-grades", self.wrong)):
            if not 0.0 <= value <= 1.0:
                raise InputError(f"{name} {value}: give a share of buildings in [0, 1]")

    def points(
        self, footprints_wkb: np.ndarray, grades: np.ndarray, seed: int
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(N,) point WKB and their fields for N footprints with their damage grades."""
        n = len(grades)
        truth = np.where(
            grades == damage.COLLAPSED,
            "Destroyed",
            np.where(grades == damage.NONE, "No visible damage", "Damaged"),
        ).astype(object)
        rng = np.random.default_rng([seed, 15])
        order = rng.permutation(n)
        n_possibly = round(self.possibly * n)
        n_wrong = round(self.wrong * (n - n_possibly))
        graded = truth.copy()
        graded[order[:n_possibly]] = "Possibly damaged"
        wrong = order[n_possibly : n_possibly + n_wrong]
        graded[wrong] = np.where(grades[wrong] == damage.NONE, "Damaged", "No visible damage")
        points = shapely.point_on_surface(shapely.from_wkb(footprints_wkb))
        fields = {
            "building_id": np.arange(1, n + 1, dtype=np.int64),
            "obj_type": np.full(n, "Residential Buildings", dtype=object),
            "damage_gra": graded,
            "true_damaged": (grades != damage.NONE).astype(np.int32),
        }
        return shapely.to_wkb(points), fields


def list_styles() -> dict[str, str]:
    """Style name -> one-line description."""
    return {name: style.description for name, style in STYLES.items()}


def generate_city(
    out_path: str | Path,
    *,
    width: int = 4096,
    height: int = 4096,
    gsd: float = 0.5,
    crs: str = "EPSG:32637",
    style: str = "citycentre",
    damage_rate: float = 0.15,
    seed: int = 0,
    region: str | None = None,
    tiles_dir: str | Path | None = None,
    grading: Grading | None = None,
    tile_size: int = 128,
    block_size: int = 1024,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SynthResult:
    """Write a synthetic post-earthquake city to `out_path` (a GeoTIFF) and beside it.

    width, height: pixels; gsd: metres per pixel; crs: any projected CRS in metres (the
    city is centred on Kahramanmaraş); style: a name from `list_styles()`; damage_rate:
    fraction of buildings damaged (exactly, rounded); region: the tile-dataset region id
    (default: the style name); tiles_dir: also write a tile dataset there; grading:
    also write OUT_grading.gpkg (EMS grading points, see `Grading`); block_size:
    pixels per rendered window (memory, not output, depends on it); workers: render
    processes (default: all cores for large cities, in-process for small ones);
    progress(done_px, total_px) is called after each window. Raises InputError (or
    OutputExistsError without `overwrite`) naming the value and the fix.
    """
    started = time.perf_counter()
    out = Path(out_path)
    crs_obj = _check(width, height, gsd, crs, style, damage_rate, seed, tile_size, block_size)
    region = style if region is None else region
    if not _REGION.match(region):
        raise InputError(
            f"--region {region!r}: use letters, digits and '-' only; a tile id is parsed as "
            "'<region>_r<row>_c<col>' and a footprint file as '<region>_buildings', so '_' "
            "would split the region name"
        )
    stem = out.name[: -len(out.suffix)] if out.suffix.lower() in (".tif", ".tiff") else out.name
    labels = out.with_name(f"{stem}_labels.tif")
    footprints = out.with_name(f"{stem}_footprints.gpkg")
    grading_path = out.with_name(f"{stem}_grading.gpkg") if grading is not None else None
    tiles = Path(tiles_dir) if tiles_dir is not None else None
    if grading is not None:
        grading.check()
    if not overwrite:
        taken = [p for p in (out, labels, footprints, grading_path) if p and p.exists()]
        taken += writers.existing_tiles(tiles, region) if tiles is not None else []
        if taken:
            raise OutputExistsError(
                f"{taken[0]} already exists; pass --overwrite (overwrite=True) to replace it"
            )
    out.parent.mkdir(parents=True, exist_ok=True)

    city = build_layout(width, height, gsd, STYLES[style], damage_rate, seed)
    transform = _transform(crs_obj, width, height, gsd)
    damaged_px, workers = _stream(
        city, out, labels, crs_obj, transform, block_size, workers, progress
    )
    wkb, fields = _footprints(city, transform)
    writers.write_footprints(footprints, wkb, fields, crs_obj)
    if grading is not None and grading_path is not None:
        points, point_fields = grading.points(wkb, city.buildings.grade, seed)
        writers.write_footprints(
            grading_path, points, point_fields, crs_obj, layer="grading", geometry_type="Point"
        )
    n_tiles = 0
    if tiles is not None:
        n_tiles = writers.write_tiles(out, labels, tiles, region, tile_size, wkb, fields)
    b = city.buildings
    return SynthResult(
        image=out,
        labels=labels,
        footprints=footprints,
        tiles_dir=tiles,
        grading=grading_path,
        region=region,
        style=style,
        width=width,
        height=height,
        gsd=gsd,
        crs=crs_obj.to_string(),
        seed=seed,
        damage_rate=damage_rate,
        buildings=len(b),
        damaged_buildings=int(b.damaged.sum()),
        damaged_pixels=damaged_px,
        tiles=n_tiles,
        workers=workers,
        seconds=round(time.perf_counter() - started, 3),
    )


def _check(width, height, gsd, crs, style, damage_rate, seed, tile_size, block_size) -> CRS:
    """Validate once at the boundary; the message names the value, the rule and the fix."""
    if style not in STYLES:
        raise InputError(f"--style {style!r} is unknown; choose one of: {', '.join(STYLES)}")
    for name, value, lo in (("--width", width, 64), ("--height", height, 64)):
        if not isinstance(value, (int, np.integer)) or not lo <= value <= 2**20:
            raise InputError(f"{name} {value!r}: give a whole number of pixels in [{lo}, 2**20]")
    if not 0.05 <= gsd <= 10:
        raise InputError(f"--gsd {gsd}: give metres per pixel in [0.05, 10] (VHR is 0.3-0.6)")
    if not 0.0 <= damage_rate <= 1.0:
        raise InputError(f"--damage-rate {damage_rate}: give a fraction of buildings in [0, 1]")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"--seed {seed!r}: give a whole number >= 0")
    if tile_size < 16:
        raise InputError(f"tile size {tile_size}: give at least 16 pixels")
    if block_size < 64 or block_size % 16:
        raise InputError(f"block size {block_size}: give a multiple of 16, at least 64")
    try:
        crs_obj = CRS.from_user_input(crs)
    except CRSError as exc:
        raise InputError(f"--crs {crs!r} is not a CRS GDAL knows ({exc}); try EPSG:32637") from None
    if not crs_obj.is_projected or (crs_obj.linear_units or "").lower() not in ("metre", "meter"):
        raise InputError(
            f"--crs {crs!r}: give a projected CRS in metres (the GSD is metres per pixel), "
            "e.g. EPSG:32637 (UTM 37N)"
        )
    return crs_obj


def _transform(crs: CRS, width: int, height: int, gsd: float) -> Affine:
    """North-up grid centred on Kahramanmaraş, origin on whole metres."""
    (x,), (y,) = warp_points("EPSG:4326", crs, [CENTRE_LONLAT[0]], [CENTRE_LONLAT[1]])
    return Affine(gsd, 0.0, round(x - width * gsd / 2), 0.0, -gsd, round(y + height * gsd / 2))


# Worker processes render windows of one city; it is sent to each once, at start-up.
_CITY: CityLayout | None = None


def _init_worker(city: CityLayout) -> None:
    global _CITY
    _CITY = city


def _render(window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    assert _CITY is not None
    return render_window(_CITY, *window)


def _stream(city, image, labels, crs, transform, block, workers, progress) -> tuple[int, int]:
    """Render every window and write it as it comes, in order; returns the damaged pixel
    count and the number of processes that rendered.

    With workers, at most two windows per worker are in flight, which bounds memory
    whatever the city's size.
    """
    windows = [
        (r, c, min(block, city.height - r), min(block, city.width - c))
        for r in range(0, city.height, block)
        for c in range(0, city.width, block)
    ]
    if workers is None:
        small = city.width * city.height < _SERIAL_BELOW_PX
        workers = 1 if small else min(os.cpu_count() or 1, 4)
    workers = max(1, min(workers, len(windows)))
    total, done, damaged = city.width * city.height, 0, 0
    with writers.CityRasterWriter(image, labels, city.width, city.height, crs, transform) as out:

        def emit(window, result) -> None:
            nonlocal done, damaged
            rgb, lab = result
            out.write(window[0], window[1], rgb, lab)
            damaged += int(np.count_nonzero(lab))
            done += window[2] * window[3]
            if progress is not None:
                progress(done, total)

        if workers == 1:
            for window in windows:
                emit(window, render_window(city, *window))
            return damaged, 1
        context = multiprocessing.get_context("spawn")  # safe with threads in the parent
        with ProcessPoolExecutor(workers, context, _init_worker, (city,)) as pool:
            pending: deque = deque()
            for window in windows:
                pending.append((window, pool.submit(_render, window)))
                if len(pending) >= 2 * workers:
                    emit(pending[0][0], pending.popleft()[1].result())
            while pending:
                emit(pending[0][0], pending.popleft()[1].result())
    return damaged, workers


def _footprints(city: CityLayout, transform: Affine) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Intact building outlines in map coordinates (WKB) and their attributes."""
    b = city.buildings
    corners = rect_corners(b.x, b.y, b.hu, b.hv, b.cos, b.sin)
    ring = np.concatenate([corners, corners[:, :1]], axis=1)
    x, y = transform @ (ring[..., 0], ring[..., 1])
    polygons = shapely.polygons(np.stack([x, y], axis=-1))
    fields = {
        "building_id": np.arange(1, len(b) + 1, dtype=np.int64),
        "damaged": b.damaged.astype(np.int32),
        "damage": np.array(damage.GRADE_NAMES, object)[b.grade],
        "storeys": b.storeys.astype(np.int32),
        "height_m": np.round(b.height_m, 1).astype(np.float64),
        "roof": np.array(ROOF_NAMES, object)[b.roof],
        "fabric": np.array(CHARACTERS, object)[b.fabric],
    }
    return shapely.to_wkb(polygons), fields

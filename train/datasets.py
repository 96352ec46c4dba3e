"""Tensors of every tile a run uses, decoded once from any layout that stmap.io reads.

Tiles are grouped by the region parsed from their id (``splits.region_of``), not by
folder; either spelling of a region is accepted. Building masks for DPT are
rasterised once, here, at the training tile size over each tile's bounds (empty
where tiles_meta or footprints are missing). Everything afterwards — folds, batches,
the feature cache — works on positions into these tensors.
"""

from __future__ import annotations

import logging
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from rasterio.crs import CRS

from stmap.errors import InputError
from stmap.io import tiles as tile_io
from stmap.io import xbd
from stmap.train.splits import canonical_region, region_of

log = logging.getLogger(__name__)
DEFAULT_GSD_M = 0.5  # the method's Pléiades GSD, used when the data carries none


@dataclass
class TileData:
    """N tiles in one order.

    images: (N, 3, S, S) uint8 RGB; labels: (N, S, S) uint8, 1 = damaged, 0 = not,
    255 = ignored (xBD's un-classified buildings); buildings: (N, S, S) bool footprint
    masks; regions: canonical region per tile; notes: what reading the data found,
    in sentences for the run's report; kind: what the tiles are, recorded in the
    model's provenance (``training_data``): "xbd", "synthetic" (every tile made by
    ``stmap synth``, which marks its files), else the layout ("tiles", "rasters").
    """

    tile_ids: list[str]
    regions: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    buildings: torch.Tensor
    gsd_m: float  # ground sample distance of the S² tiles
    regions_with_footprints: frozenset[str]
    notes: list[str] = field(default_factory=list)
    kind: str = "unknown"
    # tile id → (CRS, transform) where the layout places tiles on the map (xBD's fit)
    georef: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.tile_ids)

    def positions(self, tile_ids: Sequence[str]) -> torch.Tensor:
        """(len(tile_ids),) int64 positions of the given ids."""
        where = {tile_id: i for i, tile_id in enumerate(self.tile_ids)}
        return torch.tensor([where[t] for t in tile_ids], dtype=torch.int64)

    def damaged_fractions(self) -> list[float]:
        """Each tile's damaged fraction of its S² label (ignored pixels count as not damaged)."""
        return (self.labels.flatten(1) == 1).float().mean(1).tolist()

    @property
    def region_names(self) -> list[str]:
        return sorted(set(self.regions))


def load_tile_data(
    data_root: Path,
    regions: Sequence[str] | None,
    size: int,
    footprint_dir: Path | None = None,
    tiles_meta_dir: Path | None = None,
    workers: int = 1,
    gsd_m: float = DEFAULT_GSD_M,
    disaster_types: Sequence[str] | None = None,
    cache_dir: Path | None = None,
) -> TileData:
    """Decode every tile of ``regions`` (all found when None) under ``data_root``.

    ``gsd_m``, ``disaster_types`` and ``cache_dir`` apply to the xBD layout, whose
    images are resampled to ``gsd_m`` (the other layouts keep their own GSD).
    Raises InputError naming ``data_root`` when a region has no tiles.
    """
    wanted = None if regions is None else {canonical_region(r) for r in regions}
    if xbd.is_xbd(data_root):
        types = None if disaster_types is None else frozenset(disaster_types)
        return _load_xbd(data_root, wanted, size, gsd_m, types, workers, cache_dir)
    layout = tile_io.detect_layout(data_root)
    if layout == "tiles":
        meta = tile_io.read_tiles_meta(tiles_meta_dir or data_root / "tiles_meta")
        refs = []
        for name, folder in tile_io.region_folders(data_root).items():
            if wanted is None or canonical_region(name) in wanted:
                refs += tile_io.tile_refs(tile_io.list_region_tiles(folder), meta)
        crs_of = dict.fromkeys((r.tile_id for r in refs), meta.crs)
        synthetic = set(meta.synthetic)
        default_footprints = data_root / "footprints"
    else:
        refs, crs_of, synthetic = [], {}, set()
        for stem, image, label in tile_io.list_scenes(data_root):
            if wanted is None or region_of(f"{stem}_r0") in wanted:
                scene, crs = tile_io.scene_tiles(stem, image, label, size)
                refs += scene
                crs_of.update(dict.fromkeys((r.tile_id for r in scene), crs))
                if tile_io.is_synthetic_scene(image):
                    synthetic |= {r.tile_id for r in scene}
        default_footprints = data_root / "footprints"
        if not default_footprints.is_dir():
            default_footprints = data_root
    refs = [r for r in refs if wanted is None or region_of(r.tile_id) in wanted]
    refs.sort(key=lambda r: r.tile_id)
    found = {region_of(r.tile_id) for r in refs}
    missing = sorted((wanted or set()) - found)
    if missing or not refs:
        raise InputError(
            f"{data_root}: no tiles of region {missing[0] if missing else '(any)'!r}; "
            f"regions found there: {', '.join(sorted(_all_regions(data_root))) or 'none'}"
        )
    duplicates = len(refs) - len({r.tile_id for r in refs})
    if duplicates:
        raise InputError(f"{data_root}: {duplicates} tile id(s) appear twice; ids must be unique")

    images, labels = tile_io.read_tiles(refs, size, workers)
    footprint_files = {
        canonical_region(region): paths
        for region, paths in tile_io.footprint_files(footprint_dir or default_footprints).items()
    }
    buildings = np.zeros(labels.shape, bool)
    indexes: dict[tuple[str, CRS | None], shapely.STRtree] = {}
    for i, ref in enumerate(refs):
        region = region_of(ref.tile_id)
        if region not in footprint_files or ref.bounds is None:
            continue  # an empty mask: DPT finds no triplets on this tile
        key = (region, crs_of[ref.tile_id])
        if key not in indexes:
            indexes[key] = tile_io.read_footprints(footprint_files[region], key[1])
        buildings[i] = tile_io.building_mask(indexes[key], ref.bounds, size)

    extents = [r.extent_m for r in refs if r.extent_m]
    gsd = statistics.median(extents) / size if extents else DEFAULT_GSD_M
    data = TileData(
        tile_ids=[r.tile_id for r in refs],
        regions=[region_of(r.tile_id) for r in refs],
        images=torch.from_numpy(images),
        labels=torch.from_numpy(labels),
        buildings=torch.from_numpy(buildings),
        gsd_m=gsd,
        regions_with_footprints=frozenset(r for r, _ in indexes),
        kind="synthetic" if all(r.tile_id in synthetic for r in refs) else layout,
    )
    log.info(
        "%d tiles of %d regions (%s layout), %.2f m GSD; footprints for %d regions",
        len(data),
        len(data.region_names),
        layout,
        gsd,
        len(data.regions_with_footprints),
    )
    return data


def _load_xbd(
    data_root: Path,
    wanted: set[str] | None,
    size: int,
    gsd_m: float,
    disaster_types: frozenset[str] | None,
    workers: int,
    cache_dir: Path | None,
) -> TileData:
    """xBD's post-disaster images as tiles at ``gsd_m``; the region is the disaster."""
    catalog = xbd.read_catalog(data_root, disaster_types)
    found = sorted({i.disaster for i in catalog.images})
    missing = sorted((wanted or set()) - set(found))
    if missing:
        raise InputError(
            f"{data_root}: no xBD images of disaster {missing[0]!r}; "
            f"disasters found there: {', '.join(found)}"
        )
    catalog.images = [i for i in catalog.images if wanted is None or i.disaster in wanted]
    tiles = xbd.xbd_tiles(catalog, size, gsd_m, workers, cache_dir)
    if not tiles.tile_ids:
        raise InputError(f"{data_root}: no xBD image gave a complete {size}² tile at {gsd_m} m")
    regions = [region_of(t) for t in tiles.tile_ids]
    data = TileData(
        tile_ids=tiles.tile_ids,
        regions=regions,
        images=torch.from_numpy(tiles.images),
        labels=torch.from_numpy(tiles.labels),
        buildings=torch.from_numpy(tiles.buildings),
        gsd_m=gsd_m,
        regions_with_footprints=frozenset(regions),
        kind="xbd",
        notes=_xbd_notes(catalog, tiles, gsd_m),
        georef=tiles.georef,
    )
    log.info("%d xBD tiles of %d disasters at %.2f m", len(data), len(found), gsd_m)
    return data


def _xbd_notes(catalog: xbd.XbdCatalog, tiles: xbd.XbdTiles, gsd_m: float) -> list[str]:
    """Fitted pixel sizes and residuals per disaster, and what was skipped, for the report."""
    notes = []
    for disaster in sorted({i.disaster for i in catalog.images}):
        images = [i for i in catalog.images if i.disaster == disaster]
        fits = [i.fit for i in images if i.fit is not None]
        if fits:
            sizes = [f.pixel_size_m for f in fits]
            notes.append(
                f"xBD {disaster}: {len(images)} post-disaster images; pixel size fitted from the "
                f"xy↔lng_lat vertices: median {statistics.median(sizes):.3f} m "
                f"({min(sizes):.3f}–{max(sizes):.3f}), RMS residual ≤ "
                f"{max(f.rms_px for f in fits):.2f} px, max {max(f.max_px for f in fits):.2f} px "
                f"(metadata gsd {images[0].metadata_gsd} m is the sensor's, not used); "
                f"{len(images) - len(fits)} without buildings took the median; "
                f"resampled to {gsd_m:g} m."
            )
        else:
            notes.append(
                f"xBD {disaster}: {len(images)} images without any building to fit; "
                f"read as {gsd_m:g} m pixels."
            )
    skipped = catalog.skipped + tiles.skipped
    if skipped or catalog.pre_disaster:
        counts = Counter(reason.split(":")[0] for _, reason in skipped)
        listed = "; ".join(f"{n} {why}" for why, n in sorted(counts.items()))
        notes.append(
            f"xBD skipped: {listed or 'nothing'}; {catalog.pre_disaster} pre-disaster images "
            "not read (stmap maps post-event imagery)."
        )
        for path, reason in skipped:
            log.warning("%s: skipped (%s)", path, reason)
    return notes


def _all_regions(data_root: Path) -> set[str]:
    """The regions of every tile under ``data_root`` (for error messages)."""
    if tile_io.detect_layout(data_root) == "rasters":
        return {region_of(f"{stem}_r0") for stem, _, _ in tile_io.list_scenes(data_root)}
    return {canonical_region(name) for name in tile_io.region_folders(data_root)}

"""Tensors of every tile a run uses, decoded once from either layout that stmap.io reads.

Tiles are grouped by the region parsed from their id (``splits.region_of``), not by
folder; either spelling of a region is accepted. Building masks for DPT are
rasterised once, here, at the training tile size over each tile's bounds (empty
where tiles_meta or footprints are missing). Everything afterwards — folds, batches,
the feature cache — works on positions into these tensors.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
import torch
from rasterio.crs import CRS

from stmap.errors import InputError
from stmap.io import tiles as tile_io
from stmap.train.splits import canonical_region, region_of

log = logging.getLogger(__name__)
DEFAULT_GSD_M = 0.5  # the method's Pléiades GSD, used when the data carries none


@dataclass
class TileData:
    """N tiles in one order.

    images: (N, 3, S, S) uint8 RGB; labels: (N, S, S) uint8, 1 = damaged;
    buildings: (N, S, S) bool footprint masks; regions: canonical region per tile.
    """

    tile_ids: list[str]
    regions: list[str]
    images: torch.Tensor
    labels: torch.Tensor
    buildings: torch.Tensor
    gsd_m: float  # ground sample distance of the S² tiles
    regions_with_footprints: frozenset[str]

    def __len__(self) -> int:
        return len(self.tile_ids)

    def positions(self, tile_ids: Sequence[str]) -> torch.Tensor:
        """(len(tile_ids),) int64 positions of the given ids."""
        where = {tile_id: i for i, tile_id in enumerate(self.tile_ids)}
        return torch.tensor([where[t] for t in tile_ids], dtype=torch.int64)

    def damaged_fractions(self) -> list[float]:
        """Each tile's damaged fraction of its S² label."""
        return self.labels.flatten(1).float().mean(1).tolist()

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
) -> TileData:
    """Decode every tile of ``regions`` (all found when None) under ``data_root``.

    Raises InputError naming ``data_root`` when a region has no tiles.
    """
    wanted = None if regions is None else {canonical_region(r) for r in regions}
    layout = tile_io.detect_layout(data_root)
    if layout == "tiles":
        meta = tile_io.read_tiles_meta(tiles_meta_dir or data_root / "tiles_meta")
        refs = []
        for name, folder in tile_io.region_folders(data_root).items():
            if wanted is None or canonical_region(name) in wanted:
                refs += tile_io.tile_refs(tile_io.list_region_tiles(folder), meta)
        crs_of = dict.fromkeys((r.tile_id for r in refs), meta.crs)
        default_footprints = data_root / "footprints"
    else:
        refs, crs_of = [], {}
        for stem, image, label in tile_io.list_scenes(data_root):
            if wanted is None or region_of(f"{stem}_r0") in wanted:
                scene, crs = tile_io.scene_tiles(stem, image, label, size)
                refs += scene
                crs_of.update(dict.fromkeys((r.tile_id for r in scene), crs))
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


def _all_regions(data_root: Path) -> set[str]:
    """The regions of every tile under ``data_root`` (for error messages)."""
    if tile_io.detect_layout(data_root) == "rasters":
        return {region_of(f"{stem}_r0") for stem, _, _ in tile_io.list_scenes(data_root)}
    return {canonical_region(name) for name in tile_io.region_folders(data_root)}

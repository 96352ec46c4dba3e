"""The model's tiles around labelled objects, read exactly as ``stmap infer`` reads them.

Each input is validated and planned by the runtime (``plan_input``: bands, GSD and
the resampled model grid, AOI), its tiles are the runtime's global tile grid
(``TileGrid``, the same overlap, mirrored past the raster's edges with
``reflect_index``) and its pixels come through the runtime's ``BlockReader``; so a
model adapted on these tiles sees what inference will feed it. Only tiles that
touch a labelled region are read. Labels are rasterised on the model grid; each
pixel is *scored* once, in the core (the stride × stride centre) of the tile that
owns it, while training uses whole tiles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from rasterio.transform import Affine

from stmap.io.blocks import BlockReader, ReadSpec
from stmap.io.labels import LabelRegions
from stmap.runtime.grid import reflect_index
from stmap.runtime.plan import InputPlan
from stmap.window import Window


@dataclass
class LabelTiles:
    """N tiles of T² pixels with their sparse labels.

    images: (N, C, T, T) raw pixels (the raster's dtype, as a tensor of int32/uint8);
    target: (N, T, T) uint8, 1 damaged; known: (N, T, T) bool, a labelled pixel of
    the raster (not a mirrored one); region: (N, T, T) int32, the covering label
    region or −1; core: (N, T, T) bool, where the tile owns the pixel for scoring;
    dtype: the raster's dtype (it picks the model's input scaling).
    """

    images: torch.Tensor
    target: np.ndarray
    known: np.ndarray
    region: np.ndarray
    core: np.ndarray
    dtype: str

    def __len__(self) -> int:
        return len(self.images)

    @staticmethod
    def concat(parts: list[LabelTiles]) -> LabelTiles:
        """Tiles of several inputs as one set (same dtype)."""
        return LabelTiles(
            torch.cat([p.images for p in parts]),
            np.concatenate([p.target for p in parts]),
            np.concatenate([p.known for p in parts]),
            np.concatenate([p.region for p in parts]),
            np.concatenate([p.core for p in parts]),
            parts[0].dtype,
        )


def read_label_tiles(
    plan: InputPlan, regions: LabelRegions, tile: int, overlap: int
) -> LabelTiles | None:
    """The tiles of ``plan``'s raster that touch a label region (None if none does).

    regions: in the raster's CRS.
    """
    info = plan.info
    rows, cols = plan.model_shape
    grid = plan.tile_grid(tile, overlap)  # infer's tiles, fixed in the world
    transform = plan.model_transform or info.transform
    inverse = ~transform
    wanted: set[tuple[int, int]] = set()
    for geom in regions.geometries:
        x0, y0, x1, y1 = geom.bounds
        corners = [inverse @ (x, y) for x in (x0, x1) for y in (y0, y1)]
        c_lo, r_lo = (int(np.floor(min(v))) for v in zip(*corners, strict=True))
        c_hi, r_hi = (int(np.ceil(max(v))) for v in zip(*corners, strict=True))
        r_lo, c_lo = max(r_lo, 0), max(c_lo, 0)
        r_hi, c_hi = min(r_hi, rows), min(c_hi, cols)
        if r_lo >= r_hi or c_lo >= c_hi:
            continue
        for i in grid.rows.intersecting(r_lo, r_hi):
            for j in grid.cols.intersecting(c_lo, c_hi):
                wanted.add((i, j))
    if not wanted:
        return None
    spec = ReadSpec(
        info.path, plan.bands, info.dtype, plan.masked, (rows, cols), plan.model_transform, plan.aoi
    )
    resampled = plan.model_transform is not None
    images, targets, knowns, region_ids, cores = [], [], [], [], []
    stride, pad = grid.stride, grid.rows.pad
    with BlockReader(spec) as reader:
        for i, j in sorted(wanted):
            r0, c0 = grid.rows.origin(i), grid.cols.origin(j)
            r_idx, c_idx = reflect_index(r0, r0 + tile, rows), reflect_index(c0, c0 + tile, cols)
            r_lo, r_hi = int(r_idx.min()), int(r_idx.max()) + 1
            c_lo, c_hi = int(c_idx.min()), int(c_idx.max()) + 1
            block = np.empty((len(plan.bands), r_hi - r_lo, c_hi - c_lo), dtype=info.dtype)
            reader.read_pixels(Window(r_lo, c_lo, r_hi - r_lo, c_hi - c_lo), out=block)
            images.append(block[:, r_idx - r_lo][:, :, c_idx - c_lo])
            target, known, region = regions.rasterise(
                transform @ Affine.translation(c0, r0), tile, tile
            )
            inside = np.zeros((tile, tile), dtype=bool)
            rr, cc = np.arange(r0, r0 + tile), np.arange(c0, c0 + tile)
            inside[np.ix_((rr >= 0) & (rr < rows), (cc >= 0) & (cc < cols))] = True
            if plan.masked or plan.aoi is not None:
                inside &= _valid(reader, r0, c0, tile, rows, cols, resampled)
            core = np.zeros((tile, tile), dtype=bool)
            core[pad : pad + stride, pad : pad + stride] = True
            if i == 0:
                core[:pad] = True
            if j == 0:
                core[:, :pad] = True
            if i == grid.rows.count - 1:
                core[pad + stride :] = True
            if j == grid.cols.count - 1:
                core[:, pad + stride :] = True
            targets.append(target)
            knowns.append(known & inside)
            region_ids.append(np.where(inside, region, -1))
            cores.append(core & inside)
    pixels = np.stack(images)
    tensor = torch.from_numpy(pixels.astype(np.int32) if pixels.dtype == np.uint16 else pixels)
    return LabelTiles(
        tensor,
        np.stack(targets),
        np.stack(knowns),
        np.stack(region_ids),
        np.stack(cores),
        info.dtype,
    )


def _valid(
    reader: BlockReader, r0: int, c0: int, tile: int, rows: int, cols: int, resampled: bool
) -> np.ndarray:
    """(tile, tile) validity (nodata, mask, AOI) of a tile's in-raster pixels.

    On a resampled model grid validity lives on the input grid; it is not mapped
    back there, so every pixel counts as valid (the labels still bound the pixels).
    """
    valid = np.ones((tile, tile), dtype=bool)
    if resampled:
        return valid
    r_lo, c_lo = max(r0, 0), max(c0, 0)
    r_hi, c_hi = min(r0 + tile, rows), min(c0 + tile, cols)
    read = reader.read_valid(Window(r_lo, c_lo, r_hi - r_lo, c_hi - c_lo))
    if read is not None:
        valid[r_lo - r0 : r_hi - r0, c_lo - c0 : c_hi - c0] = read
    return valid

"""Peer (c): the paper's way: cut the scene into PNG tiles, run a tile dataset, mosaic.

1. Cut: every tile window of the scene (zero-filled past the edge) is saved as
   ``r{row}_c{col}.png``, its offset in the name.
2. Predict: a torch ``Dataset`` over the PNG files (PIL), a ``DataLoader`` in
   batches; each prediction is saved as a PNG of the same name.
3. Mosaic: each prediction's kept part is pasted at its offset into an array of the
   scene's size, which is written as one GeoTIFF with the scene's georeference
   (PNG tiles carry none).

The tiles live in a folder beside the output, removed at the end; cutting and
saving are part of the time, as they are of the workflow.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from benchmarks.peers.common import (
    NODATA,
    first_tiles,
    kept_part,
    load_forward,
    model_geometry,
    output_profile,
    read_tile,
    stmap_grid,
    tile_windows,
    to_uint8,
)

_NAME = re.compile(r"r(-?\d+)_c(-?\d+)\.png")


class PngTiles(Dataset):
    """(3, T, T) uint8 tensor and the file name of every PNG tile in a folder."""

    def __init__(self, folder: Path):
        self.paths = sorted(folder.glob("*.png"))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        path = self.paths[index]
        pixels = np.array(Image.open(path).convert("RGB"))
        return torch.from_numpy(pixels).permute(2, 0, 1), path.name


def run(
    image: Path,
    output: Path,
    bundle: Path,
    batch_size: int,
    workers: int = 0,
    device: str = "cpu",
    precision: str = "fp32",
) -> None:
    """Map ``image`` into the probability GeoTIFF ``output``; ``workers``: DataLoader
    processes; the model on ``device`` in ``precision``."""
    tile, overlap = model_geometry(bundle)
    work = output.with_name(output.stem + "_tiles")
    tiles, predictions = work / "tiles", work / "predictions"
    tiles.mkdir(parents=True)
    predictions.mkdir()
    try:
        profile = cut(image, tiles, tile, overlap)
        predict(tiles, predictions, bundle, batch_size, workers, device, precision)
        mosaic(predictions, output, profile, tile, overlap)
    finally:
        shutil.rmtree(work)


def cut(image: Path, folder: Path, tile: int, overlap: int) -> dict[str, Any]:
    """Save every tile of ``image`` as a PNG in ``folder``; returns the output's profile."""
    with rasterio.open(image) as src:
        grid = stmap_grid(src.transform, src.height, src.width, tile, overlap)
        for window in tile_windows(grid):
            pixels = read_tile(src, window)
            name = f"r{window.row_off}_c{window.col_off}.png"
            Image.fromarray(np.moveaxis(pixels, 0, -1)).save(folder / name)
        return output_profile(src.profile)


def predict(
    tiles: Path,
    predictions: Path,
    bundle: Path,
    batch_size: int,
    workers: int,
    device: str = "cpu",
    precision: str = "fp32",
) -> None:
    """Run the model over the PNG tiles; save each probability tile as a PNG."""
    forward = load_forward(bundle, device, precision)
    loader = DataLoader(PngTiles(tiles), batch_size=batch_size, num_workers=workers)
    for pixels, names in loader:
        for prob, name in zip(to_uint8(forward(pixels)), names, strict=True):
            Image.fromarray(prob).save(predictions / name)


def mosaic(
    predictions: Path, output: Path, profile: dict[str, Any], tile: int, overlap: int
) -> None:
    """Paste the prediction tiles at their offsets; write the scene as one GeoTIFF."""
    height, width = profile["height"], profile["width"]
    first = first_tiles(stmap_grid(profile["transform"], height, width, tile, overlap))
    scene = np.full((height, width), NODATA, dtype=np.uint8)
    for path in predictions.glob("*.png"):
        row_off, col_off = map(int, _NAME.fullmatch(path.name).groups())
        target, (rows, cols) = kept_part(row_off, col_off, tile, overlap, height, width, first)
        scene[target.toslices()] = np.asarray(Image.open(path))[rows, cols]
    with rasterio.open(output, "w", **profile) as dst:
        dst.write(scene, 1)

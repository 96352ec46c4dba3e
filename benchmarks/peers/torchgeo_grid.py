"""Peer (b): TorchGeo, the library users would pick, as its docs teach inference.

A ``RasterDataset`` over the scene, a ``GridGeoSampler`` with the model's tile
size and stride tile − overlap (in pixels), and a ``DataLoader`` with
``collate_fn=stack_samples``; each sample is read and cast to float32 by the
dataset (``rasterio.merge`` on a cached VRT), and its ``bounds`` (geographic
slices) say where its prediction goes: the bounds become a window on the output's
grid, and the tile's kept part is written there. TorchGeo's grid starts at the
scene's bottom-left corner (its y runs north); chips past the top or right edge
are zero-filled by the merge.
"""

from __future__ import annotations

from pathlib import Path

import rasterio
from rasterio.windows import from_bounds
from torch.utils.data import DataLoader

from benchmarks.peers.common import (
    kept_part,
    load_forward,
    model_geometry,
    output_profile,
    to_uint8,
)
from stmap.lazy import lazy_import


def run(image: Path, output: Path, bundle: Path, batch_size: int, workers: int = 0) -> None:
    """Map ``image`` into the probability GeoTIFF ``output``; ``workers``: DataLoader processes."""
    datasets = lazy_import("torchgeo.datasets")
    samplers = lazy_import("torchgeo.samplers")
    tile, overlap = model_geometry(bundle)
    forward = load_forward(bundle)
    dataset = datasets.RasterDataset(paths=[image])
    sampler = samplers.GridGeoSampler(dataset, size=tile, stride=tile - overlap)
    loader = DataLoader(
        dataset,
        sampler=sampler,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=datasets.stack_samples,
    )
    with rasterio.open(image) as src:
        profile = output_profile(src.profile)
    height, width, transform = profile["height"], profile["width"], profile["transform"]
    with rasterio.open(output, "w", **profile) as dst:
        for batch in loader:
            probs = to_uint8(forward(batch["image"]))
            for (x, y, _), prob in zip(batch["bounds"], probs, strict=True):
                window = from_bounds(x.start, y.start, x.stop, y.stop, transform)
                target, (rows, cols) = kept_part(
                    window.row_off, window.col_off, tile, overlap, height, width
                )
                dst.write(prob[rows, cols], 1, window=target)

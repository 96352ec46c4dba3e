"""Test data for the streaming runtime: tiny bundles whose outputs vary, small rasters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from stmap.bundle import Normalization, manifest_for, write_bundle
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import SAT_MEAN, SAT_STD


def make_varied_bundle(
    path: Path,
    *,
    seed: int = 0,
    decoder_channels: int = 8,
    backbone: str = "tiny",
    decoder_upsample: str = "nearest",
    quincunx: bool = False,
    **fields,
) -> Path:
    """A `tiny` (or ``backbone``) bundle whose probabilities vary across the image.

    Freshly initialised batch norms make a random network's output nearly constant;
    random statistics make it depend on the input, so seams would show.
    """
    torch.manual_seed(seed)
    config = SegmenterConfig(
        backbone=backbone,
        tile_size=128,
        decoder_channels=decoder_channels,
        decoder_upsample=decoder_upsample,
        quincunx=quincunx,
    )
    model = DamageSegmenter(config).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) * 0.5 + 0.05)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    manifest = manifest_for(
        config,
        name=fields.pop("name", "tiny-varied"),
        backbone_weights="random (tests)",
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
        **fields,
    )
    return write_bundle(path, model, manifest)


def smooth_image(height: int, width: int, *, bands: int = 3, seed: int = 0, top: int = 255):
    """(bands, height, width) texture with structure at several scales, 0..top."""
    rng = np.random.default_rng(seed)
    image = np.zeros((bands, height, width), dtype=np.float64)
    for cell in (64, 16, 4):
        coarse = rng.random((bands, height // cell + 2, width // cell + 2))
        image += np.kron(coarse, np.ones((cell, cell)))[:, :height, :width]
    return (image / 3 * top).astype(np.uint16 if top > 255 else np.uint8)


def write_raster(
    path: Path,
    data: np.ndarray,
    *,
    crs: str | None = "EPSG:32637",
    transform: Affine | None = None,
    gsd: float = 0.5,
    block: int = 256,
    **profile,
) -> Path:
    """A tiled GeoTIFF of (bands, height, width) ``data``."""
    bands, height, width = data.shape
    options = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=bands,
        dtype=data.dtype,
        crs=crs,
        transform=transform or from_origin(500000.0, 4200000.0, gsd, gsd),
        tiled=True,
        blockxsize=block,
        blockysize=block,
        compress="deflate",
    )
    options.update(profile)
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
    return path


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as ds:
        return ds.read(1)

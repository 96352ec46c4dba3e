"""Fixtures shared by every test package: tiny bundles, tiny rasters, the device."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import Affine, from_origin

from stmap.bundle import Normalization, manifest_for, write_bundle
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import SAT_MEAN, SAT_STD


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """GPU tests run where CUDA is; elsewhere they skip and say why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU with CUDA; none on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (xBD tiles, the CPU precision ladder) go to a folder of the test session,
    never to the user's home; and `--backend auto` keeps its fixed order (fp32) unless a
    test asks for tuning, so that outputs never depend on how fast this machine runs
    bf16 or int8."""
    mp = pytest.MonkeyPatch()
    mp.setenv("STMAP_CACHE_DIR", str(tmp_path_factory.mktemp("stmap-cache")))
    mp.setenv("STMAP_CPU_AUTOTUNE", "off")
    yield
    mp.undo()


@pytest.fixture
def device() -> torch.device:
    """Tests run on the CPU unless a test asks for CUDA itself."""
    return torch.device("cpu")


def make_tiny_bundle(
    path: Path, *, seed: int = 0, decoder_channels: int = 8, backbone: str = "tiny", **fields
) -> Path:
    """A bundle of the `tiny` architecture (or another of its family) with seeded random
    weights."""
    torch.manual_seed(seed)
    config = SegmenterConfig(backbone=backbone, tile_size=128, decoder_channels=decoder_channels)
    model = DamageSegmenter(config)
    manifest = manifest_for(
        config,
        name=fields.pop("name", "tiny-test"),
        backbone_weights=fields.pop("backbone_weights", "random (tests)"),
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
        **fields,
    )
    return write_bundle(path, model, manifest)


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


def write_rgb_raster(
    path: Path,
    width: int = 300,
    height: int = 200,
    *,
    crs: str = "EPSG:32637",
    gsd: float = 0.5,
    seed: int = 0,
    dtype: str = "uint8",
) -> Path:
    """A small, tiled, georeferenced RGB raster of random texture."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if dtype != "uint16" else 4095
    data = rng.integers(0, top, size=(3, height, width), dtype=dtype)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype=dtype,
        crs=crs,
        transform=from_origin(500000.0, 4200000.0, gsd, gsd),
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


UTM_HALF_METRE = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4000000.0)  # 0.5 m pixels


def write_band(
    path: Path,
    band: np.ndarray,
    transform: Affine = UTM_HALF_METRE,
    crs: str = "EPSG:32637",
) -> Path:
    """A single-band uint8 GeoTIFF with nodata 255 (a probability or mask raster)."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=band.shape[1],
        height=band.shape[0],
        count=1,
        dtype="uint8",
        crs=crs,
        transform=transform,
        nodata=255,
    ) as dst:
        dst.write(band, 1)
    return path


@pytest.fixture
def rgb_raster(tmp_path: Path) -> Path:
    return write_rgb_raster(tmp_path / "scene.tif")

"""Tiny hand-made tile datasets in the ST_Turkey_2023 layout, and a tiny frozen ViT.

A tile is grey noise with a few rectangular "buildings": intact ones a flat roof
colour, damaged ones high-contrast rubble, so that a small model learns something
in one epoch. Footprints are written in WGS84 GeoJSON (the tiles are in UTM), so
loading them exercises the reprojection.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import timm
import torch
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning
from torch import nn

from stmap.model import backbones
from stmap.model.backbones import SAT_MEAN, SAT_STD, BackboneSpec, TimmViTBackbone

UTM = CRS.from_epsg(32637)
ORIGIN = (500000.0, 4200000.0)
GSD = 0.5


def write_png(path: Path, array: np.ndarray) -> None:
    """(C, H, W) uint8 as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "PNG", "width": array.shape[2], "height": array.shape[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", count=array.shape[0], dtype="uint8", **profile) as dst:
            dst.write(array)


def make_tile_dataset(
    root: Path,
    regions: dict[str, int],
    *,
    size: int = 128,
    meta: bool = True,
    footprints: bool = True,
    seed: int = 0,
) -> Path:
    """Write ``regions`` {name: tile count} under ``root`` in the release layout."""
    rng = np.random.default_rng(seed)
    to_wgs84 = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    for r, (region, count) in enumerate(regions.items()):
        tiles_meta = {}
        features = []
        x_origin = ORIGIN[0] + r * 10_000.0
        for t in range(count):
            row, col = divmod(t, 4)
            stem = f"{region}_r{row}_c{col}"
            image = rng.integers(60, 110, (3, size, size), dtype=np.uint8)
            label = np.zeros((1, size, size), np.uint8)
            for b in range(3):
                h, w = rng.integers(size // 8, size // 3, 2)
                y0, x0 = rng.integers(0, size - h), rng.integers(0, size - w)
                damaged = (t + b) % 2 == 0
                if damaged:
                    image[:, y0 : y0 + h, x0 : x0 + w] = rng.choice([20, 240], (3, h, w))
                    label[0, y0 : y0 + h, x0 : x0 + w] = 255
                else:
                    image[:, y0 : y0 + h, x0 : x0 + w] = np.array([180, 90, 60])[:, None, None]
                left = x_origin + (col * size + x0) * GSD
                top = ORIGIN[1] - (row * size + y0) * GSD
                ring = [
                    (left, top),
                    (left + w * GSD, top),
                    (left + w * GSD, top - h * GSD),
                    (left, top - h * GSD),
                    (left, top),
                ]
                lon, lat = to_wgs84.transform(*zip(*ring, strict=True))
                features.append(
                    {
                        "type": "Feature",
                        "properties": {"damaged": int(damaged)},
                        "geometry": {
                            "type": "Polygon",
                            "coordinates": [list(zip(lon, lat, strict=True))],
                        },
                    }
                )
            write_png(root / region / "images" / f"{stem}.png", image)
            write_png(root / region / "labels" / f"{stem}.png", label)
            tiles_meta[stem] = {
                "file": f"{stem}.png",
                "x0": col * size,
                "y0": row * size,
                "w": size,
                "h": size,
            }
        if meta:
            (root / "tiles_meta").mkdir(parents=True, exist_ok=True)
            (root / "tiles_meta" / f"{region}.json").write_text(
                json.dumps(
                    {
                        "crs": UTM.to_wkt(),
                        "transform": [GSD, 0.0, x_origin, 0.0, -GSD, ORIGIN[1]],
                        "tiles": tiles_meta,
                    }
                )
            )
        if footprints:
            (root / "footprints").mkdir(parents=True, exist_ok=True)
            (root / "footprints" / f"{region}_buildings.geojson").write_text(
                json.dumps({"type": "FeatureCollection", "features": features})
            )
    return root


@pytest.fixture
def tile_root(tmp_path: Path) -> Path:
    """Two regions of six tiles each, with tiles_meta and footprints."""
    return make_tile_dataset(tmp_path / "data", {"alpha": 6, "beta": 6})


class TinyViT(TimmViTBackbone):
    """A 2-block, 32-wide DINOv3-style ViT (RoPE, registers): the frozen path at test speed."""

    def __init__(self, tile_size: int):
        nn.Module.__init__(self)
        self.vit = timm.create_model(
            "vit_small_patch16_dinov3",
            pretrained=False,
            img_size=tile_size,
            num_classes=0,
            depth=2,
            embed_dim=32,
            num_heads=2,
        )
        self.grid = tile_size // 16


@pytest.fixture
def frozen_vit(monkeypatch: pytest.MonkeyPatch) -> str:
    """Register ``test-vit``: a frozen tiny DINOv3-style backbone; returns its name."""
    spec = BackboneSpec("test-vit", 32, 16, SAT_MEAN, SAT_STD, frozen=True, timm_name=None)
    monkeypatch.setitem(backbones._REGISTRY, "test-vit", (spec, lambda s, t: TinyViT(t)))
    torch.manual_seed(0)
    return "test-vit"

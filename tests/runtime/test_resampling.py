"""Imagery off the model's GSD is resampled onto the model grid: the model must see the
image's detail there, wherever the grid's pixels fall between the raster's.

Bilinear interpolation softens fine detail by how far a model pixel falls between two
raster pixels (a 0.3 cycle/px pattern loses 20 of its 100 grey levels' amplitude on
average, more half-way), so a raster moved by a fraction of a model pixel looked sharper
or softer to the model, and its map moved with that: 2 % of the flagged pixels of a real
0.6 m scene flipped. The reader resamples with the cubic kernel (Lanczos keeps more
and warps at a third of cubic's speed: ``io.blocks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine, from_origin

from stmap.io.blocks import BlockReader, ReadSpec
from stmap.window import Window

SIZE = 160


def _stripe(x: np.ndarray, cycles_per_px: float) -> np.ndarray:
    """The stripes' grey level at raster coordinate ``x`` (pixel i's centre is i + 0.5)."""
    return 128 + 100 * np.cos(2 * np.pi * cycles_per_px * x)


def _rms_off_the_stripes(values: np.ndarray, x: np.ndarray, cycles_per_px: float) -> float:
    """RMS grey levels of ``values`` against the stripes at ``x``, a kernel's reach
    (12 px) from the raster's edges."""
    inner = slice(12, len(values) - 12)
    error = values[inner].astype(float) - _stripe(x[inner], cycles_per_px)
    return float(np.sqrt(np.mean(error**2)))


def _model_transform(raster: Affine, scale: float, offset: float) -> Affine:
    """A model grid of ``scale`` model pixels per raster pixel, ``offset`` model pixels
    before the raster's corner."""
    return raster @ Affine.scale(1 / scale) @ Affine.translation(-offset, -offset)


def _stripes(path: Path, cycles_per_px: float, pixel_m: float) -> Path:
    """Vertical stripes 128 ± 100 · cos(2π f x), sampled at the pixel centres."""
    row = _stripe(np.arange(SIZE) + 0.5, cycles_per_px)
    image = np.broadcast_to(np.round(row), (1, SIZE, SIZE)).astype(np.uint8)
    profile = dict(driver="GTiff", width=SIZE, height=SIZE, count=1, dtype="uint8",
                   crs="EPSG:32637", transform=from_origin(500_000.0, 4_200_000.0, pixel_m,
                                                           pixel_m))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    return path


@pytest.mark.parametrize(
    ("cycles_per_px", "scale"),
    [(0.3, 1.25), (0.35, 1.07), (0.2, 0.6)],
    ids=["upsampled", "barely-upsampled", "downsampled"],
)
@pytest.mark.parametrize("offset", [0.0, 0.25, 0.5])
def test_the_model_grid_keeps_the_images_detail_wherever_its_pixels_fall(
    tmp_path, cycles_per_px, scale, offset
):
    """RMS error of the model-grid pixels against the stripes at their centres, in grey
    levels: bilinear 20.5–28 here, cubic 11–19, Lanczos 1–7 (the pattern stays below the
    model grid's Nyquist frequency, so it can be kept)."""
    path = _stripes(tmp_path / "stripes.tif", cycles_per_px, 0.5 / scale)
    with rasterio.open(path) as src:
        transform = _model_transform(src.transform, scale, offset)
    n = int(SIZE * scale)
    spec = ReadSpec(str(path), (1,), "uint8", False, (n, n), transform)
    with BlockReader(spec) as reader:
        row = reader.read_pixels(Window(n // 2, 0, 1, n))[0, 0]
    x = (np.arange(n) + 0.5 - offset) / scale  # each model pixel's centre, in raster pixels
    rms = _rms_off_the_stripes(row, x, cycles_per_px)
    assert rms <= 20, f"{rms:.1f} grey levels off"


@pytest.mark.parametrize("scale", [1.2, 0.7])
@pytest.mark.parametrize("offset", [0.0, 0.3, 0.6, 0.9])
def test_every_model_pixel_holds_the_image_even_past_its_edges(tmp_path, scale, offset):
    """The model grid, on the world's lattice, starts up to a model pixel before the
    raster and ends up to one past it; GDAL leaves a pixel whose centre falls outside
    the raster at 0, a black line the model would see along the edge. Such pixels take
    their in-raster neighbour's value."""
    path = tmp_path / "flat.tif"
    corner = from_origin(500_000.0, 4_200_000.0, 0.6, 0.6)
    profile = dict(driver="GTiff", width=50, height=40, count=1, dtype="uint8",
                   crs="EPSG:32637", transform=corner)  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.full((1, 40, 50), 200, np.uint8))
    rows, cols = (int(np.ceil(n * scale + offset)) for n in (40, 50))
    transform = _model_transform(corner, scale, offset)
    spec = ReadSpec(str(path), (1,), "uint8", False, (rows, cols), transform)
    with BlockReader(spec) as reader:
        whole = reader.read_pixels(Window(0, 0, rows, cols))
        first = reader.read_pixels(Window(0, 0, 1, 1))  # a window of edge pixels alone
        last = reader.read_pixels(Window(rows - 2, cols - 2, 2, 2))
    assert (whole == 200).all(), np.argwhere(whole[0] != 200)[:4].tolist()
    assert (first == 200).all() and (last == 200).all()


def test_a_mosaic_warps_an_off_grid_input_with_the_same_kernel(tmp_path):
    """A mosaic input off the mosaic's grid is warped onto it: the same softening, the
    same kernel (io.mosaic)."""
    from stmap.io.inputs import SceneInput
    from stmap.io.mosaic import build_mosaic

    cycles_per_px, scale = 0.3, 1.25
    path = _stripes(tmp_path / "stripes.tif", cycles_per_px, 0.5 / scale)
    mosaic = build_mosaic([SceneInput(str(path), "stripes", None)], tmp_path / "m", gsd_m=0.5)
    assert mosaic.layers[0]["warped"]
    with rasterio.open(mosaic.path) as ds:
        row = ds.read(1, window=rasterio.windows.Window(0, ds.height // 2, ds.width, 1))[0]
        x_of = ds.transform.c + (np.arange(ds.width) + 0.5) * ds.transform.a  # pixel centres
    x = (x_of - 500_000.0) / (0.5 / scale)  # in the stripes' pixels
    rms = _rms_off_the_stripes(row, x, cycles_per_px)
    assert rms <= 20, f"{rms:.1f} grey levels off"

"""Labels on imagery off the model's GSD land on the pixels they describe (#20).

``stmap adapt`` and ``stmap evaluate --labels`` read a raster of another GSD on the
resampled model grid that ``stmap infer`` maps (fixed in the world, cubic); the labels
must be rasterised on that same grid, or the model would learn and be scored against
ground a few pixels away — at 0.38 m, a polygon rasterised on the input's grid would be
0.76× its size and drift from its building towards the far edge.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.transform import from_origin

from stmap.bundle import open_bundle
from stmap.io.labels import LabelRegions
from stmap.runtime.infer import InferOptions
from stmap.runtime.plan import plan_input
from stmap.train.label_tiles import read_label_tiles

SIZE = 420  # input pixels a side
SQUARE = 36  # input pixels a side of each bright building
CORNERS = [(30, 30), (30, 340), (200, 190), (340, 40), (350, 350)]  # (row, col) of each


def _city(path: Path, gsd: float, west: float, north: float) -> list[shapely.Polygon]:
    """A dark raster with bright squares; the squares' outlines in its CRS."""
    pixels = np.full((3, SIZE, SIZE), 30, dtype=np.uint8)
    transform = from_origin(west, north, gsd, gsd)
    outlines = []
    for row, col in CORNERS:
        pixels[:, row : row + SQUARE, col : col + SQUARE] = 220
        x0, y0 = transform @ (col, row)
        x1, y1 = transform @ (col + SQUARE, row + SQUARE)
        outlines.append(shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)))
    profile = dict(
        driver="GTiff",
        width=SIZE,
        height=SIZE,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=transform,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return outlines


@pytest.mark.parametrize("gsd", [0.38, 0.62])
def test_labels_of_a_resampled_raster_cover_the_pixels_they_label(tmp_path, gsd):
    # an origin off the model lattice, so the world-fixed grid starts inside a pixel
    outlines = _city(tmp_path / "city.tif", gsd, 500_017.13, 4_200_123.41)
    manifest = open_bundle("default").manifest
    plan = plan_input(str(tmp_path / "city.tif"), manifest, InferOptions())
    assert plan.model_transform is not None  # the raster is resampled onto the model grid
    regions = LabelRegions(
        np.array(outlines, dtype=object),
        np.ones(len(outlines), np.int8),
        np.array(["destroyed"] * len(outlines), dtype=object),
    )
    tiles = read_label_tiles(plan, regions, tile=128, overlap=32)
    assert tiles is not None
    brightness = tiles.images.float().mean(dim=1).numpy()  # (N, T, T)
    labelled = tiles.known & (tiles.target == 1)
    assert labelled.sum() > 0.9 * len(CORNERS) * (SQUARE * gsd / manifest.gsd_m) ** 2
    # every labelled pixel is a building's, and nearly every building pixel is labelled:
    # only the outline's pixels, half in and half out after resampling, may disagree
    assert (brightness[labelled] > 125).mean() > 0.97
    building = (brightness > 200) & tiles.core
    assert labelled[building].mean() > 0.97

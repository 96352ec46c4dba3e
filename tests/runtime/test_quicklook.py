"""write_quicklook: a PNG of the right size with the damage drawn in red where it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import Affine

from stmap.errors import RasterError
from stmap.runtime.quicklook import quicklook_shape, render_quicklook, write_quicklook

# The PNG carries no georeferencing; reading it back says so.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
T = Affine(0.5, 0, 500000, 0, -0.5, 4000000)


def write(path: Path, data: np.ndarray, nodata: int) -> Path:
    """A (B, H, W) uint8 GeoTIFF in UTM 37N."""
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype="uint8",
        crs="EPSG:32637",
        transform=T,
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


@pytest.fixture
def scene(tmp_path: Path) -> tuple[Path, Path]:
    """300 x 200 grey-green scene; damage in a 60 x 90 block; no prediction on the right."""
    rng = np.random.default_rng(0)
    texture = rng.normal(0, 15, (1, 200, 300))  # shared by the bands, as in real imagery
    image = np.array([120, 130, 110])[:, None, None] + texture + rng.normal(0, 2, (3, 200, 300))
    image = np.clip(image, 1, 255).astype(np.uint8)
    prob = np.full((1, 200, 300), 20, dtype=np.uint8)
    prob[0, 60:120, 30:120] = 230
    prob[0, :, 270:] = 255
    return write(tmp_path / "scene.tif", image, nodata=0), write(tmp_path / "prob.tif", prob, 255)


def test_png_of_the_expected_size_with_red_where_damage_is(scene, tmp_path: Path):
    out = write_quicklook(*scene, tmp_path / "ql.png", threshold=0.5, max_size=100)
    assert out == tmp_path / "ql.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prob.tif", "ql.png", "scene.tif"]
    with rasterio.open(out) as png:
        assert png.driver == "PNG"
        assert (png.count, png.height, png.width) == (3, 67, 100)
        r, g, b = png.read().astype(int)
    inside = (slice(22, 38), slice(12, 38))  # well inside the damage block (20-40, 10-40)
    assert (r[inside] > 120).all() and (r[inside] > g[inside] + 60).all()
    assert (r[inside] > b[inside] + 60).all()
    clear = (slice(5, 15), slice(50, 85))  # imaged, predicted, not damaged
    assert (abs(r[clear] - g[clear]) < 40).all()  # no red cast
    edge = (20, slice(15, 35))  # the damage block's top row: the yellow outline
    assert (r[edge] > 200).all() and (g[edge] > 200).all() and (b[edge] < 100).all()
    right = (slice(0, 67), slice(92, 100))  # no prediction: dimmed grey
    assert (abs(r[right] - b[right]) < 12).all() and (r[right] < 140).all()


def test_never_upsamples_and_keeps_aspect():
    assert quicklook_shape(300, 200, 2048) == (200, 300)
    assert quicklook_shape(10000, 2500, 2048) == (512, 2048)
    assert quicklook_shape(5, 9000, 100) == (100, 1)


def test_single_band_image_renders_grey(tmp_path: Path):
    image = np.tile(np.arange(1, 65, dtype=np.uint8), (1, 64, 1))
    prob = np.zeros((1, 64, 64), dtype=np.uint8)
    paths = write(tmp_path / "pan.tif", image, 0), write(tmp_path / "p.tif", prob, 255)
    out = write_quicklook(*paths, tmp_path / "ql.png", threshold=0.5, bands=(1,))
    with rasterio.open(out) as png:
        r, g, b = png.read()
    np.testing.assert_array_equal(r, g)
    np.testing.assert_array_equal(g, b)
    assert r[:, 0].max() < 10 and r[:, -1].min() > 245  # stretched to full range


def test_missing_bands_are_refused_by_name(scene, tmp_path: Path):
    with pytest.raises(RasterError, match=r"scene\.tif: has 3 band\(s\), cannot show bands"):
        write_quicklook(*scene, tmp_path / "ql.png", threshold=0.5, bands=(4, 3, 2))
    assert not (tmp_path / "ql.png").exists()


def test_render_marks_no_image_dark_and_outline_thin():
    image = np.full((3, 6, 6), 100, dtype=np.uint16)
    has_image = np.ones((6, 6), dtype=bool)
    has_image[:, 0] = False
    prob = np.ma.masked_array(np.zeros((6, 6), dtype=np.uint8), mask=False)
    prob[1:5, 1:5] = 200
    rgb = render_quicklook(image, has_image, prob, cutoff=127)
    assert (rgb[:, :, 0] == 40).all()  # no image: flat dark grey
    yellow = (rgb[0] > 200) & (rgb[1] > 200) & (rgb[2] < 100)
    np.testing.assert_array_equal(
        yellow[1:5, 1:5], [[1, 1, 1, 1], [1, 0, 0, 1], [1, 0, 0, 1], [1, 1, 1, 1]]
    )
    assert not yellow[0].any() and not yellow[5].any()

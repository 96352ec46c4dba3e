"""The probability raster does not depend on how the work is cut up or scheduled.

The whole ``run_inference`` on random small rasters with random nodata blobs: block
size, batch size and reader threads change only the schedule, so every pixel agrees
with a single-block, single-thread run within one uint8 step (1/255), and nodata is
nodata in both. Blocks must be multiples of 512 (``--block-size``), so rasters reach
1100 px to hold several blocks. tests/runtime/test_pipeline.py checks one raster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from stmap.runtime.infer import InferOptions, run_inference
from tests.properties.profiles import examples
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster

NODATA = 0
ONE_BLOCK = 4096  # larger than any raster here


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "varied")


@st.composite
def nodata_blobs(draw, height: int, width: int) -> np.ndarray:
    """(height, width) bool: a union of random ellipses and rectangles (True = nodata)."""
    rows, cols = np.ogrid[:height, :width]
    invalid = np.zeros((height, width), dtype=bool)
    for _ in range(draw(st.integers(0, 4))):
        r, c = draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))
        a, b = draw(st.integers(1, height)), draw(st.integers(1, width))
        if draw(st.booleans()):
            invalid |= ((rows - r) / a) ** 2 + ((cols - c) / b) ** 2 <= 1
        else:
            invalid[r : r + a, c : c + b] = True
    return invalid


@st.composite
def scenes(draw) -> tuple[np.ndarray, np.ndarray]:
    """(3, H, W) uint8 pixels with NODATA where (H, W) ``invalid`` is True.

    One side is longer than 512 px, so the raster spans several 512-px blocks.
    """
    long_side, other = draw(st.integers(513, 1100)), draw(st.integers(100, 1100))
    height, width = (long_side, other) if draw(st.booleans()) else (other, long_side)
    invalid = draw(nodata_blobs(height, width))
    image = smooth_image(height, width, seed=draw(st.integers(0, 1000)))
    image[image == NODATA] = 1  # a valid pixel never looks like nodata
    image[:, invalid] = NODATA
    return image, invalid


@examples(ci=5)
@given(
    scene=scenes(),
    block_size=st.sampled_from([512, 1024]),
    batch_size=st.integers(1, 16),
    workers=st.integers(1, 4),
)
def test_probabilities_do_not_depend_on_blocks_batches_or_reader_threads(
    bundle, scene, block_size, batch_size, workers
):
    image, invalid = scene
    with tempfile.TemporaryDirectory() as tmp:
        path = write_raster(Path(tmp) / "city.tif", image, nodata=NODATA)
        reference = InferOptions(model=str(bundle), block_size=ONE_BLOCK, workers=1)
        varied = InferOptions(
            model=str(bundle), block_size=block_size, batch_size=batch_size, workers=workers
        )
        run_inference([str(path)], Path(tmp) / "reference", reference)
        (summary,) = run_inference([str(path)], Path(tmp) / "varied", varied)
        expected = read_band(Path(tmp) / "reference" / "city_damage_prob.tif").astype(int)
        got = read_band(Path(tmp) / "varied" / "city_damage_prob.tif").astype(int)
    assert (summary["block_size"], summary["batch_size"]) == (block_size, batch_size)
    assert np.all(got[invalid] == 255) and np.all(expected[invalid] == 255)
    assert np.abs(got - expected).max() <= 1

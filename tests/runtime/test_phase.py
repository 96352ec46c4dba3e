"""Phase-stability figures (runtime/phase.py): exact on crafted maps; crops stay on the grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from stmap.io.raster import describe_raster, read_pixels
from stmap.runtime.phase import compare_shifted, crop_at, pool
from tests.runtime.infer_data import smooth_image, write_raster


def layers(prob: np.ndarray, cutoff: int = 127) -> tuple[np.ndarray, np.ndarray]:
    return prob, (prob > cutoff).astype(np.uint8)


def test_a_crop_of_the_same_map_compares_equal() -> None:
    prob = np.random.default_rng(0).integers(0, 255, (300, 400), dtype=np.uint8)
    stats = compare_shifted(layers(prob), layers(prob[37:, 90:]), (37, 90), margin=20)
    assert stats.pixels == (300 - 37 - 40) * (400 - 90 - 40)
    assert (stats.flips, stats.quantile(0.99)) == (0, 0)
    assert stats.flagged == np.count_nonzero(prob[57:280, 110:380] > 127)


def test_differences_are_counted_exactly_and_only_away_from_the_edges() -> None:
    prob = np.full((100, 100), 100, dtype=np.uint8)
    crop = prob[10:, 20:].copy()
    crop[:5, :] = 200  # within the margin: not compared
    crop[50, 50:60] = 140  # 10 pixels flip from 100 (not damaged) to 140 (damaged)
    crop[60, 60:62] = 110  # 2 pixels move by 10 without flipping
    stats = compare_shifted(layers(prob), layers(crop), (10, 20), margin=10)
    assert stats.pixels == (90 - 20) * (80 - 20)
    assert stats.flips == 10
    assert stats.flagged == 5  # none in the map, 10 in the crop: their mean
    assert stats.flips_of_flagged == 2.0
    assert stats.histogram[40] == 10 and stats.histogram[10] == 2
    assert stats.as_dict()["max_dprob_255"] == 40
    assert stats.as_dict()["median_dprob_255"] == 0


def test_nodata_in_either_map_is_left_out() -> None:
    prob = np.full((60, 60), 10, dtype=np.uint8)
    crop = prob[1:, 1:].copy()
    crop[20:30, 20:30] = 255
    stats = compare_shifted(layers(prob), layers(crop), (1, 1), margin=5)
    assert stats.pixels == (59 - 10) ** 2 - 100


def test_pooled_counts_add_up() -> None:
    prob = np.random.default_rng(1).integers(0, 200, (80, 80), dtype=np.uint8)
    shifted = np.roll(prob, 1, axis=1)
    a = compare_shifted(layers(prob), layers(shifted[3:, 3:]), (3, 3), margin=8)
    b = compare_shifted(layers(prob), layers(shifted[5:, 2:]), (5, 2), margin=8)
    both = pool([a, b])
    assert (both.pixels, both.flips) == (a.pixels + b.pixels, a.flips + b.flips)
    assert both.histogram.sum() == both.pixels


def test_a_crop_with_no_pixel_past_the_margins_is_refused() -> None:
    prob = np.zeros((50, 50), dtype=np.uint8)
    with pytest.raises(ValueError, match="no pixel"):
        compare_shifted(layers(prob), layers(prob[20:, 20:]), (20, 20), margin=15)


def test_a_crop_keeps_the_pixels_and_moves_them_to_the_rasters_corner(tmp_path: Path) -> None:
    image = smooth_image(90, 120)
    source = write_raster(tmp_path / "city.tif", image)
    size = crop_at(source, tmp_path / "crop.tif", (7, 11), (1000, 50))
    assert size == (83, 50)
    np.testing.assert_array_equal(read_pixels(tmp_path / "crop.tif"), image[:, 7:, 11:61])
    whole, crop = describe_raster(source), describe_raster(tmp_path / "crop.tif")
    assert crop.transform == whole.transform  # the world's tiles fall elsewhere on it
    assert crop.crs == whole.crs

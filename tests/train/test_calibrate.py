"""The threshold of a bundle refitted on its maps of labelled scenes (#20)."""

from __future__ import annotations

import numpy as np
import pytest
from affine import Affine

from stmap.errors import InputError
from stmap.runtime.vectorize import damage_cutoff
from stmap.train.calibrate import fit_threshold
from tests.conftest import UTM_HALF_METRE, write_band


def _scene(tmp_path, name, prob, labels, transform=UTM_HALF_METRE):
    return (
        write_band(tmp_path / f"{name}_damage_prob.tif", prob.astype(np.uint8)),
        write_band(tmp_path / f"{name}_labels.tif", labels.astype(np.uint8), transform),
    )


def test_the_threshold_separates_the_pooled_scenes_and_ignores_unlabelled_pixels(tmp_path):
    """Damaged pixels (one scene) map 160–200, undamaged ones (another) 0–150: the cut
    is the highest undamaged level. Unlabelled pixels mapped against that (255 labels)
    and the map's nodata (255) change nothing."""
    rng = np.random.default_rng(0)
    damaged = rng.integers(160, 201, (32, 32))
    labels = np.ones((32, 32))
    damaged[:4], labels[:4] = 20, 255  # unlabelled, mapped undamaged
    damaged[4:6] = 255  # the map's nodata, labelled damaged
    undamaged = rng.integers(0, 121, (32, 32))
    undamaged[0, :10] = 150
    undamaged[1], labels_b = 250, np.zeros((32, 32))
    labels_b[1] = 255  # unlabelled, mapped damaged
    scenes = [
        _scene(tmp_path, "a", damaged, labels),
        _scene(tmp_path, "b", undamaged, labels_b),
    ]
    threshold = fit_threshold(scenes)
    assert damage_cutoff(threshold) == 150  # flags 151 and up: every damaged pixel, no other
    assert threshold == round(threshold, 3)


def test_one_class_alone_is_refused(tmp_path):
    scene = _scene(tmp_path, "a", np.full((16, 16), 200), np.ones((16, 16)))
    with pytest.raises(InputError, match="damaged and undamaged"):
        fit_threshold([scene])
    with pytest.raises(InputError, match="at least one"):
        fit_threshold([])


def test_labels_off_the_map_grid_are_refused(tmp_path):
    moved = UTM_HALF_METRE @ Affine.translation(1, 0)
    scene = _scene(tmp_path, "a", np.full((16, 16), 200), np.ones((16, 16)), moved)
    with pytest.raises(InputError, match="a_labels.tif: not on the grid of the map"):
        fit_threshold([scene])

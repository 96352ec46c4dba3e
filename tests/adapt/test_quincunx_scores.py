"""Label scores of a quincunx bundle (#20) are the scores of its map, not of one phase."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from stmap.bundle import open_bundle
from stmap.model import DamageSegmenter, Normalize
from tests.runtime.infer_data import make_varied_bundle, smooth_image
from train.adapt import backbone_features, map_probabilities, predict_from_features


def test_map_probabilities_average_the_phases_as_the_map_does(tmp_path):
    bundle = open_bundle(
        make_varied_bundle(tmp_path / "q", backbone="tiny-aa5", quincunx=True, decoder_channels=8)
    )
    paired = bundle.load_segmenter().eval()
    plain = DamageSegmenter(replace(paired.config, quincunx=False)).eval()
    plain.load_state_dict(paired.state_dict())
    normalize = Normalize(bundle.manifest.preprocessing("uint8"))
    images = torch.from_numpy(
        np.stack([smooth_image(128, 128, seed=s) for s in range(3)])
    )  # (3, 3, 128, 128) uint8 tiles
    cpu = torch.device("cpu")
    features = backbone_features(paired, images, normalize, cpu)
    got = map_probabilities(paired, images, normalize, cpu, features)
    with torch.inference_mode():
        mapped = torch.sigmoid(paired(normalize(images)))[:, 0].numpy()
    assert np.abs(got.astype(int) - np.round(mapped * 255)).max() <= 1
    one_phase = predict_from_features(plain, features)
    assert np.abs(got.astype(int) - one_phase.astype(int)).max() > 1
    # a model without the quincunx decodes its cached features as before
    np.testing.assert_array_equal(
        map_probabilities(plain, images, normalize, cpu, features), one_phase
    )

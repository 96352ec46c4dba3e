"""Folding batch norms into convolutions changes nothing but the time."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from stmap.bundle import open_bundle
from stmap.model.fuse import fold_batch_norms
from tests.runtime.infer_data import make_varied_bundle


@pytest.mark.parametrize("backbone, quincunx", [("tiny", False), ("tiny-aa5", True)])
def test_folded_model_maps_alike_without_a_batch_norm(tmp_path, backbone, quincunx):
    bundle = open_bundle(make_varied_bundle(tmp_path / "b", backbone=backbone, quincunx=quincunx))
    model = bundle.load_segmenter().eval()  # varied batch-norm statistics: folding matters
    folded = fold_batch_norms(copy.deepcopy(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 160, 192, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected, got = model(x), folded(x)
    assert float(expected.std()) > 0.1
    assert float((expected - got).abs().max()) < 1e-4


def test_folding_refuses_a_model_in_training():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)))

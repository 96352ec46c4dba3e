"""The quincunx: a stride-16 CNN's last stage run at both phases of its subsampling (#20).

A shift of the input by half the output stride along both axes swaps the two phases, so
the averaged map moves with the input exactly, where the plain model's map does not;
and the average is that of the model over the input and the input shifted by (8, 8),
for a fraction of the cost (the first three stages run once).
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from stmap.model import DamageSegmenter, SegmenterConfig
from tests.runtime.infer_data import make_varied_bundle, smooth_image

# away from the tiles' zero-padded edges, which move any CNN's map within its reach
CORE = slice(180, -180)


def _pair(tmp_path, backbone: str) -> tuple[DamageSegmenter, DamageSegmenter]:
    """The quincunx model and the plain model with its weights (varied batch norms)."""
    from stmap.bundle import open_bundle

    path = make_varied_bundle(
        tmp_path / backbone, backbone=backbone, decoder_upsample="bilinear", quincunx=True
    )
    paired = open_bundle(path).load_segmenter().eval()
    plain = DamageSegmenter(replace(paired.config, quincunx=False)).eval()
    plain.load_state_dict(paired.state_dict())
    return paired, plain


def _image(seed: int) -> torch.Tensor:
    """(1, 3, 528, 528) normalised texture with structure at 4–64 px."""
    pixels = torch.from_numpy(smooth_image(528, 528, seed=seed)).float()[None]
    return (pixels / 255 - 0.4) / 0.15


@torch.inference_mode()
def _maps_under_half_stride_shift(model, x):
    """The model's probabilities on x and on x shifted by (8, 8), over the same pixels."""
    here = torch.sigmoid(model(x[..., :512, :512]))[0, 0, 8:, 8:]
    there = torch.sigmoid(model(x[..., 8:520, 8:520]))[0, 0, :-8, :-8]
    return here[CORE, CORE], there[CORE, CORE]


@pytest.mark.parametrize("backbone", ["tiny", "tiny-aa5", "tiny-aalite5"])
def test_a_half_stride_shift_moves_the_quincunx_map_with_the_input(tmp_path, backbone):
    paired, plain = _pair(tmp_path, backbone)
    x = _image(1)
    here, there = _maps_under_half_stride_shift(paired, x)
    assert float(here.std()) > 0.01  # the map varies: equality means something
    assert torch.equal(here, there)
    plain_here, plain_there = _maps_under_half_stride_shift(plain, x)
    assert float((plain_here - plain_there).abs().max()) > 1e-4


@pytest.mark.parametrize("backbone", ["tiny-aa5", "tiny-aalite5"])
def test_the_quincunx_is_the_mean_of_the_two_phases_for_antialiased_models(tmp_path, backbone):
    """The first decoder block averages the phases (exact for the stages, not for the
    decoder's nonlinearities); for a low-passed model it is the two maps' mean to well
    under a stored 1/255 step (measured: 1.0–1.5e-4)."""
    paired, plain = _pair(tmp_path, backbone)
    x = _image(2)
    first, second = _maps_under_half_stride_shift(plain, x)
    with torch.inference_mode():
        averaged = torch.sigmoid(paired(x[..., :512, :512]))[0, 0, 8:, 8:][CORE, CORE]
    assert float((averaged - (first + second) / 2).abs().max()) < 1e-3


def test_quincunx_needs_a_staged_backbone():
    with pytest.raises(ValueError, match="no stages"):
        DamageSegmenter(SegmenterConfig("vit_small_patch16_dinov3.lvd1689m", 32, 8, quincunx=True))


def test_quincunx_keeps_the_weights_and_the_shape(tmp_path):
    paired, plain = _pair(tmp_path, "tiny-aa5")
    assert paired.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 3, 128, 96)
    with torch.inference_mode():
        assert paired(x).shape == plain(x).shape == (2, 1, 128, 96)

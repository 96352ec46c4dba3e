"""The quincunx: a stride-16 CNN's last stage run at two or four phases of its subsampling (#20).

A shift of the input by half the output stride along both axes swaps the two phases, so
the averaged map moves with the input exactly, where the plain model's map does not;
and the average is that of the model over the input and the input shifted by (8, 8),
for a fraction of the cost (the first three stages run once). With all four phases
(``last_stage_phases`` 4) the same holds for every shift by 8 px.
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
def _maps_under_shift(model, x, dy: int, dx: int):
    """The model's probabilities on x and on x shifted by (dy, dx), over the same pixels."""
    here = torch.sigmoid(model(x[..., :512, :512]))[0, 0, dy:, dx:]
    there = torch.sigmoid(model(x[..., dy : 512 + dy, dx : 512 + dx]))[0, 0, : 512 - dy, : 512 - dx]
    return here[CORE, CORE], there[CORE, CORE]


@pytest.mark.parametrize("backbone", ["tiny", "tiny-aa5", "tiny-aalite5"])
def test_a_half_stride_shift_moves_the_quincunx_map_with_the_input(tmp_path, backbone):
    paired, plain = _pair(tmp_path, backbone)
    x = _image(1)
    here, there = _maps_under_shift(paired, x, 8, 8)
    assert float(here.std()) > 0.01  # the map varies: equality means something
    assert torch.equal(here, there)
    plain_here, plain_there = _maps_under_shift(plain, x, 8, 8)
    assert float((plain_here - plain_there).abs().max()) > 1e-4


@pytest.mark.parametrize("backbone", ["tiny-aa5", "tiny-aalite5"])
def test_the_quincunx_is_the_mean_of_the_two_phases_for_antialiased_models(tmp_path, backbone):
    """The first decoder block averages the phases (exact for the stages, not for the
    decoder's nonlinearities); for a low-passed model it is the two maps' mean to well
    under a stored 1/255 step (measured: 1.0–1.5e-4)."""
    paired, plain = _pair(tmp_path, backbone)
    x = _image(2)
    first, second = _maps_under_shift(plain, x, 8, 8)
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


def _every_phase(paired: DamageSegmenter) -> DamageSegmenter:
    """``paired``'s weights, the last stage averaged over all four of its phases."""
    model = DamageSegmenter(replace(paired.config, last_stage_phases=4)).eval()
    model.load_state_dict(paired.state_dict())
    return model


@pytest.mark.parametrize("backbone", ["tiny", "tiny-aa5"])
def test_every_phase_moves_the_map_with_the_input_under_any_8px_shift(tmp_path, backbone):
    """Four phases: the map moves with the input under (8, 0), (0, 8) and (8, 8) — to float
    rounding, since the phases' sum is taken in another order — where the quincunx's moves
    by more under (8, 0) and (0, 8)."""
    paired, _ = _pair(tmp_path, backbone)
    every = _every_phase(paired)
    x = _image(3)
    for dy, dx in [(8, 0), (0, 8), (8, 8)]:
        here, there = _maps_under_shift(every, x, dy, dx)
        assert float(here.std()) > 0.01
        assert float((here - there).abs().max()) < 1e-5, (dy, dx)
    for dy, dx in [(8, 0), (0, 8)]:
        here, there = _maps_under_shift(paired, x, dy, dx)
        assert float((here - there).abs().max()) > 1e-4, (dy, dx)


@pytest.mark.parametrize("backbone", ["tiny-aa5", "tiny-aa7n"])
def test_every_phase_is_the_mean_of_the_four_shifted_maps(tmp_path, backbone):
    """Four phases average the plain model over the input shifted by 0 or 8 px along each
    axis, to well under a stored 1/255 step (the decoder's nonlinearities after the first
    block keep it from being exact), as the quincunx averages two of them."""
    paired, plain = _pair(tmp_path, backbone)
    x = _image(4)

    @torch.inference_mode()
    def on_common_pixels(model, dy: int, dx: int) -> torch.Tensor:
        """The model's map of x shifted by (dy, dx), over x's pixels 8..512 of each axis."""
        probability = torch.sigmoid(model(x[..., dy : 512 + dy, dx : 512 + dx]))[0, 0]
        return probability[8 - dy : 512 - dy, 8 - dx : 512 - dx][CORE, CORE]

    shifted = [on_common_pixels(plain, dy, dx) for dy in (0, 8) for dx in (0, 8)]
    averaged = on_common_pixels(_every_phase(paired), 0, 0)
    assert float((averaged - sum(shifted) / 4).abs().max()) < 1e-3


def test_a_blur_pool_stage_shares_its_convolution_between_phases(tmp_path):
    """``last_at_phases`` runs a blur-pool stage's convolution and blur once: away from the
    edges, each phase is the stage run on the moved map."""
    paired, _ = _pair(tmp_path, "tiny-aa7n")
    backbone = paired.backbone
    with torch.inference_mode():
        early = backbone.early(_image(5)[..., :256, :256])
        phases = ((0, 0), (0, 1), (1, 0), (1, 1))
        shared = backbone.last_at_phases(early, phases)
        for i, (a, b) in enumerate(phases):
            moved = torch.nn.functional.pad(early[..., a:, b:], (0, b, 0, a), mode="replicate")
            alone = backbone.last(moved)
            assert torch.allclose(shared[i][..., 4:-4, 4:-4], alone[..., 4:-4, 4:-4], atol=1e-5)


def test_four_phases_need_the_quincunx():
    with pytest.raises(ValueError, match="last_stage_phases"):
        DamageSegmenter(SegmenterConfig("tiny", 128, 8, last_stage_phases=3))

"""An anti-aliased model moves less under a sub-stride shift than the plain one (#20, point 4).

The plain ``tiny`` samples its features every 16 px and upsamples them by nearest
neighbour, so its map depends on where the 16-px lattice falls on the ground;
``tiny-aa`` (blur-pool downsampling) with a bilinear decoder low-passes before every
subsampling and interpolates after. Here both run, untrained (fixed seeds, BatchNorm
at its initial statistics), on the whole of a random smooth raster and of the same
raster shifted by 1–15 px in each axis (mirror-padded by 64 px and up to a multiple
of 16, as ``bench_phase --diagnose`` runs the shipped model: no tiles, so no tile
border). Probabilities are σ of the logits standardised by the unshifted map's mean
and spread, so the two models are compared on the same scale; pixels 80 px from the
edges (beyond the plain model's receptive field, ±75 px) are compared, in 1/255 steps.

Tolerance (16 random draws of seed, size 224–256 and shift: plain p99 129–197,
anti-aliased 12–84, ratio 0.08–0.54): the anti-aliased model's p99 |Δprob| is at most
110/255 and at most 0.7 × the plain model's on the same raster, seed and shift.
Untrained maps are far rougher than trained ones, so these bounds say nothing of the
#20 target (p99 ≤ 16/255): benchmarks/results/shift_model.md measures trained models.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from stmap.model import DamageSegmenter, SegmenterConfig
from tests.properties.profiles import examples

PAD, EDGE = 64, 80
AA_P99_MAX = 110  # 1/255 steps
AA_VS_PLAIN_MAX = 0.7


def _raster(seed: int, size: int) -> torch.Tensor:
    """(1, 3, size, size): smooth random ground (8-px cells, bilinear) plus fine noise."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(1, 3, size // 8, size // 8, generator=generator)
    smooth = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    return smooth + 0.3 * torch.randn(1, 3, size, size, generator=generator)


@torch.no_grad()
def _whole(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits of the model on the whole mirror-padded raster, cropped back to (H, W)."""
    height, width = x.shape[-2:]
    extra_h, extra_w = -(height + 2 * PAD) % 16, -(width + 2 * PAD) % 16
    padded = torch.nn.functional.pad(x, (PAD, PAD + extra_w, PAD, PAD + extra_h), mode="reflect")
    return model(padded)[0, 0, PAD : PAD + height, PAD : PAD + width]


def _p99_shift(model: torch.nn.Module, x: torch.Tensor, dy: int, dx: int) -> float:
    """p99 |Δprob| (1/255) between the map of ``x`` and that of ``x`` shifted by (dy, dx)."""
    full = _whole(model, x)
    shifted = _whole(model, x[..., dy:, dx:])
    mean, spread = full.mean(), full.std()
    a = torch.sigmoid((full - mean) / spread)[dy + EDGE : -EDGE, dx + EDGE : -EDGE]
    b = torch.sigmoid((shifted - mean) / spread)
    b = b[EDGE : b.shape[0] - EDGE, EDGE : b.shape[1] - EDGE]
    return float(((a - b).abs() * 255).flatten().quantile(0.99))


def _model(backbone: str, upsample: str, seed: int) -> DamageSegmenter:
    torch.manual_seed(seed)
    config = SegmenterConfig(backbone, 128, 16, decoder_upsample=upsample)
    return DamageSegmenter(config).eval()


@examples(8)
@given(
    seed=st.integers(0, 2**16),
    size=st.sampled_from([224, 240, 256]),
    dy=st.integers(1, 15),
    dx=st.integers(1, 15),
)
def test_the_antialiased_model_is_more_phase_stable(seed: int, size: int, dy: int, dx: int):
    torch.set_num_threads(1)
    x = _raster(seed, size)
    plain = _p99_shift(_model("tiny", "nearest", seed), x, dy, dx)
    antialiased = _p99_shift(_model("tiny-aa", "bilinear", seed), x, dy, dx)
    assert antialiased <= AA_P99_MAX, (antialiased, plain)
    assert antialiased <= AA_VS_PLAIN_MAX * plain, (antialiased, plain)


def test_a_whole_stride_moves_neither_model():
    """Control: a 16-px shift is on both models' lattice: neither moves (but at its edges)."""
    x = _raster(3, 224)
    for backbone, upsample in [("tiny", "nearest"), ("tiny-aa", "bilinear")]:
        model = _model(backbone, upsample, 3)
        assert _p99_shift(model, x, 16, 16) < 4  # tiny-aa: about 1.5, its edge reach

"""tiny-aa / tiny-blur backbones and the decoder's upsampling option (#20), and that
neither changes the shipped ``tiny`` model or its bundle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stmap.bundle import Architecture, manifest_for, open_bundle, write_bundle
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import BlurPool, get_spec, weights_interchangeable
from stmap.model.decoder import Decoder

# the state-dict keys of the shipped tiny backbone: its layout must not move
TINY_BODY = [0, 1, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19, 21, 22]


def test_tiny_keeps_its_layout_and_the_shipped_bundle_its_manifest():
    """A `tiny` bundle written before #20 still loads (its keys do not move); the shipped
    bundle (tiny-aa7n, bilinear, quincunx) re-serialises to what was shipped, so its hash
    does not move either."""
    model = DamageSegmenter(SegmenterConfig("tiny", 128, 16))
    convs = sorted({int(k.split(".")[2]) for k in model.state_dict() if k.startswith("backbone.")})
    assert convs == TINY_BODY
    bundle = open_bundle("default")
    raw = json.loads((bundle.root / "manifest.json").read_text())
    assert bundle.manifest.backbone == "tiny-aa7n"
    assert raw["architecture"]["decoder_upsample"] == "bilinear" and raw["architecture"]["quincunx"]
    assert bundle.manifest.model_dump(mode="json")["architecture"] == raw["architecture"]
    assert bundle.manifest.model_dump(mode="json")["tiling"] == raw["tiling"]
    segmenter = bundle.load_segmenter()
    assert segmenter.config.quincunx
    assert all(
        m.mode == "bilinear" for m in segmenter.modules() if isinstance(m, torch.nn.Upsample)
    )


@pytest.mark.parametrize(
    "backbone", ["tiny-aa", "tiny-aa5", "tiny-aa5stem", "tiny-aalite", "tiny-aalite5", "tiny-blur"]
)
def test_antialiased_backbones_have_tinys_parameters_and_stride(backbone: str):
    torch.manual_seed(0)
    spec = get_spec(backbone)
    assert spec.patch_size == 16 and not spec.frozen
    model = DamageSegmenter(SegmenterConfig(backbone, 128, 16, decoder_upsample="bilinear"))
    plain = DamageSegmenter(SegmenterConfig("tiny", 128, 16))
    shapes = sorted(tuple(p.shape) for p in model.parameters())
    assert shapes == sorted(tuple(p.shape) for p in plain.parameters())
    assert not any("kernel" in k for k in model.state_dict())  # the blur is not a weight
    x = torch.randn(2, 3, 128, 96)
    assert model.features(x).shape == (2, 64, 8, 6)
    assert model(x).shape == (2, 1, 128, 96)


def test_the_narrow_aa5_has_aa5s_layout_with_fewer_early_channels():
    """tiny-aa5n: tiny-aa5's stages and keys, 8 and 24 channels in the first two (the
    blur-pool's stride-1 convolutions there are most of tiny-aa5's time), stride 16."""
    narrow = DamageSegmenter(SegmenterConfig("tiny-aa5n", 128, 16, decoder_upsample="bilinear"))
    full = DamageSegmenter(SegmenterConfig("tiny-aa5", 128, 16, decoder_upsample="bilinear"))
    assert narrow.state_dict().keys() == full.state_dict().keys()
    first = narrow.backbone.body[0]
    assert first.out_channels == 8
    assert narrow.features(torch.randn(1, 3, 96, 64)).shape == (1, 64, 6, 4)
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in full.parameters())


def test_the_seven_tap_narrow_model_has_aa5ns_weights():
    """tiny-aa7n differs from tiny-aa5n only in its fixed blurs: the same tensors, so one's
    weights load into the other, and a 7-tap kernel in every blur-pool."""
    seven = DamageSegmenter(SegmenterConfig("tiny-aa7n", 128, 16, decoder_upsample="bilinear"))
    five = DamageSegmenter(SegmenterConfig("tiny-aa5n", 128, 16, decoder_upsample="bilinear"))
    shapes = {k: v.shape for k, v in seven.state_dict().items()}
    assert shapes == {k: v.shape for k, v in five.state_dict().items()}
    pools = [m for m in seven.backbone.modules() if isinstance(m, BlurPool)]
    assert len(pools) == 4 and all(p.kernel.shape[-1] == 7 for p in pools)
    seven.load_state_dict(five.state_dict())


def test_the_nine_tap_first_stage_candidate_has_aa7ns_tensors():
    """tiny-aa97n (a #20 candidate, not shipped): tiny-aa7n's tensors, a 9-tap blur-pool
    in the first stage and 7-tap ones after it, so the shipped weights run in it."""
    nine = DamageSegmenter(SegmenterConfig("tiny-aa97n", 128, 16, decoder_upsample="bilinear"))
    seven = DamageSegmenter(SegmenterConfig("tiny-aa7n", 128, 16, decoder_upsample="bilinear"))
    assert {k: v.shape for k, v in nine.state_dict().items()} == {
        k: v.shape for k, v in seven.state_dict().items()
    }
    pools = [m for m in nine.backbone.modules() if isinstance(m, BlurPool)]
    assert [p.kernel.shape[-1] for p in pools] == [9, 7, 7, 7]
    assert weights_interchangeable("tiny-aa5n", "tiny-aa97n")


def test_blurpool_is_a_binomial_low_pass():
    pool = BlurPool(2, stride=2)
    flat = torch.full((1, 2, 8, 8), 3.0)
    assert torch.allclose(pool(flat), torch.full((1, 2, 4, 4), 3.0))  # reflect: no dark rim
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2
    out = BlurPool(1, stride=1)(checker[None, None].float())
    assert float(out[..., 1:-1, 1:-1].std()) < 0.2 * float(checker.float().std())


@pytest.mark.parametrize("taps", [3, 5, 7, 9])
def test_the_longer_blurs_pass_less_of_what_aliases(taps: int):
    """All keep a flat image; at a third of the sampling rate (aliased by stride 2) each
    longer binomial lets through a quarter of what the shorter one does (1/4, 1/16, 1/64,
    1/256: cos(π/3) to the power taps − 1)."""
    flat = torch.full((1, 1, 12, 12), 3.0)
    assert torch.allclose(BlurPool(1, 2, taps)(flat), torch.full((1, 1, 6, 6), 3.0))
    wave = torch.cos(2 * torch.pi * torch.arange(48) / 3).expand(48, 48)[None, None]
    passed = BlurPool(1, 1, taps)(wave)[..., 4:-4, 4:-4].abs().max()
    assert float(passed) == pytest.approx(0.5 ** (taps - 1), abs=1e-4)


@pytest.mark.parametrize("taps", [3, 5, 7])
@pytest.mark.parametrize("stride", [1, 2])
def test_blurpool_equals_the_reflect_padded_blur_on_any_map(taps: int, stride: int):
    """The blur runs zero-padded and redoes its edge outputs (the reflect-padded copy
    cost more than the blur): bit-equal to padding first, on even and odd sizes, maps
    barely larger than the kernel, channels-last maps, and in its gradient."""
    torch.manual_seed(0)
    pool = BlurPool(3, stride, taps)

    def reference(x: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(x, (taps // 2,) * 4, mode="reflect")
        return torch.nn.functional.conv2d(padded, pool.kernel, stride=stride, groups=3)

    for height, width in [(3, 3), (4, 4), (6, 9), (10, 11), (17, 16), (33, 40), (64, 7)]:
        if min(height, width) <= taps // 2:  # reflect padding needs more than the pad
            continue
        x = torch.randn(2, 3, height, width)
        assert torch.equal(pool(x), reference(x)), (height, width)
        last = x.contiguous(memory_format=torch.channels_last)
        assert torch.equal(pool(last), reference(x)), (height, width)
    x = torch.randn(1, 3, 21, 26, requires_grad=True)
    (ours,) = torch.autograd.grad(pool(x).square().sum(), x)
    (theirs,) = torch.autograd.grad(reference(x).square().sum(), x)
    assert torch.allclose(ours, theirs, atol=1e-6)


@pytest.mark.parametrize("upsample", ["nearest", "bilinear"])
def test_decoder_logits_are_forwards_with_the_classifier_before_the_last_upsampling(
    upsample: str,
):
    """Inference's logits (classifier on a quarter of the pixels, one channel upsampled)
    are the training forward's; from block 1 on as the quincunx takes them."""
    torch.manual_seed(0)
    decoder = Decoder(6, 8, 3, upsample=upsample).eval()
    for module in decoder.modules():  # non-trivial batch norms and classifier bias
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    torch.nn.init.uniform_(decoder.classifier.bias, -1, 1)
    features = torch.randn(2, 6, 5, 7)
    with torch.no_grad():
        expected = decoder(features)[0]
        assert expected.shape == (2, 1, 40, 56)
        assert torch.allclose(decoder.logits(features), expected, atol=1e-5)
        middle = decoder.blocks[0](features)
        late = decoder.classifier(decoder.blocks[1:](middle))
        assert torch.allclose(decoder.logits(middle, first_block=1), late, atol=1e-5)


def test_decoder_upsampling_modes():
    nearest = Decoder(4, 8, 2)
    bilinear = Decoder(4, 8, 2, upsample="bilinear")
    assert nearest.state_dict().keys() == bilinear.state_dict().keys()
    with pytest.raises(ValueError, match="bicubic"):
        Decoder(4, 8, 2, upsample="bicubic")


def test_a_bilinear_bundle_round_trips(tmp_path: Path):
    config = SegmenterConfig("tiny-aa", 128, 16, decoder_upsample="bilinear")
    torch.manual_seed(0)
    model = DamageSegmenter(config).eval()
    manifest = manifest_for(
        config,
        name="aa",
        backbone_weights="random",
        normalization={"mean": get_spec("tiny-aa").mean, "std": get_spec("tiny-aa").std},
    )
    bundle = open_bundle(write_bundle(tmp_path / "b", model, manifest))
    raw = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert raw["architecture"]["decoder_upsample"] == "bilinear"
    assert bundle.manifest.segmenter_config() == config
    x = torch.randn(1, 3, 128, 128)
    assert torch.equal(bundle.load_segmenter()(x), model(x))
    assert Architecture().model_dump() == {
        "decoder_channels": 256,
        "decoder_blocks": 4,
        "projection_dim": 50,
    }

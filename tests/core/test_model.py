"""The model core: backbone registry, shapes, freezing, inference forward."""

from __future__ import annotations

import pytest
import torch

from stmap.errors import InputError
from stmap.model import (
    DamageSegmenter,
    InferenceModel,
    Preprocessing,
    SegmenterConfig,
    backbone_names,
    get_spec,
)
from stmap.model.backbones import SAT_MEAN, SAT_STD, resolve_name
from stmap.model.preprocess import Normalize

DINOV3 = [
    "vit_small_patch16_dinov3.lvd1689m",
    "vit_base_patch16_dinov3.lvd1689m",
    "vit_large_patch16_dinov3.lvd1689m",
    "vit_large_patch16_dinov3.sat493m",
]


def test_registry_names_every_backbone_the_method_uses():
    assert set(DINOV3) | {"tiny"} <= set(backbone_names())
    sat = get_spec("vit_large_patch16_dinov3.sat493m")
    assert (sat.embed_dim, sat.patch_size, sat.frozen) == (1024, 16, True)
    assert sat.mean == (0.430, 0.411, 0.296) and sat.std == (0.213, 0.156, 0.143)
    assert resolve_name("dinov3-vitl16-sat") == sat.name
    assert get_spec("tiny").frozen is False


def test_unknown_backbone_lists_the_known_ones():
    with pytest.raises(InputError, match=r"unknown backbone 'resnet9'.*tiny"):
        get_spec("resnet9")


def test_tile_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(InputError, match="not a multiple"):
        DamageSegmenter(SegmenterConfig(backbone="tiny", tile_size=100))


@pytest.mark.parametrize(
    ("backbone", "channels", "dim"),
    [("tiny", 16, 64), ("vit_small_patch16_dinov3.lvd1689m", 32, 384)],
)
def test_train_forward_returns_logits_embedding_and_decoder_feature(backbone, channels, dim):
    model = DamageSegmenter(SegmenterConfig(backbone=backbone, decoder_channels=channels))
    x = torch.randn(2, 3, 128, 128)
    out = model.forward_train(x)
    assert out.logits.shape == (2, 1, 128, 128)
    assert out.pixel_embedding.shape == (2, 50, 8, 8)
    assert out.decoder_feature.shape == (2, channels, 128, 128)
    assert model.features(x).shape == (2, dim, 8, 8)
    torch.testing.assert_close(model.forward_from_features(model.features(x)).logits, out.logits)


def test_frozen_backbone_stays_in_eval_and_untrainable_after_train():
    model = DamageSegmenter(
        SegmenterConfig(backbone="vit_small_patch16_dinov3.lvd1689m", decoder_channels=8)
    )
    model.train()
    assert not model.backbone.training and model.decoder.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.projection.parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())


def test_tiny_backbone_trains_but_projection_head_is_frozen():
    model = DamageSegmenter(SegmenterConfig(backbone="tiny", decoder_channels=8)).train()
    assert model.backbone.training
    assert all(p.requires_grad for p in model.backbone.parameters())
    assert not any(p.requires_grad for p in model.projection.parameters())


def test_vit_features_are_the_patch_tokens_after_the_final_norm():
    model = DamageSegmenter(
        SegmenterConfig(backbone="vit_small_patch16_dinov3.lvd1689m", decoder_channels=8)
    ).eval()
    x = torch.randn(1, 3, 128, 128)
    vit = model.backbone.vit
    tokens = vit.forward_features(x)[:, vit.num_prefix_tokens :]
    feature = model.features(x)
    # token k (row-major) is the feature at (k // 8, k % 8)
    torch.testing.assert_close(feature[0, :, 2, 5], tokens[0, 2 * 8 + 5])


def test_normalize_matches_scale_then_standardise():
    pre = Preprocessing(mean=SAT_MEAN, std=SAT_STD, value_max=255.0)
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    expected = (pixels.float() / 255 - torch.tensor(SAT_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        SAT_STD
    ).view(1, 3, 1, 1)
    torch.testing.assert_close(Normalize(pre)(pixels), expected)


def test_inference_model_maps_uint8_to_probabilities():
    model = DamageSegmenter(SegmenterConfig(backbone="tiny", decoder_channels=8)).eval()
    pre = Preprocessing(mean=SAT_MEAN, std=SAT_STD)
    pixels = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    with torch.no_grad():
        probs = InferenceModel(model, pre)(pixels)
        logits = model(Normalize(pre)(pixels))
    assert probs.shape == (3, 1, 128, 128)
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    torch.testing.assert_close(probs, torch.sigmoid(logits))

"""Loading weights: both checkpoint layouts, and errors that name the first bad tensor."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from stmap.errors import WeightsError
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.weights import load_backbone_weights, load_strict, read_state_dict

VITS = "vit_small_patch16_dinov3.lvd1689m"


def _vit(seed: int):
    torch.manual_seed(seed)
    return DamageSegmenter(SegmenterConfig(backbone=VITS, decoder_channels=8)).backbone


def _as_official_dinov3(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm → the layout of Meta's DINOv3 checkpoints (what users download)."""
    out = {}
    for key, value in state.items():
        key = key.replace("reg_token", "storage_tokens").replace(".gamma_1", ".ls1.gamma")
        key = key.replace(".gamma_2", ".ls2.gamma")
        out[key] = value
    out["mask_token"] = torch.zeros(1, state["cls_token"].shape[-1])
    return out


def test_timm_layout_safetensors_round_trip(tmp_path):
    source, target = _vit(0), _vit(1)
    path = tmp_path / "vits.safetensors"
    save_file({k: v.contiguous() for k, v in source.vit.state_dict().items()}, str(path))
    load_backbone_weights(target, path)
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_official_dinov3_layout_pth_is_converted(tmp_path):
    source, target = _vit(0), _vit(1)
    path = tmp_path / "dinov3_vits16.pth"
    torch.save(_as_official_dinov3(source.vit.state_dict()), path)
    load_backbone_weights(target, path)
    x = torch.randn(1, 3, 128, 128)
    torch.testing.assert_close(target.eval()(x), source.eval()(x))


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="nothere.pth: weights file not found"):
        load_backbone_weights(_vit(0), tmp_path / "nothere.pth")


def test_wrong_backbone_names_the_first_mismatching_tensor(tmp_path):
    tiny = DamageSegmenter(SegmenterConfig(backbone="tiny", decoder_channels=8))
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.backbone.state_dict().items()}, str(path))
    with pytest.raises(WeightsError, match=r"tiny.safetensors: .*'cls_token'"):
        load_backbone_weights(_vit(0), path)


def test_wrong_shape_names_tensor_and_both_shapes():
    model = DamageSegmenter(SegmenterConfig(backbone="tiny", decoder_channels=8))
    state = dict(model.state_dict())
    state["decoder.classifier.weight"] = torch.zeros(1, 16, 1, 1)
    with pytest.raises(
        WeightsError, match=r"'decoder.classifier.weight' has shape \(1, 16, 1, 1\)"
    ):
        load_strict(model, state, "x")


def test_extra_tensor_is_refused():
    model = DamageSegmenter(SegmenterConfig(backbone="tiny", decoder_channels=8))
    state = {**model.state_dict(), "head.weight": torch.zeros(1)}
    with pytest.raises(WeightsError, match="unexpected tensor 'head.weight'"):
        load_strict(model, state, "x")


def test_pickled_code_is_never_executed(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Boom()}, path)
    with pytest.raises(WeightsError, match="cannot read weights"):
        read_state_dict(path)

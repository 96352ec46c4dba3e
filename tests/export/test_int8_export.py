"""`stmap export --int8`: ONNX Runtime's dynamic int8 for the CPU, parity recorded in the
bundle, run by the onnxruntime backend; refused for a model with nothing to quantise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from stmap.bundle import Normalization, manifest_for, open_bundle, write_bundle
from stmap.cli import main
from stmap.export import export_bundle
from stmap.model import DamageSegmenter, InferenceModel, SegmenterConfig
from stmap.model.backbones import SAT_MEAN, SAT_STD, BackboneSpec, register_backbone
from stmap.runtime.backends.base import create_backend

TOKENS = "tokens-int8-test"


class Tokens(nn.Module):
    """A ViT's shape in miniature: 16-px patches, then linear layers over channels."""

    def __init__(self, dim: int):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, stride=16)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).permute(0, 2, 3, 1)
        return (tokens + self.mlp(tokens)).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def token_bundle(tmp_path_factory) -> Path:
    spec = BackboneSpec(TOKENS, 32, 16, SAT_MEAN, SAT_STD, frozen=False, description="test")
    register_backbone(spec, lambda spec, tile: Tokens(spec.embed_dim))
    torch.manual_seed(0)
    config = SegmenterConfig(backbone=TOKENS, tile_size=128, decoder_channels=8)
    manifest = manifest_for(
        config,
        name="tokens",
        backbone_weights="random (tests)",
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
    )
    return write_bundle(tmp_path_factory.mktemp("b") / "tokens", DamageSegmenter(config), manifest)


def test_int8_is_exported_with_its_parity_and_runs_on_the_cpu(token_bundle, tmp_path):
    out = tmp_path / "exported"
    result = export_bundle(token_bundle, formats=["onnx"], int8=True, output=out, samples=6)
    assert result["files"] == ["model.onnx", "model_int8.onnx"]
    bundle = open_bundle(out)
    record = bundle.manifest.exports["onnx_int8"]
    assert record["precision"] == "int8" and record["quantised_nodes"] > 0
    assert 0 <= record["parity"]["max_abs_diff"] <= 2 / 255
    backend = create_backend("onnxruntime", bundle, torch.device("cpu"), "int8", "uint8")
    tiles = torch.randint(0, 256, (3, 3, 128, 128), dtype=torch.uint8)
    reference = InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing()).eval()
    with torch.inference_mode():
        assert (backend.infer(tiles) - reference(tiles)).abs().max() <= 2 / 255


def test_int8_is_refused_for_a_model_without_linear_layers(tiny_bundle, tmp_path):
    out = tmp_path / "exported"
    args = ["export", str(tiny_bundle), "--format", "onnx", "--int8", "-o", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "no MatMul or Gemm to quantise" in result.output
    assert not out.exists()

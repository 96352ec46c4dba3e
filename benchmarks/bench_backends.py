"""Model-only throughput per backend on the CPU: torch against ONNX Runtime.

Generated bundles (random weights: speed does not depend on them), exported to ONNX,
then each backend's ``infer`` on one batch of 32 uint8 tiles of 128 px. ``tiny`` is
the demo architecture; ViT-S/16 (DINOv3 layout, RoPE) stands for the foundation
models. Run (pytest-benchmark; results as JSON, figures in results/cpu_backends.md):

    python -m pytest benchmarks/bench_backends.py --benchmark-enable \
        --benchmark-json=benchmarks/results/cpu_backends.json
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stmap.bundle import Normalization, manifest_for, open_bundle, write_bundle
from stmap.export import export_bundle
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import get_spec
from stmap.runtime.backends.base import create_backend

BATCH, TILE = 32, 128
MODELS = {
    "tiny": SegmenterConfig(backbone="tiny", tile_size=TILE, decoder_channels=64),
    "vits16": SegmenterConfig(
        backbone="vit_small_patch16_dinov3.lvd1689m", tile_size=TILE, decoder_channels=64
    ),
}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One exported bundle per model in MODELS."""
    torch.manual_seed(0)
    paths = {}
    for name, config in MODELS.items():
        spec = get_spec(config.backbone)
        manifest = manifest_for(
            config,
            name=name,
            backbone_weights="random (benchmark)",
            normalization=Normalization(mean=spec.mean, std=spec.std),
        )
        path = tmp_path_factory.mktemp("bench") / name
        write_bundle(path, DamageSegmenter(config).eval(), manifest)
        export_bundle(path, formats=["onnx"], samples=6)
        paths[name] = path
    return paths


@pytest.mark.parametrize("model", list(MODELS))
@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_model_only_throughput(benchmark, bundles, model: str, backend: str) -> None:
    runner = create_backend(
        backend, open_bundle(bundles[model]), torch.device("cpu"), "fp32", "uint8"
    )
    tiles = torch.randint(0, 256, (BATCH, 3, TILE, TILE), dtype=torch.uint8)
    runner.infer(tiles)  # warm-up: first-call allocations and kernel selection
    benchmark.extra_info.update(
        backend=backend,
        model=model,
        batch=BATCH,
        tile=TILE,
        megapixels_per_call=BATCH * TILE * TILE / 1e6,
        threads=torch.get_num_threads(),
    )
    probs = benchmark.pedantic(runner.infer, args=(tiles,), rounds=10, iterations=1)
    assert probs.shape == (BATCH, 1, TILE, TILE)

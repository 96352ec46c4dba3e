"""Bundles whose probabilities vary, so that parity and backend checks mean something.

A freshly initialised `tiny` model answers ~0.578 for every pixel (activations fade
through its BatchNorms at their default statistics), which any export would match.
Recalibrating the BatchNorm statistics on random and synthetic-city tiles spreads its
probabilities over about 0.1..0.97.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from stmap.bundle import open_bundle, write_bundle
from stmap.model import InferenceModel
from stmap.parity_tiles import parity_batches
from tests.conftest import make_tiny_bundle


def make_lively_bundle(path: Path, *, seed: int = 0) -> Path:
    """A `tiny` bundle with data-calibrated BatchNorm statistics: (B,3,128,128) uint8 in."""
    return liven(make_tiny_bundle(path, seed=seed), seed=seed)


def liven(path: Path, *, seed: int = 0, samples: int = 32) -> Path:
    """Recalibrate the trainable BatchNorms of the bundle at ``path`` on ``samples`` tiles."""
    bundle = open_bundle(path)
    segmenter = bundle.load_segmenter()
    normalize = InferenceModel(segmenter, bundle.manifest.preprocessing()).normalize
    for module in segmenter.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # a plain average over the calibration batches
    segmenter.train()  # a frozen backbone stays in eval mode
    with torch.no_grad():
        for _, batch in parity_batches(bundle.manifest.tile_size, 3, samples, seed=seed + 100):
            segmenter(normalize(batch))
    return write_bundle(path, segmenter.eval(), bundle.manifest, overwrite=True)


@pytest.fixture(scope="session")
def lively_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_lively_bundle(tmp_path_factory.mktemp("export-bundles") / "lively")


@pytest.fixture
def lively_bundle(lively_source: Path, tmp_path: Path) -> Path:
    """A private copy: tests that export into it cannot disturb each other."""
    return Path(shutil.copytree(lively_source, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def exported_source(tmp_path_factory: pytest.TempPathFactory, lively_source: Path) -> Path:
    """The lively bundle with model.onnx and model_fp16.onnx, exported once per session."""
    from stmap.export import export_bundle

    path = tmp_path_factory.mktemp("exported") / "bundle"
    export_bundle(lively_source, formats=["onnx"], output=path, fp16=True)
    return path


def snapshot(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (hidden ones included) with its bytes."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }

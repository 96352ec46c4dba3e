"""The feature cache returns what recomputing gives, in memory or on disk, and training
from it matches training through the backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.train import features as features_module
from stmap.train.config import build_config
from stmap.train.datasets import TileData, load_tile_data
from stmap.train.features import FeatureCache, cache_applies
from stmap.train.loop import Inputs, fit_pc_prototypes, reinitialise, train_fold


@pytest.fixture
def data(tile_root: Path) -> TileData:
    return load_tile_data(tile_root, None, 128)


def make_model(backbone: str) -> tuple[DamageSegmenter, Normalize]:
    spec = get_spec(backbone)
    torch.manual_seed(0)
    model = DamageSegmenter(SegmenterConfig(backbone, 128, decoder_channels=16))
    return model, Normalize(Preprocessing(spec.mean, spec.std))


def test_cached_features_equal_recomputed_ones(frozen_vit: str, data: TileData, tmp_path: Path):
    model, normalize = make_model(frozen_vit)
    cpu = torch.device("cpu")
    cache = FeatureCache.build(model, data.images, normalize, cpu, 4, 1 << 30, tmp_path)
    assert not cache.on_disk
    index = torch.tensor([5, 0, 11, 3])
    with torch.no_grad():
        for start in range(0, len(data), 4):  # the same batches the cache was built from
            x = normalize(data.images[start : start + 4])
            expected = model.eval().features(x).half().float()
            positions = torch.arange(start, min(start + 4, len(data)))
            assert torch.equal(cache(positions), expected)
    assert cache(index).dtype == torch.float32 and cache(index).shape == (4, 32, 8, 8)
    # channels-last, like the backbone's own token map (the decoder is faster on it)
    live = model.features(normalize(data.images[index]))
    assert cache(index).stride()[1:] == live.stride()[1:] == (1, 256, 32)


def test_disk_cache_equals_memory_cache_and_is_removed(
    frozen_vit: str, data: TileData, tmp_path: Path
):
    model, normalize = make_model(frozen_vit)
    cpu = torch.device("cpu")
    memory = FeatureCache.build(model, data.images, normalize, cpu, 4, 1 << 30, tmp_path)
    disk = FeatureCache.build(model, data.images, normalize, cpu, 4, 1000, tmp_path)
    assert disk.on_disk and (tmp_path / "features.npy").is_file()
    index = torch.tensor([7, 2, 2, 10])
    assert torch.equal(disk(index), memory(index))
    disk.close()
    assert not (tmp_path / "features.npy").exists()


def test_cache_applies_only_to_deterministic_frozen_features():
    assert cache_applies(backbone_frozen=True, rope_jitter=False, budget=1)
    assert not cache_applies(backbone_frozen=False, rope_jitter=False, budget=1)  # tiny trains
    assert not cache_applies(backbone_frozen=True, rope_jitter=True, budget=1)
    assert not cache_applies(backbone_frozen=True, rope_jitter=False, budget=0)


@pytest.mark.parametrize("store", [torch.float32, torch.float16])
def test_training_from_the_cache_matches_training_through_the_backbone(
    frozen_vit: str,
    data: TileData,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    store: torch.dtype,
):
    """fp32 storage: bit-identical training; fp16 (the default): equal up to its rounding."""
    monkeypatch.setattr(features_module, "STORE_DTYPE", store)
    config = build_config(
        {
            "protocol": "fullsup",
            "data_root": "unused",
            "out_dir": "unused",
            "backbone": frozen_vit,
            "epochs": 2,
            "batch_size": 4,
            "decoder_channels": 16,
        }
    )
    model, normalize = make_model(frozen_vit)
    cpu = torch.device("cpu")
    train, val = torch.arange(0, 12, 2), torch.arange(1, 12, 2)
    cache = FeatureCache.build(model, data.images, normalize, cpu, 4, 1 << 30, tmp_path)
    states = []
    for inputs in (Inputs(data, normalize, cpu, cache), Inputs(data, normalize, cpu)):
        reinitialise(model, 42)
        result = train_fold(model, inputs, train, val, config, fold=0)
        states.append(result.state)
    for key, value in states[0].items():
        if store == torch.float32:  # the same numbers in the same layout: the same training
            assert torch.equal(value, states[1][key]), key
        else:
            torch.testing.assert_close(value.float(), states[1][key].float(), atol=2e-3, rtol=0)


def test_prototypes_from_the_cache_match_the_backbone(
    frozen_vit: str, data: TileData, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(features_module, "STORE_DTYPE", torch.float32)
    model, normalize = make_model(frozen_vit)
    cpu = torch.device("cpu")
    cache = FeatureCache.build(model, data.images, normalize, cpu, 4, 1 << 30, tmp_path)
    index = torch.arange(len(data))
    fitted = [
        fit_pc_prototypes(model, inputs, index, 4, 42, torch.Generator().manual_seed(0))
        for inputs in (Inputs(data, normalize, cpu, cache), Inputs(data, normalize, cpu))
    ]
    torch.testing.assert_close(fitted[0][0], fitted[1][0], atol=1e-5, rtol=0)
    assert torch.equal(fitted[0][1], fitted[1][1])

"""Photometric augmentation: off by default, colours only, repeatable under a seed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stmap.errors import InputError
from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.train import augment as augment_module
from stmap.train import loop
from stmap.train.augment import PhotometricAugment, photometric_augmenter
from stmap.train.config import build_config
from stmap.train.datasets import TileData, load_tile_data
from stmap.train.loop import Inputs, reinitialise, train_fold


def squares(batch: int = 8) -> torch.Tensor:
    """(batch, 3, 64, 64) uint8: a dark grey ground with one bright square in the middle."""
    images = torch.full((batch, 3, 64, 64), 40, dtype=torch.uint8)
    images[:, :, 16:48, 16:48] = 200
    return images


def config(**overrides):
    values = {
        "protocol": "fullsup",
        "data_root": Path("unused"),
        "out_dir": Path("unused"),
        "backbone": "tiny",
        "decoder_channels": 16,
        "epochs": 1,
        "batch_size": 4,
        "k_folds": 2,
        "lambda_pc": 0.0,
        "lambda_dpt": 0.0,
        **overrides,
    }
    return build_config(values)


@pytest.fixture
def data(tile_root: Path) -> TileData:
    return load_tile_data(tile_root, None, 128)


def train_once(data: TileData, **overrides) -> dict[str, torch.Tensor]:
    spec = get_spec("tiny")
    model = DamageSegmenter(SegmenterConfig("tiny", 128, decoder_channels=16))
    inputs = Inputs(data, Normalize(Preprocessing(spec.mean, spec.std)), torch.device("cpu"))
    loop.make_deterministic(torch.device("cpu"))
    reinitialise(model, 42)
    train, val = torch.arange(0, 12, 2), torch.arange(1, 12, 2)
    return train_fold(model, inputs, train, val, config(**overrides), fold=0).state


def test_the_key_defaults_off_and_training_never_augments(
    data: TileData, monkeypatch: pytest.MonkeyPatch
):
    assert config().photometric_augment == 0
    assert photometric_augmenter(0.0, seed=42) is None

    def refuse(self, images):
        raise AssertionError("a batch was augmented with the augmentation off")

    monkeypatch.setattr(augment_module.PhotometricAugment, "__call__", refuse)
    train_once(data)  # the paper's protocol: batches reach the model as decoded


def test_an_augmented_run_trains_differently_and_repeats_exactly(data: TileData):
    images, labels = data.images.clone(), data.labels.clone()
    plain = train_once(data)
    first = train_once(data, photometric_augment=1.0)
    second = train_once(data, photometric_augment=1.0)
    assert torch.equal(data.images, images) and torch.equal(data.labels, labels)
    assert any(not torch.equal(plain[key], first[key]) for key in plain)
    for key, value in first.items():
        assert torch.equal(value, second[key]), key


def test_it_changes_pixel_statistics_within_the_raw_range():
    images = squares()
    out = PhotometricAugment(1.0, seed=0)(images)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 255
    tile_means = out.mean((1, 2, 3))
    assert not torch.allclose(tile_means, images.float().mean((1, 2, 3)), atol=1.0)
    assert tile_means.std() > 1.0  # each tile gets its own acquisition
    band_means = out.mean((2, 3))
    assert (band_means.std(1) > 0.5).any()  # colour casts on a grey input


def test_it_never_moves_what_is_where():
    out = PhotometricAugment(1.0, seed=0)(squares())
    inside = out[:, :, 16:48, 16:48].mean((1, 2, 3))
    ground = out.clone()
    ground[:, :, 16:48, 16:48] = float("nan")
    outside = ground.flatten(1).nanmean(1)
    assert (inside > outside + 20).all()


def test_the_same_seed_draws_the_same_batches():
    images = squares()
    first, second = PhotometricAugment(1.0, seed=7), PhotometricAugment(1.0, seed=7)
    assert torch.equal(first(images), second(images))
    assert torch.equal(first(images), second(images))  # and the draws go on in step
    assert not torch.equal(
        PhotometricAugment(1.0, seed=8)(images), PhotometricAugment(1.0, 7)(images)
    )


def test_a_negative_strength_is_refused():
    with pytest.raises(InputError, match="photometric_augment"):
        config(photometric_augment=-1)

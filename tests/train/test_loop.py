"""The training loop and run_training, end to end on the CPU with tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stmap.bundle import open_bundle
from stmap.errors import DeviceError, InputError, OutputExistsError
from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.train import loop
from stmap.train.config import build_config
from stmap.train.datasets import TileData, load_tile_data
from stmap.train.loop import Inputs, enable_rope_jitter, reinitialise, train_fold
from stmap.train.metrics import ConfusionCounts
from stmap.train.run import run_training


def tiny_config(tile_root: Path, out_dir: Path, **overrides):
    values = {
        "protocol": "fullsup",
        "data_root": tile_root,
        "out_dir": out_dir,
        "backbone": "tiny",
        "decoder_channels": 16,
        "epochs": 1,
        "batch_size": 4,
        "k_folds": 2,
        "lambda_pc": 0.01,
        "lambda_dpt": 0.001,
        "overlays": 2,
        **overrides,
    }
    return build_config(values)


def test_end_to_end_tiny_backbone_with_both_auxiliary_losses(tile_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    bundle_dir = run_training(tiny_config(tile_root, out), command="stmap train --config x")

    bundle = open_bundle(bundle_dir)
    manifest = bundle.manifest
    spec = get_spec("tiny")
    assert manifest.backbone == "tiny" and manifest.tile_size == 128
    assert manifest.gsd_m == pytest.approx(0.5) and manifest.threshold == 0.5
    assert manifest.bands == ("red", "green", "blue")
    assert manifest.normalization.mean == spec.mean and manifest.normalization.std == spec.std
    provenance = manifest.provenance
    assert provenance["command"] == "stmap train --config x"
    assert provenance["regions"] == ["alpha", "beta"]
    assert provenance["training_data"] == "tiles"  # hand-made tiles: not synthetic
    assert provenance["seeds"]["base"] == 42
    assert provenance["config"]["lambda_pc"] == 0.01
    assert "trained_on" in provenance and provenance["stmap_version"]
    assert "mean_over_regions" in manifest.metrics
    bundle.load_segmenter()  # the weights fit the architecture, strictly

    # tiny trains end to end, so its fold checkpoints hold the backbone too
    for fold in (0, 1):
        state = load_file(out / "folds" / f"fold{fold}.safetensors")
        assert any(k.startswith("backbone.") for k in state)
        assert any(k.startswith("projection.") for k in state)
    report = json.loads((out / "report.json").read_text())
    assert set(report["summary"]["fullsup"]["regions"]) == {"alpha", "beta"}
    history = report["tasks"][0]["history"][0]
    assert history["loss_pc"] > 0 and history["loss_dpt"] > 0  # both auxiliary losses ran
    assert report["feature_cache"] is None and report["backbone_rope_jitter"] is False
    # a backbone that trains has no RoPE to jitter and no cache: neither difference applies
    assert not any("eval mode" in item or "fp16" in item for item in report["differences"])
    assert any("projection head is saved" in item for item in report["differences"])
    assert (out / "report.tsv").is_file() and (out / "report.md").is_file()
    assert len(list((out / "overlays").glob("*.png"))) == 2


@pytest.mark.parametrize(("budget", "where"), [(True, "memory"), (1000, "disk")])
def test_end_to_end_frozen_backbone_uses_the_cache(
    frozen_vit: str, tile_root: Path, tmp_path: Path, budget: bool | int, where: str
):
    out = tmp_path / "run"
    config = tiny_config(
        tile_root, out, backbone=frozen_vit, weights="random", feature_cache=budget
    )
    bundle = open_bundle(run_training(config))
    report = json.loads((out / "report.json").read_text())
    assert report["feature_cache"] == where
    assert any("stays in eval mode" in item for item in report["differences"])
    assert not list(out.glob("cache/*"))  # a memory-mapped store is removed after the run
    assert any("fp16" in item for item in report["differences"])
    state = load_file(out / "folds" / "fold0.safetensors")
    assert not any(k.startswith("backbone.") for k in state)  # only what the fold changed
    assert any(k.startswith("decoder.") for k in state)
    # the bundle holds the whole model, backbone included
    assert bundle.manifest.backbone_weights == "random initialisation"
    bundle.load_segmenter()


def test_a_frozen_backbone_needs_weights_named(frozen_vit: str, tile_root: Path, tmp_path: Path):
    with pytest.raises(InputError, match="set weights to a local checkpoint"):
        run_training(tiny_config(tile_root, tmp_path / "run", backbone=frozen_vit))


def test_an_existing_out_dir_is_not_overwritten(tile_root: Path, tmp_path: Path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="run: out_dir exists"):
        run_training(tiny_config(tile_root, tmp_path / "run"))


@pytest.fixture
def data(tile_root: Path) -> TileData:
    return load_tile_data(tile_root, None, 128)


def fold_setup(backbone: str, data: TileData, **overrides):
    spec = get_spec(backbone)
    model = DamageSegmenter(SegmenterConfig(backbone, 128, decoder_channels=16))
    inputs = Inputs(data, Normalize(Preprocessing(spec.mean, spec.std)), torch.device("cpu"))
    config = tiny_config(Path("unused"), Path("unused"), backbone=backbone, **overrides)
    return model, inputs, config


def test_training_repeats_exactly_on_the_cpu(data: TileData):
    model, inputs, config = fold_setup("tiny", data, epochs=2)
    loop.make_deterministic(torch.device("cpu"))
    train, val = torch.arange(0, 12, 2), torch.arange(1, 12, 2)
    states = []
    for _ in range(2):
        reinitialise(model, 42)
        states.append(train_fold(model, inputs, train, val, config, fold=0).state)
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key


def test_the_best_epoch_is_kept_by_strict_improvement(
    data: TileData, monkeypatch: pytest.MonkeyPatch
):
    model, inputs, config = fold_setup("tiny", data, epochs=4, lambda_pc=0.0, lambda_dpt=0.0)
    mious = iter([0.5, 0.5, 0.7, 0.7])
    snapshots = {}

    def fake_evaluate(model, inputs, index, batch_size):
        epoch = len(snapshots) + 1
        snapshots[epoch] = model.decoder.classifier.weight.detach().clone()
        return {"alpha": ConfusionCounts(tp=round(next(mious) * 100))}

    # the validation mIoU of each epoch is read from the counts the fake returns
    monkeypatch.setattr(loop, "pooled_miou", lambda counts: counts["alpha"].tp / 100)
    monkeypatch.setattr(loop, "evaluate", fake_evaluate)
    reinitialise(model, 42)
    result = train_fold(model, inputs, torch.arange(6), torch.arange(6, 12), config, fold=0)
    assert result.best_epoch == 3  # epochs 2 and 4 only tie
    assert torch.equal(model.decoder.classifier.weight, snapshots[3])
    assert [round(h["val_miou"], 2) for h in result.history] == [0.5, 0.5, 0.7, 0.7]


def test_a_frozen_backbone_does_not_change_and_stays_in_eval(frozen_vit: str, data: TileData):
    model, inputs, config = fold_setup(frozen_vit, data, epochs=1)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    reinitialise(model, 42)
    train_fold(model, inputs, torch.arange(6), torch.arange(6, 12), config, fold=0)
    model.train()
    assert not model.backbone.training and model.decoder.training
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_rope_jitter_randomises_train_mode_features_only(frozen_vit: str, data: TileData):
    model, inputs, _ = fold_setup(frozen_vit, data)
    enable_rope_jitter(model.backbone)
    x = inputs.normalize(data.images[:2])
    with torch.no_grad():
        model.backbone.eval()
        assert torch.equal(model.features(x), model.features(x))
        model.backbone.train()
        assert not torch.equal(model.features(x), model.features(x))
    with pytest.raises(InputError, match="needs a DINOv3 backbone"):
        enable_rope_jitter(DamageSegmenter(SegmenterConfig("tiny", 128)).backbone)


def test_a_missing_gpu_is_a_device_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA GPU"):
        loop.resolve_device("cuda:0")
    assert loop.resolve_device("auto") == torch.device("cpu")

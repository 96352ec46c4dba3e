"""`stmap adapt` on a frozen foundation model: LoRA merged into the backbone, plus the
decoder; on `tiny`, only the decoder, from features computed once."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stmap.bundle import Normalization, manifest_for, write_bundle
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import SAT_MEAN, SAT_STD
from stmap.synth import Grading, generate_city
from stmap.train import adapt
from stmap.train.adapt import AdaptSettings, ImageryOptions, LabelOptions, adapt_scene


def bundle_of(path: Path, backbone: str) -> Path:
    config = SegmenterConfig(backbone=backbone, tile_size=128, decoder_channels=8)
    manifest = manifest_for(
        config,
        name="test",
        backbone_weights="random (tests)",
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
    )
    return write_bundle(path, DamageSegmenter(config), manifest)


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("city") / "city.tif"
    generate_city(out, width=320, height=320, seed=5, damage_rate=0.3, grading=Grading(0.1, 0.0))
    return out


def adapted(bundle: Path, city: Path, monkeypatch: pytest.MonkeyPatch, anchor: float = 0.0):
    calls = []
    original = adapt.backbone_features

    def counted(model, images, normalize, device):
        calls.append(len(images))
        return original(model, images, normalize, device)

    monkeypatch.setattr(adapt, "backbone_features", counted)
    scene = adapt.load_labelled_scene(
        str(bundle),
        ImageryOptions((str(city),)),
        LabelOptions(str(city.with_name("city_grading.gpkg"))),
        adapt.MIN_PER_CLASS,
    )
    settings = AdaptSettings(epochs=3, fold_block_m=40.0, max_folds=2, anchor=anchor)
    model, report = adapt_scene(scene, settings, torch.device("cpu"))
    return scene, model, report, calls


def changed_keys(before: dict, after: dict) -> set[str]:
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_foundation_model_gets_merged_lora_and_a_new_decoder(
    frozen_vit: str, city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = bundle_of(tmp_path / "vit", frozen_vit)
    scene, model, report, calls = adapted(bundle, city, monkeypatch)
    assert report["adapted"] == "LoRA on the backbone + decoder"
    source = scene.bundle.load_segmenter().state_dict()
    changed = changed_keys(source, model.state_dict())
    backbone = {k for k in changed if k.startswith("backbone.")}
    assert backbone and all(
        k.rsplit(".", 2)[-2] in ("qkv", "proj", "fc1", "fc2") and k.endswith(".weight")
        for k in backbone
    )
    assert any(k.startswith("decoder.") for k in changed)
    assert not any("lora" in k for k in model.state_dict())
    # the frozen features once; LoRA changes them, so each fold's predictions need new ones
    assert calls == [len(scene.tiles)] * (1 + report["folds"])


def test_tiny_adapts_its_decoder_from_features_computed_once(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = bundle_of(tmp_path / "tiny", "tiny")
    scene, model, report, calls = adapted(bundle, city, monkeypatch)
    assert report["adapted"] == "decoder" and calls == [len(scene.tiles)]
    changed = changed_keys(scene.bundle.load_segmenter().state_dict(), model.state_dict())
    assert changed and all(k.startswith("decoder.") for k in changed)
    # the figures: every label scored before, and out of fold after, on the same pixels
    before, after = report["before"], report["after"]
    assert before["damaged_pixels"] == after["damaged_pixels"] > 0
    assert report["folds"] == 2 and "fold_thresholds" not in after  # the source's threshold
    assert report["threshold"] == after["threshold"] == scene.bundle.manifest.threshold
    seen = sum(c["objects"] for c in before["per_class"].values())
    assert len(scene.labels) * 0.8 <= seen <= len(scene.labels)  # overlapping disks hide some


def test_anchor_keeps_unlabelled_pixels_near_the_source(
    city: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = Path("default")  # the demo bundle: probabilities away from 0 and 1
    drift = []
    for anchor in (0.0, 50.0):
        scene, model, _, _ = adapted(bundle, city, monkeypatch, anchor)
        source = scene.bundle.load_segmenter()
        features = adapt.backbone_features(
            source, scene.tiles.images, adapt.normaliser(scene, torch.device("cpu")), "cpu"
        )
        with torch.no_grad():
            before = torch.sigmoid(source.decoder(features)[0])[:, 0]
            after = torch.sigmoid(model.eval().decoder(features)[0])[:, 0]
        unlabelled = torch.from_numpy(~scene.tiles.known)
        drift.append((after - before).abs()[unlabelled].mean().item())
    assert drift[1] < drift[0] / 2

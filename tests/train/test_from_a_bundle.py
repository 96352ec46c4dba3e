"""Training from a bundle (#20): init_bundle starts every fold from its weights (the
shift-consistency fine-tune), distill_bundle makes its map a soft target (a cheaper model
taught a phase-stable one's map); both refuse a bundle that does not fit before anything
is written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import stmap.train.protocols as protocols
from stmap.bundle import open_bundle
from stmap.errors import InputError
from stmap.train.losses import distillation_loss
from stmap.train.run import run_training
from tests.train.test_loop import tiny_config


@pytest.fixture(scope="module")
def base_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.train.conftest import make_tile_dataset

    root = tmp_path_factory.mktemp("init")
    tiles = make_tile_dataset(root / "data", {"alpha": 6, "beta": 6})
    config = tiny_config(tiles, root / "base", lambda_dpt=0.0, overlays=0)
    return run_training(config, command="stmap train")


def _tiles(base_bundle: Path) -> Path:
    return base_bundle.parents[1] / "data"


def _fold_starts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, torch.Tensor]]:
    """Record the model's weights as each fold begins."""
    starts: list[dict[str, torch.Tensor]] = []
    real = protocols.train_fold

    def spy(model, *args, **kwargs):
        starts.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real(model, *args, **kwargs)

    monkeypatch.setattr(protocols, "train_fold", spy)
    return starts


def test_every_fold_starts_from_the_bundles_weights(
    base_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    tiles = _tiles(base_bundle)
    expected = open_bundle(base_bundle).load_segmenter().state_dict()
    starts = _fold_starts(monkeypatch)
    out = tmp_path / "tuned"
    config = tiny_config(tiles, out, init_bundle=base_bundle, lambda_dpt=0.0, overlays=0)
    tuned = open_bundle(run_training(config, command="stmap train"))
    assert len(starts) == 2  # two folds, both from the bundle, not from fresh draws
    for start in starts:
        assert start.keys() == expected.keys()
        assert all(torch.equal(start[key], expected[key]) for key in expected)
    report = json.loads((out / "report.json").read_text())
    assert any("init_bundle" in item for item in report["differences"])
    provenance = tuned.manifest.provenance
    assert provenance["init_bundle_hash"] == open_bundle(base_bundle).hash()
    assert "fine-tuned from the bundle" in provenance["trained_on"]  # not "from scratch"
    assert "from scratch" not in provenance["trained_on"]

    starts.clear()  # without it, the folds start from fresh (seeded) weights
    run_training(tiny_config(tiles, tmp_path / "fresh", lambda_dpt=0.0, overlays=0))
    assert not torch.equal(
        starts[0]["decoder.classifier.weight"], expected["decoder.classifier.weight"]
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"backbone": "tiny-aa"}, "its backbone is 'tiny', this config's 'tiny-aa'"),
        ({"decoder_upsample": "bilinear"}, "its decoder_upsample is 'nearest'"),
        ({"decoder_channels": 8}, "its decoder_channels is 16"),
    ],
)
def test_a_bundle_of_another_architecture_is_refused_before_anything_is_written(
    base_bundle: Path, tmp_path: Path, overrides: dict, message: str
):
    """tiny-aa has tiny's tensors (they would load): the architecture is checked, not
    just the shapes; the run stops before its out_dir exists."""
    tiles = _tiles(base_bundle)
    out = tmp_path / "run"
    config = tiny_config(tiles, out, init_bundle=base_bundle, **overrides)
    with pytest.raises(InputError, match=message):
        run_training(config, command="stmap train")
    assert not out.exists()


def test_a_bundle_whose_backbone_differs_only_in_its_blurs_starts_the_folds(
    base_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """tiny-aa5n's weights start a tiny-aa7n fine-tune (the same tensors, 7-tap blurs, #20),
    and the provenance says whose weights they were; tiny-aa5 (other widths) and tiny
    (the same widths under other names) are still refused, before anything is written."""
    tiles = _tiles(base_bundle)
    aa5n = run_training(
        tiny_config(tiles, tmp_path / "aa5n", backbone="tiny-aa5n", lambda_dpt=0.0, overlays=0)
    )
    expected = open_bundle(aa5n).load_segmenter().state_dict()
    starts = _fold_starts(monkeypatch)
    config = tiny_config(
        tiles, tmp_path / "aa7n", backbone="tiny-aa7n", init_bundle=aa5n, lambda_dpt=0.0, overlays=0
    )
    tuned = open_bundle(run_training(config))
    assert all(torch.equal(start[k], expected[k]) for start in starts for k in expected)
    assert tuned.manifest.backbone == "tiny-aa7n"
    assert "its tiny-aa5n weights in tiny-aa7n" in tuned.manifest.provenance["trained_on"]
    for other, message in [("tiny-aa5", "its backbone is 'tiny-aa5n'"), ("tiny", "'tiny-aa5n'")]:
        out = tmp_path / other
        refused = tiny_config(tiles, out, backbone=other, init_bundle=aa5n)
        with pytest.raises(InputError, match=message):
            run_training(refused)
        assert not out.exists()


def test_a_bundle_that_maps_with_four_phases_starts_the_folds(
    base_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The phases a bundle averages (quincunx, last_stage_phases) are an inference
    setting (#20): a four-phase bundle, like the shipped one, starts a fine-tune."""
    from stmap.bundle import Architecture, write_bundle

    bundle = open_bundle(base_bundle)
    manifest = bundle.manifest
    architecture = manifest.architecture.model_dump() | {"quincunx": True, "last_stage_phases": 4}
    four = write_bundle(
        tmp_path / "four",
        bundle.load_segmenter(),
        manifest.model_copy(update={"architecture": Architecture(**architecture), "files": {}}),
    )
    expected = bundle.load_segmenter().state_dict()
    starts = _fold_starts(monkeypatch)
    config = tiny_config(_tiles(base_bundle), tmp_path / "tuned", init_bundle=four, overlays=0)
    run_training(config)
    assert len(starts) == 2
    assert all(torch.equal(start[k], expected[k]) for start in starts for k in expected)


def test_a_missing_bundle_is_refused(tmp_path: Path):
    config = tiny_config(tmp_path, tmp_path / "run", init_bundle=tmp_path / "nowhere")
    with pytest.raises(InputError, match="nowhere"):
        run_training(config, command="stmap train")
    assert not (tmp_path / "run").exists()


def test_distillation_is_zero_where_the_maps_agree_and_pulls_towards_the_teacher():
    teacher = torch.tensor([0.02, 0.3, 0.5, 0.97]).view(1, 1, 2, 2)
    agreeing = torch.logit(teacher)
    assert float(distillation_loss(agreeing, teacher)) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(1, 1, 2, 2, requires_grad=True)  # 0.5 everywhere
    loss = distillation_loss(student, teacher)
    assert float(loss.detach()) > 0.05
    (grad,) = torch.autograd.grad(loss, student)
    # descent raises the logits where the teacher says damaged, lowers them where intact
    assert (torch.sign(-grad) == torch.sign(agreeing)).view(-1)[[0, 1, 3]].all()
    with pytest.raises(InputError, match="differ"):
        distillation_loss(student, teacher[..., :1])


def test_a_cheaper_student_is_taught_the_bundles_map(
    base_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A tiny-aa5n student with a tiny teacher: the teacher's probabilities of each batch
    enter the loss at its weight, and the report and provenance say so."""
    import stmap.train.loop as loop

    taught_maps: list[torch.Tensor] = []
    real_loss = loop.distillation_loss

    def spy(logits, taught):
        taught_maps.append(taught)
        return real_loss(logits, taught)

    monkeypatch.setattr(loop, "distillation_loss", spy)
    out = tmp_path / "student"
    config = tiny_config(
        _tiles(base_bundle),
        out,
        backbone="tiny-aa5n",
        decoder_upsample="bilinear",
        shift_augment=True,
        distill_bundle=base_bundle,
        distill_weight=2.0,
        lambda_dpt=0.0,
        overlays=0,
    )
    student = open_bundle(run_training(config, command="stmap train"))
    assert student.manifest.backbone == "tiny-aa5n"
    assert taught_maps and all(float(t.min()) >= 0 and float(t.max()) <= 1 for t in taught_maps)
    report = json.loads((out / "report.json").read_text())
    history = report["tasks"][0]["history"][0]
    assert history["loss_distill"] > 0
    total = history["loss_focal"] + 0.01 * history["loss_pc"] + 2.0 * history["loss_distill"]
    assert history["loss_total"] == pytest.approx(total, rel=1e-4)
    assert any("distill_bundle" in item for item in report["differences"])
    assert student.manifest.provenance["distill_bundle_hash"] == open_bundle(base_bundle).hash()


def test_a_missing_teacher_is_refused_before_anything_is_written(tmp_path: Path):
    config = tiny_config(tmp_path, tmp_path / "run", distill_bundle=tmp_path / "no_teacher")
    with pytest.raises(InputError, match="no_teacher"):
        run_training(config, command="stmap train")
    assert not (tmp_path / "run").exists()


def test_a_frozen_backbones_feature_cache_is_the_bundles(
    frozen_vit: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """With a frozen backbone the decoder trains on cached features: they must come from
    the bundle's backbone (a LoRA-merged one, say), not from the config's fresh draw."""
    from stmap.train.features import FeatureCache
    from tests.train.conftest import make_tile_dataset

    tiles = make_tile_dataset(tmp_path / "data", {"alpha": 6, "beta": 6})
    common = {"backbone": frozen_vit, "weights": "random", "lambda_dpt": 0.0, "overlays": 0}
    base = run_training(tiny_config(tiles, tmp_path / "base", **common), command="stmap train")
    expected = open_bundle(base).load_segmenter().backbone.state_dict()
    cached_from: list[dict[str, torch.Tensor]] = []
    real_build = FeatureCache.build.__func__

    def spy(cls, model, *args, **kwargs):
        cached_from.append({k: v.clone() for k, v in model.backbone.state_dict().items()})
        return real_build(cls, model, *args, **kwargs)

    monkeypatch.setattr(FeatureCache, "build", classmethod(spy))
    torch.manual_seed(123)  # the config's own draw differs from the bundle's backbone
    config = tiny_config(tiles, tmp_path / "tuned", init_bundle=base, **common)
    run_training(config, command="stmap train")
    assert cached_from, "the frozen backbone's features were not cached"
    assert all(torch.equal(cached_from[0][k], expected[k]) for k in expected)

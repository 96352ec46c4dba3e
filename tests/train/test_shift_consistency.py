"""shift_consistency (#20): the shifted view, the loss, its config and its place in the loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stmap.bundle import open_bundle
from stmap.errors import InputError
from stmap.train.config import build_config
from stmap.train.losses import shift_consistency_loss, shift_view
from stmap.train.run import run_training
from tests.train.test_loop import tiny_config


def test_the_shifted_view_moves_pixels_up_and_left():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    view = shift_view(x, 5, 9)
    assert view.shape == x.shape
    assert torch.equal(view[..., : 32 - 5, : 32 - 9], x[..., 5:, 9:])
    assert torch.equal(shift_view(x, 0, 0), x)
    as_bytes = shift_view(x.to(torch.uint8), 3, 1)  # raw tiles keep their dtype
    assert as_bytes.dtype == torch.uint8
    with pytest.raises(InputError, match="leaves nothing"):
        shift_view(x, 32, 0)


@torch.no_grad()
def _pair(model: torch.nn.Module, dy: int, dx: int, seed: int = 0) -> torch.Tensor:
    coarse = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(seed))
    x = torch.nn.functional.interpolate(coarse, size=(64, 64), mode="bilinear")  # smooth ground
    return shift_consistency_loss(model(x), model(shift_view(x, dy, dx)), dy, dx)


@pytest.mark.parametrize(("dy", "dx"), [(1, 1), (7, 3), (15, 15)])
def test_the_loss_is_zero_for_a_shift_equivariant_model(dy: int, dx: int):
    torch.manual_seed(0)
    pointwise = torch.nn.Conv2d(3, 1, 1)  # identity-like: commutes with any shift
    assert float(_pair(pointwise, dy, dx)) == pytest.approx(0.0, abs=1e-7)


class Stride16Nearest(torch.nn.Module):
    """Samples its input every 16 px and upsamples by nearest neighbour, as ``tiny`` does."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coarse = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 16)
        return 4 * torch.nn.functional.interpolate(coarse, scale_factor=16, mode="nearest")


@pytest.mark.parametrize(("dy", "dx"), [(1, 1), (8, 8), (15, 2)])
def test_the_loss_is_positive_for_a_stride_16_nearest_model(dy: int, dx: int):
    assert float(_pair(Stride16Nearest(), dy, dx)) > 0.01
    # whole strides are invisible to it: the loss only sees the sub-stride phase
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    model = Stride16Nearest()
    on_lattice = shift_consistency_loss(model(x), model(shift_view(x, 16, 16)), 16, 16)
    # only the last (reflected) block differs, and the overlap leaves it out
    assert float(on_lattice) == pytest.approx(0.0, abs=1e-7)


def test_the_loss_refuses_mismatched_maps():
    with pytest.raises(InputError, match="differ"):
        shift_consistency_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 9), 1, 1)


def test_config_defaults_leave_the_method_unchanged(tmp_path: Path):
    config = tiny_config(tmp_path, tmp_path / "out")
    assert config.shift_consistency == 0 and config.decoder_upsample == "nearest"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"shift_consistency": -0.1}, "shift_consistency"),
        ({"shift_consistency": 1, "img_size": 16}, "img_size above 30"),
        ({"decoder_upsample": "bicubic"}, "decoder_upsample"),
        ({"quincunx": True}, "quincunx needs a tiny-family backbone"),
    ],
)
def test_config_refuses_bad_values(tmp_path: Path, overrides: dict, message: str):
    values = {"protocol": "fullsup", "data_root": tmp_path, "out_dir": tmp_path / "o", **overrides}
    with pytest.raises(InputError, match=message):
        build_config(values)


def test_training_with_consistency_and_an_antialiased_model(tile_root: Path, tmp_path: Path):
    """tiny-aa + bilinear + quincunx + shift_consistency train end to end; the bundle
    rebuilds them."""
    out = tmp_path / "run"
    config = tiny_config(
        tile_root,
        out,
        backbone="tiny-aa",
        decoder_upsample="bilinear",
        quincunx=True,
        shift_consistency=0.5,
        lambda_dpt=0.0,
        overlays=0,
    )
    bundle = open_bundle(run_training(config, command="stmap train"))
    assert bundle.manifest.backbone == "tiny-aa"
    assert bundle.manifest.architecture.decoder_upsample == "bilinear"
    assert bundle.manifest.architecture.quincunx  # the map averages both phases
    model = bundle.load_segmenter()
    assert model.config.quincunx
    upsample = model.decoder.blocks[0][-1]
    assert upsample.mode == "bilinear"
    report = json.loads((out / "report.json").read_text())
    history = report["tasks"][0]["history"][0]
    assert history["loss_shift"] > 0
    total = history["loss_focal"] + 0.01 * history["loss_pc"] + 0.5 * history["loss_shift"]
    assert history["loss_total"] == pytest.approx(total, rel=1e-4)
    assert any("shift-consistency" in item for item in report["differences"])


def test_shift_augment_moves_labels_with_pixels(tile_root: Path, tmp_path: Path, monkeypatch):
    """shift_augment: the loss sees each batch's labels and building masks moved exactly as
    its pixels (a label left behind would teach the model the wrong place), and the
    report names the deviation."""
    import stmap.train.loop as loop

    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_total = loop.total_loss

    def spy(out, target, buildings, *rest):
        seen.append((target.clone(), buildings.clone()))
        return real_total(out, target, buildings, *rest)

    monkeypatch.setattr(loop, "total_loss", spy)
    views: list[tuple[int, int]] = []
    real_shift = loop.shift_view

    def record(x, dy, dx):
        views.append((dy, dx))
        return real_shift(x, dy, dx)

    monkeypatch.setattr(loop, "shift_view", record)
    out = tmp_path / "run"
    config = tiny_config(tile_root, out, shift_augment=True, lambda_dpt=0.0, overlays=0)
    run_training(config, command="stmap train")
    assert views and all(0 <= dy <= 15 and 0 <= dx <= 15 for dy, dx in views)
    assert len({v for v in views}) > 1  # the phase is drawn per batch, not once
    # three views (pixels, labels, buildings) per batch, each with the same shift
    assert all(views[i] == views[i + 1] == views[i + 2] for i in range(0, len(views), 3))
    report = json.loads((out / "report.json").read_text())
    assert any("shift_augment" in item for item in report["differences"])
    assert seen


def test_shift_view_moves_labels_like_pixels():
    x = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    moved = shift_view(x, 5, 9)
    assert torch.equal(moved[..., :27, :23], x[..., 5:, 9:])


def test_with_the_quincunx_the_term_compares_the_quincunx_maps(
    tile_root: Path, tmp_path: Path, monkeypatch
):
    """A quincunx model maps with both phases of its last stage averaged: the consistency
    term must compare those maps (what users get), not the single-phase training output."""
    import stmap.train.loop as loop
    from stmap.model.segmenter import DamageSegmenter

    made: list[torch.Tensor] = []
    real_quincunx = DamageSegmenter._quincunx_logits

    def record_quincunx(self, x):
        made.append(real_quincunx(self, x))
        return made[-1]

    compared: list[tuple[torch.Tensor, torch.Tensor]] = []
    real_loss = loop.shift_consistency_loss

    def record_loss(anchor, shifted, dy, dx):
        compared.append((anchor, shifted))
        return real_loss(anchor, shifted, dy, dx)

    monkeypatch.setattr(DamageSegmenter, "_quincunx_logits", record_quincunx)
    monkeypatch.setattr(loop, "shift_consistency_loss", record_loss)
    config = tiny_config(
        tile_root,
        tmp_path / "run",
        backbone="tiny-aa5n",
        decoder_upsample="bilinear",
        quincunx=True,
        shift_consistency=1.0,
        lambda_dpt=0.0,
        overlays=0,
    )
    run_training(config, command="stmap train")
    assert compared
    for anchor, shifted in compared:
        assert any(anchor is q for q in made) and any(shifted is q for q in made)

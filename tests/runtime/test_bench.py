"""``stmap bench``: every figure present and sane on a tiny run; FLOPs counted right.

No timed assertions: speeds vary with the machine and its load; only their signs,
their consistency with each other and the exact FLOP counts are checked.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

from stmap.bundle import ANY_TILE_INFER, open_bundle
from stmap.cli import main
from stmap.cli.bench import _phase_cell, synthetic_city
from stmap.runtime.bench import (
    BenchOptions,
    count_flops_per_tile,
    km2_per_hour,
    phase_shift,
    random_bundle,
    run_bench,
)
from stmap.runtime.infer import InferOptions, run_inference
from stmap.synth import generate_city

FIELDS = {
    "model_mpx_per_s",
    "end_to_end_mpx_per_s",
    "efficiency",
    "device",
    "backend",
    "precision",
    "backbone",
    "tile",
    "batch_size",
    "stages",
    "peak_rss_mb",
    "flops_per_tile",
    "matmul_tflops",
    "fraction_of_ceiling",
    "km2_per_hour",
    "versions",
    "commit",
}


@pytest.fixture(scope="module")
def result(tiny_bundle: Path) -> dict[str, Any]:
    options = BenchOptions(
        model=str(tiny_bundle), device="cpu", batch_size=4, size=256, repeats=1, min_repeat_s=0.01
    )
    return run_bench(options, synthetic_city)


def test_tiny_run_reports_every_field(result: dict[str, Any]) -> None:
    assert result.keys() >= FIELDS
    for name in ("model_mpx_per_s", "end_to_end_mpx_per_s", "efficiency", "peak_rss_mb"):
        assert result[name] > 0, name
    for name in ("matmul_tflops", "fraction_of_ceiling", "km2_per_hour", "flops_per_tile"):
        assert result[name] > 0, name
    assert result["device"] == "cpu"
    assert result["backend"] == "torch"
    assert result["precision"] == "fp32"
    assert result["backbone"] == "tiny"
    assert (result["tile"], result["batch_size"], result["size"]) == (128, 4, 256)
    assert set(result["stages"]) >= {"read", "transfer", "compute", "blend", "write"}
    assert {"torch", "stmap", "gdal"} <= result["versions"].keys()
    assert result["peak_device_mb"] is None  # CPU: no device memory to report
    json.dumps(result)  # JSON-ready as it is


def test_tiny_run_figures_agree_with_each_other(result: dict[str, Any]) -> None:
    tile, stride = result["tile"], result["stride"]
    assert stride == tile - result["overlap"]
    # Model-only is measured before and after the end-to-end run, and averaged.
    before, after = result["model_tiles_per_s_before"], result["model_tiles_per_s_after"]
    assert before > 0 and after > 0
    assert result["model_tiles_per_s"] == pytest.approx((before + after) / 2, rel=1e-3)
    tile_ratio = result["model_tile_mpx_per_s"] / result["model_mpx_per_s"]
    assert tile_ratio == pytest.approx((tile / stride) ** 2, rel=1e-3)
    # efficiency is printed to 4 decimals: at a tiny size it can be small (0.03).
    assert result["efficiency"] == pytest.approx(
        result["end_to_end_mpx_per_s"] / result["model_mpx_per_s"], rel=1e-3, abs=5e-5
    )
    assert result["km2_per_hour"] == pytest.approx(
        result["end_to_end_mpx_per_s"] * 0.25 * 3600, rel=1e-3
    )


def test_a_city_too_small_for_a_shifted_crop_has_no_phase_figure(result: dict[str, Any]) -> None:
    # 256 px less the shift leaves no pixel a tile away from both crops' edges.
    assert result["phase_shift"] is None


def test_phase_figure_compares_a_crop_shifted_off_the_tile_grid(tiny_bundle: Path, tmp_path):
    city = generate_city(tmp_path / "city.tif", width=512, height=512, seed=2).image
    options = InferOptions(model=str(tiny_bundle), device="cpu")
    summary = run_inference([str(city)], tmp_path / "out", options)[0]
    stride = 128 - summary["overlap"]
    phase = phase_shift(city, tmp_path / "out", tmp_path / "phase", options, 128, stride)
    assert phase is not None
    assert tuple(phase["offset"]) == (409 % stride, 301 % stride)
    row, col = phase["offset"]
    assert phase["pixels"] == (512 - row - 2 * 128) * (512 - col - 2 * 128)
    assert 0 <= phase["median_dprob_255"] <= phase["p99_dprob_255"] <= phase["max_dprob_255"]
    assert 0 <= phase["flip_share"] <= 1
    assert _phase_cell(phase).endswith(f"{phase['p99_dprob_255']} (shift ({row}, {col}))")
    assert _phase_cell(None) is None


def test_large_tiles_still_get_a_phase_figure_on_the_default_city_size(tiny_bundle, tmp_path):
    """A 1024-px tiling compares pixels 128 px (not a tile) from the edges, so a city of
    stmap bench's sizes still has a phase figure (the shipped bundle's was None on the
    default 2048² city)."""
    city = generate_city(tmp_path / "city.tif", width=1536, height=1536, seed=2).image
    options = InferOptions(model=str(tiny_bundle), device="cpu")
    run_inference([str(city)], tmp_path / "out", options)
    phase = phase_shift(city, tmp_path / "out", tmp_path / "phase", options, 1024, 896)
    assert phase is not None and phase["margin"] == 128
    row, col = phase["offset"]
    assert phase["pixels"] == (min(1280, 1536 - row) - 256) * (min(1280, 1536 - col) - 256)


def test_a_city_that_ends_before_the_shift_has_no_phase_figure(tiny_bundle: Path, tmp_path):
    """With a large stride (a 512-px tiling), (409, 301) mod the stride can lie past a small
    city's end: no figure, not a crash (it crashed `stmap bench` on a 256² city)."""
    city = generate_city(tmp_path / "city.tif", width=256, height=256, seed=2).image
    options = InferOptions(model=str(tiny_bundle), device="cpu")
    run_inference([str(city)], tmp_path / "out", options)
    assert phase_shift(city, tmp_path / "out", tmp_path / "phase", options, 512, 448) is None


def test_flop_count_of_a_known_convolution() -> None:
    cin, cout, k, side = 3, 8, 3, 32

    class Conv(nn.Module):  # takes uint8 tiles, as the inference model does
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, padding=1)

        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            return self.conv(pixels.float())

    assert count_flops_per_tile(Conv(), side) == 2 * cin * cout * k**2 * side**2


def test_flop_count_includes_attention() -> None:
    """The fused CPU attention kernel has no FLOP formula: it must still be counted."""
    heads, tokens, dim = 2, 16, 8

    class Attention(nn.Module):
        def forward(self, pixels: torch.Tensor) -> torch.Tensor:
            q = pixels.float().reshape(1, heads, tokens, dim)
            return F.scaled_dot_product_attention(q, q, q)

    side = int(math.sqrt(heads * tokens * dim))  # 1 channel, side² = heads·tokens·dim
    flops = count_flops_per_tile(Attention(), side, channels=1)
    assert flops == 4 * heads * tokens**2 * dim  # QKᵀ and (softmax)V, 2 FLOPs per MAC


def test_km2_per_hour() -> None:
    assert km2_per_hour(1.0, 0.5) == pytest.approx(900.0)  # 1e6 px × 0.25 m² per second


def test_cli_json_parses(tiny_bundle: Path) -> None:
    args = ["bench", "--model", str(tiny_bundle), "--device", "cpu", "--size", "256"]
    args += ["--batch-size", "4", "--repeats", "1", "--json"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 0, outcome.output
    assert json.loads(outcome.stdout).keys() >= FIELDS


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cli_cuda_without_cuda_is_bad_usage() -> None:
    outcome = CliRunner().invoke(main, ["bench", "--device", "cuda", "--size", "256"])
    assert outcome.exit_code == 2
    assert "CUDA is not available" in outcome.output


def test_a_random_weight_bundle_maps_in_the_tiles_a_trained_one_would(tmp_path: Path) -> None:
    """`stmap bench --backbone tiny-aa7n` times the CNN in the 1024-px tiles that every
    trained CNN bundle maps in, not in its 128-px training tiles; a ViT keeps its tile."""
    cnn = open_bundle(random_bundle(tmp_path / "cnn", "tiny-aa7n", 0)).manifest
    assert cnn.tiling == ANY_TILE_INFER
    vit = open_bundle(random_bundle(tmp_path / "vit", "vit_small_patch16_dinov3.lvd1689m", 0))
    assert vit.manifest.tiling is None


def test_cli_backbone_and_model_together_are_bad_usage(tiny_bundle: Path) -> None:
    args = ["bench", "--model", str(tiny_bundle), "--backbone", "tiny", "--device", "cpu"]
    outcome = CliRunner().invoke(main, args)
    assert outcome.exit_code == 2
    assert "--backbone and --model" in outcome.output


def test_the_end_to_end_runs_reuse_the_model_only_backend(tiny_bundle: Path, monkeypatch) -> None:
    """One backend per bench: a second one would be built (and on CUDA compiled) inside
    the measured end-to-end time (issue 18)."""
    import stmap.runtime.backends.base as base

    built: list[str] = []
    real = base._create

    def counting(name, *args, **kwargs):
        backend = real(name, *args, **kwargs)  # "auto" tries some that refuse first
        built.append(name)
        return backend

    monkeypatch.setattr(base, "_create", counting)
    run_bench(
        BenchOptions(
            model=str(tiny_bundle),
            device="cpu",
            batch_size=4,
            size=128,
            repeats=1,
            min_repeat_s=0.01,
        ),
        synthetic_city,
    )
    assert built == ["torch"]


def test_the_int8_ceiling_is_an_int8_matrix_multiply() -> None:
    """`stmap bench` on a CPU whose tuned choice is int8 needs an int8 ceiling (it crashed)."""
    from stmap.runtime.bench import measure_matmul_flops

    assert measure_matmul_flops(torch.device("cpu"), "int8", side=64) > 0

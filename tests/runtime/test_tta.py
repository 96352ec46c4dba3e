"""Test-time augmentation: views are mapped back exactly, batched once, and averaged."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from stmap.bundle import open_bundle
from stmap.cli import main
from stmap.cli.bench import synthetic_city
from stmap.errors import InputError
from stmap.model import InferenceModel
from stmap.runtime.backends.base import Backend, Batcher, create_backend
from stmap.runtime.bench import BenchOptions, count_flops_per_tile, run_bench
from stmap.runtime.tta import VIEWS, TTABackend, augment, merge, with_tta
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster


class PixelwiseBackend:
    """A model that looks at each pixel alone, so it commutes with every flip and turn.

    It records the size of every batch it is given.
    """

    name, device, precision = "pixelwise", torch.device("cpu"), "fp32"

    def __init__(self) -> None:
        self.batches: list[int] = []

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(tiles))
        return tiles[:, :1].float() / 255

    def max_batch(self) -> int:
        return 32


def _tiles(n: int, size: int = 128, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).to(torch.uint8)


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    return make_varied_bundle(tmp_path_factory.mktemp("b") / "bundle")


@pytest.fixture(scope="module")
def bundle(bundle_path):
    return open_bundle(bundle_path)


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_an_equivariant_model_gives_the_same_probabilities_with_or_without_tta(mode):
    tiles = _tiles(3)
    plain = PixelwiseBackend().infer(tiles)
    augmented = with_tta(PixelwiseBackend(), mode)
    torch.testing.assert_close(augmented.infer(tiles), plain, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_every_view_of_a_chunk_runs_as_one_batch(mode):
    inner = PixelwiseBackend()
    backend = with_tta(inner, mode)
    backend.infer(_tiles(5))
    assert inner.batches == [5 * len(VIEWS[mode])]
    assert backend.max_batch() == 32 // len(VIEWS[mode])


def test_merge_maps_each_view_back_before_averaging():
    """A view's probabilities drawn from the viewed tile land on the original pixels."""
    tiles = _tiles(2, size=8)[:, :1].float()  # (N, 1, T, T), not symmetric
    views = augment(tiles, "d4")
    assert views.shape == (8 * 2, 1, 8, 8)
    assert not torch.equal(views[2], views[0])  # the views really differ
    torch.testing.assert_close(merge(views, "d4"), tiles)


def test_d4_output_of_a_symmetric_tile_is_symmetric(bundle, device):
    """A constant tile looks the same in every view, so the averaged map must too,
    even though the model itself is not symmetric (zero padding, random kernels)."""
    backend = with_tta(create_backend("torch", bundle, device, "fp32", "uint8"), "d4")
    constant = torch.full((1, 3, 128, 128), 97, dtype=torch.uint8)
    probs = backend.infer(constant)
    for view in augment(probs, "d4").chunk(8):
        torch.testing.assert_close(view, probs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["flip", "d4"])
def test_probabilities_stay_probabilities_and_batching_does_not_change_them(bundle, device, mode):
    backend = with_tta(create_backend("torch", bundle, device, "fp32", "uint8"), mode)
    tiles = _tiles(5)
    probs = Batcher(backend, None)(tiles)
    assert probs.shape == (5, 1, 128, 128) and probs.dtype == torch.float32
    assert probs.min() >= 0 and probs.max() <= 1
    torch.testing.assert_close(Batcher(backend, 2)(tiles), probs, atol=1e-5, rtol=0)


def test_none_is_the_plain_backend_and_flip_is_a_backend(bundle, device):
    plain = create_backend("torch", bundle, device, "fp32", "uint8")
    assert with_tta(plain, "none") is plain
    flipped = with_tta(plain, "flip")
    assert isinstance(flipped, TTABackend) and isinstance(flipped, Backend)
    assert (flipped.name, flipped.device, flipped.precision) == ("torch", device, "fp32")


def test_an_unknown_mode_is_refused():
    with pytest.raises(InputError, match=r"--tta d8: unknown mode; choose one of none, flip, d4"):
        with_tta(PixelwiseBackend(), "d8")


def test_the_cli_runs_flip_tta_and_says_so(tmp_path, bundle_path):
    scene = write_raster(tmp_path / "city.tif", smooth_image(96, 140))
    runs = {}
    for mode in ("none", "flip"):
        out = tmp_path / mode
        args = ["infer", str(scene), "-o", str(out), "--model", str(bundle_path), "--json"]
        result = CliRunner().invoke(main, [*args, "--device", "cpu", "--tta", mode])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["tta"] == mode
        runs[mode] = read_band(out / "city_damage_prob.tif")
    assert runs["flip"].max() < 255 and not np.array_equal(runs["flip"], runs["none"])


def test_the_cli_refuses_an_unknown_mode(tmp_path):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["infer", str(scene), "-o", str(out), "--tta", "d8"])
    assert result.exit_code == 2 and "--tta" in result.stderr and "d8" in result.stderr
    assert not out.exists()


def test_the_bench_measures_with_tta_and_charges_every_view(tiny_bundle):
    result = run_bench(
        BenchOptions(
            model=str(tiny_bundle),
            device="cpu",
            batch_size=2,
            size=128,
            repeats=1,
            min_repeat_s=0.01,
            tta="d4",
        ),
        synthetic_city,
    )
    assert result["tta"] == "d4" and result["batch_size"] == 2
    manifest = open_bundle(tiny_bundle).manifest
    model = InferenceModel(open_bundle(tiny_bundle).load_segmenter(), manifest.preprocessing())
    assert result["flops_per_tile"] == 8 * count_flops_per_tile(model, manifest.tile_size)
    assert result["model_tiles_per_s"] > 0 and result["end_to_end_mpx_per_s"] > 0

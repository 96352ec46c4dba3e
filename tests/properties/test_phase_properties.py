"""The default tiling and blending add almost nothing to a map under a shift of the tile phase.

A crop of a raster that starts at (row, col), placed at the raster's corner, gets the
world's tile grid shifted by (row, col): the same pixels under another tile phase
(runtime/phase.py). To see what the *path* (the
grid, mirrored edges, the window, the default overlap) adds, the model here is a
small CNN with stride 1 and zero padding: its output on a whole raster shifts with
the raster exactly, so any difference comes from where the tiles fall, as zero
padding makes each tile's outer pixels wrong. (A stride-16 model, like the shipped
one, adds its own aliasing: benchmarks/results/phase_stability.md measures it.)

Tolerance: on random rasters of 400–560 px and random offsets, every pixel at least
one tile (128 px) from both rasters' edges moves by at most 6/255, and 99 % of them
by at most 2/255. With overlap 16 the same model moves by up to 17/255, and with no
overlap by up to 254/255 (the last test: the tolerance can fail).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stmap.runtime.grid import default_overlap
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.phase import PhaseStats, compare_shifted, crop_at, read_layers
from tests.properties.profiles import examples
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

TILE = 128
MARGIN = TILE  # no tile that covers a compared pixel reaches past either raster's edge
MAX_DPROB, P99_DPROB = 6, 2  # in uint8 steps of 1/255


class LocalCNN(torch.nn.Module):
    """Three 3×3 convolutions, stride 1, zero padding: shift-equivariant but for the edges."""

    def __init__(self, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        shapes = [(3, 8), (8, 8), (8, 1)]
        self.convs = torch.nn.ModuleList(torch.nn.Conv2d(a, b, 3, padding=1) for a, b in shapes)
        with torch.no_grad():
            for conv in self.convs:
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * 0.5)
                conv.bias.zero_()

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.float() / 127.5 - 1
        for conv in self.convs[:-1]:
            x = torch.tanh(conv(x))
        return torch.sigmoid(2 * self.convs[-1](x))  # probabilities spread over 0..1


class LocalBackend:
    """The ``Backend`` interface around ``LocalCNN``, in place of the bundle's model."""

    name, precision, device = "torch", "fp32", torch.device("cpu")

    def __init__(self) -> None:
        self.model = LocalCNN().eval()

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model(tiles)

    def max_batch(self) -> int:
        return 64


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 128-px bundle for the manifest (tile, GSD, threshold); its model is replaced."""
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiles128")


def shifted_stats(bundle: Path, image: np.ndarray, offset: tuple[int, int], overlap: int | None):
    """The map of ``image`` against the map of its crop at ``offset`` (runtime/phase.py)."""
    options = InferOptions(model=str(bundle), overlap=overlap, device="cpu", workers=1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch("stmap.runtime.stream.create_backend", lambda *args, **kwargs: LocalBackend()),
    ):
        root = Path(tmp)
        city = write_raster(root / "city.tif", image)
        crop_at(city, root / "crop.tif", offset, image.shape[1:])
        maps = []
        for stem in ("city", "crop"):
            run_inference([str(root / f"{stem}.tif")], root / stem, options)
            out = root / stem
            maps.append(read_layers(out / f"{stem}_damage_prob.tif", out / f"{stem}_damage.tif"))
        return compare_shifted(maps[0], maps[1], offset, MARGIN)


def max_dprob(stats: PhaseStats) -> int:
    return stats.as_dict()["max_dprob_255"]


@examples(ci=4)
@given(
    height=st.integers(400, 560),
    width=st.integers(400, 560),
    seed=st.integers(0, 1000),
    row=st.integers(0, TILE - default_overlap(TILE) - 1),
    col=st.integers(1, TILE - default_overlap(TILE) - 1),
)
def test_a_shifted_tile_phase_moves_the_default_map_within_the_tolerance(
    bundle, height, width, seed, row, col
):
    stats = shifted_stats(bundle, smooth_image(height, width, seed=seed), (row, col), None)
    assert stats.pixels > 0
    assert max_dprob(stats) <= MAX_DPROB
    assert stats.quantile(0.99) <= P99_DPROB


def test_without_overlap_the_same_shift_breaks_the_tolerance(bundle):
    stats = shifted_stats(bundle, smooth_image(420, 420, seed=3), (37, 90), 0)
    assert max_dprob(stats) > MAX_DPROB

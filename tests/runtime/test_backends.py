"""Backends: the registry, device and precision choices, and batching with OOM back-off."""

from __future__ import annotations

import pytest
import torch

from stmap.bundle import open_bundle
from stmap.errors import DeviceError, InputError
from stmap.runtime.backends import base
from stmap.runtime.backends.base import (
    Backend,
    Batcher,
    create_backend,
    resolve_device,
    resolve_precision,
)
from tests.runtime.infer_data import make_varied_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return open_bundle(make_varied_bundle(tmp_path_factory.mktemp("b") / "bundle"))


def _tiles(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 128, 128), generator=g).to(torch.uint8)


def test_torch_backend_maps_raw_tiles_to_probabilities(bundle, device):
    backend = create_backend("torch", bundle, device, "fp32", "uint8")
    assert isinstance(backend, Backend) and backend.name == "torch"
    probs = backend.infer(_tiles(3))
    assert probs.shape == (3, 1, 128, 128) and probs.dtype == torch.float32
    assert probs.min() >= 0 and probs.max() <= 1 and probs.std() > 0.01


def test_auto_picks_a_backend_that_runs_here(bundle, device):
    backend = create_backend("auto", bundle, device, "fp32", "uint8")
    assert backend.infer(_tiles(1)).shape == (1, 1, 128, 128)


def test_results_do_not_depend_on_the_batch_size(bundle, device):
    backend = create_backend("torch", bundle, device, "fp32", "uint8")
    tiles = _tiles(7)
    one = Batcher(backend, 1)(tiles)
    many = Batcher(backend, 32)(tiles)
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_bf16_on_the_cpu_stays_close_to_fp32(bundle, device):
    tiles = _tiles(2)
    fp32 = create_backend("torch", bundle, device, "fp32", "uint8").infer(tiles)
    bf16 = create_backend("torch", bundle, device, "bf16", "uint8").infer(tiles)
    assert (fp32 - bf16).abs().max() < 0.05


def test_uint16_input_is_scaled_by_the_manifest(bundle, device):
    backend8 = create_backend("torch", bundle, device, "fp32", "uint8")
    backend16 = create_backend("torch", bundle, device, "fp32", "uint16")
    tiles = _tiles(2)
    as16 = (tiles.int() * 4095 // 255).int()  # the same radiance on a 12-bit scale
    torch.testing.assert_close(backend8.infer(tiles), backend16.infer(as16), atol=2e-3, rtol=0)


class _FakeOOM:
    """A backend that runs out of memory above ``limit`` tiles per batch."""

    name, device, precision = "fake", torch.device("cpu"), "fp32"

    def __init__(self, limit: int):
        self.limit, self.batches = limit, []

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        if len(tiles) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
        self.batches.append(len(tiles))
        return tiles[:, :1].float() / 255

    def max_batch(self) -> int:
        return 64


def test_auto_batch_size_halves_on_out_of_memory_and_loses_nothing():
    backend = _FakeOOM(limit=10)
    batcher = Batcher(backend, None)
    tiles = _tiles(37)
    probs = batcher(tiles)
    assert batcher.size == 8 and backend.batches == [8, 8, 8, 8, 5]
    torch.testing.assert_close(probs, tiles[:, :1].float() / 255)


def test_a_fixed_batch_size_that_does_not_fit_is_an_error_with_a_fix():
    with pytest.raises(DeviceError, match="out of memory .* batch size 16.*--batch-size"):
        Batcher(_FakeOOM(limit=10), 16)(_tiles(20))


def test_unknown_and_unavailable_backends_are_refused_with_a_hint(bundle, device, monkeypatch):
    with pytest.raises(InputError, match="--backend nope: unknown backend"):
        create_backend("nope", bundle, device, "fp32", "uint8")
    monkeypatch.setitem(base.MODULES, "fancy", "stmap.runtime.backends.fancy_not_here")
    monkeypatch.setitem(base.INSTALL_HINTS, "fancy", "pip install fancy")
    with pytest.raises(DeviceError, match="--backend fancy: not available.*pip install fancy"):
        create_backend("fancy", bundle, device, "fp32", "uint8")


def test_device_and_precision_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="--device tpu"):
        resolve_device("tpu")
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        assert resolve_precision("auto", torch.device("cpu")) == "fp32"
        with pytest.raises(DeviceError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_backend_matches_the_cpu_within_half_precision(bundle):
    tiles = _tiles(8)
    cpu = create_backend("torch", bundle, torch.device("cpu"), "fp32", "uint8").infer(tiles)
    cuda = torch.device("cuda")
    backend = create_backend("torch", bundle, cuda, resolve_precision("auto", cuda), "uint8")
    probs = Batcher(backend, None)(tiles.to(cuda))
    assert (probs.cpu() - cpu).abs().max() < 0.02

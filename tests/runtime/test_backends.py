"""Backends: the registry, device and precision choices, and batching with OOM back-off."""

from __future__ import annotations

import pytest
import torch

from stmap.bundle import open_bundle
from stmap.errors import DeviceError, InputError
from stmap.runtime.backends import BACKENDS, PRECISIONS, BackendSpec, base
from stmap.runtime.backends.base import (
    Backend,
    Batcher,
    create_backend,
    precision_candidates,
    resolve_device,
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
    """The backend itself; whether a run may use it is the parity gate's call
    (tests/runtime/test_precision.py)."""
    from stmap.runtime.backends.torch_backend import TorchBackend

    tiles = _tiles(2)
    fp32 = TorchBackend(bundle, device, "fp32", "uint8").infer(tiles)
    bf16 = TorchBackend(bundle, device, "bf16", "uint8").infer(tiles)
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
    fancy = BackendSpec(
        "fancy",
        "Fancy",
        "stmap.runtime.backends.fancy_not_here:FancyBackend",
        PRECISIONS,
        ("cpu", "cuda"),
        "pip install fancy",
    )
    monkeypatch.setitem(BACKENDS, "fancy", fancy)
    with pytest.raises(DeviceError, match="--backend fancy: not available.*pip install fancy"):
        create_backend("fancy", bundle, device, "fp32", "uint8")


def test_device_and_precision_choices():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="--device tpu"):
        resolve_device("tpu")
    assert precision_candidates("bf16", torch.device("cpu")) == ["bf16"]
    assert precision_candidates("auto", torch.device("cpu")) == ["fp32"]
    with pytest.raises(InputError, match="--precision fp8: expected auto, fp32, fp16, bf16"):
        precision_candidates("fp8", torch.device("cpu"))
    if not torch.cuda.is_available():
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(DeviceError, match="--device cuda: CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
def test_cuda_backend_matches_the_cpu_within_half_precision(bundle):
    tiles = _tiles(8)
    cpu = create_backend("torch", bundle, torch.device("cpu"), "fp32", "uint8").infer(tiles)
    cuda = torch.device("cuda")
    backend = create_backend("torch", bundle, cuda, "auto", "uint8")
    probs = Batcher(backend, None)(tiles.to(cuda))
    assert (probs.cpu() - cpu).abs().max() < 0.02


class _FakeBackend:
    """Records the precision it was built in; refuses those it has no 'engine' for."""

    def __init__(self, name: str, engines: tuple[str, ...], device, precision: str):
        if precision not in engines:
            raise DeviceError(f"no {precision} engine")
        self.name, self.device, self.precision = name, device, precision

    def infer(self, tiles):
        raise AssertionError("not run in these tests")

    def max_batch(self) -> int:
        return 1


@pytest.fixture
def fake_cuda_backends(monkeypatch):
    """A 'fast' backend that runs fp32/fp16 only, tried before torch, on a bf16 GPU."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    fast = BackendSpec("fast", "Fast", "tests.unused:Fast", ("fp32", "fp16"), ("cpu", "cuda"))
    monkeypatch.setattr(base, "BACKENDS", {"fast": fast, "torch": BACKENDS["torch"]})

    def register(engines: tuple[str, ...]) -> None:
        def factory(bundle, device, precision, dtype):
            return _FakeBackend("fast", engines, device, precision)

        monkeypatch.setitem(base._FACTORIES, "fast", factory)

    return register


def test_auto_precision_is_resolved_per_backend_so_auto_keeps_the_fast_backend(
    bundle, fake_cuda_backends
):
    # Regression: "auto" once resolved to bf16 before the backend was chosen, so a
    # backend without bf16 (ONNX Runtime, TensorRT) was always passed over on CUDA.
    fake_cuda_backends(engines=("fp32", "fp16"))
    backend = create_backend("auto", bundle, torch.device("cuda"), "auto", "uint8")
    assert (backend.name, backend.precision) == ("fast", "fp16")


def test_a_named_backend_falls_back_to_fp32_only_under_auto_precision(bundle, fake_cuda_backends):
    fake_cuda_backends(engines=("fp32",))
    cuda = torch.device("cuda")
    assert create_backend("fast", bundle, cuda, "auto", "uint8").precision == "fp32"
    with pytest.raises(DeviceError, match="no fp16 engine"):
        create_backend("fast", bundle, cuda, "fp16", "uint8")
    with pytest.raises(DeviceError, match="no bf16 engine"):
        create_backend("fast", bundle, cuda, "bf16", "uint8")


@pytest.mark.parametrize(
    ("setting", "device", "expected"),
    [
        (None, "cuda", "default"),
        (None, "cpu", None),
        ("off", "cuda", None),
        ("reduce-overhead", "cuda", "reduce-overhead"),
        ("default", "cpu", "default"),
    ],
)
def test_compile_mode_follows_the_environment(monkeypatch, setting, device, expected) -> None:
    """STMAP_TORCH_COMPILE lets the GPU proof compare eager, compiled and CUDA graphs."""
    from stmap.runtime.backends.torch_backend import COMPILE_ENV, compile_mode

    if setting is None:
        monkeypatch.delenv(COMPILE_ENV, raising=False)
    else:
        monkeypatch.setenv(COMPILE_ENV, setting)
    assert compile_mode(torch.device(device)) == expected

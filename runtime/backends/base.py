"""One small interface over every inference backend, and a registry that picks by name.

A backend turns a batch of raw tiles into damage probabilities on one device; the
pipeline never knows which backend runs (Polygraphy's ``BaseRunner`` in spirit).
Preprocessing (scaling by the input dtype, normalisation) runs inside the backend,
on the device, exactly as the bundle's manifest prescribes.

Adding a backend touches one place: a module with its class, and one row in
``stmap.runtime.backends.BACKENDS`` (precisions, devices, install hint; its position is
its rank in ``auto``'s order), from which the CLI's choices come too. The module is
imported only when the backend is asked for. Its factory raises ``DeviceError`` or
``MissingDependencyError`` (with the install hint) when it cannot run here; ``auto``
then tries the next one. Precision ``auto`` is resolved per backend, from the
precisions its row declares: ONNX
Runtime and TensorRT run fp16 where PyTorch runs bf16, and neither may be passed over
just because bf16 was chosen before the backend was. On the CPU, ``auto`` for both
backend and precision is measured instead (``stmap.runtime.precision.tune``), and any
precision below fp32 runs only where its parity with fp32 holds.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

from stmap.bundle import Bundle
from stmap.errors import DeviceError, InputError, MissingDependencyError
from stmap.runtime.backends import BACKENDS, DEVICE_WORDS, PRECISIONS, BackendSpec

log = logging.getLogger(__name__)


@runtime_checkable
class Backend(Protocol):
    """Runs the model on batches of tiles on one device.

    name: the registry name ("torch", ...).
    device: where ``infer`` takes and returns tensors.
    precision: the arithmetic it runs in: "fp32", "fp16" or "bf16".
    """

    name: str
    device: torch.device
    precision: str

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, C, T, T) raw pixels (uint8, or int32 holding uint16 values) on ``device``
        → (N, 1, T, T) float32 damage probabilities on ``device``."""
        ...

    def max_batch(self) -> int:
        """The largest batch worth trying; ``--batch-size auto`` starts here."""
        ...


# ``--batch-size auto``'s first try, in model pixels: 32 tiles of 128² on a CPU, 256 on a
# GPU; a bundle whose tiles are larger (``tiling``) batches fewer of them, so one batch
# asks for the same memory whatever the tile.
MAX_BATCH_PIXELS = {"cuda": 256 * 128 * 128, "cpu": 32 * 128 * 128}


def max_tiles(device: torch.device, tile: int) -> int:
    """The largest batch of ``tile``² tiles worth trying on ``device`` (one at least)."""
    pixels = MAX_BATCH_PIXELS.get(device.type, MAX_BATCH_PIXELS["cpu"])
    return max(1, pixels // (tile * tile))


BackendFactory = Callable[[Bundle, torch.device, str, str], Backend]
_FACTORIES: dict[str, BackendFactory] = {}  # the factories imported so far, by name


def create_backend(
    name: str, bundle: Bundle, device: torch.device, precision: str, input_dtype: str
) -> Backend:
    """The backend ``name`` (or the first of ``BACKENDS`` that runs here, for "auto").

    precision: "auto" or one of PRECISIONS; "auto" is resolved per backend
        (``precision_candidates``) and the backend reports what it chose. On the CPU,
        backend and precision both "auto" pick the fastest pair whose parity holds,
        measured once per bundle and machine; a precision below fp32 is refused
        (ParityRefused, with the figure) where its parity does not hold.
    input_dtype: the rasters' dtype ("uint8", "uint16"): it picks the manifest's scaling.
    """
    check_precision(precision)
    if device.type == "cpu":
        from stmap.runtime import precision as ladder  # only the CPU pays for the import

        if name == precision == "auto" and ladder.autotune_enabled():
            choice = ladder.tune(
                bundle,
                input_dtype,
                lambda n, p: _create(n, bundle, device, p, input_dtype, fall_back=False),
            )
            name, precision = choice["backend"], choice["precision"]
        backend = _create_any(name, bundle, device, precision, input_dtype)
        if backend.precision != "fp32":
            ladder.check_parity(backend, bundle, backend.name, input_dtype)
        return backend
    return _create_any(name, bundle, device, precision, input_dtype)


def _create_any(
    name: str, bundle: Bundle, device: torch.device, precision: str, input_dtype: str
) -> Backend:
    """Backend ``name``, or for "auto" the first of ``BACKENDS`` that runs here."""
    if name != "auto":
        return _create(name, bundle, device, precision, input_dtype, fall_back=True)
    refusals = []
    for candidate in BACKENDS:
        try:
            return _create(candidate, bundle, device, precision, input_dtype, fall_back=False)
        except (DeviceError, MissingDependencyError) as exc:
            refusals.append(f"{candidate}: {exc}")
            log.debug("backend %s not used: %s", candidate, exc)
    raise DeviceError("no inference backend can run here:\n  " + "\n  ".join(refusals))


def _create(
    name: str,
    bundle: Bundle,
    device: torch.device,
    precision: str,
    input_dtype: str,
    *,
    fall_back: bool,
) -> Backend:
    """Backend ``name`` in the first of its precision candidates that it can run.

    fall_back: with precision "auto" on CUDA, end with fp32 (a backend the user named
    runs even without a reduced-precision export); "auto" backends try only the fast
    precisions, so that an fp32 engine is not preferred to PyTorch in bf16.
    """
    spec = _spec(name)
    if device.type not in spec.devices:
        runs_on = " and ".join(DEVICE_WORDS.get(d, d) for d in spec.devices)
        raise DeviceError(f"{spec.title} runs on {runs_on} only, not on {device}")
    factory = _factory(spec)
    candidates = precision_candidates(precision, device, spec.precisions)
    if fall_back and precision == "auto" and "fp32" not in candidates:
        candidates.append("fp32")
    if not candidates:
        raise DeviceError(f"runs none of the reduced precisions on {device}")
    for chosen in candidates[:-1]:
        try:
            return factory(bundle, device, chosen, input_dtype)
        except DeviceError as exc:
            log.debug("backend %s not run in %s: %s", name, chosen, exc)
    return factory(bundle, device, candidates[-1], input_dtype)


def _spec(name: str) -> BackendSpec:
    if name not in BACKENDS:
        raise InputError(
            f"--backend {name}: unknown backend; choose one of auto, {', '.join(BACKENDS)}"
        )
    return BACKENDS[name]


def _factory(spec: BackendSpec) -> BackendFactory:
    """The backend's factory, its module imported on first use."""
    if spec.name not in _FACTORIES:
        try:
            module = importlib.import_module(spec.module)
        except ModuleNotFoundError as exc:
            if exc.name != spec.module:
                raise
            raise DeviceError(
                f"--backend {spec.name}: not available in this version of stmap"
                + (f"; it will need: {spec.install_hint}" if spec.install_hint else "")
            ) from None
        _FACTORIES[spec.name] = getattr(module, spec.factory.partition(":")[2])
    return _FACTORIES[spec.name]


def resolve_device(spec: str) -> torch.device:
    """ "auto" (CUDA when present, else CPU), "cpu", "cuda" or "cuda:N", checked to exist."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise InputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise InputError(f"--device {spec}: expected auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"--device {spec}: CUDA is not available here (no NVIDIA GPU or driver, or a "
            "CPU-only PyTorch); use --device cpu or auto"
        )
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise DeviceError(
            f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return device


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def check_precision(spec: str) -> None:
    """Refuse a ``--precision`` that is not auto or one of PRECISIONS."""
    if spec != "auto" and spec not in PRECISIONS:
        raise InputError(f"--precision {spec}: expected auto, {', '.join(PRECISIONS)}")


def precision_candidates(
    spec: str, device: torch.device, supported: tuple[str, ...] = PRECISIONS
) -> list[str]:
    """The precisions to try for ``spec``, best first, among those a backend supports.

    "auto": fp32 on the CPU (reduced precision is slower there); on CUDA bf16 where
    the GPU has it, then fp16. An explicit precision is the only candidate.
    """
    check_precision(spec)
    if spec != "auto":
        return [spec]
    if device.type != "cuda":
        return ["fp32"]
    reduced = ("bf16", "fp16") if torch.cuda.is_bf16_supported() else ("fp16",)
    return [p for p in reduced if p in supported]


class Batcher:
    """Feeds any number of tiles to a backend in batches.

    With a fixed batch size an out-of-memory error is the user's to fix; with
    ``auto`` (``batch_size=None``) the batch starts at the backend's ``max_batch``
    and halves on every CUDA out-of-memory error, and the failed batch is retried.
    """

    def __init__(self, backend: Backend, batch_size: int | None):
        if batch_size is not None and batch_size < 1:
            raise InputError(f"--batch-size {batch_size}: must be a positive integer or auto")
        self.backend = backend
        self.auto = batch_size is None
        self.size = batch_size or backend.max_batch()

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, C, T, T) tiles on the backend's device → (N, 1, T, T) float32 probabilities."""
        n, _, h, w = tiles.shape
        out = torch.empty((n, 1, h, w), dtype=torch.float32, device=tiles.device)
        start = 0
        while start < n:
            stop = min(start + self.size, n)
            try:
                out[start:stop] = self.backend.infer(tiles[start:stop])
            except torch.cuda.OutOfMemoryError:
                self._back_off()
                continue
            start = stop
        return out

    def _back_off(self) -> None:
        if not self.auto or self.size == 1:
            raise DeviceError(
                f"out of memory on {self.backend.device} at batch size {self.size}; "
                "use a smaller --batch-size (or auto), or a larger device"
            ) from None
        if self.backend.device.type == "cuda":
            torch.cuda.empty_cache()
        self.size //= 2
        log.info("out of memory: batch size reduced to %d", self.size)

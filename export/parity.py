"""Every export is checked against eager PyTorch before it enters a bundle.

As timm's ``utils/onnx.py`` does after export, the exported model and the float32 eager
model run the same uint8 tiles, here two kinds: uniform random bytes (every code path,
saturated extremes included) and tiles of a synthetic post-earthquake city from
``stmap.synth`` (the statistics the model meets in the field). The largest absolute
probability difference must stay within the precision's tolerance, or the export is
refused and nothing is written.
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stmap.errors import InputError
from stmap.lazy import lazy_import

# max |Δ probability| against eager float32; int8: the CPU ladder's 2/255
TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2, "int8": 2 / 255}
DEFAULT_SAMPLES = 16

Infer = Callable[[torch.Tensor], torch.Tensor]  # (N, C, T, T) uint8 → (N, 1, T, T) float


class ParityError(InputError):
    """An export whose outputs differ from PyTorch beyond the tolerance (exit 2)."""


@dataclass(frozen=True)
class ParityReport:
    """The measured agreement of one exported model with eager PyTorch."""

    precision: str
    max_abs_diff: float
    tolerance: float
    samples: int
    per_input: dict[str, float]
    runtime: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What goes into the manifest under ``exports[...]["parity"]``."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "samples": self.samples,
            "per_input": self.per_input,
            "reference": f"PyTorch {torch.__version__} eager, float32, CPU",
            **self.runtime,
        }


def check_samples(samples: int) -> None:
    """Six tiles at least: one alone, the two extremes, and some of each kind."""
    if samples < 6:
        raise InputError(f"--samples {samples}: parity needs at least 6 tiles")


def parity_batches(
    tile_size: int, channels: int, samples: int = DEFAULT_SAMPLES, seed: int = 0
) -> list[tuple[str, torch.Tensor]]:
    """(label, (N, C, T, T) uint8) batches: half random, half synthetic city; one of one.

    The single-tile batch checks the dynamic batch axis; the random batch starts with
    an all-0 and an all-255 tile so saturated inputs are covered.
    """
    check_samples(samples)
    n_random = samples // 2
    shape = (n_random, channels, tile_size, tile_size)
    random = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    random[1] = 0
    random[2] = 255
    city = city_tiles(tile_size, channels, samples - n_random, seed)
    return [
        ("random", torch.from_numpy(random[:1].copy())),
        ("random", torch.from_numpy(random[1:])),
        ("synthetic-city", torch.from_numpy(city.copy())),
    ]


@functools.lru_cache(maxsize=4)
def city_tiles(tile_size: int, channels: int, count: int, seed: int) -> np.ndarray:
    """(count, C, T, T) uint8 cut from a small synthetic post-earthquake city at 0.5 m.

    ``stmap synth`` draws what the model meets in the field (roofs, shadows, debris);
    parity is about numerics, so one GSD serves every bundle. Its RGB bands repeat
    for models with more than three. Cached (fp32 and fp16 checks share a city), so
    the array is read-only.
    """
    from stmap.io.raster import open_raster
    from stmap.synth import generate_city

    side = math.ceil(math.sqrt(count))
    size = max(64, side * tile_size)  # the generator draws 64 px at least
    with tempfile.TemporaryDirectory(prefix="stmap-parity-") as scratch:
        city = generate_city(
            Path(scratch) / "city.tif", width=size, height=size, damage_rate=0.3, seed=seed
        )
        with open_raster(city.image) as src:
            image = src.read()[:, : side * tile_size, : side * tile_size]
    image = image[np.arange(channels) % len(image)]
    grid = image.reshape(channels, side, tile_size, side, tile_size).transpose(1, 3, 0, 2, 4)
    tiles = np.ascontiguousarray(grid.reshape(-1, channels, tile_size, tile_size)[:count])
    tiles.flags.writeable = False
    return tiles


def compare(
    reference: Infer,
    candidate: Infer,
    batches: list[tuple[str, torch.Tensor]],
    *,
    precision: str,
    what: str,
    runtime: dict[str, str] | None = None,
) -> ParityReport:
    """Run both on every batch; raise ParityError if any probability differs too much."""
    tolerance = TOLERANCES[precision]
    per_input: dict[str, float] = {}
    for label, batch in batches:
        expected = reference(batch).float().cpu()
        actual = candidate(batch).float().cpu()
        if actual.shape != expected.shape:
            raise ParityError(
                f"{what} returns shape {tuple(actual.shape)} for a batch of {len(batch)}, "
                f"PyTorch {tuple(expected.shape)}; nothing was added to the bundle"
            )
        diff = (actual - expected).abs().max().item()
        worst = diff if math.isfinite(diff) else math.inf
        per_input[label] = max(per_input.get(label, 0.0), worst)
    max_diff = max(per_input.values())
    samples = sum(len(batch) for _, batch in batches)
    if not max_diff <= tolerance:
        label = max(per_input, key=per_input.__getitem__)
        raise ParityError(
            f"{what} differs from PyTorch by {max_diff:.3g} in probability on {label} tiles "
            f"(tolerance {tolerance:g} for {precision}, {samples} tiles); the export was "
            "refused and nothing was added to the bundle. Try another --opset, or report it "
            "with the model's backbone"
        )
    return ParityReport(precision, max_diff, tolerance, samples, per_input, runtime or {})


def torch_reference(model: torch.nn.Module) -> Infer:
    """Eager float32 inference on the CPU, without autograd."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return run


def onnx_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    *,
    precision: str,
    tile_size: int,
    channels: int,
    samples: int = DEFAULT_SAMPLES,
) -> ParityReport:
    """Compare ONNX Runtime (CPU provider) running ``onnx_path`` with eager ``model``."""
    from stmap.export.onnx_export import INPUT_NAME, OUTPUT_NAME

    ort = lazy_import("onnxruntime")
    provider = "CPUExecutionProvider"
    session = ort.InferenceSession(str(onnx_path), providers=[provider])

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])

    return compare(
        torch_reference(model),
        run,
        parity_batches(tile_size, channels, samples),
        precision=precision,
        what=f"{onnx_path.name} in ONNX Runtime",
        runtime={"onnxruntime": ort.__version__, "provider": provider},
    )

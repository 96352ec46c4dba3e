"""The tiles every parity check runs, and the float32 reference they are judged against.

Export checks each exported model on them before it enters a bundle; the runtime's
CPU precision ladder checks bf16 and int8 on the same tiles, so a figure from either
stage means the same thing. Two kinds: uniform random bytes (every code path,
saturated extremes included) and tiles of a synthetic post-earthquake city from
``stmap.synth`` (the statistics the model meets in the field).
"""

from __future__ import annotations

import functools
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from stmap.errors import InputError

DEFAULT_SAMPLES = 16

Infer = Callable[[torch.Tensor], torch.Tensor]  # (N, C, T, T) uint8 → (N, 1, T, T) float


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


def torch_reference(model: torch.nn.Module) -> Infer:
    """Eager float32 inference on the CPU, without autograd."""

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(batch)

    return run

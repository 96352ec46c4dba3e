"""On-device preprocessing: raw pixels → normalised float, exactly as at training.

The bundle manifest carries the numbers; this module turns them into tensor ops so
that the runtime ships uint8 bytes and scales them on the device, and the ONNX
graph can carry the same ops inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """Scale raw values to [0, 1] by ``value_max`` of their dtype, then (x - mean) / std."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    value_max: float = 255.0

    def scale_and_shift(self) -> tuple[list[float], list[float]]:
        """Per-band (a, b) with x_norm = x_raw * a + b: one fused multiply-add on device."""
        a = [1.0 / (self.value_max * s) for s in self.std]
        b = [-m / s for m, s in zip(self.mean, self.std, strict=True)]
        return a, b


class Normalize(nn.Module):
    """(B, C, H, W) raw integers or floats → (B, C, H, W) normalised float32."""

    def __init__(self, preprocessing: Preprocessing):
        super().__init__()
        a, b = preprocessing.scale_and_shift()
        self.register_buffer("a", torch.tensor(a).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("b", torch.tensor(b).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.b, x.float(), self.a)

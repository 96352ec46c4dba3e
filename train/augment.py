"""Photometric augmentation of training batches: new colours and light, never new geometry.

Opt-in through ``photometric_augment`` (0, the default, is off: the paper trains without
augmentation). A model trained from scratch on a few synthetic styles otherwise learns
each style's palette and light and finds nothing on a style it never saw; drawing a new
acquisition per tile (exposure, colour balance, gamma, contrast, saturation, haze, sensor
noise) makes it look at shapes and textures instead. Labels, building masks and pixel
positions are never touched.
"""

from __future__ import annotations

import torch

VALUE_MAX = 255.0  # training tiles are decoded to uint8
_LUMA = (0.299, 0.587, 0.114)


class PhotometricAugment:
    """Per-tile random acquisition changes; ``strength`` scales every range (1 = the defaults).

    Ranges at strength 1, drawn independently per tile: exposure ×e^±0.3, per-band gain
    ×e^±0.25 (colour casts as far apart as the styles' balances), gamma e^±0.3, saturation
    ×[0.2, 1.5], contrast about the tile mean ×e^[-0.5, 0.2], haze towards a bright
    airlight up to 30 %, Gaussian noise σ up to 1.5 %.
    Every draw comes from one CPU generator seeded with ``seed``, so a seeded run repeats
    exactly on any device.
    """

    def __init__(self, strength: float, seed: int):
        self.strength = strength
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) raw values in [0, 255] → float32 of the same shape and range."""
        b = images.shape[0]
        s = self.strength
        generator = self.generator

        def draw(low: float, high: float, *shape: int) -> torch.Tensor:
            values = torch.rand(b, *shape, generator=generator) * (high - low) + low
            return values.view(b, *shape, *([1] * (3 - len(shape)))).to(images.device)

        x = images.float() / VALUE_MAX
        x = x * torch.exp(draw(-0.3 * s, 0.3 * s, 1) + draw(-0.25 * s, 0.25 * s, 3))
        x = x.clamp(0, 1) ** torch.exp(draw(-0.3 * s, 0.3 * s, 1))
        luma = torch.tensor(_LUMA, device=x.device).view(1, 3, 1, 1)
        grey = (x * luma).sum(1, keepdim=True)
        x = grey + (x - grey) * draw(max(0.0, 1 - 0.8 * s), 1 + 0.5 * s, 1)
        mean = x.mean((1, 2, 3), keepdim=True)
        x = mean + (x - mean) * torch.exp(draw(-0.5 * s, 0.2 * s, 1))
        haze = draw(0.0, min(0.3 * s, 0.9), 1)
        airlight = draw(0.6, 0.95, 3)
        x = x * (1 - haze) + airlight * haze
        sigma = draw(0.0, 0.015 * s, 1)
        noise = torch.randn(images.shape, generator=generator).to(images.device)
        x = x + noise * sigma
        return x.clamp(0, 1) * VALUE_MAX


def photometric_augmenter(strength: float, seed: int) -> PhotometricAugment | None:
    """The augmentation for a config's ``photometric_augment`` (None when it is 0: off)."""
    return PhotometricAugment(strength, seed) if strength > 0 else None

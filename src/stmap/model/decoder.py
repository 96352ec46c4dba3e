"""The trained decoder and the frozen projection head of Smart Transfer."""

from __future__ import annotations

import torch
from torch import nn

UPSAMPLE_MODES = ("nearest", "bilinear")


class Decoder(nn.Module):
    """Four blocks of conv3×3 (no bias) → BN → ReLU → ×2 nearest upsampling, then 1×1 → logit.

    The method uses 256 channels (D→256 at 8², 256→256 at 16², 32², 64²); ``tiny``
    uses fewer so the demo runs on a CPU. The map after the last upsampling is
    the *decoder feature* the DPT loss works on. ``upsample="bilinear"`` (half-pixel
    centres, no weights) instead of nearest keeps the map from stepping at the feature
    lattice (#20); the weights are the same either way.
    """

    def __init__(
        self,
        in_channels: int,
        channels: int = 256,
        num_blocks: int = 4,
        upsample: str = "nearest",
    ):
        super().__init__()
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"decoder upsample {upsample!r}: expected one of {UPSAMPLE_MODES}")
        extra = {} if upsample == "nearest" else {"align_corners": False}
        blocks = []
        c_in = in_channels
        for _ in range(num_blocks):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(c_in, channels, 3, padding=1, bias=False),
                    nn.BatchNorm2d(channels),
                    nn.ReLU(inplace=True),
                    nn.Upsample(scale_factor=2, mode=upsample, **extra),
                )
            )
            c_in = channels
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Conv2d(channels, 1, 1)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, D, h, w) → logits (B, 1, 16h, 16w) and decoder feature (B, C, 16h, 16w)."""
        feature = self.blocks(features)
        return self.classifier(feature), feature

    def logits(self, features: torch.Tensor, first_block: int = 0) -> torch.Tensor:
        """``forward``'s logits alone, for inference, from block ``first_block`` on.

        The 1×1 classifier runs before the last upsampling instead of after it: both are
        linear and the upsampling's weights sum to one, so they commute (to float
        rounding; exactly for nearest) — and the classifier's one channel is upsampled
        instead of C, on a quarter of the pixels: a fifth of the `tiny` model's CPU time
        was that full-resolution C-channel map."""
        last = self.blocks[-1]
        hidden = last[:-1](self.blocks[first_block:-1](features))
        return last[-1](self.classifier(hidden))


class ProjectionHead(nn.Module):
    """Frozen, randomly initialised 1×1 conv D→50: the pixel embedding of the PC loss.

    It is never trained, but it is saved with the model so that prototypes and the
    adapted model see the same projection (the reference forgets to save it).
    """

    def __init__(self, in_channels: int, out_channels: int = 50):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, out_channels, 1)
        self.requires_grad_(False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)

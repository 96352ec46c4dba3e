"""The damage segmenter: frozen backbone → trained decoder, plus the frozen projection head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from stmap.model.backbones import create_backbone, get_spec
from stmap.model.decoder import Decoder, ProjectionHead
from stmap.model.preprocess import Normalize, Preprocessing


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that decides the architecture (and so the shapes of the weights)."""

    backbone: str = "vit_large_patch16_dinov3.sat493m"
    tile_size: int = 128
    decoder_channels: int = 256
    decoder_blocks: int = 4
    projection_dim: int = 50
    decoder_upsample: str = "nearest"  # or "bilinear" (#20); weights identical either way


class TrainOutput(NamedTuple):
    logits: torch.Tensor  # (B, 1, H, W)
    pixel_embedding: torch.Tensor  # (B, 50, h, w), from the frozen projection head
    decoder_feature: torch.Tensor  # (B, C, H, W), after the last upsampling


class DamageSegmenter(nn.Module):
    """Backbone (frozen for foundation models) → decoder → one damage logit per pixel."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        spec = get_spec(config.backbone)
        self.backbone_frozen = spec.frozen
        self.backbone = create_backbone(spec.name, config.tile_size)
        self.decoder = Decoder(
            spec.embed_dim, config.decoder_channels, config.decoder_blocks, config.decoder_upsample
        )
        self.projection = ProjectionHead(spec.embed_dim, config.projection_dim)
        if self.backbone_frozen:
            self.backbone.requires_grad_(False)

    def train(self, mode: bool = True) -> DamageSegmenter:
        """Keep a frozen backbone (norms, RoPE jitter) in eval mode whatever ``mode`` is."""
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        self.projection.eval()
        return self

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised → backbone map (B, D, H/16, W/16); what the cache stores."""
        return self.backbone(x)

    def forward_from_features(self, features: torch.Tensor) -> TrainOutput:
        logits, decoder_feature = self.decoder(features)
        return TrainOutput(logits, self.projection(features), decoder_feature)

    def forward_train(self, x: torch.Tensor) -> TrainOutput:
        return self.forward_from_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float → logits (B, 1, H, W): all inference needs."""
        return self.decoder(self.backbone(x))[0]


class InferenceModel(nn.Module):
    """Raw pixels in, probabilities out: preprocessing lives inside the model.

    (B, C, H, W) uint8/uint16 (or float holding those values) → (B, 1, H, W) float
    probability. The runtime and the ONNX export both run this module.
    """

    def __init__(self, segmenter: DamageSegmenter, preprocessing: Preprocessing):
        super().__init__()
        self.normalize = Normalize(preprocessing)
        self.segmenter = segmenter

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.segmenter(self.normalize(pixels)))

"""The damage segmenter: frozen backbone → trained decoder, plus the frozen projection head."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from stmap.model.backbones import TinyBackbone, create_backbone, get_spec
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
    quincunx: bool = False  # the last stage at several of its phases (#20); weights identical
    last_stage_phases: int = 2  # with quincunx: 2 (the quincunx) or 4 (every phase)


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
        if config.quincunx and not isinstance(self.backbone, TinyBackbone):
            raise ValueError(f"quincunx: {spec.name} has no stages to run at two phases")
        if config.last_stage_phases not in LAST_STAGE_PHASES:
            raise ValueError(
                f"last_stage_phases {config.last_stage_phases}: expected one of "
                f"{sorted(LAST_STAGE_PHASES)}"
            )
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
        if self.config.quincunx:
            return self._quincunx_logits(x)
        return self.decoder.logits(self.backbone(x))

    def _quincunx_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The map averaged over phases of the last subsampling (#20).

        A stride-16 model's map moves with where its 16-px lattice falls on the ground.
        Run the last stage at more than one phase of its stride-2 subsampling and what
        that subsampling aliases cancels in the mean: two phases (the quincunx, lattices
        8 px apart along both axes) take out what repeats every 16 px along one axis, as
        averaging the model over the input and the input shifted by (8, 8) would; all
        four leave nothing of it (the map moves with the input under any shift by 8 px).
        The first three stages (output stride 8) run once; with four phases so do the
        last stage's stride-1 convolution and blur (``TinyBackbone.last_at_phases``), and
        per phase only its last convolution and the first decoder block run, so four cost
        what two did. The quincunx runs its stage on each moved map, as it always has:
        its bundles, and the teacher of the demo bundle's recipe, map as they did to the
        bit. The phases meet on the stride-8 lattice, a cell apart, for the rest of the
        decoder. A phase other than the first has no input past the tile's far edge, so
        within QUINCUNX_EDGE_CELLS cells (32 px) of any edge the first is taken alone: a
        tile's edges (which the runtime's margin leaves out of the map) score as the
        plain model's.
        """
        early = self.backbone.early(x)
        phases = LAST_STAGE_PHASES[self.config.last_stage_phases]
        shared = len(phases) == 4
        first_block = self.decoder.blocks[0]
        stages = self.backbone.last_at_phases(early, phases, shared)
        first, *others = (first_block(stage) for stage in stages)
        rows, cols = first.shape[-2:]
        total = first
        for up, (dy, dx) in zip(others, phases[1:], strict=True):
            total = total + F.pad(up, (dx, 0, dy, 0), mode="replicate")[..., :rows, :cols]
        mixed = torch.where(_near_edge(first), first, total / len(phases))
        return self.decoder.logits(mixed, first_block=1)


# the last stage's phases the map averages (#20): (row, column) of the 2 × 2 cell kept
LAST_STAGE_PHASES = {2: ((0, 0), (1, 1)), 4: ((0, 0), (0, 1), (1, 0), (1, 1))}
QUINCUNX_EDGE_CELLS = 4  # stride-8 cells at each tile edge where the quincunx keeps one phase


def _near_edge(cells: torch.Tensor) -> torch.Tensor:
    """(h, w) bool: the cells of a (..., h, w) map within QUINCUNX_EDGE_CELLS of an edge."""
    h, w = cells.shape[-2:]
    rows, cols = torch.arange(h, device=cells.device), torch.arange(w, device=cells.device)
    edge = QUINCUNX_EDGE_CELLS
    near_rows = (rows < edge) | (rows >= h - edge)
    near_cols = (cols < edge) | (cols >= w - edge)
    return near_rows[:, None] | near_cols[None, :]


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

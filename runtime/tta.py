"""Test-time augmentation: the model sees each tile under several symmetries.

Damage does not depend on which way the satellite looked, but a model's errors do;
averaging its probabilities over flipped and rotated views of a tile smooths them.
``flip`` uses the identity and a horizontal flip (2 views), ``d4`` the 8 symmetries
of the square (4 rotations, each with and without a flip), as ``tta_modes`` declares
them. The views of one chunk of tiles are stacked into one batch on the device, run
through the wrapped backend in one call, mapped back and averaged: no extra
host↔device traffic, K× the compute.
"""

from __future__ import annotations

import torch

from stmap.runtime.backends.base import Backend
from stmap.runtime.tta_modes import TTA_MODES, VIEWS, check_tta

__all__ = ["TTA_MODES", "VIEWS", "TTABackend", "augment", "merge", "with_tta"]


def augment(tiles: torch.Tensor, mode: str) -> torch.Tensor:
    """(N, C, T, T) tiles → (K·N, C, T, T): view k of tile i at k·N + i."""
    return torch.cat([_view(tiles, turns, flip) for turns, flip in VIEWS[mode]])


def merge(probs: torch.Tensor, mode: str) -> torch.Tensor:
    """(K·N, 1, T, T) probabilities of ``augment``'s views → (N, 1, T, T), their mean.

    Each view is mapped back to the tile's own orientation before averaging.
    """
    views = VIEWS[mode]
    chunks = probs.chunk(len(views))
    restored = [_unview(p, turns, flip) for p, (turns, flip) in zip(chunks, views, strict=True)]
    return torch.stack(restored).mean(dim=0)


def _view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if flip:
        x = x.flip(-1)
    return x.rot90(turns, dims=(-2, -1)) if turns else x


def _unview(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    if turns:
        x = x.rot90(-turns, dims=(-2, -1))
    return x.flip(-1) if flip else x


class TTABackend:
    """Wraps a ``Backend``: one call runs every view of a chunk of tiles as one batch.

    ``max_batch`` counts tiles, not views, so the device batch stays what the
    wrapped backend asked for; an out-of-memory error reaches the ``Batcher``,
    which halves the tile count as it would without augmentation.
    """

    def __init__(self, backend: Backend, mode: str):
        self.backend, self.mode = backend, mode
        self.name, self.device, self.precision = backend.name, backend.device, backend.precision
        self.views = len(VIEWS[mode])

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        """(N, C, T, T) square tiles → (N, 1, T, T) float32 mean probabilities."""
        return merge(self.backend.infer(augment(tiles, self.mode)), self.mode)

    def max_batch(self) -> int:
        return max(1, self.backend.max_batch() // self.views)


def with_tta(backend: Backend, mode: str) -> Backend:
    """``backend`` augmented by ``mode`` (one of TTA_MODES); "none" returns it as is."""
    check_tta(mode)
    return backend if mode == "none" else TTABackend(backend, mode)

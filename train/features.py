"""The feature cache: a frozen backbone's features of every tile, computed once.

A frozen backbone in eval mode is a fixed function of the tile, so its (D, h, w)
feature map is computed once per tile and reused by every epoch, every fold and the
PC prototype pass; only the decoder runs in the loop. Features are computed in fp32
(eval mode, as evaluation and prototypes are), stored in half precision — 128 KiB a
tile for ViT-L at 128² — in memory up to a byte budget, else in a memory-mapped
``.npy`` file. What the cache returns is exactly ``model.features(x).half()``.

It does not apply when the backbone trains (``tiny``) or when the reference's RoPE
jitter (``backbone_rope_jitter``) makes the features random.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stmap.model import DamageSegmenter, Normalize

STORE_DTYPE = torch.float16


def cache_applies(backbone_frozen: bool, rope_jitter: bool, budget: int) -> bool:
    """Whether the features are a fixed function of the tile and the user left the cache on."""
    return backbone_frozen and not rope_jitter and budget > 0


class FeatureCache:
    """Features of N tiles, indexed by tile position: (N, h, w, D) fp16 in memory or on disk."""

    def __init__(self, store: torch.Tensor | np.memmap, device: torch.device, path: Path | None):
        self.store = store
        self.device = device
        self.path = path  # the memory-mapped file (deleted by close()); None in memory

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: DamageSegmenter,
        images: torch.Tensor,
        normalize: Normalize,
        device: torch.device,
        batch_size: int,
        budget: int,
        directory: Path,
    ) -> FeatureCache:
        """Run the backbone over ``images`` (N, 3, S, S) uint8 once, in fixed batches.

        Kept in memory when N·D·h·w·2 bytes fit ``budget``, else written to
        ``directory/features.npy`` and memory-mapped.
        """
        from stmap.io.tiles import open_array_store

        was_training = model.training
        model.eval()

        def features(start: int) -> torch.Tensor:
            """(B, h, w, D): channels last, the layout of a ViT's token map."""
            x = normalize(images[start : start + batch_size].to(device))
            return model.features(x).to(STORE_DTYPE).permute(0, 2, 3, 1).cpu()

        first = features(0)
        shape = (len(images), *first.shape[1:])
        nbytes = int(np.prod(shape)) * first.element_size()
        path = None
        if nbytes <= budget:
            store: torch.Tensor | np.memmap = torch.empty(shape, dtype=STORE_DTYPE)
        else:
            path = directory / "features.npy"
            store = open_array_store(path, shape, np.float16)
        for start in range(0, len(images), batch_size):
            batch = first if start == 0 else features(start)
            store[start : start + len(batch)] = batch if path is None else batch.numpy()
        if path is not None:
            store.flush()
        model.train(was_training)
        return cls(store, device, path)

    @property
    def on_disk(self) -> bool:
        return self.path is not None

    def __call__(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) int64 tile positions → (B, D, h, w) float32 features on the device.

        The map is channels-last in memory, as the backbone's own output: the decoder's
        convolutions run several times faster on that layout than on NCHW on the CPU.
        """
        if self.path is None:
            batch = self.store[index]
        else:
            batch = torch.from_numpy(np.ascontiguousarray(self.store[index.numpy()]))
        return batch.to(self.device, non_blocking=True).float().permute(0, 3, 1, 2)

    def close(self) -> None:
        """Release a memory-mapped store and delete its file (``on_disk`` still tells)."""
        if self.path is not None:
            self.store = torch.empty(0, dtype=STORE_DTYPE)  # drops the last reference to the map
            self.path.unlink(missing_ok=True)

"""Spatially blocked folds: neighbouring buildings look alike, so a random split lies.

Each labelled object falls in the square block of ``block`` map units that holds
its centre; whole blocks are dealt to folds (shuffled, round-robin), so no block
has objects in both a fold's training and its validation.
"""

from __future__ import annotations

import numpy as np
import shapely

from stmap.errors import InputError

MAX_FOLDS = 5


def block_folds(
    geometries: np.ndarray, block: float, seed: int = 0, max_folds: int = MAX_FOLDS
) -> np.ndarray:
    """(N,) fold of each of (N,) geometries, folds 0..k−1 with k = min(max_folds, blocks).

    block: the block side in the geometries' units (positive). Raises InputError
    when the objects fill fewer than two blocks (no honest validation possible).
    """
    if not (np.isfinite(block) and block > 0):
        raise InputError(f"--fold-block {block:g}: must be a positive number of metres")
    centres = shapely.get_coordinates(shapely.centroid(geometries))
    keys = np.floor(centres / block).astype(np.int64)
    blocks, owner = np.unique(keys, axis=0, return_inverse=True)
    owner = owner.reshape(-1)
    if len(blocks) < 2:
        raise InputError(
            "--fold-block: every label lies in one block, so no block could validate "
            "another; give a smaller --fold-block or labels spread over a wider area"
        )
    k = min(max(max_folds, 2), len(blocks))
    order = np.random.default_rng(seed).permutation(len(blocks))
    fold_of_block = np.empty(len(blocks), dtype=np.int64)
    fold_of_block[order] = np.arange(len(blocks)) % k
    return fold_of_block[owner]

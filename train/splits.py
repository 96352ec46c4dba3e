"""Regions, cross-validation folds and subsets of tile ids, as the reference draws them.

A tile's region is parsed from its id, not its folder. Folds are drawn within each
region (ids sorted, then shuffled KFold / StratifiedKFold by damage stratum), so every
fold has every region in both train and validation. Subsets use NumPy's legacy
``RandomState`` as the reference does, so the same seed draws the same tiles.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from stmap.errors import InputError
from stmap.lazy import lazy_import

# The ST_Turkey_2023 regions, spelled as the reference and the data's folders spell them.
REGIONS = (
    "gaziantep",
    "hatay",
    "kahramanrarus",
    "kirikhan",
    "nurdagi",
    "sackcagozu",
    "satirhuyuk",
    "sekeroba",
    "turkoglu",
)
# Correct spellings of the two misspelt ids, with and without Turkish letters.
REGION_ALIASES = {
    "kahramanmaras": "kahramanrarus",
    "kahramanmaraş": "kahramanrarus",
    "sakcagozu": "sackcagozu",
    "sakçagözü": "sackcagozu",
}
_CANONICAL = {**{region: region for region in REGIONS}, **REGION_ALIASES}

# Lower edges of the damage strata: [0, 0.01), [0.01, 0.05), [0.05, 0.2), [0.2, 1].
STRATUM_EDGES = (0.0, 0.01, 0.05, 0.2)


def canonical_region(name: str) -> str:
    """The reference's id for a known region in any accepted spelling (any case);
    other names (a synthetic city's) are returned unchanged."""
    return _CANONICAL.get(name.lower(), name)


def region_of(tile_id: str) -> str:
    """The region of a tile id: the text before ``_r`` if present, else before the first ``_``.

    ``hatay_r3_c4`` → ``hatay``; ``nurdagi_12`` → ``nurdagi``; aliases map to the
    canonical id (``kahramanmaras_r1_c2`` → ``kahramanrarus``).
    """
    if "_r" in tile_id:
        region = tile_id.split("_r", 1)[0]
    else:
        region = tile_id.split("_", 1)[0] if "_" in tile_id else ""
    if not region:
        raise InputError(
            f"tile id {tile_id!r} names no region; expected '<region>_r<row>_c<col>' "
            "or '<region>_<number>'"
        )
    return canonical_region(region)


def damage_stratum(damaged_fraction: float) -> int:
    """The stratum (0–3) of a tile's damaged fraction: [0, .01), [.01, .05), [.05, .2), [.2, 1]."""
    if not 0.0 <= damaged_fraction <= 1.0:
        raise InputError(f"damaged fraction {damaged_fraction!r} is outside [0, 1]")
    return int(np.searchsorted(STRATUM_EDGES, damaged_fraction, side="right")) - 1


def group_by_region(tile_ids: Sequence[str]) -> dict[str, list[str]]:
    """{region: sorted tile ids}, regions sorted."""
    groups: dict[str, list[str]] = {}
    for tile_id in tile_ids:
        groups.setdefault(region_of(tile_id), []).append(tile_id)
    return {region: sorted(groups[region]) for region in sorted(groups)}


def region_folds(
    tile_ids: Sequence[str],
    damaged_fractions: Sequence[float],
    k_folds: int = 5,
    seed: int = 42,
    stratify: bool = True,
) -> list[dict[str, tuple[list[str], list[str]]]]:
    """K-fold splits drawn within each region: ``folds[i][region] = (train_ids, val_ids)``.

    tile_ids: unique ids; damaged_fractions: each tile's damaged fraction of its
    128² label, in the same order. k = min(k_folds, the smallest region's tile
    count), with a warning when lowered. Per region the ids are sorted, then split
    by ``StratifiedKFold(shuffle=True, random_state=seed)`` over damage strata when
    ``stratify`` and every non-empty stratum has ≥ k tiles, else by the same
    ``KFold``. Ids within each list keep the sorted order.
    """
    if len(tile_ids) != len(damaged_fractions):
        raise InputError(f"{len(tile_ids)} tile ids but {len(damaged_fractions)} damaged fractions")
    fraction_of = dict(zip(tile_ids, damaged_fractions, strict=True))
    if len(fraction_of) != len(tile_ids):
        raise InputError("tile ids are not unique")
    groups = group_by_region(tile_ids)
    if not groups:
        raise InputError("no tiles to split into folds")
    smallest = min(groups, key=lambda region: len(groups[region]))
    k = min(k_folds, len(groups[smallest]))
    if k < 2:
        raise InputError(
            f"region {smallest!r} has {len(groups[smallest])} tile(s); k-fold needs at least 2 "
            "per region"
        )
    if k < k_folds:
        warnings.warn(
            f"region {smallest!r} has only {k} tiles: using {k} folds instead of {k_folds}",
            stacklevel=2,
        )
    model_selection = lazy_import("sklearn.model_selection")
    folds: list[dict[str, tuple[list[str], list[str]]]] = [{} for _ in range(k)]
    for region, ids in groups.items():
        strata = np.array([damage_stratum(fraction_of[tile_id]) for tile_id in ids])
        counts = np.bincount(strata)
        if stratify and counts[counts > 0].min() >= k:
            splitter = model_selection.StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
            splits = splitter.split(ids, strata)
        else:
            splits = model_selection.KFold(n_splits=k, shuffle=True, random_state=seed).split(ids)
        for fold, (train, val) in zip(folds, splits, strict=True):
            fold[region] = ([ids[i] for i in train], [ids[i] for i in val])
    return folds


def subsample_ratio(
    ids_by_region: Mapping[str, Sequence[str]], ratio: float, seed: int
) -> dict[str, list[str]]:
    """Keep about ``ratio`` of the tiles, split across regions by size, at least 1 per region.

    ids_by_region: {region: tile ids} (a fold's training split). The total is
    round(n · ratio); quotas are floor(share · total), raised to 1 and capped at the
    region's size, then trimmed from the largest quota or topped up from the largest
    region, as the reference does; every region keeps a tile even when that exceeds
    the total. Each region's ids are shuffled by ``RandomState(seed)`` (regions in
    sorted order) and the first ``quota`` kept. ``ratio`` 1 returns the input.
    """
    if not 0.0 < ratio <= 1.0:
        raise InputError(f"train ratio {ratio!r} is outside (0, 1]")
    regions = sorted(region for region, ids in ids_by_region.items() if len(ids))
    if ratio == 1.0:
        return {region: list(ids_by_region[region]) for region in regions}
    rng = np.random.RandomState(seed)
    shuffled = {}
    for region in regions:
        ids = list(ids_by_region[region])
        rng.shuffle(ids)
        shuffled[region] = ids
    # float32 shares, as in the reference, so that floor() ties fall the same way
    available = sum(len(ids) for ids in shuffled.values())
    total = max(1, min(round(available * ratio), available))
    sizes = np.array([len(shuffled[region]) for region in regions], dtype=np.float32)
    shares = sizes / max(1.0, float(sizes.sum()))
    quotas = np.floor(shares * total).astype(int)
    quotas = np.minimum(np.maximum(quotas, 1), sizes.astype(int))
    while quotas.sum() > total:
        largest = int(np.argmax(quotas))
        if quotas[largest] <= 1:
            break
        quotas[largest] -= 1
    while quotas.sum() < total:
        largest = int(np.argmax(shares))
        if quotas[largest] < sizes[largest]:
            quotas[largest] += 1
        else:
            quotas[int(np.flatnonzero(quotas < sizes)[0])] += 1
    return {region: shuffled[region][:quota] for region, quota in zip(regions, quotas, strict=True)}


def fewshot_sample(pool_ids: Sequence[str], n: int, seed: int) -> list[str]:
    """Draw the few-shot tiles: ``min(n, len(pool))`` ids without replacement.

    pool_ids: the target region's fold-train ids, in fold order (sorted); seed: 0 +
    fold in the method. Drawn as ``RandomState(seed).choice(pool, n, replace=False)``,
    as in the reference.
    """
    if n < 0:
        raise InputError(f"few-shot n must be ≥ 0, got {n}")
    size = min(n, len(pool_ids))
    if size == 0:
        return []
    picked = np.random.RandomState(seed).choice(len(pool_ids), size=size, replace=False)
    return [pool_ids[i] for i in picked]

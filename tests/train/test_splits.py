"""Region parsing, damage strata, per-region folds and the subsets drawn from them."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import KFold, StratifiedKFold

from stmap.errors import InputError
from stmap.train.splits import (
    REGIONS,
    canonical_region,
    damage_stratum,
    fewshot_sample,
    region_folds,
    region_of,
    subsample_ratio,
)


@pytest.mark.parametrize(
    ("tile_id", "region"),
    [
        ("hatay_r3_c4", "hatay"),
        ("nurdagi_12", "nurdagi"),
        ("kahramanrarus_r10_c2", "kahramanrarus"),
        ("sackcagozu_7", "sackcagozu"),
        ("kahramanmaras_r1_c1", "kahramanrarus"),  # the correct spelling is an alias
        ("Sakcagozu_3", "sackcagozu"),
        ("sakçagözü_r0_c0", "sackcagozu"),
        ("demo_city_r2_c5", "demo_city"),  # text before "_r" wins over the first "_"
        ("gaziantep_block_9", "gaziantep"),
    ],
)
def test_region_of(tile_id, region):
    assert region_of(tile_id) == region


def test_region_of_needs_a_region():
    with pytest.raises(InputError, match="tile id 'hatay' names no region"):
        region_of("hatay")


def test_canonical_region_keeps_the_reference_ids():
    assert [canonical_region(r) for r in REGIONS] == list(REGIONS)
    assert canonical_region("KahramanMaraş") == "kahramanrarus"
    assert canonical_region("synthcity") == "synthcity"


@pytest.mark.parametrize(
    ("fraction", "stratum"),
    [(0.0, 0), (0.0099, 0), (0.01, 1), (0.0499, 1), (0.05, 2), (0.1999, 2), (0.2, 3), (1.0, 3)],
)
def test_damage_stratum_edges(fraction, stratum):
    assert damage_stratum(fraction) == stratum


@pytest.mark.parametrize("fraction", [-0.1, 1.5, float("nan")])
def test_damage_stratum_rejects_non_fractions(fraction):
    with pytest.raises(InputError, match="outside"):
        damage_stratum(fraction)


def make_tiles(counts: dict[str, int], seed: int = 0) -> tuple[list[str], list[float]]:
    rng = np.random.default_rng(seed)
    ids = [f"{region}_r{i}_c0" for region, n in counts.items() for i in range(n)]
    return ids, [float(x) for x in rng.choice([0.0, 0.02, 0.1, 0.5], size=len(ids))]


def test_folds_partition_each_region_and_are_deterministic():
    ids, fractions = make_tiles({"hatay": 13, "nurdagi": 8, "turkoglu": 6})
    folds = region_folds(ids, fractions)
    assert len(folds) == 5
    order = np.random.default_rng(1).permutation(len(ids))
    shuffled = region_folds([ids[i] for i in order], [fractions[i] for i in order])
    assert shuffled == folds  # input order does not matter
    for region, n in {"hatay": 13, "nurdagi": 8, "turkoglu": 6}.items():
        tiles = sorted(t for t in ids if t.startswith(region))
        val = [t for fold in folds for t in fold[region][1]]
        assert sorted(val) == tiles and len(set(val)) == n  # each tile validated once
        for fold in folds:
            train, val = fold[region]
            assert sorted(train + val) == tiles and not set(train) & set(val)
            assert train == sorted(train) and val == sorted(val)


def test_folds_stratify_only_when_every_stratum_has_k_tiles():
    # hatay: 5 undamaged + 5 heavily damaged tiles, k = 5: stratified, one of each per fold
    # nurdagi: one lightly damaged tile among 9 undamaged: plain KFold
    ids = [f"hatay_r{i}_c0" for i in range(10)] + [f"nurdagi_{i}" for i in range(10)]
    fractions = [0.0] * 5 + [0.5] * 5 + [0.03] + [0.0] * 9
    folds = region_folds(ids, fractions, k_folds=5, seed=42)
    hatay, nurdagi = sorted(ids[:10]), sorted(ids[10:])
    strata = [0 if int(t.split("_r")[1][0]) < 5 else 3 for t in hatay]
    splitter = StratifiedKFold(n_splits=5, shuffle=True, random_state=42)
    for fold, (train, val) in zip(folds, splitter.split(hatay, strata), strict=True):
        assert fold["hatay"] == ([hatay[i] for i in train], [hatay[i] for i in val])
        assert sorted(int(t.split("_r")[1][0]) < 5 for t in fold["hatay"][1]) == [False, True]
    kfold = KFold(n_splits=5, shuffle=True, random_state=42)
    for fold, (train, val) in zip(folds, kfold.split(nurdagi), strict=True):
        assert fold["nurdagi"] == ([nurdagi[i] for i in train], [nurdagi[i] for i in val])
    unstratified = region_folds(ids, fractions, stratify=False)
    for fold, (train, val) in zip(unstratified, kfold.split(hatay), strict=True):
        assert fold["hatay"] == ([hatay[i] for i in train], [hatay[i] for i in val])


def test_folds_shrink_k_to_the_smallest_region():
    ids, fractions = make_tiles({"hatay": 9, "sekeroba": 3})
    with pytest.warns(UserWarning, match="'sekeroba' has only 3 tiles: using 3 folds"):
        folds = region_folds(ids, fractions, k_folds=5)
    assert len(folds) == 3


def test_folds_reject_bad_input():
    with pytest.raises(InputError, match="'sekeroba' has 1 tile"):
        region_folds(["hatay_1", "hatay_2", "sekeroba_1"], [0.0, 0.0, 0.0])
    with pytest.raises(InputError, match="not unique"):
        region_folds(["hatay_1", "hatay_1"], [0.0, 0.0])
    with pytest.raises(InputError, match="2 tile ids but 1 damaged fractions"):
        region_folds(["hatay_1", "hatay_2"], [0.0])


def test_subsample_ratio_by_hand():
    ids = {"a": [f"a_{i}" for i in range(8)], "b": ["b_0", "b_1"]}
    picked = subsample_ratio(ids, 0.5, seed=42)
    # total round(10 · 0.5) = 5; quotas floor(0.8 · 5) = 4 and floor(0.2 · 5) = 1
    assert {r: len(v) for r, v in picked.items()} == {"a": 4, "b": 1}
    rng = np.random.RandomState(42)
    a, b = list(ids["a"]), list(ids["b"])
    rng.shuffle(a)
    rng.shuffle(b)
    assert picked == {"a": a[:4], "b": b[:1]}
    assert subsample_ratio(ids, 0.5, seed=42) == picked
    assert subsample_ratio(ids, 0.5, seed=7) != picked


def test_subsample_ratio_keeps_every_region():
    ids = {"a": [f"a_{i}" for i in range(4)], "b": ["b_0"], "c": ["c_0", "c_1"]}
    # total round(7 · 0.2) = 1, but each region keeps a tile
    assert {r: len(v) for r, v in subsample_ratio(ids, 0.2, seed=0).items()} == {
        "a": 1,
        "b": 1,
        "c": 1,
    }
    sizes = {"a": [f"a_{i}" for i in range(50)], "b": [f"b_{i}" for i in range(7)]}
    for ratio in (0.2, 0.4, 0.6, 0.8):
        picked = subsample_ratio(sizes, ratio, seed=1)
        assert sum(map(len, picked.values())) == round(57 * ratio)
        assert all(set(v) <= set(sizes[r]) and v for r, v in picked.items())
    assert subsample_ratio(sizes, 1.0, seed=1) == sizes


@pytest.mark.parametrize("ratio", [0.0, -0.5, 1.2])
def test_subsample_ratio_rejects_bad_ratios(ratio):
    with pytest.raises(InputError, match="outside \\(0, 1\\]"):
        subsample_ratio({"a": ["a_1"]}, ratio, seed=0)


def test_fewshot_sample_draws_as_the_reference():
    pool = [f"hatay_r{i}_c0" for i in range(20)]
    for fold in range(5):
        expected = np.random.RandomState(0 + fold).choice(pool, size=5, replace=False).tolist()
        assert fewshot_sample(pool, 5, seed=0 + fold) == expected
    assert fewshot_sample(pool, 3, seed=0) != fewshot_sample(pool, 3, seed=1)
    assert sorted(fewshot_sample(pool[:4], 10, seed=0)) == pool[:4]  # n larger than the pool
    assert fewshot_sample(pool, 0, seed=0) == []
    with pytest.raises(InputError, match="must be ≥ 0"):
        fewshot_sample(pool, -1, seed=0)

"""Pooled confusion counts, scores with their 0/0 cases, and fold/region aggregates."""

from __future__ import annotations

import pytest
import torch

from stmap.errors import InputError
from stmap.train.metrics import ConfusionCounts, aggregate_folds, aggregate_regions, scores


def test_update_counts_logits_by_hand():
    logits = torch.tensor([[3.0, -2.0, 0.0], [1.0, -1.0, 5.0]]).reshape(1, 1, 2, 3)
    target = torch.tensor([[1, 1, 1], [0, 0, 1]]).reshape(1, 1, 2, 3)
    counts = ConfusionCounts()
    counts.update(logits, target)
    # logit 0 is probability 0.5, not > 0.5: predicted undamaged
    assert counts == ConfusionCounts(tp=2, fp=1, fn=2, tn=1)
    assert all(isinstance(v, int) for v in (counts.tp, counts.fp, counts.fn, counts.tn))


def test_update_with_probabilities_and_a_threshold():
    probs = torch.tensor([0.9, 0.6, 0.4, 0.1])
    target = torch.tensor([1.0, 0.0, 1.0, 0.0])
    counts = ConfusionCounts()
    counts.update(probs, target, from_logits=False)
    assert counts == ConfusionCounts(tp=1, fp=1, fn=1, tn=1)
    strict = ConfusionCounts()
    strict.update(probs, target, threshold=0.7, from_logits=False)
    assert strict == ConfusionCounts(tp=1, fp=0, fn=1, tn=2)


def test_counts_pool_across_batches():
    total = ConfusionCounts()
    total.update(torch.tensor([5.0, -5.0]), torch.tensor([1, 1]))
    total.update(torch.tensor([5.0, -5.0]), torch.tensor([0, 0]))
    assert total == ConfusionCounts(tp=1, fp=1, fn=1, tn=1)
    assert ConfusionCounts(1, 2, 3, 4) + ConfusionCounts(10, 20, 30, 40) == ConfusionCounts(
        11, 22, 33, 44
    )


def test_update_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="different numbers of pixels"):
        ConfusionCounts().update(torch.zeros(4), torch.zeros(5))


def test_scores_by_hand():
    s = scores(ConfusionCounts(tp=3, fp=1, fn=2, tn=4))
    assert s == pytest.approx(
        {
            "precision": 3 / 4,
            "recall": 3 / 5,
            "accuracy": 7 / 10,
            "f1": 6 / 9,  # 2·P·R/(P + R) = 2·0.75·0.6/1.35
            "iou1": 3 / 6,
            "iou0": 4 / 7,
            "miou": (3 / 6 + 4 / 7) / 2,
        }
    )


def test_scores_define_every_zero_division_as_zero():
    # a split without damage, nothing predicted damaged: the damage class scores 0
    s = scores(ConfusionCounts(tp=0, fp=0, fn=0, tn=10))
    assert s == {
        "precision": 0.0,
        "recall": 0.0,
        "accuracy": 1.0,
        "f1": 0.0,
        "iou1": 0.0,
        "iou0": 1.0,
        "miou": 0.5,
    }
    # everything damaged and found: background has nothing to score
    s = scores(ConfusionCounts(tp=10, fp=0, fn=0, tn=0))
    assert (s["iou1"], s["iou0"], s["miou"], s["f1"]) == (1.0, 0.0, 0.5, 1.0)
    assert set(scores(ConfusionCounts()).values()) == {0.0}


def test_aggregate_folds_mean_and_population_std():
    folds = [{"miou": 0.5, "f1": 0.2}, {"miou": 0.7, "f1": 0.4}, {"miou": 0.6, "f1": 0.9}]
    agg = aggregate_folds(folds)
    assert agg["miou"] == pytest.approx((0.6, (0.02 / 3) ** 0.5))  # ddof 0
    assert agg["f1"][0] == pytest.approx(0.5)
    assert agg["f1"][1] == pytest.approx(((0.09 + 0.01 + 0.16) / 3) ** 0.5)
    assert aggregate_folds([{"miou": 0.3}]) == {"miou": (0.3, 0.0)}


def test_aggregate_folds_rejects_ragged_or_empty_input():
    with pytest.raises(InputError, match="no fold scores"):
        aggregate_folds([])
    with pytest.raises(InputError, match="fold 1 has metrics"):
        aggregate_folds([{"miou": 0.5}, {"f1": 0.5}])


def test_aggregate_regions_uses_the_per_region_means_only():
    per_region = {
        "hatay": {"miou": (0.4, 0.1)},
        "nurdagi": {"miou": (0.8, 0.3)},
    }
    assert aggregate_regions(per_region) == {"miou": pytest.approx((0.6, 0.2))}
    with pytest.raises(InputError, match="no region scores"):
        aggregate_regions({})

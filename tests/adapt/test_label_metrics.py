"""Scores against sparse labels: unlabelled pixels never count, AUC and F1 are exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score, roc_auc_score

from stmap.train.label_metrics import (
    ObjectScores,
    PixelScores,
    cross_validated,
    markdown,
    quantise,
)
from stmap.train.losses import focal_loss


def random_map(seed: int, shape=(40, 50)):
    rng = np.random.default_rng(seed)
    target = (rng.random(shape) < 0.3).astype(np.uint8)
    prob = np.clip(0.35 * target + rng.random(shape) * 0.65, 0, 1)
    known = rng.random(shape) < 0.4
    return quantise(prob), target, known


def test_auc_and_f1_match_scikit_learn_on_labelled_pixels_only() -> None:
    prob8, target, known = random_map(0)
    scores = PixelScores()
    scores.add(prob8, target, known)
    y, p = target[known], prob8[known]
    assert scores.auc() == pytest.approx(roc_auc_score(y, p), abs=1e-12)
    s = scores.scores(0.5)
    assert s["f1"] == pytest.approx(f1_score(y, p > 127))
    assert (s["damaged_pixels"], s["undamaged_pixels"]) == (int(y.sum()), int((1 - y).sum()))


def test_unlabelled_pixels_and_nodata_never_count() -> None:
    prob8, target, known = random_map(1)
    base = PixelScores()
    base.add(prob8, target, known)
    changed = prob8.copy()
    changed[~known] = 254  # anything, even "all damaged", outside the labels
    changed[0, 0] = 255  # nodata
    other = PixelScores()
    other.add(changed, target, known & (np.arange(changed.size).reshape(changed.shape) != 0))
    again = PixelScores()
    again.add(changed, target, known)
    assert again.scores(0.5) == other.scores(0.5)
    assert base.auc() != pytest.approx(0.5)
    empty = PixelScores()
    empty.add(prob8, target, np.zeros_like(known))
    assert empty.auc() is None and empty.scores(0.5)["f1"] == 0.0


def test_best_threshold_maximises_f1_and_cross_validation_never_sees_its_fold() -> None:
    folds = []
    for seed in range(3):
        fold = PixelScores()
        fold.add(*random_map(seed))
        folds.append(fold)
    pooled = sum(folds, PixelScores())
    best = pooled.best_threshold()
    grid = [pooled.scores(t)["f1"] for t in np.linspace(0.01, 0.99, 99)]
    assert pooled.scores(best)["f1"] >= max(grid) - 1e-12
    cv = cross_validated(folds, None)
    for i, t in enumerate(cv["fold_thresholds"]):
        others = sum((f for j, f in enumerate(folds) if j != i), PixelScores())
        assert t == others.best_threshold()
    fixed = cross_validated(folds, 0.5)
    assert fixed["f1"] == pytest.approx(pooled.scores(0.5)["f1"])


def test_object_scores_per_source_class() -> None:
    region = np.array([[0, 0, 1, 1], [2, 2, -1, -1]])
    prob8 = np.array([[254, 254, 0, 0], [200, 100, 254, 254]], np.uint8)
    objects = ObjectScores()
    objects.add(prob8, region)
    values = np.array(["Destroyed", "No visible damage", "Possibly damaged"], object)
    table = objects.per_class(values, np.array([1, 0, -1]), 0.5)
    assert table["Destroyed"] == {
        "class": "damaged",
        "objects": 1,
        "mean_prob": pytest.approx(254 / 255),
        "flagged_share": 1.0,
    }
    assert table["No visible damage"]["flagged_share"] == 0.0
    assert table["Possibly damaged"]["mean_prob"] == pytest.approx(150 / 255)
    text = markdown({"scores": {**PixelScores().scores(0.5), "per_class": table}})
    assert "| Possibly damaged | ignored | 1 | 0.588 | 1.000 |" in text


def test_focal_loss_ignore_mask_leaves_unlabelled_pixels_out() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8, requires_grad=True)
    target = (torch.rand(2, 1, 8, 8) > 0.7).float()
    assert torch.equal(focal_loss(logits, target), focal_loss(logits, target, ignore=None))
    ignore = torch.rand(2, 1, 8, 8) > 0.5
    loss = focal_loss(logits, target, ignore=ignore)
    loss.backward()
    assert (logits.grad[ignore] == 0).all() and (logits.grad[~ignore] != 0).all()
    kept = focal_loss(logits[~ignore].view(1, 1, 1, -1), target[~ignore].view(1, 1, 1, -1))
    assert loss.item() == pytest.approx(kept.item(), rel=1e-6)
    none = focal_loss(logits, target, ignore=torch.ones_like(ignore))
    assert none.item() == 0.0 and none.requires_grad

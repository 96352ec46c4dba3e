"""Pixel metrics of damage maps: pooled confusion counts, scores, and their aggregates.

Scores come from counts pooled over every test pixel (at 128²), not from per-tile
means. A ratio whose denominator is 0 is defined as 0 — what scikit-learn's
``zero_division`` default yields and what the reference's ``+1e-9`` denominators
give. So a split without damage scores iou1 = f1 = precision = recall = 0 even when
nothing is predicted damaged: the damage class has nothing to be right about.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from stmap.errors import InputError
from stmap.train.losses import IGNORE_LABEL

METRICS = ("precision", "recall", "accuracy", "f1", "iou1", "iou0", "miou")


@dataclass
class ConfusionCounts:
    """Pixel counts of a binary damage map against its labels, as Python ints."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def update(
        self,
        prediction: torch.Tensor,
        target: torch.Tensor,
        threshold: float = 0.5,
        from_logits: bool = True,
    ) -> None:
        """Add one batch. prediction: logits (probabilities with ``from_logits=False``),
        any shape with as many elements as target, e.g. (B, 1, H, W) float. A pixel is
        predicted damaged when its probability is > ``threshold`` (sigmoid > 0.5, as
        the method scores) and is damaged when its target is > 0.5; pixels whose
        target is IGNORE_LABEL (255) are not counted."""
        if prediction.numel() != target.numel():
            raise InputError(
                f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} "
                "have different numbers of pixels"
            )
        prob = torch.sigmoid(prediction.float()) if from_logits else prediction
        pred = (prob > threshold).reshape(-1)
        target = target.reshape(-1).to(pred.device)
        known = target != IGNORE_LABEL
        truth = target > 0.5
        tp, fp, fn, n = torch.stack(
            [
                (pred & truth & known).sum(),
                (pred & ~truth & known).sum(),
                (~pred & truth & known).sum(),
                known.sum(),
            ]
        ).tolist()
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.tn += n - tp - fp - fn

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn
        )


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def scores(counts: ConfusionCounts) -> dict[str, float]:
    """precision, recall, accuracy, f1, iou1 (damage), iou0 (background), miou; 0/0 → 0."""
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    iou1 = _ratio(tp, tp + fp + fn)
    iou0 = _ratio(tn, tn + fp + fn)
    return {
        "precision": _ratio(tp, tp + fp),
        "recall": _ratio(tp, tp + fn),
        "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou1": iou1,
        "iou0": iou0,
        "miou": (iou0 + iou1) / 2,
    }


def _aggregate(
    rows: Mapping[object, Mapping[str, float]], what: str
) -> dict[str, tuple[float, float]]:
    """{row: {metric: value}} → {metric: (mean, population std)} over rows."""
    if not rows:
        raise InputError(f"no {what} scores to aggregate")
    first, *_ = rows
    names = list(rows[first])
    for row, values in rows.items():
        if set(values) != set(names):
            raise InputError(
                f"{what} {row!r} has metrics {sorted(values)}; {what} {first!r} has {sorted(names)}"
            )
    result = {}
    for name in names:
        array = np.asarray([values[name] for values in rows.values()], dtype=np.float64)
        result[name] = (float(array.mean()), float(array.std(ddof=0)))
    return result


def aggregate_folds(folds: Sequence[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
    """Mean and population std (ddof 0) over folds of each metric: {metric: (mean, std)}."""
    return _aggregate(dict(enumerate(folds)), "fold")


def aggregate_regions(
    per_region: Mapping[str, Mapping[str, tuple[float, float]]],
) -> dict[str, tuple[float, float]]:
    """Mean and population std (ddof 0) of the per-region means: {metric: (mean, std)}.

    per_region: {region: {metric: (mean over folds, std over folds)}}, as
    :func:`aggregate_folds` returns per region; the std over folds does not enter.
    """
    means = {
        region: {name: mean for name, (mean, _) in metrics.items()}
        for region, metrics in per_region.items()
    }
    return _aggregate(means, "region")

"""Scores of a damage map against sparse labels: only labelled pixels count.

Pure functions and accumulators of NumPy arrays. Probabilities are taken at the
resolution of ``S_damage_prob.tif`` (uint8, probability × 255, 254 at most), and a
pixel is flagged damaged when its uint8 value is above ``floor(threshold × 255)``,
exactly as ``stmap infer`` decides. Two 255-bin histograms (damaged, undamaged
labelled pixels) then give ROC AUC (ties counted half, as the Mann-Whitney
statistic does), precision, recall, F1 and IoU at any threshold, and the threshold
that maximises F1 — so folds can be pooled or left out without keeping pixels.
Unlabelled pixels never enter: they are unknown, not negatives.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

LEVELS = 255  # uint8 probabilities 0..254 (255 is the maps' nodata)


def quantise(prob: np.ndarray) -> np.ndarray:
    """Float probabilities in [0, 1] → uint8 0..254, as the runtime stores them."""
    return np.clip(np.round(np.asarray(prob, dtype=np.float32) * 255), 0, LEVELS - 1).astype(
        np.uint8
    )


def cutoff(threshold: float) -> int:
    """The largest uint8 probability that is not flagged (infer's rule)."""
    return int(np.floor(threshold * 255 + 1e-9))


@dataclass
class PixelScores:
    """Histograms of the probabilities of damaged and undamaged labelled pixels."""

    damaged: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.int64))
    undamaged: np.ndarray = field(default_factory=lambda: np.zeros(LEVELS, np.int64))

    def add(self, prob8: np.ndarray, target: np.ndarray, known: np.ndarray) -> None:
        """Add a window: prob8 uint8 (values 255 are nodata, skipped), target (1 damaged),
        known bool (False: unlabelled, ignored), all of one shape."""
        use = known & (prob8 < LEVELS)
        values, truth = prob8[use], target[use] > 0
        self.damaged += np.bincount(values[truth], minlength=LEVELS)[:LEVELS]
        self.undamaged += np.bincount(values[~truth], minlength=LEVELS)[:LEVELS]

    def __add__(self, other: PixelScores) -> PixelScores:
        return PixelScores(self.damaged + other.damaged, self.undamaged + other.undamaged)

    @property
    def counts(self) -> tuple[int, int]:
        """(damaged, undamaged) labelled pixels."""
        return int(self.damaged.sum()), int(self.undamaged.sum())

    def auc(self) -> float | None:
        """ROC AUC of the probabilities; None without pixels of both classes."""
        pos, neg = self.counts
        if not pos or not neg:
            return None
        below = np.concatenate([[0], np.cumsum(self.undamaged)[:-1]])  # negatives strictly below
        wins = (self.damaged * (below + 0.5 * self.undamaged)).sum()
        return float(wins / (pos * neg))

    def confusion(self, threshold: float) -> tuple[int, int, int, int]:
        """(tp, fp, fn, tn) over labelled pixels at ``threshold``."""
        k = cutoff(threshold) + 1
        tp, fn = int(self.damaged[k:].sum()), int(self.damaged[:k].sum())
        fp, tn = int(self.undamaged[k:].sum()), int(self.undamaged[:k].sum())
        return tp, fp, fn, tn

    def scores(self, threshold: float) -> dict[str, Any]:
        """auc, precision, recall, f1, iou1, accuracy at ``threshold``; 0/0 → 0."""
        tp, fp, fn, tn = self.confusion(threshold)
        pos, neg = self.counts
        return {
            "threshold": threshold,
            "damaged_pixels": pos,
            "undamaged_pixels": neg,
            "auc": self.auc(),
            "precision": _ratio(tp, tp + fp),
            "recall": _ratio(tp, tp + fn),
            "f1": _ratio(2 * tp, 2 * tp + fp + fn),
            "iou1": _ratio(tp, tp + fp + fn),
            "accuracy": _ratio(tp + tn, tp + fp + fn + tn),
        }

    def best_threshold(self) -> float:
        """The threshold (k + 0.5)/255 with the highest F1 (the lowest such one on ties)."""
        pos = self.damaged[::-1].cumsum()[::-1]  # damaged pixels at ≥ level k
        neg = self.undamaged[::-1].cumsum()[::-1]
        total = pos[0]
        f1 = 2 * pos / np.maximum(pos + neg + total, 1)
        k = int(np.argmax(f1[1:])) + 1  # flag levels ≥ k: the cutoff is k − 1
        return (k - 0.5) / 255


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


@dataclass
class ObjectScores:
    """Per labelled object: summed probability and pixel count, by region index."""

    prob_sum: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    pixels: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, prob8: np.ndarray, region: np.ndarray) -> None:
        """prob8 uint8 (255 nodata) and region int (−1 none) of one window."""
        use = (region >= 0) & (prob8 < LEVELS)
        ids, inverse = np.unique(region[use], return_inverse=True)
        sums = np.bincount(inverse, weights=prob8[use].astype(np.float64) / 255.0)
        counts = np.bincount(inverse)
        for i, s, n in zip(ids.tolist(), sums.tolist(), counts.tolist(), strict=True):
            self.prob_sum[i] += s
            self.pixels[i] += n

    def merge(self, other: ObjectScores) -> None:
        for i, n in other.pixels.items():
            self.prob_sum[i] += other.prob_sum[i]
            self.pixels[i] += n

    def per_class(
        self, values: np.ndarray, classes: np.ndarray, threshold: float | Mapping[int, float]
    ) -> dict[str, dict[str, Any]]:
        """Per source class (``values[i]`` of object i): objects seen, their mapped class,
        mean of their mean probabilities, and the share whose mean is above the threshold
        (one for all, or per object: each fold's own in cross-validation)."""
        groups: dict[str, list[float]] = defaultdict(list)
        flags: dict[str, list[bool]] = defaultdict(list)
        mapped: dict[str, int] = {}
        for i, n in self.pixels.items():
            if n:
                mean = self.prob_sum[i] / n
                t = threshold if isinstance(threshold, float | int) else threshold[i]
                groups[str(values[i])].append(mean)
                flags[str(values[i])].append(mean > t)
                mapped[str(values[i])] = int(classes[i])
        names = {1: "damaged", 0: "undamaged", -1: "ignored"}
        return {
            value: {
                "class": names[mapped[value]],
                "objects": len(means),
                "mean_prob": float(np.mean(means)),
                "flagged_share": float(np.mean(flags[value])),
            }
            for value, means in sorted(groups.items())
        }


def cross_validated(folds: list[PixelScores], threshold: float | None) -> dict[str, Any]:
    """Scores of out-of-fold predictions pooled over folds.

    threshold None: each fold is scored at the threshold that maximises F1 on the
    *other* folds' validation pixels, never on its own; the pooled confusion gives
    precision, recall, F1 and IoU. A number: every fold at that threshold. AUC is
    threshold-free, over the pooled pixels.
    """
    pooled = sum(folds, PixelScores())
    result = pooled.scores(threshold if threshold is not None else 0.5)
    if threshold is None:
        tp = fp = fn = tn = 0
        chosen = []
        for i, fold in enumerate(folds):
            others = sum((f for j, f in enumerate(folds) if j != i), PixelScores())
            t = others.best_threshold()
            chosen.append(t)
            a, b, c, d = fold.confusion(t)
            tp, fp, fn, tn = tp + a, fp + b, fn + c, tn + d
        result.update(
            threshold=None,
            fold_thresholds=chosen,
            precision=_ratio(tp, tp + fp),
            recall=_ratio(tp, tp + fn),
            f1=_ratio(2 * tp, 2 * tp + fp + fn),
            iou1=_ratio(tp, tp + fp + fn),
            accuracy=_ratio(tp + tn, tp + fp + fn + tn),
        )
    return result


def markdown(report: dict[str, Any]) -> str:
    """A labels report (``scores``, optional ``before``/``after``, ``per_class``) as markdown."""
    columns = ("auc", "precision", "recall", "f1", "iou1", "threshold")
    rows = [(name, report[name]) for name in ("before", "after", "scores") if name in report]
    lines = [
        "| map | " + " | ".join(columns) + " | damaged px | undamaged px |",
        "|---|" + "---:|" * (len(columns) + 2),
    ]
    for name, s in rows:
        cells = [_cell(s.get(c)) for c in columns]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {s['damaged_pixels']} | {s['undamaged_pixels']} |"
        )
    for title, per_class in _per_class_tables(report):
        lines += [
            "",
            title,
            "",
            "| source class | mapped to | objects | mean prob | share flagged |",
            "|---|---|---:|---:|---:|",
        ]
        lines += [
            f"| {value or '(empty)'} | {c['class']} | {c['objects']} | {c['mean_prob']:.3f} | "
            f"{c['flagged_share']:.3f} |"
            for value, c in per_class.items()
        ]
    return "\n".join(lines)


def _per_class_tables(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name in ("before", "after", "scores"):
        per_class = (report.get(name) or {}).get("per_class")
        if per_class:
            found.append((f"Per source class ({name}):", per_class))
    return found


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)

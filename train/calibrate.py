"""A bundle's damage threshold fitted on its own maps of labelled scenes (#20).

Weights moved behind other fixed filters (``bundle.write_with_backbone``) map the same
scenes a little more or a little less damaged than the model they were trained in, so
the threshold their training set is no longer where their accuracy peaks. This refits it
on the maps ``stmap infer`` makes of labelled scenes — what users get, not 128-px
training tiles — as the F1-best cut of all their pixels pooled, which is the IoU-best
cut too (IoU = F1 / (2 − F1)). Fit it on training scenes only: a threshold chosen on the
scenes that judge the bundle would flatter it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from stmap.errors import InputError
from stmap.io.raster import open_raster
from stmap.train.label_metrics import PixelScores

Scene = tuple[str | os.PathLike[str], str | os.PathLike[str]]  # (S_damage_prob.tif, labels)


def scene_scores(
    prob_path: str | os.PathLike[str], label_path: str | os.PathLike[str]
) -> PixelScores:
    """The histograms of one map against its label raster (1 damaged, 0 not; the label
    raster's nodata, where it has one, unknown). Both must be on one grid."""
    with open_raster(prob_path) as prob_ds, open_raster(label_path) as label_ds:
        if (prob_ds.shape, prob_ds.transform, prob_ds.crs) != (
            label_ds.shape,
            label_ds.transform,
            label_ds.crs,
        ):
            raise InputError(f"{label_path}: not on the grid of the map {prob_path}")
        prob, labels = prob_ds.read(1), label_ds.read(1)
        nodata = label_ds.nodata
    known = np.ones(labels.shape, bool) if nodata is None else labels != nodata
    scores = PixelScores()
    scores.add(prob, (labels == 1).astype(np.uint8), known)
    return scores


def fit_threshold(scenes: Sequence[Scene]) -> float:
    """The F1-best threshold of every scene's labelled pixels pooled, to three decimals
    (the same uint8 cutoff as the exact (k − 0.5) / 255, and a readable manifest)."""
    if not scenes:
        raise InputError("fitting a threshold needs at least one labelled scene")
    pooled = sum((scene_scores(prob, labels) for prob, labels in scenes), PixelScores())
    damaged, undamaged = pooled.counts
    if not damaged or not undamaged:
        raise InputError("fitting a threshold needs damaged and undamaged labelled pixels")
    return round(pooled.best_threshold(), 3)

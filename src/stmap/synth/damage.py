"""Which buildings the earthquake damaged, and how: a spatially correlated field.

Damage clusters in space (soil, building age, distance to the fault), which is the
autocorrelation the DPT loss exploits; so damage is not a coin flip per building but
a smooth fractal field, sampled at each building and ranked. Exactly
``round(rate * n)`` buildings are damaged: the top of the ranking. The most affected
collapse, the next are partial collapses, the rest soft-storey (pancake) collapses
whose roof looks intact but sits lower.
"""

from __future__ import annotations

import numpy as np

from stmap.synth import noise

NONE, SOFT_STOREY, PARTIAL, COLLAPSED = 0, 1, 2, 3
GRADE_NAMES = ("none", "soft_storey", "partial", "collapsed")


def damage_field(x: np.ndarray, y: np.ndarray, scale_px: float, seed: int) -> np.ndarray:
    """Smooth damage susceptibility in [0, 1) at points (pixels), float64.

    Three octaves of value noise; the largest has feature size `scale_px`.
    """
    total = np.zeros(np.shape(x), np.float64)
    for octave, (div, amp) in enumerate(((1.0, 0.6), (2.7, 0.28), (7.0, 0.12))):
        k = noise.key(seed, 100 + octave)
        total += amp * noise.point_noise(x, y, scale_px / div, k)
    return total


def assign_grades(
    score: np.ndarray,
    storeys: np.ndarray,
    rate: float,
    collapse_share: float,
    partial_share: float,
) -> np.ndarray:
    """Damage grade per building, (N,) int8, from a susceptibility score (higher = worse).

    The top ``round(rate * N)`` scores are damaged; among them the top `collapse_share`
    collapse and the next `partial_share` partly collapse. A one-storey building cannot
    pancake onto a soft storey, so it partly collapses instead.
    """
    n = len(score)
    grades = np.zeros(n, np.int8)
    k = round(rate * n)
    if k == 0:
        return grades
    ranked = np.argsort(-score, kind="stable")[:k]
    n_collapse = round(collapse_share * k)
    n_partial = round(partial_share * k)
    grades[ranked] = SOFT_STOREY
    grades[ranked[n_collapse : n_collapse + n_partial]] = PARTIAL
    grades[ranked[:n_collapse]] = COLLAPSED
    grades[(grades == SOFT_STOREY) & (storeys < 2)] = PARTIAL
    return grades

"""How each output looks: one set of colours for QGIS styles, the viewer's tiles and its legend.

The probability ramp is yellow → orange → dark red (ColorBrewer YlOrRd), fully
transparent at 0 and growing opaque with the probability, so that the imagery
stays visible under low probabilities and damage reads at a glance. The damage
mask and damaged areas are one red; buildings are red (damaged), green
(undamaged) or grey (unknown), the colours of the report's histogram.
"""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path

import numpy as np

from stmap.io.styles import (
    RGBA,
    Category,
    Fill,
    Range,
    VectorStyle,
    paletted_qml,
    pseudocolor_qml,
    write_qml,
)
from stmap.io.writers import NODATA

# (probability, RGBA): the ramp between these stops is linear in colour and opacity.
PROB_STOPS: tuple[tuple[float, RGBA], ...] = (
    (0.0, (255, 255, 178, 0)),
    (0.25, (254, 204, 92, 50)),  # faint: low probabilities must not veil the imagery
    (0.5, (253, 141, 60, 180)),
    (0.75, (240, 59, 32, 215)),
    (1.0, (189, 0, 38, 235)),
)
DAMAGED: RGBA = (227, 26, 28, 255)
UNDAMAGED: RGBA = (49, 163, 84, 255)
UNKNOWN: RGBA = (150, 150, 150, 255)
LABEL_COLOURS = {"damaged": DAMAGED, "undamaged": UNDAMAGED, "unknown": UNKNOWN}
# A grid cell's damaged share of its area: the classes of the grid's style.
GRID_SHARES = (0.0, 0.01, 0.05, 0.15, 1.0)


def prob_value(p: float) -> int:
    """The uint8 pixel value of probability ``p`` in ``S_damage_prob.tif`` (254 is 1.0)."""
    return min(round(p * 255), NODATA - 1)


def prob_lut() -> np.ndarray:
    """(256, 4) uint8 RGBA of every pixel value of the probability raster; nodata clear."""
    values = np.arange(256) / 255
    stops = np.array([p for p, _ in PROB_STOPS])
    colours = np.array([c for _, c in PROB_STOPS], dtype=np.float64)
    lut = np.stack([np.interp(values, stops, colours[:, k]) for k in range(4)], axis=1)
    lut[NODATA] = 0
    return np.rint(lut).astype(np.uint8)


def prob_qml() -> str:
    """``S_damage_prob.qml``: the ramp over the uint8 values, transparent at 0."""
    stops = [(prob_value(p), rgba, f"{p:.2f}") for p, rgba in PROB_STOPS]
    return pseudocolor_qml(stops, maximum=NODATA - 1)


def damage_qml() -> str:
    """``S_damage.qml``: damaged pixels in one colour, the rest transparent."""
    return paletted_qml([(0, (0, 0, 0, 0), "not damaged"), (1, DAMAGED, "damaged")])


def write_raster_styles(prob_tif: Path, damage_tif: Path) -> list[Path]:
    """The ``.qml`` sidecars of the two COGs, beside them."""
    return [write_qml(prob_tif, prob_qml()), write_qml(damage_tif, damage_qml())]


def damage_style() -> VectorStyle:
    fill = Fill((*DAMAGED[:3], 110), DAMAGED, 0.4)
    return VectorStyle(
        "stmap damaged areas", "damaged areas (probability over the threshold)", fill
    )


def buildings_style() -> VectorStyle:
    categories = [
        Category(label, label, Fill((*rgba[:3], 150), rgba, 0.3))
        for label, rgba in LABEL_COLOURS.items()
    ]
    return VectorStyle(
        "stmap buildings",
        "buildings coloured by damage label",
        field="label",
        categories=categories,
    )


def grid_style(cell_m: float) -> VectorStyle:
    """Cells graded by their damaged share of the cell's area (no damage: outline only)."""
    area = cell_m * cell_m
    colours = [(254, 217, 118), (253, 141, 60), (227, 26, 28), (128, 0, 38)]
    ranges = [Range(0, 0, "no damage", Fill((0, 0, 0, 0), (120, 120, 120, 160), 0.2))]
    for (low, high), rgb in zip(pairwise(GRID_SHARES), colours, strict=True):
        label = f"{100 * low:g}–{100 * high:g} % of the cell damaged"
        lower = low * area if low else 1e-6  # above the "no damage" class
        ranges.append(Range(lower, high * area, label, Fill((*rgb, 150), (*rgb, 255), 0.2)))
    return VectorStyle(
        "stmap grid",
        f"{cell_m:g} m cells by damaged area",
        field="damaged_area_m2",
        ranges=ranges,
    )

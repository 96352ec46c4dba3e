"""Small geometric value objects shared by layout and rendering.

Everything is in output-raster pixel coordinates: x = column, y = row (pointing south),
pixel (r, c) covers [c, c + 1) x [r, r + 1) and its centre is (c + 0.5, r + 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def rect_corners(
    cx: np.ndarray, cy: np.ndarray, hu: np.ndarray, hv: np.ndarray, cos: np.ndarray, sin: np.ndarray
) -> np.ndarray:
    """Corners of rotated rectangles, (N, 4, 2) float64, counter-clockwise on screen order."""
    su = np.array([-1.0, 1.0, 1.0, -1.0])
    sv = np.array([-1.0, -1.0, 1.0, 1.0])
    du = hu[:, None] * su
    dv = hv[:, None] * sv
    x = cx[:, None] + du * cos[:, None] - dv * sin[:, None]
    y = cy[:, None] + du * sin[:, None] + dv * cos[:, None]
    return np.stack([x, y], axis=-1)


def rect_extent(hu: np.ndarray, hv: np.ndarray, cos: np.ndarray, sin: np.ndarray):
    """Half width and half height of a rotated rectangle's axis-aligned bounding box."""
    ac, as_ = np.abs(cos), np.abs(sin)
    return hu * ac + hv * as_, hu * as_ + hv * ac


@dataclass(frozen=True)
class SpanIndex:
    """Axis-aligned boxes sorted by top edge: the features a render window must draw.

    A query returns the indices, ascending (which is painter's order), of every box that
    intersects the window; boxes are bounded in height, so a sorted top edge is a
    complete index.
    """

    order: np.ndarray  # (N,) int32, boxes sorted by y0
    y0: np.ndarray  # (N,) sorted
    x0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    max_height: float

    @classmethod
    def build(cls, x0: np.ndarray, y0: np.ndarray, x1: np.ndarray, y1: np.ndarray) -> SpanIndex:
        order = np.argsort(y0, kind="stable").astype(np.int32)
        # float32 boxes: a few hundredths of a pixel of slack, well inside the margins
        y0, x0, x1, y1 = (np.asarray(a, np.float32)[order] for a in (y0, x0, x1, y1))
        height = float(np.max(y1 - y0)) + 1.0 if len(y0) else 0.0
        return cls(order, y0, x0, x1, y1, height)

    def query(self, row0: float, col0: float, row1: float, col1: float) -> np.ndarray:
        lo = np.searchsorted(self.y0, row0 - self.max_height, side="left")
        hi = np.searchsorted(self.y0, row1, side="left")
        sl = slice(lo, hi)
        hit = (self.y1[sl] > row0) & (self.x1[sl] > col0) & (self.x0[sl] < col1)
        return np.sort(self.order[sl][hit])

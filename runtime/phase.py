"""Phase stability: how far the damage map moves when the tile grid falls elsewhere.

The tile grid is fixed in the world (``runtime.grid``), so a crop georeferenced in place
gets the raster's tiles. A crop that starts at (row, col) but is placed at the raster's
corner (``crop_at``) gets the raster's tile grid shifted by (row, col) modulo the stride
over the same pixels: another phase. Comparing the two maps on the pixels both hold says
how much of the map is the model's view of the ground and how much is where the tiles
happened to fall. Pixels within ``margin`` of either raster's edge are left out: there
the tiles see mirrored pixels, a difference of context rather than of phase (with a
margin of one tile no tile that covers a compared pixel reaches past an edge).

Figures, in uint8 probability steps of 1/255: the share of compared pixels whose
damaged flag differs, that share relative to the flagged share (the mean of the two
maps'), and the median, 99th percentile and maximum of |Δprob|. Histograms of
|Δprob| are kept so that several comparisons pool exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from stmap.io.raster import crop_raster, describe_raster, read_band
from stmap.io.writers import NODATA

BENCH_OFFSET = (409, 301)  # the crop offset of the issue that found the effect (#20)


@dataclass(frozen=True)
class PhaseStats:
    """One comparison (or several, pooled) of a map with a phase-shifted map."""

    pixels: int  # compared pixels
    flips: int  # compared pixels whose damaged flag differs
    flagged: float  # mean of the two maps' damaged pixel counts
    histogram: np.ndarray  # (256,) int64 counts of |Δprob| in uint8 steps

    @property
    def flip_share(self) -> float:
        return self.flips / self.pixels if self.pixels else 0.0

    @property
    def flips_of_flagged(self) -> float | None:
        """Flips relative to the flagged pixels; None where neither map flags any."""
        return self.flips / self.flagged if self.flagged else None

    def quantile(self, q: float) -> int:
        """The smallest |Δprob| that at least ``q`` of the compared pixels do not exceed."""
        cumulative = np.cumsum(self.histogram)
        return int(np.searchsorted(cumulative, q * cumulative[-1]))

    def as_dict(self) -> dict[str, Any]:
        relative = self.flips_of_flagged
        return {
            "pixels": self.pixels,
            "flagged_share": round(self.flagged / self.pixels, 5) if self.pixels else 0.0,
            "flip_share": round(self.flip_share, 5),
            "flips_of_flagged": None if relative is None else round(relative, 4),
            "median_dprob_255": self.quantile(0.5),
            "p99_dprob_255": self.quantile(0.99),
            "max_dprob_255": int(np.flatnonzero(self.histogram)[-1]) if self.pixels else 0,
        }


def compare_shifted(
    full: tuple[np.ndarray, np.ndarray],
    shifted: tuple[np.ndarray, np.ndarray],
    offset: tuple[int, int],
    margin: int,
) -> PhaseStats:
    """Compare the (prob, damage) uint8 layers of a raster with those of its crop at ``offset``.

    Pixel (i, j) of the crop is pixel (i + row, j + col) of the raster. Nodata in
    either map is left out.
    """
    (prob, damage), (crop_prob, crop_damage) = full, shifted
    row, col = offset
    height = min(prob.shape[0] - row, crop_prob.shape[0]) - margin
    width = min(prob.shape[1] - col, crop_prob.shape[1]) - margin
    if height <= margin or width <= margin:
        raise ValueError(f"a crop at {offset} leaves no pixel {margin} px from the edges")
    ours = (slice(row + margin, row + height), slice(col + margin, col + width))
    theirs = (slice(margin, height), slice(margin, width))
    a, b = prob[ours].astype(np.int16), crop_prob[theirs].astype(np.int16)
    keep = (a != NODATA) & (b != NODATA)
    flag_a, flag_b = damage[ours][keep] == 1, crop_damage[theirs][keep] == 1
    return PhaseStats(
        pixels=int(keep.sum()),
        flips=int(np.count_nonzero(flag_a != flag_b)),
        flagged=(int(flag_a.sum()) + int(flag_b.sum())) / 2,
        histogram=np.bincount(np.abs(a - b)[keep], minlength=256).astype(np.int64),
    )


def pool(stats: Sequence[PhaseStats]) -> PhaseStats:
    """Several comparisons as one: counts and histograms added."""
    return PhaseStats(
        pixels=sum(s.pixels for s in stats),
        flips=sum(s.flips for s in stats),
        flagged=sum(s.flagged for s in stats),
        histogram=np.sum([s.histogram for s in stats], axis=0),
    )


def read_layers(prob_path: Path, damage_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The (prob, damage) uint8 layers of a finished map."""
    return read_band(prob_path), read_band(damage_path)


def crop_at(
    source: Path, target: Path, offset: tuple[int, int], size: tuple[int, int]
) -> tuple[int, int]:
    """Write ``source``'s crop from ``offset`` of at most ``size`` (h, w) px, placed at
    ``source``'s corner so that its tiles fall ``offset`` px (modulo the stride) from the
    raster's over the same pixels; its (h, w)."""
    info = describe_raster(source)
    row, col = offset
    height, width = min(size[0], info.height - row), min(size[1], info.width - col)
    if height < 1 or width < 1:
        raise ValueError(f"{source}: a crop at {offset} is empty ({info.height}×{info.width})")
    crop_raster(source, target, (row, col, height, width), at_origin=True)
    return height, width

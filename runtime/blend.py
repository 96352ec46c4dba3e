"""Blend overlapping tile predictions into one seamless probability map.

Pure tensor functions (CPU or CUDA alike). Each tile's prediction is weighted by a
separable flat-top raised-cosine window: 1 in the tile's middle, rising as sin²
across the ``overlap`` pixels at each edge, sampled at pixel centres so it is never
0 (a tile alone at the raster's edge still counts) — unless the grid has a
``margin``, whose pixels weigh 0 (the grid then reaches past the raster's far edge
by it, and its first tile starts more than it before pixel 0). Where two neighbours overlap,
their ramps are cos² and sin² of one angle and sum to one; everywhere, the weighted
sum is divided by the summed weights, so the weights of the tiles covering a pixel
always sum to one. Tiles form a full rows × cols product and the window is
separable, so the summed weights are an outer product of two 1-D sums.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from stmap.runtime.grid import AxisTiles, Block, TileGrid


def ramp(tile: int, overlap: int, margin: int = 0) -> np.ndarray:
    """(tile,) float64 1-D window: 0 over the outer ``margin`` px at each end, then a sin²
    rise over the next ``overlap − 2·margin`` px, 1 between.

    The margin is context the model sees and the map never takes (#20): a tile's edge
    moves its prediction within the model's receptive field of it, so a pixel is taken
    only from tiles that hold it at least ``margin`` px inside. A neighbour's ramp is the
    mirror image over the overlap, so the two still sum to one everywhere.
    """
    if overlap == 0:
        return np.ones(tile)
    i = np.arange(tile, dtype=np.float64)
    rise = np.sin(np.pi / 2 * np.clip((i + 0.5 - margin) / (overlap - 2 * margin), 0.0, 1.0)) ** 2
    return np.minimum(rise, rise[::-1])


def axis_weight_sum(
    axis: AxisTiles, tiles: range, start: int, stop: int, window: np.ndarray
) -> np.ndarray:
    """(stop − start,) float64 sum of the 1-D ``window`` of ``tiles`` over pixels [start, stop)."""
    origins = np.array([axis.origin(k) for k in tiles], dtype=np.int64)
    positions = (origins[:, None] + np.arange(axis.tile)).ravel() - start
    weights = np.tile(window, len(origins))
    inside = (positions >= 0) & (positions < stop - start)
    return np.bincount(positions[inside], weights=weights[inside], minlength=stop - start)


class Blender:
    """Weighted accumulation of one block's tiles, normalised on its region.

    Built once per grid and device; a call depends on its arguments only, and uses
    the tile probabilities it is given as scratch space.
    """

    def __init__(self, grid: TileGrid, device: torch.device):
        self.grid = grid
        self.window = ramp(grid.tile, grid.overlap, grid.margin)
        w = torch.from_numpy(self.window).float()
        self.weights = torch.outer(w, w).to(device)  # (T, T)

    def __call__(self, probs: torch.Tensor, block: Block) -> torch.Tensor:
        """(N, 1, T, T) float32 tile probabilities, N = rows × cols of ``block``'s tiles
        in row-major order → (region.height, region.width) float32 blended probability.

        ``probs`` is overwritten (weighted in place: large fresh tensors cost page
        faults on the CPU).
        """
        nh, nw = block.tiles_shape
        t = self.grid.tile
        weighted = probs[:, 0].mul_(self.weights).reshape(nh * nw, t * t)
        # fold sums every tile into its place in the read window in one kernel.
        acc = F.fold(
            weighted.T.unsqueeze(0),
            output_size=(block.read.height, block.read.width),
            kernel_size=t,
            stride=self.grid.stride,
        )[0, 0]
        rows, cols = block.region.relative_to(block.read)
        inverse = self._inverse_weight_sums(block, probs.device)
        return acc[rows, cols].mul_(inverse[0][:, None]).mul_(inverse[1][None, :])

    def _inverse_weight_sums(
        self, block: Block, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """1 / (summed weights) along the region's rows and its columns."""
        region = block.region
        r = axis_weight_sum(
            self.grid.rows, block.tile_rows, region.row_off, region.row_stop, self.window
        )
        c = axis_weight_sum(
            self.grid.cols, block.tile_cols, region.col_off, region.col_stop, self.window
        )
        return (
            torch.from_numpy(1.0 / r).float().to(device, non_blocking=True),
            torch.from_numpy(1.0 / c).float().to(device, non_blocking=True),
        )


def interpolate(
    region: torch.Tensor,
    rows: tuple[np.ndarray, np.ndarray, np.ndarray],
    cols: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> torch.Tensor:
    """Separable bilinear resampling of (h, w) float32 ``region`` at the given taps.

    rows, cols: ``grid.bilinear_taps`` of the output rows and columns, each
    (lo, hi, frac) over the output pixels. Returns (len(rows), len(cols)) float32.
    """
    device = region.device

    def taps(lo: np.ndarray, hi: np.ndarray, frac: np.ndarray):
        return (
            torch.from_numpy(lo).to(device),
            torch.from_numpy(hi).to(device),
            torch.from_numpy(frac).to(device),
        )

    lo, hi, f = taps(*rows)
    along_rows = region[lo] * (1 - f)[:, None] + region[hi] * f[:, None]
    lo, hi, f = taps(*cols)
    return along_rows[:, lo] * (1 - f)[None, :] + along_rows[:, hi] * f[None, :]

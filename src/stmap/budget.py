"""The memory budget: sizes that come from an input or an option are checked before
anything is allocated, so a bad choice is an exit 2 with the figure and the fix, not
an exhausted machine.

The budget is half the memory available when the run starts (``MemAvailable`` of
/proc/meminfo, else the physical memory), or what ``--memory-budget`` says. The
estimates are upper bounds of what the streaming runtime holds at once for one
input, not of the model's own activations (those are bounded by ``--batch-size``).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from stmap.errors import InputError
from stmap.io.layout import TILE

BUDGET_FRACTION = 0.5  # of the memory available at start
GIB = 1 << 30
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GIB, "t": 1 << 40}


def available_memory() -> int:
    """Bytes of memory available now: MemAvailable (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_budget() -> int:
    return int(available_memory() * BUDGET_FRACTION)


def parse_size(text: str) -> int:
    """Bytes of "8G", "512M", "4GiB", "1.5g" or a plain number of bytes; InputError else."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", text.lower())
    if not match:
        raise InputError(f"--memory-budget {text}: not a size; write e.g. 8G or 512M")
    value = float(match.group(1)) * _UNITS[match.group(2)]
    if not (math.isfinite(value) and value >= 1 << 20):
        raise InputError(f"--memory-budget {text}: must be at least 1M")
    return int(value)


def gib(size: float) -> str:
    """A size for messages: "48 GiB", "0.3 GiB", "1.2e+06 GiB"."""
    value = size / GIB
    return f"{value:.3g} GiB"


@dataclass(frozen=True)
class BlockCost:
    """What one streamed block costs, from the sizes that set it (grid.py's terms).

    block: output pixels per side; shape: (rows, cols) of the raster, which clips it;
    scale: (rows, cols) model pixels per output pixel; tile, overlap: the model's
    tiles; bands, itemsize: the pixels read; buffers: host buffers of the read pool
    (queue depth + readers + 1).
    """

    block: int
    shape: tuple[int, int]
    scale: tuple[float, float]
    tile: int
    overlap: int
    bands: int
    itemsize: int
    buffers: int

    def bytes(self) -> float:
        """An upper bound of the bytes the pipeline holds for one block at a time.

        The read window (the model-grid region plus a tile of halo) is held in the
        host pool and, as int32, on the device; its tiles (each pixel in
        (tile / stride)² of them) as float32 for the bands, the probabilities and the
        blend; the output block as float32 and two uint8 layers.
        """
        out_rows, out_cols = min(self.block, self.shape[0]), min(self.block, self.shape[1])
        rows = out_rows * self.scale[0] + self.tile + 2
        cols = out_cols * self.scale[1] + self.tile + 2
        read = rows * cols
        stride = self.tile - self.overlap
        tiled = read * (self.tile / stride) ** 2
        host = read * self.bands * self.itemsize * self.buffers
        device = read * self.bands * 4 + tiled * 4 * (self.bands + 2) + read * 4
        return host + device + out_rows * out_cols * 6.0


def check_block(cost: BlockCost, budget: int, *, block_option: bool, overlap_option: bool) -> None:
    """InputError naming the option to change, and a value that fits, when one block
    exceeds ``budget``; ``*_option``: whether the user chose that size."""
    need = cost.bytes()
    if need <= budget:
        return
    where = f"(budget {gib(budget)}, --memory-budget)"
    if overlap_option:
        fits = [o for o in range(cost.overlap) if _with(cost, overlap=o).bytes() <= budget]
        if fits:
            raise InputError(
                f"--overlap {cost.overlap} needs ~{gib(need)} for one block {where}; "
                f"use ≤ {fits[-1]}"
            )
    fits_block = largest_block(cost, budget)
    if fits_block is not None and (block_option or fits_block >= TILE):
        option = f"--block-size {cost.block}" if block_option else f"block size {cost.block}"
        raise InputError(
            f"{option} needs ~{gib(need)} for one block {where}; use --block-size {fits_block}"
        )
    raise InputError(
        f"even the smallest block ({TILE} px) needs ~{gib(_with(cost, block=TILE).bytes())} "
        f"{where}: the model grid is {cost.scale[1]:.3g} × {cost.scale[0]:.3g} times the "
        f"input's and tiles overlap by {cost.overlap} of {cost.tile} px; use a coarser "
        "--gsd, a smaller --overlap or a larger --memory-budget"
    )


def largest_block(cost: BlockCost, budget: int, step: int = TILE) -> int | None:
    """The largest multiple of ``step`` up to ``cost.block`` whose block fits, or None."""
    block = (cost.block // step) * step
    while block >= step:
        if _with(cost, block=block).bytes() <= budget:
            return block
        block -= step if block <= 8 * step else block // 2 // step * step
    return None


# Bookkeeping per output tile (TILE px) of a raster, whatever is read: coverage maps of the
# finishing steps, the journal's block list, the block plan (generous).
BYTES_PER_TILE = 64


def check_raster(name: str, height: int, width: int, budget: int) -> None:
    """InputError when a raster is so large that its bookkeeping alone exceeds the budget
    (a header may claim 2³¹ × 2³¹ pixels in a few bytes)."""
    tiles = math.ceil(height / TILE) * math.ceil(width / TILE)
    need = tiles * BYTES_PER_TILE
    if need > budget:
        raise InputError(
            f"{name}: {width} × {height} px need ~{gib(need)} of bookkeeping alone (budget "
            f"{gib(budget)}, --memory-budget); crop it (gdal_translate -srcwin) or map it in "
            "parts"
        )


def _with(cost: BlockCost, **changes: int) -> BlockCost:
    fields = {**cost.__dict__, **changes}
    return BlockCost(**fields)

"""The partial rasters and their journal, as the first sink of the block stream.

Blocks are written as they come; at most every ``checkpoint_s`` the rasters are
made durable and only then does the journal name the blocks they hold, so a run
killed anywhere resumes from a journal that never names a block the files lack.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from stmap.io.writers import NODATA, BlockWriter
from stmap.runtime.grid import BlockPlan
from stmap.runtime.journal import Journal
from stmap.runtime.sinks import DAMAGE, OUTPUT, PROB, Layers
from stmap.window import Window


class PartialRasters:
    """Writes each block's ``prob`` and ``damage`` and journals it (index → counts).

    Blocks without a valid pixel are journalled but not written: sparse partial
    rasters read as nodata there. A failed write keeps, if the disk still lets it,
    the blocks written before it, and raises.
    """

    needs = OUTPUT

    def __init__(
        self, plan: BlockPlan, writer: BlockWriter, journal: Journal, checkpoint_s: float = 1.0
    ):
        self.plan, self.writer, self.journal = plan, writer, journal
        self.checkpoint_s = checkpoint_s
        self._pending: dict[int, tuple[int, int]] = {}
        self._last = time.perf_counter()

    def add(self, window: Window, layers: Layers) -> None:
        try:
            self._pending[self._index(window)] = self._write(window, layers)
            if time.perf_counter() - self._last >= self.checkpoint_s:
                self._checkpoint()
        except BaseException:
            with contextlib.suppress(Exception):
                self._checkpoint()
            raise

    def finish(self) -> dict[int, tuple[int, int]]:
        """Every block journalled so far: index → (valid, damaged) pixels."""
        self._checkpoint()
        return self.journal.blocks

    def _index(self, window: Window) -> int:
        size = self.plan.block_size
        index = window.row_off // size * self.plan.block_cols + window.col_off // size
        if self.plan.block(index).out != window:
            raise ValueError(f"{window} is not a block of the plan")
        return index

    def _write(self, window: Window, layers: Layers) -> tuple[int, int]:
        """Write one block; returns its (valid, damaged) pixel counts."""
        if not layers:
            return 0, 0
        prob, damage = layers[PROB], layers[DAMAGE]
        self.writer.write(PROB, window.row_off, window.col_off, prob)
        self.writer.write(DAMAGE, window.row_off, window.col_off, damage)
        return int(np.count_nonzero(prob != NODATA)), int(np.count_nonzero(damage == 1))

    def _checkpoint(self) -> None:
        self._last = time.perf_counter()
        if not self._pending:
            return
        self.writer.checkpoint()  # the partial rasters hold these blocks durably ...
        self.journal.record(self._pending)  # ... before the journal says so
        self._pending.clear()

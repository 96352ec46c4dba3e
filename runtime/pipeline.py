"""The hot path: reader threads → device stage → writer thread, through bounded queues.

    readers (threads)             device stage (this thread)              writer (thread)
    validity mask; blocks with    one host→device copy of raw pixels      the output sinks:
    no valid pixel stop here  ─▶  mirror edges, cut tiles (strided view) ─▶ partial rasters
    pixels into (pinned) host     batched forward, blend, resample,        and journal, grid,
    buffers from a fixed pool     uint8, one device→host copy              polygons, ...

Python touches blocks, never tiles. The tiles a block shares with the blocks below
and to its right are handed over (``SharedTiles``) rather than computed twice.
Every output is a sink (``sinks``): each block is handed to each sink once, in the
reader thread for sinks of the input's pixels, in the writer thread for sinks of
the outputs, so what the outputs need is gathered on the way, not read back after.
Memory is bounded by the buffer pool and the queue depths, whatever the raster's
size. The same code runs on CPU and CUDA: the only differences are pinned host
buffers and, when timings are asked for (``timed``), the synchronisations that make
the per-stage timers honest on an asynchronous device. Without them a CUDA run never
waits for the device inside a block except at the one device→host copy, and its
stage times are host times (compute shows as transfer).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from stmap.io.blocks import IMAGE, VALID, BlockReader, ReadSpec
from stmap.io.writers import NODATA
from stmap.runtime.backends.base import Batcher, synchronize
from stmap.runtime.blend import Blender, interpolate
from stmap.runtime.grid import Block, BlockPlan, bilinear_taps, reflect_index, shared_count
from stmap.runtime.sinks import DAMAGE, NO_LAYERS, PROB, SOURCE, Layers, Sink

log = logging.getLogger(__name__)

_DONE = object()  # end-of-stream marker on a queue
_POLL_S = 0.2  # how often a blocked thread looks up to see whether it should stop


@dataclass
class StageTimes:
    """Seconds spent in each stage, summed over blocks (and over reader threads)."""

    read: float = 0.0
    transfer: float = 0.0
    compute: float = 0.0
    blend: float = 0.0
    write: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            setattr(self, stage, getattr(self, stage) + seconds)

    def as_dict(self) -> dict[str, float]:
        return {
            k: round(getattr(self, k), 4) for k in ("read", "transfer", "compute", "blend", "write")
        }


@dataclass
class PipelineResult:
    """What mapping an input took and found (a run's, or its strips' together)."""

    blocks: int
    resumed_blocks: int
    tiles: int  # tiles run through the model in this run
    pixels: int
    valid_pixels: int
    skipped_pixels: int
    damaged_pixels: int
    seconds: float
    times: StageTimes

    @classmethod
    def of(
        cls,
        plan: BlockPlan,
        blocks: Collection[int],
        journalled: dict[int, tuple[int, int]],
        *,
        resumed: int,
        tiles: int,
        seconds: float,
        times: StageTimes,
    ) -> PipelineResult:
        """The result of mapping ``blocks`` of ``plan``, counted from the journal."""
        skipped = sum(plan.block(i).out.size for i, (valid, _) in journalled.items() if not valid)
        return cls(
            blocks=len(blocks),
            resumed_blocks=resumed,
            tiles=tiles,
            pixels=sum(plan.block(i).out.size for i in blocks),
            valid_pixels=sum(v for v, _ in journalled.values()),
            skipped_pixels=skipped,
            damaged_pixels=sum(d for _, d in journalled.values()),
            seconds=seconds,
            times=times,
        )


@dataclass(frozen=True)
class StreamOptions:
    """How a pipeline runs; none of it changes the result.

    cutoff: damaged ⇔ uint8 probability > cutoff (``vectorize.damage_cutoff``).
    workers: reader threads; queue_depth: blocks waiting between two stages.
    timed: synchronise the device at each stage boundary (three times a block), so
        that the stage times are the device's; off, a run pays for none of them.
    """

    cutoff: int
    workers: int = 1
    queue_depth: int = 2
    timed: bool = False


@dataclass(frozen=True)
class Streamed:
    """What one pipeline run did: blocks mapped, tiles through the model, time."""

    blocks: int
    tiles: int
    seconds: float
    times: StageTimes


@dataclass
class _Loaded:
    """A block read from disk: pixels (C, h, w) in a pool buffer; None: no valid pixel."""

    block: Block
    pixels: torch.Tensor | None
    valid: np.ndarray | None  # (h, w) bool on the output grid; None when all are valid
    buffer: torch.Tensor | None


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


class SharedTiles:
    """Predictions of the tiles that neighbouring blocks share, handed from one to the next.

    Blocks are independent units of work, but the tiles along a block's edge belong
    to its neighbour too: computing them twice would cost (block + tile) / block in
    compute, 12 % at 2048-px blocks. In row-major order the block above and the block
    to the left come first; each block leaves its last rows of tiles for the block
    below and its last columns for the block to its right, if those are still to
    come. Memory: one strip of tiles per block of the current block row. A block
    that arrives before its neighbour (several readers) just computes them itself.
    """

    def __init__(self, plan: BlockPlan, device: torch.device):
        self.plan, self.device = plan, device
        self._pending: set[int] = set()
        self._strips: dict[tuple[int, str], torch.Tensor] = {}

    def expect(self, index: int) -> None:
        self._pending.add(index)

    def take(self, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """(k, nw, T, T) tiles shared with the block above, (nh, k', T, T) with the left."""
        self._pending.discard(block.index)
        (nh, nw), t = block.tiles_shape, self.plan.grid.tile
        empty = torch.empty((0, nw, t, t), device=self.device)
        top = self._strips.pop((block.index, "top"), empty)
        left = self._strips.pop(
            (block.index, "left"), torch.empty((nh, 0, t, t), device=self.device)
        )
        return top, left

    def give(self, block: Block, probs: torch.Tensor) -> None:
        """Keep the edges of (nh, nw, T, T) ``probs`` for the neighbours still to come."""
        below, right = self.plan.below(block.index), self.plan.right(block.index)
        if below in self._pending:
            k = shared_count(block.tile_rows, self.plan.block(below).tile_rows)
            if k:  # a copy, so that the block's whole probs tensor can be freed
                self._strips[(below, "top")] = probs[-k:].clone()
        if right in self._pending:
            k = shared_count(block.tile_cols, self.plan.block(right).tile_cols)
            if k:
                self._strips[(right, "left")] = probs[:, -k:].clone()


def cut_tiles(window: torch.Tensor, tile: int, stride: int) -> torch.Tensor:
    """(C, H, W) → (N, C, T, T) tiles in row-major order, in channels-last memory.

    ``unfold`` makes the tiles strided views of the window; one copy lays them out.
    H and W are (n − 1)·stride + tile, so no pixel is left over.
    """
    c = window.shape[0]
    views = window.unfold(1, tile, stride).unfold(2, tile, stride)  # (C, nh, nw, T, T)
    return views.permute(1, 2, 3, 4, 0).reshape(-1, tile, tile, c).permute(0, 3, 1, 2)


def mirror_pad(
    x: torch.Tensor, rows: np.ndarray, cols: np.ndarray, row_span: slice, col_span: slice
) -> torch.Tensor:
    """``x[:, rows][:, :, cols]``, where rows[row_span] and cols[col_span] run straight
    through ``x``: the middle is one slice copy, only the margins are gathered."""
    out = x.new_empty((x.shape[0], len(rows), len(cols)))
    r, c = rows[row_span], cols[col_span]
    middle = x[:, r[0] : r[-1] + 1]
    out[:, row_span, col_span] = middle[:, :, c[0] : c[-1] + 1]
    for margin in (slice(0, col_span.start), slice(col_span.stop, len(cols))):
        if margin.stop > margin.start:
            out[:, row_span, margin] = middle.index_select(2, _index(cols[margin], x))
    for margin in (slice(0, row_span.start), slice(row_span.stop, len(rows))):
        if margin.stop > margin.start:
            strip = x.index_select(1, _index(rows[margin], x))
            out[:, margin] = strip.index_select(2, _index(cols, x))
    return out


def _index(values: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(values).to(like.device)


class Pipeline:
    """Maps ``blocks`` of one plan, handing each finished block to every sink.

    blocks: the indices of the plan's blocks this run maps, in any order (those not
        journalled yet; a strip of a scene shared out over several workers). A
        block's result does not depend on which run maps it (one global tile grid),
        so strips add up to the whole.
    sinks: each gets (block.out, layers) once per block: sinks of ``SOURCE`` layers in
        a reader thread (the input's pixels, on the input grid: the plan must not
        resample), the others in the writer thread, in the order given. A sink's
        error stops the run and is raised.
    """

    def __init__(
        self,
        plan: BlockPlan,
        spec: ReadSpec,
        batcher: Batcher,
        sinks: Sequence[Sink],
        options: StreamOptions,
        blocks: Collection[int],
    ):
        self.plan, self.spec, self.batcher = plan, spec, batcher
        self.source_sinks = [s for s in sinks if s.needs <= SOURCE]
        self.output_sinks = [s for s in sinks if not s.needs <= SOURCE]
        if self.source_sinks and plan.resampled:
            raise ValueError("sinks of the input's pixels need the model on the input grid")
        self.cutoff, self.workers, self.timed = options.cutoff, options.workers, options.timed
        queue_depth = options.queue_depth
        self.blocks = sorted(blocks)  # row-major
        self.device = batcher.backend.device
        self.blender = Blender(plan.grid, self.device)
        self.shared = SharedTiles(plan, self.device)
        self.tiles = 0  # tiles run through the model
        self.times = StageTimes()
        self._stop = threading.Event()
        self._loaded: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._finished: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._writer_error: BaseException | None = None
        pin = self.device.type == "cuda"  # pinned pages make the host→device copy asynchronous
        dtype = torch.from_numpy(np.empty(0, spec.dtype)).dtype
        size = len(spec.bands) * plan.max_source_pixels()
        self._pool: queue.Queue = queue.Queue()
        for _ in range(queue_depth + self.workers + 1):
            self._pool.put(torch.empty(size, dtype=dtype, pin_memory=pin))

    @property
    def output_failed(self) -> bool:
        """Whether the run stopped because the outputs could not be written."""
        return self._writer_error is not None

    def run(self) -> Streamed:
        start = time.perf_counter()
        todo: queue.Queue = queue.Queue()
        for index in self.blocks:
            todo.put(self.plan.block(index))
            self.shared.expect(index)
        threads = [threading.Thread(target=self._write, name="stmap-writer", daemon=True)]
        threads += [
            threading.Thread(target=self._read, args=(todo,), name=f"stmap-reader-{i}", daemon=True)
            for i in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        try:
            self._compute()
        finally:
            self._stop.set()
            self._put(self._finished, _DONE, wait_for_writer=True)
            for thread in threads:
                thread.join()
        if self._writer_error is not None:
            raise self._writer_error
        return Streamed(len(self.blocks), self.tiles, time.perf_counter() - start, self.times)

    # -- reader threads ------------------------------------------------------------

    def _read(self, todo: queue.Queue) -> None:
        try:
            with BlockReader(self.spec) as reader:
                while not self._stop.is_set():
                    try:
                        block = todo.get_nowait()
                    except queue.Empty:
                        break
                    if not self._put(self._loaded, self._load(reader, block)):
                        return
        except BaseException as exc:  # handed to the device stage, which raises it
            self._put(self._loaded, _Failed(exc))
            return
        self._put(self._loaded, _DONE)

    def _load(self, reader: BlockReader, block: Block) -> _Loaded:
        t0 = time.perf_counter()
        out = block.out
        valid = reader.read_valid(out)
        if valid is not None and not valid.any():
            self._hand_over(self.source_sinks, block, NO_LAYERS)
            self.times.add("read", time.perf_counter() - t0)
            return _Loaded(block, None, None, None)  # no valid pixel: never reaches the model
        if valid is not None and valid.all():
            valid = None
        buffer = self._take_buffer()
        src = block.source
        pixels = buffer[: len(self.spec.bands) * src.size].view(-1, src.height, src.width)
        # rasterio decodes straight into the (pinned) buffer: no extra host copy.
        reader.read_pixels(src, out=pixels.numpy())
        if self.source_sinks:  # on the input grid (no resampling): source holds out
            rows, cols = out.relative_to(src)
            image = {IMAGE: pixels.numpy()[:, rows, cols]}
            image.update({} if valid is None else {VALID: valid})
            self._hand_over(self.source_sinks, block, image)
        self.times.add("read", time.perf_counter() - t0)
        return _Loaded(block, pixels, valid, buffer)

    @staticmethod
    def _hand_over(sinks: Sequence[Sink], block: Block, layers: Layers) -> None:
        for sink in sinks:
            sink.add(block.out, layers)

    def _take_buffer(self) -> torch.Tensor:
        while True:
            try:
                return self._pool.get(timeout=_POLL_S)
            except queue.Empty:
                if self._stop.is_set():
                    raise InterruptedError("stopping") from None

    # -- device stage ----------------------------------------------------------------

    def _compute(self) -> None:
        readers = self.workers
        while readers:
            item = self._get(self._loaded)
            if item is _DONE:
                readers -= 1
                continue
            if isinstance(item, _Failed):
                raise item.error
            if item.pixels is None:
                self.shared.take(item.block)  # drop what its neighbours left for it
                layers = None
            else:
                layers = self._predict(item)
                self._pool.put(item.buffer)
            if not self._put(self._finished, (item.block, layers), wait_for_writer=True):
                break

    def _predict(self, item: _Loaded) -> np.ndarray:
        """One block through the model: (2, h, w) uint8 probability × 255 and damage."""
        block, grid = item.block, self.plan.grid
        t, s = grid.tile, grid.stride
        (nh, nw), (top, left) = block.tiles_shape, self.shared.take(block)
        t0 = time.perf_counter()
        x = item.pixels.to(self.device, non_blocking=True)  # the one host→device copy
        if x.dtype == torch.uint16:
            x = x.int()  # few kernels take uint16; int32 holds it exactly
        x = self._mirror(x, block)
        # The tiles shared with the blocks above and to the left come from them; the
        # model runs on the rest, a rectangle at the bottom right of the tile grid.
        kr, kc = len(top), left.shape[1]
        probs = torch.empty((nh, nw, t, t), dtype=torch.float32, device=self.device)
        probs[:kr], probs[:, :kc] = top, left
        rest = cut_tiles(x[:, kr * s :, kc * s :], t, s) if kr < nh and kc < nw else None
        t1 = self._clock()
        if rest is not None:
            probs[kr:, kc:] = self.batcher(rest).view(nh - kr, nw - kc, t, t)
            self.tiles += len(rest)
        t2 = self._clock()
        self.shared.give(block, probs)
        prob = self.blender(probs.view(nh * nw, 1, t, t), block)
        if self.plan.resampled:
            prob = interpolate(prob, *self._taps(block))
        # 255 is nodata, so probability 1.0 is stored as 254 (in place: no new buffers).
        prob8 = prob.mul_(255).round_().clamp_(0, NODATA - 1).to(torch.uint8)
        damage = (prob8 > self.cutoff).to(torch.uint8)
        layers = torch.stack([prob8, damage])
        if item.valid is not None:
            invalid = ~torch.from_numpy(item.valid).to(self.device, non_blocking=True)
            layers[:, invalid] = NODATA
        t3 = self._clock()
        out = layers.cpu().numpy()  # the one device→host copy
        t4 = time.perf_counter()
        self.times.add("transfer", (t1 - t0) + (t4 - t3))
        self.times.add("compute", t2 - t1)
        self.times.add("blend", t3 - t2)
        return out

    def _mirror(self, x: torch.Tensor, block: Block) -> torch.Tensor:
        """(C, source) → (C, read): pixels past the raster's edges mirrored back into it."""
        if block.read == block.source:
            return x
        grid, read, src = self.plan.grid, block.read, block.source
        rows = reflect_index(read.row_off, read.row_stop, grid.height) - src.row_off
        cols = reflect_index(read.col_off, read.col_stop, grid.width) - src.col_off
        # The read window's pixels inside the raster: straight through the source.
        row_span = slice(max(0, -read.row_off), min(read.height, grid.height - read.row_off))
        col_span = slice(max(0, -read.col_off), min(read.width, grid.width - read.col_off))
        return mirror_pad(x, rows, cols, row_span, col_span)

    def _taps(self, block: Block):
        plan, out, region = self.plan, block.out, block.region
        (sy, sx), (oy, ox), grid = plan.scale, plan.offset, plan.grid
        return (
            bilinear_taps(out.row_off, out.row_stop, sy, grid.height, region.row_off, oy),
            bilinear_taps(out.col_off, out.col_stop, sx, grid.width, region.col_off, ox),
        )

    def _clock(self) -> float:
        if self.timed:
            synchronize(self.device)  # kernels are asynchronous: time their end
        return time.perf_counter()

    # -- writer thread -----------------------------------------------------------------

    def _write(self) -> None:
        try:
            while (item := self._finished.get()) is not _DONE:
                block, layers = item
                t0 = time.perf_counter()
                named = NO_LAYERS if layers is None else {PROB: layers[0], DAMAGE: layers[1]}
                self._hand_over(self.output_sinks, block, named)
                self.times.add("write", time.perf_counter() - t0)
        except BaseException as exc:
            self._writer_error = exc
            self._stop.set()

    # -- queues ----------------------------------------------------------------------------

    def _put(self, q: queue.Queue, item: object, *, wait_for_writer: bool = False) -> bool:
        """Put ``item`` on ``q`` unless the run stops first; False when it stopped.

        Readers stop when the run stops; the device stage, feeding the writer, stops
        only when the writer failed, so that finished blocks are still written.
        """
        while True:
            try:
                q.put(item, timeout=_POLL_S)
                return True
            except queue.Full:
                stopping = (
                    self._writer_error is not None if wait_for_writer else self._stop.is_set()
                )
                if stopping:
                    return False

    def _get(self, q: queue.Queue) -> object:
        while True:
            try:
                return q.get(timeout=_POLL_S)
            except queue.Empty:
                if self._writer_error is not None:
                    raise self._writer_error from None

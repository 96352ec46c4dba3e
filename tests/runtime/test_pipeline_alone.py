"""The pipeline on its own: a fake backend, in-memory sinks, a small raster.

No writer, journal or bundle: what the pipeline promises its sinks is checked
directly (every pixel once to every sink, the blend of a linear model exact,
only the blocks asked for, errors raised and threads stopped), and the hand-off
of shared tiles between blocks in whatever order they come.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from stmap.io.blocks import IMAGE, ReadSpec
from stmap.runtime.backends.base import Batcher
from stmap.runtime.grid import BlockPlan, TileGrid
from stmap.runtime.pipeline import Pipeline, SharedTiles, StreamOptions
from stmap.runtime.sinks import OUTPUT, PROB, SOURCE, Layers
from stmap.window import Window
from tests.runtime.infer_data import write_raster

HEIGHT, WIDTH = 1100, 1300


class MeanOfBands:
    """A linear, per-pixel model: the mean of the bands / 255; fails on call ``fail_at``."""

    name, precision, device = "fake", "fp32", torch.device("cpu")

    def __init__(self, fail_at: int | None = None):
        self.calls, self.fail_at = 0, fail_at

    def infer(self, tiles: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_at:
            raise RuntimeError("the backend failed")
        return tiles.float().mean(dim=1, keepdim=True) / 255

    def max_batch(self) -> int:
        return 16


class Recorder:
    """An in-memory sink: how often each pixel came, and the layers it was given."""

    def __init__(self, needs: frozenset[str]):
        self.needs = needs
        self.seen = np.zeros((HEIGHT, WIDTH), np.int32)
        self.prob = np.full((HEIGHT, WIDTH), 255, np.uint8)
        self.windows: list[Window] = []

    def add(self, window: Window, layers: Layers) -> None:
        rows, cols = window.relative_to(Window(0, 0, HEIGHT, WIDTH))
        self.seen[rows, cols] += 1
        self.windows.append(window)
        if PROB in layers:
            self.prob[rows, cols] = layers[PROB]

    def finish(self) -> None:
        """Nothing to finish."""


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> tuple[str, np.ndarray]:
    image = np.random.default_rng(0).integers(0, 256, (3, HEIGHT, WIDTH), dtype=np.uint8)
    path = write_raster(tmp_path_factory.mktemp("alone") / "scene.tif", image)
    return str(path), image


def run(path: str, backend: MeanOfBands, sinks, blocks=None, workers: int = 2):
    plan = BlockPlan(HEIGHT, WIDTH, 512, TileGrid(HEIGHT, WIDTH, 64, 16))
    spec = ReadSpec(path, (1, 2, 3), "uint8", False, (HEIGHT, WIDTH))
    options = StreamOptions(cutoff=127, workers=workers)
    todo = range(len(plan)) if blocks is None else blocks
    return Pipeline(plan, spec, Batcher(backend, 16), sinks, options, todo).run()


def test_every_pixel_reaches_every_sink_once_and_a_linear_model_blends_exactly(scene):
    path, image = scene
    outputs, sources = Recorder(OUTPUT), Recorder(SOURCE)
    streamed = run(path, MeanOfBands(), [outputs, sources])
    assert (outputs.seen == 1).all() and (sources.seen == 1).all()
    expected = np.clip(np.round(image.astype(np.float64).mean(axis=0)), 0, 254).astype(np.uint8)
    np.testing.assert_array_equal(outputs.prob, expected)
    assert streamed.blocks == 9 and streamed.tiles > 0


def test_only_the_blocks_asked_for_are_delivered(scene):
    path, _ = scene
    outputs = Recorder(OUTPUT)
    run(path, MeanOfBands(), [outputs], blocks=[1, 2, 4, 8])  # 0, 3, 5, 6, 7: journalled
    plan = BlockPlan(HEIGHT, WIDTH, 512, TileGrid(HEIGHT, WIDTH, 64, 16))
    assert sorted(outputs.windows, key=lambda w: (w.row_off, w.col_off)) == [
        plan.block(i).out for i in (1, 2, 4, 8)
    ]
    assert outputs.seen.sum() == sum(plan.block(i).out.size for i in (1, 2, 4, 8))


def test_a_backend_error_is_raised_and_every_thread_stops(scene):
    path, _ = scene
    with pytest.raises(RuntimeError, match="the backend failed"):
        run(path, MeanOfBands(fail_at=3), [Recorder(OUTPUT)], workers=3)
    assert not [t for t in threading.enumerate() if t.name.startswith("stmap-")]


def test_a_sink_error_is_raised_and_every_thread_stops(scene):
    path, _ = scene

    class Broken(Recorder):
        def add(self, window: Window, layers: Layers) -> None:
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        run(path, MeanOfBands(), [Broken(OUTPUT)])
    assert not [t for t in threading.enumerate() if t.name.startswith("stmap-")]


def test_sinks_of_the_input_need_the_model_on_the_input_grid(scene):
    path, _ = scene
    plan = BlockPlan(HEIGHT, WIDTH, 512, TileGrid(550, 650, 64, 16), scale=(0.5, 0.5))
    spec = ReadSpec(path, (1, 2, 3), "uint8", False, (550, 650))
    with pytest.raises(ValueError, match="input grid"):
        Pipeline(
            plan,
            spec,
            Batcher(MeanOfBands(), 4),
            [Recorder(frozenset({IMAGE}))],
            StreamOptions(cutoff=127),
            range(len(plan)),
        )


# -- SharedTiles ------------------------------------------------------------------


def tile_values(plan: BlockPlan, index: int) -> torch.Tensor:
    """(nh, nw, T, T): each tile filled with its global number, as if predicted."""
    block, t = plan.block(index), plan.grid.tile
    rows = torch.tensor(list(block.tile_rows)).view(-1, 1)
    cols = torch.tensor(list(block.tile_cols)).view(1, -1)
    numbers = (rows * plan.grid.cols.count + cols).float()
    return numbers[:, :, None, None].expand(-1, -1, t, t).clone()


@pytest.mark.parametrize("seed", [None, 0, 1, 2])
def test_shared_tiles_are_handed_over_in_any_order_and_none_are_kept(seed):
    """Blocks in row-major order (one reader) take their neighbours' edge tiles; in
    any other order (several readers) a block whose neighbour has not come yet gets
    nothing and computes them itself: what it takes is always its neighbours' own
    prediction of those tiles, and nothing is left behind."""
    plan = BlockPlan(1100, 1300, 512, TileGrid(1100, 1300, 64, 16))
    order = list(range(len(plan)))
    if seed is not None:
        order = list(np.random.default_rng(seed).permutation(order))
    shared = SharedTiles(plan, torch.device("cpu"))
    for index in order:
        shared.expect(index)
    handed = 0
    for index in order:
        block, want = plan.block(index), tile_values(plan, index)
        top, left = shared.take(block)
        assert torch.equal(top, want[: len(top)]) and torch.equal(left, want[:, : left.shape[1]])
        handed += len(top) + left.shape[1]
        shared.give(block, want)
    assert not shared._strips, "strips no block will take are not kept"
    if seed is None:
        assert handed > 0, "in row-major order the shared tiles are handed over"

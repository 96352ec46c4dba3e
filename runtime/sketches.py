"""What the finishing steps gather from the blocks while a run streams them.

On a CPU with a light model, writing the outputs after the run cost half as much
as the run itself, most of it reading back and decoding rasters the pipeline had
just held in memory. ``Sketches`` rides along the pipeline instead (its taps): the
quicklook's thumbnails of the input and of the probabilities, the damage grid's
per-cell tallies and, beside a GPU, the damaged regions traced block by block.
Whatever a run did not see (blocks mapped before a resume, strips mapped by other
workers) is read from the files at the end, so the outputs do not depend on how
the run went. Gathering is an optimisation: if it fails, it is dropped with a
warning and everything is read back, rather than stopping the mapping.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from stmap.io.raster import RasterInfo
from stmap.io.writers import NODATA
from stmap.runtime.density_grid import GridTally
from stmap.runtime.grid import Block
from stmap.runtime.quicklook import quicklook_shape
from stmap.runtime.thumbnail import Thumbnail
from stmap.runtime.vectorize import DamageTracer
from stmap.runtime.viewer_tiles import MapTiles

log = logging.getLogger(__name__)


@dataclass
class Sketches:
    """What the pipeline's taps gathered for the finishing steps.

    image: the input's quicklook thumbnail, or None when the readers cannot sample
        it (the model runs on another grid, or an AOI masks the validity they see).
    prob: the probabilities' thumbnail, on the same shape.
    grid: the damage grid's tallies.
    tracer: the damaged regions traced so far, or None when they are traced after
        the run. Tracing costs a core for a quarter of a second per 4096² city: free
        beside a GPU, but on a CPU it fights the model's threads, which then lose
        more than it saves (measured on two cores: 2.1 → 2.2–2.6 s end to end).
    failed: why gathering stopped, if it did; then none of it is to be used.
    tiles: the viewer's tile pyramid, fed the same blocks (None: no viewer); its
        imagery only where ``image`` is sampled.
    """

    image: Thumbnail | None
    prob: Thumbnail
    grid: GridTally
    tracer: DamageTracer | None
    failed: str | None = None
    tiles: MapTiles | None = None

    @classmethod
    def for_input(
        cls,
        info: RasterInfo,
        bands: int,
        grid: GridTally,
        *,
        sample_image: bool,
        trace_damage: bool,
    ) -> Sketches:
        shape = quicklook_shape(info.width, info.height)
        return cls(
            Thumbnail(info.height, info.width, shape, bands, info.dtype) if sample_image else None,
            Thumbnail(info.height, info.width, shape, 1),
            grid,
            DamageTracer(info.height, info.width) if trace_damage else None,
        )

    def source_tap(self, block: Block, pixels: np.ndarray | None, valid: np.ndarray | None) -> None:
        """A reader's block (see ``Pipeline``): its samples into the image thumbnail."""
        if self.image is None or self.failed:
            return
        out, src = block.out, block.source
        try:
            view = None
            if pixels is None:
                self.image.add_empty(out.row_off, out.col_off, out.height, out.width, fill=0)
            else:
                r0, c0 = out.row_off - src.row_off, out.col_off - src.col_off
                view = pixels[:, r0 : r0 + out.height, c0 : c0 + out.width]
                self.image.add(out.row_off, out.col_off, view, valid)
            if self.tiles is not None:
                self.tiles.add_image(out.row_off, out.col_off, out.height, out.width, view, valid)
        except Exception as exc:  # an optimisation must not stop the mapping
            self._fail(exc)

    def output_tap(self, block: Block, layers: np.ndarray | None) -> None:
        """The writer's block: into the prob thumbnail, the grid and the damage tracer."""
        if self.failed:
            return
        out = block.out
        try:
            if layers is None:
                self.prob.add_empty(out.row_off, out.col_off, out.height, out.width, fill=NODATA)
                nodata = np.broadcast_to(np.uint8(NODATA), (out.height, out.width))
                self.grid.add(out.row_off, out.col_off, nodata)  # its cells still hold pixels
                if self.tracer is not None:
                    self.tracer.add_empty(out.row_off, out.col_off, out.height, out.width)
                if self.tiles is not None:
                    self.tiles.add_prob(out.row_off, out.col_off, out.height, out.width, None)
                return
            self.prob.add(out.row_off, out.col_off, layers[:1])
            self.grid.add(out.row_off, out.col_off, layers[0])
            if self.tracer is not None:
                self.tracer.add(out.row_off, out.col_off, layers[1] == 1, layers[0])
            if self.tiles is not None:
                self.tiles.add_prob(out.row_off, out.col_off, out.height, out.width, layers[0])
        except Exception as exc:  # an optimisation must not stop the mapping
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        if self.failed is None:
            self.failed = f"{type(exc).__name__}: {exc}"
            log.warning(
                "gathering the quicklook, grid and polygons while streaming failed (%s); "
                "they will be computed from the finished rasters instead",
                self.failed,
            )

"""What the finishing steps gather from the blocks while a run streams them.

On a CPU with a light model, writing the outputs after the run cost half as much
as the run itself, most of it reading back and decoding rasters the pipeline had
just held in memory. ``Sketches`` rides along the pipeline instead (its taps): the
quicklook's thumbnails of the input and of the probabilities, the damage grid's
per-cell tallies and, beside a GPU, the damaged regions traced block by block. Whatever a run did
not see (blocks mapped before a resume, strips mapped by other workers) is read
from the files at the end, so the outputs do not depend on how the run went.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stmap.io.raster import RasterInfo
from stmap.io.writers import NODATA
from stmap.runtime.density_grid import GridTally
from stmap.runtime.grid import Block
from stmap.runtime.quicklook import image_thumbnail
from stmap.runtime.thumbnail import Thumbnail
from stmap.runtime.vectorize import DamageTracer


@dataclass
class Sketches:
    """Thumbnails filled by the pipeline's taps.

    image: the input's quicklook thumbnail, or None when the readers cannot sample
        it (the model runs on another grid, or an AOI masks the validity they see).
    prob: the probabilities' thumbnail, on the same shape.
    grid: the damage grid's tallies.
    tracer: the damaged regions traced so far, or None when they are traced after
        the run. Tracing costs a core for a quarter of a second per 4096² city: free
        beside a GPU, but on a CPU it fights the model's threads, which then lose
        more than it saves (measured on two cores: 2.1 → 2.2–2.6 s end to end).
    """

    image: Thumbnail | None
    prob: Thumbnail
    grid: GridTally
    tracer: DamageTracer | None

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
        image = image_thumbnail(info.width, info.height, bands, info.dtype)
        prob = Thumbnail(info.height, info.width, image.pixels.shape[1:], 1)
        tracer = DamageTracer(info.height, info.width) if trace_damage else None
        return cls(image if sample_image else None, prob, grid, tracer)

    def source_tap(self, block: Block, pixels: np.ndarray | None, valid: np.ndarray | None) -> None:
        """A reader's block (see ``Pipeline``): its samples into the image thumbnail."""
        if self.image is None:
            return
        out, src = block.out, block.source
        if pixels is None:
            self.image.add_empty(out.row_off, out.col_off, out.height, out.width, fill=0)
            return
        r0, c0 = out.row_off - src.row_off, out.col_off - src.col_off
        view = pixels[:, r0 : r0 + out.height, c0 : c0 + out.width]
        self.image.add(out.row_off, out.col_off, view, valid)

    def output_tap(self, block: Block, layers: np.ndarray | None) -> None:
        """The writer's block: into the prob thumbnail, the grid and the damage tracer."""
        out = block.out
        if layers is None:
            self.prob.add_empty(out.row_off, out.col_off, out.height, out.width, fill=NODATA)
            nodata = np.full((out.height, out.width), NODATA, dtype=np.uint8)
            self.grid.add(out.row_off, out.col_off, nodata)  # its cells still hold pixels
            if self.tracer is not None:
                self.tracer.add_empty(out.row_off, out.col_off, out.height, out.width)
        else:
            self.prob.add(out.row_off, out.col_off, layers[:1])
            self.grid.add(out.row_off, out.col_off, layers[0])
            if self.tracer is not None:
                self.tracer.add(out.row_off, out.col_off, layers[1] == 1, layers[0])

"""The sinks that gather an input's finished outputs from the block stream.

On a CPU with a light model, writing the outputs after the run cost half as much
as the run itself, most of it reading back and decoding rasters the pipeline had
just held in memory. So the quicklook's thumbnails of the input and of the
probabilities, the damage grid's per-cell tallies, the viewer's tiles and, beside
a GPU, the damaged regions traced block by block ride along the pipeline as sinks.
Whatever a run did not see (blocks mapped before a resume, strips mapped by other
workers) is fed to the same sinks from the files at the end (``complete``).
Gathering is an optimisation: if it fails, it is dropped with a warning and fresh
sinks are fed everything from the files, rather than stopping the mapping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from stmap.io.blocks import LayerReader, ReadSpec
from stmap.io.writers import empty_dir
from stmap.runtime.density_grid import GridTally
from stmap.runtime.plan import InputPlan, OutputPaths
from stmap.runtime.quicklook import quicklook_thumbnails
from stmap.runtime.sinks import Gathering, Guarded, Sink, feed_missing
from stmap.runtime.vectorize import DamageTracer
from stmap.runtime.viewer_tiles import MapTiles, Pyramid


@dataclass(frozen=True)
class GatherSpec:
    """What to gather for one input, and how.

    threshold, cell_m: the damage grid's; value_max: the input value the viewer's
    imagery shows as white (the model's scaling); viewer: its mode ("none": no map).
    trace_damage: trace the damaged regions while streaming. Tracing costs a core
        for a quarter of a second per 4096² city: free beside a GPU, but on a CPU it
        fights the model's threads, which then lose more than it saves (measured on
        two cores: 2.1 → 2.2–2.6 s end to end); then it is done at the end.
    """

    threshold: float
    cell_m: float
    value_max: float
    viewer: str
    trace_damage: bool


class Gathered:
    """An input's gathering sinks: quicklook thumbnails, grid, damage tracer, map tiles."""

    def __init__(self, plan: InputPlan, out: OutputPaths, spec: GatherSpec):
        info = plan.info
        self.plan, self.out, self.spec = plan, out, spec
        self.image, self.prob = quicklook_thumbnails(
            info.height, info.width, len(plan.bands), info.dtype
        )
        self.grid = GridTally(
            info.crs,
            info.transform,
            info.width,
            info.height,
            threshold=spec.threshold,
            cell_m=spec.cell_m,
            gsd_m=math.sqrt(plan.pixel_area_m2),  # used when the raster has no CRS
        )
        self.tracer = DamageTracer(info.height, info.width)
        self.tiles = None
        if spec.viewer != "none":
            pyramid = Pyramid.for_raster(info.height, info.width, spec.viewer)
            # what a run before left is dropped: whatever this run does not see is fed again
            self.tiles = MapTiles(empty_dir(out.map_work), pyramid, value_max=spec.value_max)
        self.guard = Guarded(self.all)

    @property
    def all(self) -> list[Gathering]:
        tiles = [] if self.tiles is None else [self.tiles.image, self.tiles.prob]
        return [self.image, self.prob, self.grid, self.tracer, *tiles]

    def streamed(self) -> list[Sink]:
        """The sinks the pipeline feeds: the input's pixels only where the readers see
        them on the input grid and unmasked by an AOI; the damage traced only if asked."""
        sampled = self.plan.model_transform is None and self.plan.aoi is None
        left_out = set()
        if not sampled:
            left_out |= {id(self.image), *([id(self.tiles.image)] if self.tiles else [])}
        if not self.spec.trace_damage:
            left_out.add(id(self.tracer))
        wrapped = zip(self.all, self.guard.wrapped(), strict=True)
        return [guarded for sink, guarded in wrapped if id(sink) not in left_out]

    def complete(self) -> Gathered:
        """Every sink fed what it missed, from the partial rasters and the input; after a
        failure, fresh sinks fed everything."""
        gathered = Gathered(self.plan, self.out, self.spec) if self.guard.failed else self
        info, plan = self.plan.info, self.plan
        image = ReadSpec(info.path, plan.bands, info.dtype, plan.masked, (info.height, info.width))
        with LayerReader(self.out.partials, image) as reader:
            feed_missing(gathered.all, reader)
        return gathered

    @property
    def failed(self) -> str | None:
        return self.guard.failed

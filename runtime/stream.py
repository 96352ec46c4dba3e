"""Streaming one input: the model on its device, the journal, and the pipeline run.

``stream_blocks`` maps the blocks not yet journalled into the partial rasters and
hands every block to the gathering sinks (``gather``) on the way; it returns a
``StreamResult`` for the finishing step. A distributed run calls the same
functions for a strip (``blocks``), and ``open_partials`` and ``block_plan`` to
assemble strips.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import torch

from stmap import __version__
from stmap.bundle import Bundle
from stmap.errors import Interrupted, RasterError
from stmap.io.blocks import ReadSpec, file_identity
from stmap.io.writers import BlockWriter
from stmap.runtime.backends.base import Backend, Batcher, create_backend, resolve_device
from stmap.runtime.gather import Gathered, GatherSpec
from stmap.runtime.grid import BlockPlan
from stmap.runtime.journal import Journal
from stmap.runtime.partials import PartialRasters
from stmap.runtime.pipeline import Pipeline, PipelineResult, StreamOptions
from stmap.runtime.plan import (
    InferOptions,
    InputPlan,
    OutputPaths,
    ProgressFactory,
    RunPlan,
    run_margin,
)
from stmap.runtime.sinks import Progress
from stmap.runtime.tta import with_tta
from stmap.runtime.vectorize import damage_cutoff

log = logging.getLogger(__name__)


@dataclass
class Session:
    """What the inputs of one run share: the model, the options, the backends."""

    bundle: Bundle
    options: InferOptions
    threshold: float
    overlap: int
    device: torch.device
    backends: dict[str, Backend] = field(default_factory=dict)

    @classmethod
    def of(cls, run: RunPlan) -> Session:
        """The model of a run on this machine's device (a Ray driver never resolves one)."""
        device = resolve_device(run.options.device)
        return cls(run.bundle, run.options, run.threshold, run.overlap, device)

    @property
    def margin(self) -> int:
        """The tile margin the blend leaves out (plan.run_margin)."""
        return run_margin(self.bundle.manifest, self.overlap)

    def backend(self, dtype: str, value_max: float | None = None) -> Backend:
        """The backend for rasters of ``dtype`` whose pixels fill 0..``value_max`` (the
        model's input scaling depends on both; None: the manifest's scaling for ``dtype``)."""
        key = dtype if value_max is None else f"{dtype}/{value_max:g}"
        if key not in self.backends:
            bundle = self.bundle
            if value_max is not None:  # the same weights, scaled for this file's bit depth
                scaling = {**bundle.manifest.input_scaling, dtype: value_max}
                manifest = bundle.manifest.model_copy(update={"input_scaling": scaling})
                bundle = Bundle(bundle.root, manifest, bundle.source)
            backend = create_backend(
                self.options.backend, bundle, self.device, self.options.precision, dtype
            )
            self.backends[key] = with_tta(backend, self.options.tta)
        return self.backends[key]


@dataclass(frozen=True)
class RunFacts:
    """How an input was mapped, for its summary."""

    backend: str
    device: str
    precision: str
    batch_size: int
    tile_size: int
    overlap: int
    tile_grid: dict[str, Any]  # where the tiles fell (``InputPlan.tile_grid_facts``)
    block_size: int
    workers: int
    threshold: float
    tta: str
    timings: bool  # whether the stage times were synchronised
    strips: int | None = None  # a distributed run's strips of the scene

    def as_dict(self) -> dict[str, Any]:
        facts = asdict(self)
        if self.strips is None:
            del facts["strips"]
        return facts


@dataclass
class StreamResult:
    """What streaming an input left for the finishing step.

    gathered: the gathering sinks (None: nothing gathered, all is read at the end).
    """

    pipeline: PipelineResult
    run: RunFacts
    gathered: Gathered | None


# Fills an input's partial rasters: (plan, out, session, progress, warn) → StreamResult
Stream = Callable[
    [InputPlan, OutputPaths, Session, ProgressFactory | None, Callable[[str], None]],
    StreamResult,
]


def block_plan(
    plan: InputPlan, tile: int, overlap: int, block_size: int | None = None, *, margin: int = 0
) -> BlockPlan:
    """The blocks of an input over the model's global tile grid (``tile`` px tiles
    overlapping by ``overlap``, ``margin`` of each left out of the blend); block_size:
    default the plan's."""
    info = plan.info
    return BlockPlan(
        info.height,
        info.width,
        block_size or plan.block_size,
        plan.tile_grid(tile, overlap, margin),
        plan.scale,
        plan.model_offset,
    )


def input_identity(plan: InputPlan, session: Session, precision: str) -> dict[str, Any]:
    """Everything an input's outputs depend on: a journal resumes only with the same."""
    manifest, options = session.bundle.manifest, session.options
    return {
        "input": plan.mosaic.identity if plan.mosaic else file_identity(plan.info),
        **({"aoi": plan.aoi.key} if plan.aoi else {}),
        "model": session.bundle.hash(),
        "bands": list(plan.bands),
        "tile": manifest.infer_tile,
        "overlap": session.overlap,
        "tile_shift": list(plan.world_shift(manifest.infer_tile - session.overlap).shift),
        "threshold": session.threshold,
        "precision": precision,
        "tta": options.tta,
        "scale": list(plan.scale),
        "value_max": plan.value_max,
        "stmap": __version__,
    }


def open_partials(
    plan: InputPlan,
    out: OutputPaths,
    session: Session,
    precision: str,
    warn: Callable[[str], None],
) -> PartialRasters:
    """The input's partial rasters and journal: an interrupted run's when they can be
    resumed (with its block size), else fresh ones."""
    info, options = plan.info, session.options
    journal = _open_journal(out, input_identity(plan, session, precision), options.restart, warn)
    open_writer = partial(
        BlockWriter,
        out.partials,
        height=info.height,
        width=info.width,
        crs=info.crs,
        transform=info.transform,
    )
    if journal is not None:
        try:
            writer = open_writer(resume=True)
        except RasterError as exc:
            warn(
                f"the interrupted run's partial rasters cannot be reopened ({exc}); starting afresh"
            )
            out.discard_work()
            journal = None
    if journal is None:
        writer = open_writer(resume=False)
        journal = Journal.create(
            out.journal, input_identity(plan, session, precision), plan.block_size
        )
    if journal.block_size != plan.block_size and options.block_size is not None:
        warn(f"resuming with the interrupted run's block size {journal.block_size}")
    tile = session.bundle.manifest.infer_tile
    grid = block_plan(plan, tile, session.overlap, journal.block_size, margin=session.margin)
    return PartialRasters(grid, writer, journal, checkpoint_s=options.checkpoint_s)


def gather_spec(plan: InputPlan, session: Session, *, trace_damage: bool) -> GatherSpec:
    scaling = session.bundle.manifest.input_scaling
    return GatherSpec(
        threshold=session.threshold,
        cell_m=session.options.grid_m,
        value_max=scaling.get(plan.info.dtype, 255.0),
        viewer=session.options.viewer,
        trace_damage=trace_damage,
    )


def stream_blocks(
    plan: InputPlan,
    out: OutputPaths,
    session: Session,
    progress: ProgressFactory | None,
    warn: Callable[[str], None],
    blocks: Collection[int] | None = None,
    *,
    gather: bool = True,
) -> StreamResult:
    """Every block not yet journalled through the pipeline into the partial rasters.

    blocks: only these block indices (a strip of the scene); None: all of them.
    gather: let the finishing steps gather what they need on the way (``Gathered``);
        False for a strip, whose scene is finished elsewhere.
    """
    options, info = session.options, plan.info
    backend = session.backend(info.dtype, plan.value_max)
    partials = open_partials(plan, out, session, backend.precision, warn)
    grid, journal = partials.plan, partials.journal
    run_blocks = range(len(grid)) if blocks is None else sorted(blocks)
    todo = [i for i in run_blocks if i not in journal.blocks]
    rows, cols = plan.model_shape
    spec = ReadSpec(
        info.path, plan.bands, info.dtype, plan.masked, (rows, cols), plan.model_transform, plan.aoi
    )
    workers = options.workers or (1 if backend.device.type == "cpu" else 4)
    batcher = Batcher(backend, options.batch_size)
    gathered = None
    if gather:  # the damage traced while streaming only where cores idle (see GatherSpec)
        trace = backend.device.type != "cpu"
        gathered = Gathered(plan, out, gather_spec(plan, session, trace_damage=trace))
    bar = progress(out.stem, info.width * info.height) if progress else nullcontext(None)
    with bar as advance:
        if advance is not None and len(todo) < len(run_blocks):
            advance(sum(grid.block(i).out.size for i in journal.blocks))
        sinks = [partials, *(gathered.streamed() if gathered else [])]
        sinks += [Progress(advance)] if advance is not None else []
        stream_options = StreamOptions(
            damage_cutoff(session.threshold), workers, 2, options.timings
        )
        pipeline = Pipeline(grid, spec, batcher, sinks, stream_options, todo)
        try:
            streamed = pipeline.run()
        except KeyboardInterrupt:
            partials.finish()
            raise Interrupted(
                f"interrupted: {len(journal.blocks)} of {len(grid)} blocks of {info.path} "
                f"are kept in {out.outdir}; run the same command again to resume"
            ) from None
        except RasterError:
            if not pipeline.output_failed:
                out.discard_work()  # the input cannot be decoded: nothing worth resuming
            raise
        finally:
            if not pipeline.output_failed and out.journal.exists():
                partials.finish()
            partials.writer.close()
    result = PipelineResult.of(
        grid,
        run_blocks,
        journal.blocks,
        resumed=len(run_blocks) - len(todo),
        tiles=streamed.tiles,
        seconds=streamed.seconds,
        times=streamed.times,
    )
    facts = RunFacts(
        backend=backend.name,
        device=str(backend.device),
        precision=backend.precision,
        batch_size=batcher.size,
        tile_size=session.bundle.manifest.infer_tile,
        overlap=session.overlap,
        tile_grid=plan.tile_grid_facts(
            session.bundle.manifest.infer_tile,
            session.overlap,
            session.bundle.manifest.gsd_m,
            session.margin,
        ),
        block_size=grid.block_size,
        workers=workers,
        threshold=session.threshold,
        tta=options.tta,
        timings=options.timings,
    )
    return StreamResult(result, facts, gathered)


def _open_journal(
    out: OutputPaths, identity: dict[str, Any], restart: bool, warn: Callable[[str], None]
) -> Journal | None:
    """The journal to resume from, or None to start afresh (stale work files removed)."""
    journal = None if restart else Journal.load(out.journal)
    if journal is None:
        if out.journal.exists() and not restart:
            warn(f"{out.journal}: unreadable journal of an interrupted run; starting afresh")
    elif not all(p.exists() for p in out.partials.values()):
        warn(f"{out.outdir}: the interrupted run's partial rasters are gone; starting afresh")
    else:
        journal.check(identity)
        log.info("%s: resuming, %d blocks already done", out.journal, len(journal.blocks))
        return journal
    out.discard_work()
    return None

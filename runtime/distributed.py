"""``stmap infer --distributed ray``: scenes, and strips of large scenes, over Ray workers.

One actor per GPU (one per CPU on a cluster without GPUs) holds the model and runs
the same code as a single-process run. Ray places the actors, restarts one that
dies and retries the call it was running (``max_restarts``, ``max_task_retries``);
the driver keeps at most one call in flight per actor and hands the next piece of
work to whichever actor ``ray.wait`` says is free (back-pressure).

Work. A scene no larger than a worker's share (all pixels / actors) is one call:
the whole single-process path (``map_input``) on one worker. A larger scene is cut
into strips of whole block rows; a strip is a run of the same pipeline restricted
to its blocks, into its own hidden partial rasters and journal in OUTDIR. When all
its strips are in, one call copies their blocks into the scene's partial rasters
and finishes as a single run does (COGs, vectors, buildings, summary). The global
tile grid makes a block's result independent of which worker maps it, so the
outputs are those of a single-process run.

Strips travel as files, not through Ray's object store: a GeoTIFF has one writer,
so the strips must be copied by one process anyway, and as files a retried strip
resumes from its journal instead of starting over, and no raster-sized array
passes through the driver. Workers therefore read the inputs and write OUTDIR by
path: on a cluster of several machines both must be on storage that every node
mounts at the same path (inputs may also be ``/vsis3/``-style URLs). A retried
call resumes from the journal it left, so outputs stay identical.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

from stmap.bundle import DEFAULT, open_bundle
from stmap.errors import DeviceError, InputError, Interrupted, RasterError, StmapError
from stmap.io.blocks import LayerReader, streaming_env
from stmap.io.paths import is_virtual
from stmap.io.writers import prepare_output_dir
from stmap.lazy import lazy_import
from stmap.memory import ENVIRONMENT
from stmap.runtime.backends.base import resolve_device
from stmap.runtime.gather import Gathered
from stmap.runtime.grid import BlockPlan
from stmap.runtime.infer import map_input
from stmap.runtime.journal import Journal
from stmap.runtime.pipeline import PipelineResult, StageTimes
from stmap.runtime.plan import (
    InferOptions,
    InputPlan,
    OutputPaths,
    ProgressFactory,
    RunPlan,
    plan_run,
)
from stmap.runtime.sinks import NO_LAYERS, OUTPUT, SOURCE, Layers, feed
from stmap.runtime.stream import (
    RunFacts,
    Session,
    StreamResult,
    block_plan,
    gather_spec,
    open_partials,
    stream_blocks,
)
from stmap.window import Window

log = logging.getLogger(__name__)

RESTARTS = 3  # a dead actor is restarted, and its call retried, this often before giving up


@dataclass(frozen=True)
class Strip:
    """Block rows ``rows`` of one scene; ``out`` names its own partial rasters and journal."""

    rows: range
    out: OutputPaths

    def blocks(self, block_cols: int) -> range:
        return range(self.rows.start * block_cols, self.rows.stop * block_cols)


@dataclass(frozen=True)
class StripResult:
    """What a mapped strip reports; its per-block counts are in its journal."""

    strip: Strip
    resumed_blocks: int
    tiles: int
    seconds: float
    times: dict[str, float]
    run: RunFacts


class MapWorker:
    """A Ray actor: the model on one device, mapping scenes and strips of scenes."""

    def __init__(self, options: InferOptions, threshold: float, overlap: int):
        device = resolve_device(options.device)
        self.session = Session(open_bundle(options.model), options, threshold, overlap, device)

    def map_scene(self, plan: InputPlan, out: OutputPaths) -> dict[str, Any]:
        """A whole scene, exactly as a single-process run maps it."""
        with streaming_env():
            return map_input(plan, out, self.session)

    def map_strip(self, plan: InputPlan, strip: Strip) -> StripResult:
        """The blocks of one strip into the strip's partial rasters (resumed from its journal)."""
        tile, overlap = self.session.bundle.manifest.infer_tile, self.session.overlap
        with streaming_env():
            blocks = strip.blocks(
                block_plan(plan, tile, overlap, margin=self.session.margin).block_cols
            )
            streamed = stream_blocks(
                plan, strip.out, self.session, None, log.warning, blocks=blocks, gather=False
            )
        result = streamed.pipeline
        times = result.times.as_dict()
        return StripResult(
            strip, result.resumed_blocks, result.tiles, result.seconds, times, streamed.run
        )

    def finish_scene(
        self, plan: InputPlan, out: OutputPaths, strips: list[StripResult], elapsed_s: float
    ) -> dict[str, Any]:
        """A split scene's strips into its partial rasters, then the single-run finish."""
        with streaming_env():
            summary = map_input(
                plan,
                out,
                self.session,
                stream=partial(assemble_strips, strips),
                elapsed_s=elapsed_s,
            )
        for result in strips:
            result.strip.out.discard_work()
        return summary


def run_on_ray(
    inputs: Sequence[str],
    outdir: str | os.PathLike[str],
    options: InferOptions,
    *,
    address: str | None = None,
    actors: int | None = None,
) -> list[dict[str, Any]]:
    """Map every input on a Ray cluster; returns one summary per input, in input order.

    address: the cluster to join (``ray.init(address=...)``); None: the cluster this
        process is already connected to, else a new local one.
    actors: how many model-holding workers; None: one per GPU of the cluster, or
        one per CPU when it has none (``--device cpu`` too).
    Everything is validated here, before any worker starts; errors are those of
    ``run_inference`` (exit 2 for bad input, 130 when interrupted).
    """
    ray = lazy_import("ray")
    if options.device.startswith("cuda:"):
        raise InputError(
            f"--device {options.device}: with --distributed ray each worker gets a GPU of its "
            "own from Ray; use --device cuda (or auto)"
        )
    run = plan_run(_absolute(inputs), Path(outdir).resolve(), _absolute_model(options))
    prepare_output_dir(run.outdir)
    started_here = not ray.is_initialized()
    if started_here:
        _connect(ray, address)
    try:
        workers = _start_workers(ray, run, actors)
        try:
            return _map_all(ray, run, workers)
        finally:
            for worker in workers:
                ray.kill(worker)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted: finished blocks are kept in {run.outdir}; run the same command "
            "again to resume"
        ) from None
    finally:
        if started_here:
            ray.shutdown()


def split_scenes(run: RunPlan, workers: int) -> list[list[range]]:
    """Block rows of each scene, one range per piece of work.

    A scene gets as many strips as it has workers' shares (all pixels / workers), so
    one large scene keeps every worker busy; at most one per block row.
    """
    total = sum(plan.info.width * plan.info.height for plan, _ in run.inputs)
    pieces = []
    for plan, _ in run.inputs:
        rows = block_plan(plan, run.bundle.manifest.infer_tile, run.overlap).block_rows
        count = min(rows, -(-plan.info.width * plan.info.height * workers // total))
        bounds = [k * rows // count for k in range(count + 1)]
        pieces.append([range(a, b) for a, b in itertools.pairwise(bounds)])
    return pieces


def assemble_strips(
    strips: Sequence[StripResult],
    plan: InputPlan,
    out: OutputPaths,
    session: Session,
    progress: ProgressFactory | None,
    warn: Callable[[str], None],
) -> StreamResult:
    """Feed the mapped blocks of ``strips`` to the scene's sinks (a ``Stream``): its
    partial rasters and journal, and the gathering sinks of the outputs, exactly as
    a single run's pipeline feeds them; what no strip holds (the input's pixels) is
    read when the scene finishes.
    """
    start = time.perf_counter()
    partials = open_partials(plan, out, session, strips[0].run.precision, warn)
    grid = partials.plan
    gathered = Gathered(plan, out, gather_spec(plan, session, trace_damage=True))
    sinks = [partials, *(s for s in gathered.streamed() if not s.needs <= SOURCE)]
    times = StageTimes()
    try:
        for result in strips:
            feed(sinks, _strip_blocks(result.strip.out, grid, set(partials.journal.blocks)))
            for stage, seconds in result.times.items():
                times.add(stage, seconds)
        partials.finish()
    finally:
        partials.writer.close()
    times.add("write", time.perf_counter() - start)
    pipeline = PipelineResult.of(
        grid,
        range(len(grid)),
        partials.journal.blocks,
        resumed=sum(r.resumed_blocks for r in strips),
        tiles=sum(r.tiles for r in strips),
        seconds=sum(r.seconds for r in strips) + time.perf_counter() - start,
        times=times,
    )
    return StreamResult(pipeline, replace(strips[0].run, strips=len(strips)), gathered)


def _strip_blocks(
    strip: OutputPaths, grid: BlockPlan, done: set[int]
) -> Iterator[tuple[Window, Layers]]:
    """The blocks a strip's journal lists and ``done`` does not, read from its partial
    rasters; those without a valid pixel come without layers, as from the pipeline."""
    journal = Journal.load(strip.journal)
    if journal is None:
        raise RasterError(
            f"{strip.journal}: a mapped strip's journal is missing; OUTDIR must be on storage "
            "that every Ray node mounts at the same path"
        )
    with LayerReader(strip.partials, None) as reader:
        for index, (valid, _) in sorted(journal.blocks.items()):
            if index in done:
                continue
            window = grid.block(index).out
            yield next(reader.read([window], OUTPUT)) if valid else (window, NO_LAYERS)


@dataclass(frozen=True)
class _Job:
    """One call for an actor: a whole scene, one strip of one, or the finish of a split one."""

    scene: int
    strip: Strip | None = None
    strips: tuple[StripResult, ...] = ()
    elapsed_s: float = 0.0

    def call(self, worker: Any, run: RunPlan) -> Any:
        plan, out = run.inputs[self.scene]
        if self.strip is not None:
            return worker.map_strip.remote(plan, self.strip)
        if self.strips:
            return worker.finish_scene.remote(plan, out, list(self.strips), self.elapsed_s)
        return worker.map_scene.remote(plan, out)


def _map_all(ray: ModuleType, run: RunPlan, workers: list[Any]) -> list[dict[str, Any]]:
    """Every scene through the workers, one call in flight per worker."""
    jobs: deque[_Job] = deque()
    strips_of: dict[int, int] = {}
    for scene, pieces in enumerate(split_scenes(run, len(workers))):
        plan, out = run.inputs[scene]
        if len(pieces) == 1:
            jobs.append(_Job(scene))
            continue
        strips_of[scene] = len(pieces)
        for rows in pieces:
            name = f"{out.stem}.strip-b{plan.block_size}-r{rows.start}-{rows.stop}"
            jobs.append(_Job(scene, Strip(rows, OutputPaths(out.outdir, name, False))))
    idle, running = list(workers), {}
    mapped: dict[int, list[StripResult]] = {scene: [] for scene in strips_of}
    first_submit: dict[int, float] = {}
    summaries: dict[int, dict[str, Any]] = {}
    while jobs or running:
        while jobs and idle:
            job, worker = jobs.popleft(), idle.pop()
            first_submit.setdefault(job.scene, time.perf_counter())
            running[job.call(worker, run)] = (job, worker)
        [ready], _ = ray.wait(list(running), num_returns=1)
        job, worker = running.pop(ready)
        idle.append(worker)
        value = _result(ray, ready)
        if job.strip is None:
            summaries[job.scene] = value
            log.info("%s: mapped", run.inputs[job.scene][0].info.path)
            continue
        mapped[job.scene].append(value)
        if len(mapped[job.scene]) == strips_of[job.scene]:
            elapsed = time.perf_counter() - first_submit[job.scene]
            strips = tuple(sorted(mapped.pop(job.scene), key=lambda r: r.strip.rows.start))
            jobs.appendleft(_Job(job.scene, strips=strips, elapsed_s=elapsed))
    return [summaries[scene] for scene in range(len(run.inputs))]


def _result(ray: ModuleType, ref: Any) -> Any:
    """The value of a finished call; a worker's stmap error is raised as itself (exit code)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        if isinstance(exc.cause, StmapError):
            raise exc.cause from None
        raise


def _start_workers(ray: ModuleType, run: RunPlan, actors: int | None) -> list[Any]:
    """The model-holding actors: one per GPU, or ``num_cpus=1`` ones on the CPU."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    on_gpu = gpus > 0 and run.options.device != "cpu"
    if run.options.device == "cuda" and not on_gpu:
        raise DeviceError(
            "--device cuda: the Ray cluster has no GPU; add GPU nodes, or use --device cpu"
        )
    count = actors or (gpus if on_gpu else max(1, math.floor(resources.get("CPU", 1))))
    options = replace(run.options, device="cuda" if on_gpu else "cpu")
    worker_class = ray.remote(
        num_gpus=1 if on_gpu else 0,
        num_cpus=0 if on_gpu else 1,  # a GPU worker's threads mostly wait for its GPU
        max_restarts=RESTARTS,
        max_task_retries=RESTARTS,
    )(MapWorker)
    prefix = f"stmap-{uuid.uuid4().hex[:8]}"  # named: `ray list actors` shows whose they are
    log.info("%d Ray workers on %s", count, "GPUs" if on_gpu else "CPUs")
    return [
        worker_class.options(name=f"{prefix}-{i}").remote(options, run.threshold, run.overlap)
        for i in range(count)
    ]


# The allocator settings of stmap.memory, read by glibc when a worker starts: two
# arenas keep a long-lived worker's memory flat scene after scene (+20 MiB over 50
# scenes, +190 without, benchmarks/results/cpu_soak.md); large model buffers are
# reused rather than faulted in afresh for every forward.
WORKER_ENV = {"env_vars": ENVIRONMENT}


def _connect(ray: ModuleType, address: str | None) -> None:
    """Join the cluster at ``address``, or start a local one."""
    try:
        ray.init(address=address, include_dashboard=False, runtime_env=WORKER_ENV)
    except ConnectionError as exc:
        raise InputError(
            f"--address {address}: no Ray cluster answers there ({exc}); start one with "
            "`ray start --head`, or leave --address out for a local one"
        ) from exc


def _absolute(inputs: Sequence[str]) -> list[str]:
    """Local paths made absolute: workers do not share the driver's working directory."""
    return [p if is_virtual(p) else os.path.abspath(p) for p in inputs]


def _absolute_model(options: InferOptions) -> InferOptions:
    if options.model != DEFAULT and os.path.exists(options.model):
        return replace(options, model=os.path.abspath(options.model))
    return options

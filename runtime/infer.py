"""``stmap infer``: map damage over whole rasters, resumably, with atomic outputs.

For each input: plan (validate every input, refuse existing outputs, before any
work: ``plan``) → stream its blocks through the pipeline into partial rasters
(journalled) and the gathering sinks (``stream``) → finish: COGs, damage
polygons, per-building damage, the damage grid, quicklook, summary and HTML
report, all staged in a hidden directory and renamed into OUTDIR when complete
(``finish``). An interrupted run keeps its journal and resumes where it stopped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stmap.errors import Interrupted
from stmap.io.blocks import streaming_env
from stmap.io.outdir import outdir_lock
from stmap.io.writers import prepare_output_dir, write_json
from stmap.runtime.backends.base import Backend
from stmap.runtime.finish import finish_input
from stmap.runtime.index_page import write_index
from stmap.runtime.plan import (
    RUN_SUMMARY,
    InferOptions,
    InputPlan,
    OutputPaths,
    ProgressFactory,
    Warnings,
    plan_run,
)
from stmap.runtime.stream import Session, Stream, stream_blocks
from stmap.runtime.summary import run_summary

log = logging.getLogger(__name__)


def run_inference(
    inputs: Sequence[str],
    outdir: str | os.PathLike[str],
    options: InferOptions = InferOptions(),
    *,
    progress: ProgressFactory | None = None,
    backend: Backend | None = None,
) -> list[dict[str, Any]]:
    """Map every input into ``outdir``; returns one summary per input.

    backend: an already-built backend for uint8 rasters, on ``options.device``, used
        instead of building one (``stmap bench`` reuses its warmed-up, compiled one,
        so that compilation is not charged to the run it measures).

    Raises InputError subclasses (exit 2) for bad inputs, options, bundles, devices
    or outputs, before any work where they can be known in advance; Interrupted
    (exit 130) on Ctrl-C or SIGTERM, with the journal kept for resume.
    """
    with outdir_lock(Path(outdir)):
        run = plan_run(inputs, outdir, options)
        session = Session.of(run)
        if backend is not None:
            session.backends["uint8"] = backend
        prepare_output_dir(run.outdir)
        with streaming_env():
            return [map_input(plan, out, session, progress) for plan, out in run.inputs]


def map_scenes(
    inputs: Sequence[str],
    outdir: str | os.PathLike[str],
    options: InferOptions = InferOptions(),
    *,
    distributed: str | None = None,
    address: str | None = None,
    progress: ProgressFactory | None = None,
) -> dict[str, Any]:
    """What ``stmap infer`` runs: every input, here or on a Ray cluster (``distributed="ray"``).

    Returns the input's summary, or with several inputs the combined one, also
    written to ``OUTDIR/run_summary.json``: a batch is judged by its totals.
    """
    start = time.perf_counter()
    with outdir_lock(Path(outdir)):  # held until run_summary.json is written too
        if distributed is None:
            summaries = run_inference(inputs, outdir, options, progress=progress)
        else:
            from stmap.runtime.distributed import run_on_ray

            summaries = run_on_ray(inputs, outdir, options, address=address)
        if len(summaries) == 1:
            return summaries[0]
        combined = run_summary(summaries, time.perf_counter() - start)
        write_json(Path(outdir) / RUN_SUMMARY, combined)
        write_index(Path(outdir), combined)
    return combined


def map_input(
    plan: InputPlan,
    out: OutputPaths,
    session: Session,
    progress: ProgressFactory | None = None,
    *,
    stream: Stream | None = None,
    elapsed_s: float = 0.0,
) -> dict[str, Any]:
    """One input: the pipeline into partial rasters, then the finished outputs.

    stream: fills the partial rasters (default ``stream_blocks``; a distributed run
        assembles them from strips mapped by other workers).
    elapsed_s: seconds already spent on this input elsewhere (those strips).
    """
    start = time.perf_counter() - elapsed_s
    warn = Warnings()
    for note in plan.notes:
        log.info("%s: %s", plan.info.path, note)
    for message in plan.warnings:
        warn(message)
    streamed = (stream or stream_blocks)(plan, out, session, progress, warn)
    if streamed.pipeline.valid_pixels == 0:
        warn(f"{plan.info.path}: no valid pixel (all nodata or masked); the outputs are empty")
    try:
        return finish_input(plan, out, session, streamed, warn, start)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted while finishing the outputs of {plan.info.path}: its mapped blocks "
            f"are kept in {out.outdir}; run the same command again to resume"
        ) from None

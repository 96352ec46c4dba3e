"""``stmap infer INPUT... -o OUTDIR``: parse the options, then one library call."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import click

from stmap.cli.options import (
    emit_json,
    execution_options,
    json_option,
    model_option,
    quiet_option,
)


class BandList(click.ParamType):
    """Comma-separated 1-based band numbers: ``1,2,3``."""

    name = "1,2,3"

    def convert(self, value, param, ctx) -> tuple[int, ...]:
        if isinstance(value, tuple):
            return value
        try:
            bands = tuple(int(part) for part in str(value).split(","))
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of band numbers", param, ctx)
        if any(b < 1 for b in bands):
            self.fail(f"{value!r}: band numbers start at 1", param, ctx)
        return bands


@click.command("infer")
@click.argument("inputs", nargs=-1, required=True, metavar="INPUT...")
@click.option("-o", "--output", "outdir", required=True, metavar="OUTDIR", help="Output directory.")
@model_option
@execution_options
@click.option(
    "--overlap",
    type=click.IntRange(min=0),
    default=None,
    help="Pixels shared by neighbouring tiles [default: tile / 8, 16 at 128-px tiles].",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help="Pixels per side of a streamed block, a multiple of 512 [default: 2048 or the "
    "input's tile].",
)
@click.option("--bands", type=BandList(), default=None, help="Input bands in the model's order.")
@click.option(
    "--footprints",
    type=str,
    default=None,
    metavar="FILE",
    help="Building footprints (any OGR vector, any CRS) for per-building damage.",
)
@click.option(
    "--threshold", type=float, default=None, help="Damage threshold [default: the model's]."
)
@click.option(
    "--resume/--restart",
    default=True,
    show_default=True,
    help="Resume an interrupted run, or discard it and overwrite existing outputs.",
)
@click.option(
    "--allow-ungeoreferenced",
    is_flag=True,
    help="Map rasters without CRS/geotransform, in pixel coordinates.",
)
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Reader threads [default: auto]."
)
@json_option
@quiet_option
def infer(
    inputs: tuple[str, ...],
    outdir: str,
    model: str,
    backend: str,
    device: str,
    precision: str,
    batch_size: int | None,
    overlap: int | None,
    block_size: int | None,
    bands: tuple[int, ...] | None,
    footprints: str | None,
    threshold: float | None,
    resume: bool,
    allow_ungeoreferenced: bool,
    workers: int | None,
    as_json: bool,
    quiet: bool,
) -> None:
    """Map building damage over whole rasters, streaming, resumable.

    Writes for each INPUT with stem S into OUTDIR: S_damage_prob.tif and S_damage.tif
    (COGs on the input's grid, nodata 255), S_damage.gpkg, S_buildings.gpkg (with
    --footprints), S_quicklook.png and S_summary.json. --json prints the summary (an
    object with "runs" for several inputs).

    \b
    Examples:
      stmap infer city.tif -o out
      stmap infer city.tif -o out --footprints buildings.gpkg --device cuda --json
    """
    from stmap.runtime.infer import InferOptions, run_inference

    options = InferOptions(
        model=model,
        backend=backend,
        device=device,
        precision=precision,
        batch_size=batch_size,
        overlap=overlap,
        block_size=block_size,
        bands=bands,
        footprints=footprints,
        threshold=threshold,
        restart=not resume,
        allow_ungeoreferenced=allow_ungeoreferenced,
        workers=workers,
    )
    _log_to_stderr(logging.ERROR if quiet else logging.INFO)
    show_bar = not quiet and sys.stderr.isatty()
    with _sigterm_interrupts():
        summaries = run_inference(
            inputs, outdir, options, progress=_progress_bar if show_bar else None
        )
    if as_json:
        emit_json(summaries[0] if len(summaries) == 1 else {"runs": summaries})
    elif not quiet:
        for s in summaries:
            click.echo(
                f"{s['inputs'][0]['path']}: {s['pixels'] / 1e6:.1f} Mpx in {s['seconds']:.1f} s "
                f"({s['mpx_per_s']:.2f} Mpx/s), {s['damaged_area_m2'] or 0:.0f} m² damaged; "
                f"outputs in {outdir}",
                err=True,
            )


def _log_to_stderr(level: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("stmap: %(levelname)s: %(message)s"))
    logger = logging.getLogger("stmap")
    logger.handlers = [handler]
    logger.setLevel(level)
    logger.propagate = False


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM stops a run like Ctrl-C does: journal kept, exit 130."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def _progress_bar(name: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr: pixels done, Mpx/s and time left."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        Progress,
        ProgressColumn,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class Throughput(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed / 1e6:6.2f} Mpx/s" if speed else "   -- Mpx/s")

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        Throughput(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(name, total=total)
        yield lambda pixels: bar.advance(task, pixels)

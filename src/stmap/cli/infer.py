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
    tta_option,
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
    help="Pixels shared by neighbouring tiles [default: the model's tiling (128 for the "
    "demo bundle's 1024-px tiles, whose outer 48 px the blend leaves out; another overlap "
    "drops that margin), else a quarter of its tile; less costs less compute, but the map "
    "moves more with where the tiles fall].",
)
@click.option(
    "--block-size",
    type=int,
    default=None,
    help="Pixels per side of a streamed block, a multiple of 512 [default: 2048 or the "
    "input's tile].",
)
@click.option(
    "--memory-budget",
    default=None,
    metavar="SIZE",
    help="Memory the sizes of a run (blocks, overlap, footprints) may take, e.g. 8G "
    "[default: half the memory available at start].",
)
@click.option("--bands", type=BandList(), default=None, help="Input bands in the model's order.")
@click.option(
    "--footprints",
    type=str,
    default=None,
    metavar="FILE",
    help="Building footprints for per-building damage: any OGR vector in any CRS, or a "
    "STAC JSON whose items have a 'footprints' (or 'buildings') asset.",
)
@click.option(
    "--building-buffer",
    "building_buffers",
    type=click.FloatRange(min=0),
    metavar="M",
    multiple=True,
    default=(0.0, 10.0),
    show_default=True,
    help="Also the damaged fraction within M metres around each footprint (repeatable; "
    "0 is the footprint itself).",
)
@click.option(
    "--grid",
    "grid_m",
    type=click.FloatRange(min=0, min_open=True),
    default=250.0,
    show_default=True,
    metavar="M",
    help="Side of the damage grid's square cells, in metres.",
)
@tta_option
@click.option(
    "--viewer",
    type=click.Choice(["none", "lite", "full"]),
    default="lite",
    show_default=True,
    help="The report's zoomable map (tiles in S_map/): lite stops at half resolution "
    "(a quarter of full's tiles), full goes to the input's pixels, none makes no map.",
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
@click.option(
    "--distributed",
    type=click.Choice(["ray"]),
    default=None,
    help="Spread the scenes, and strips of large ones, over Ray workers (one per GPU).",
)
@click.option(
    "--address",
    default=None,
    metavar="ADDR",
    help="With --distributed ray: the Ray cluster to join [default: a local one].",
)
@click.option(
    "--mosaic",
    default=None,
    metavar="NAME",
    help="Map all inputs (files, folders, text files of paths, STAC JSON) as one scene NAME: "
    "the most recent acquisition on top, nodata falling through.",
)
@click.option(
    "--asset",
    default="visual",
    show_default=True,
    metavar="KEY",
    help="The STAC asset (key or role) to read from each item.",
)
@click.option(
    "--aoi",
    default=None,
    metavar="FILE",
    help="Map only inside these polygons (any OGR vector, any CRS); outside is nodata.",
)
@click.option(
    "--crs",
    default=None,
    help="The mosaic's CRS, e.g. EPSG:32637 [default: the UTM zone of its centre].",
)
@click.option(
    "--gsd",
    type=float,
    default=None,
    metavar="M",
    help="The mosaic's pixel size in metres [default: the model's].",
)
@click.option(
    "--timings",
    is_flag=True,
    help="Exact per-stage times in the summary: synchronise the GPU at every stage of "
    "every block (slower on CUDA; stmap bench always does).",
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
    memory_budget: str | None,
    bands: tuple[int, ...] | None,
    footprints: str | None,
    building_buffers: tuple[float, ...],
    grid_m: float,
    tta: str,
    viewer: str,
    threshold: float | None,
    resume: bool,
    allow_ungeoreferenced: bool,
    workers: int | None,
    distributed: str | None,
    address: str | None,
    mosaic: str | None,
    asset: str,
    aoi: str | None,
    crs: str | None,
    gsd: float | None,
    timings: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Map building damage over whole rasters, streaming, resumable.

    Writes for each INPUT with stem S into OUTDIR: S_damage_prob.tif and S_damage.tif
    (COGs on the input's grid, nodata 255), S_damage.gpkg, S_buildings.gpkg (with
    --footprints), S_grid.gpkg (damage per --grid cell), S_quicklook.png,
    S_report.html (one page with a zoomable map of the tiles in S_map/, --viewer),
    S_summary.json and QGIS styles (.qml beside the COGs); with several inputs
    also run_summary.json (totals, each summary under "runs"), which --json prints
    (the summary itself for one input), and run_index.html linking every report.

    \b
    Examples:
      stmap infer city.tif -o out
      stmap infer city.tif -o out --footprints buildings.gpkg --device cuda --json
      stmap infer --mosaic kahramanmaras items.json tiles/ -o out --aoi district.gpkg
      stmap infer city.tif -o out --footprints osm.geojson --building-buffer 20 --grid 100
      stmap infer a.tif b.tif c.tif -o out --distributed ray --address head:6379
    """
    from stmap.budget import parse_size
    from stmap.runtime.infer import InferOptions, map_scenes

    options = InferOptions(
        model=model,
        backend=backend,
        device=device,
        precision=precision,
        batch_size=batch_size,
        overlap=overlap,
        block_size=block_size,
        memory_budget=None if memory_budget is None else parse_size(memory_budget),
        bands=bands,
        footprints=footprints,
        building_buffers=building_buffers,
        grid_m=grid_m,
        tta=tta,
        viewer=viewer,
        threshold=threshold,
        restart=not resume,
        allow_ungeoreferenced=allow_ungeoreferenced,
        workers=workers,
        timings=timings,
        mosaic=mosaic,
        asset=asset,
        aoi=aoi,
        crs=crs,
        gsd=gsd,
    )
    _log_to_stderr(logging.ERROR if quiet else logging.INFO)
    show_bar = not quiet and sys.stderr.isatty()
    if address is not None and distributed is None:
        raise click.UsageError("--address needs --distributed ray")
    with _sigterm_interrupts():
        report = map_scenes(
            inputs,
            outdir,
            options,
            distributed=distributed,
            address=address,
            progress=_progress_bar if show_bar else None,
        )
    if as_json:
        emit_json(report)
    elif not quiet:
        for s in report.get("runs", [report]):
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

"""``stmap synth OUT.tif``: a synthetic, georeferenced post-earthquake city."""

from __future__ import annotations

import sys
from contextlib import nullcontext
from pathlib import Path

import click

from stmap.cli.options import emit_json, json_option
from stmap.synth import STYLES, Grading, generate_city, list_styles


def _print_styles(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """`--style list` names the styles and exits, before OUT.tif is asked for."""
    if value != "list" or ctx.resilient_parsing:
        return value
    for name, description in list_styles().items():
        click.echo(f"{name:12s} {description}")
    ctx.exit(0)


@click.command("synth")
@click.argument("out", metavar="OUT.tif", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--size", type=click.IntRange(64), default=4096, show_default=True, help="Square size, px."
)
@click.option("--width", type=click.IntRange(64), default=None, help="Width, px (default --size).")
@click.option(
    "--height", type=click.IntRange(64), default=None, help="Height, px (default --size)."
)
@click.option("--gsd", type=float, default=0.5, show_default=True, help="Metres per pixel.")
@click.option("--crs", default="EPSG:32637", show_default=True, help="Projected CRS in metres.")
@click.option(
    "--style",
    type=click.Choice([*STYLES, "list"]),
    default="citycentre",
    show_default=True,
    is_eager=True,
    callback=_print_styles,
    help="Regional look; 'list' names them.",
)
@click.option("--damage-rate", type=float, default=0.15, show_default=True, help="Damaged share.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option("--region", default=None, help="Tile-dataset region id (default: the style).")
@click.option(
    "--tiles",
    "tiles_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write a tile dataset (ST_Turkey_2023 layout) into DIR.",
)
@click.option(
    "--grading",
    is_flag=True,
    help="Also write OUT_grading.gpkg: one Copernicus EMS grading point per building.",
)
@click.option(
    "--possibly-damaged",
    type=float,
    default=0.1,
    show_default=True,
    help="With --grading: share of buildings graded 'Possibly damaged'.",
)
@click.option(
    "--wrong-grades",
    type=float,
    default=0.0,
    show_default=True,
    help="With --grading: share of the other buildings given the wrong grade.",
)
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@json_option
def synth(
    out: Path,
    size: int,
    width: int | None,
    height: int | None,
    gsd: float,
    crs: str,
    style: str,
    damage_rate: float,
    seed: int,
    region: str | None,
    tiles_dir: Path | None,
    grading: bool,
    possibly_damaged: float,
    wrong_grades: float,
    overwrite: bool,
    as_json: bool,
) -> None:
    """Make a synthetic, georeferenced post-earthquake city.

    Writes OUT.tif (RGB, tiled, compressed), OUT_labels.tif (1 = damaged-building
    pixel) and OUT_footprints.gpkg (intact outlines with a `damaged` attribute).
    Same seed, same bytes.

    \b
    Examples:
      stmap synth city.tif
      stmap synth city.tif --size 8192 --style oldtown --seed 3
      stmap synth demo.tif --size 1024 --tiles data/synth --region demo
      stmap synth city.tif --size 2048 --grading --wrong-grades 0.05
      stmap synth --style list
    """
    width, height = width or size, height or size
    bar = _progress_bar(width * height) if sys.stderr.isatty() and not as_json else nullcontext()
    with bar as progress:
        result = generate_city(
            out,
            width=width,
            height=height,
            gsd=gsd,
            crs=crs,
            style=style,
            damage_rate=damage_rate,
            seed=seed,
            region=region,
            tiles_dir=tiles_dir,
            grading=Grading(possibly_damaged, wrong_grades) if grading else None,
            overwrite=overwrite,
            progress=progress,
        )
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(
            f"{result.image}: {width}x{height} px at {gsd} m, style {style}, "
            f"{result.damaged_buildings}/{result.buildings} buildings damaged, "
            f"{result.seconds:.1f} s",
            err=True,
        )


class _progress_bar:
    """A rich progress bar on stderr, fed with (pixels done, pixels in all)."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("synth"), BarColumn(), TimeRemainingColumn(), console=Console(stderr=True)
        )
        self._task = self._bar.add_task("synth", total=total)

    def __enter__(self):
        self._bar.__enter__()
        return lambda done, _total: self._bar.update(self._task, completed=done)

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(*exc)

"""``stmap evaluate``: score a bundle on a tile dataset as training reports; thin."""

from __future__ import annotations

from pathlib import Path

import click

from stmap.cli.options import emit_json, json_option, model_option


@click.command("evaluate")
@model_option
@click.argument("data_root", type=click.Path(path_type=Path))
@click.option(
    "--regions",
    multiple=True,
    help="Regions to score (comma-separated or repeated); default: every region found.",
)
@click.option("--footprints", "footprint_dir", type=click.Path(path_type=Path), default=None)
@click.option("--tiles-meta", "tiles_meta_dir", type=click.Path(path_type=Path), default=None)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1))
@click.option(
    "-o",
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write report.json, report.tsv, report.md and overlays/ here.",
)
@json_option
def evaluate(
    model: str,
    data_root: Path,
    regions: tuple[str, ...],
    footprint_dir: Path | None,
    tiles_meta_dir: Path | None,
    device: str,
    batch_size: int,
    out_dir: Path | None,
    as_json: bool,
) -> None:
    """Score a model bundle per region: precision, recall, accuracy, f1, iou1, iou0, miou.

    \b
    Examples:
      stmap evaluate --model runs/lodo/bundle ST_Turkey_2023 --regions hatay,nurdagi
      stmap evaluate --model default data --json
    """
    from stmap.cli.train import log_to_stderr
    from stmap.train.evaluate import evaluate_bundle
    from stmap.train.reports import render_markdown

    log_to_stderr()
    names = [name for group in regions for name in group.split(",") if name] or None
    report = evaluate_bundle(
        model,
        data_root,
        names,
        footprint_dir=footprint_dir,
        tiles_meta_dir=tiles_meta_dir,
        device=device,
        batch_size=batch_size,
        out_dir=out_dir,
    )
    if as_json:
        emit_json(report)
    else:
        click.echo(render_markdown(report))

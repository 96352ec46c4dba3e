"""``stmap evaluate``: score a bundle on a tile dataset as training reports, or a map
(or a bundle on imagery) against vector damage labels (``--labels``); thin."""

from __future__ import annotations

from pathlib import Path

import click

from stmap.cli.label_options import imagery_options, label_options
from stmap.cli.options import emit_json, json_option, model_option


@click.command("evaluate")
@model_option
@click.argument("data_root", nargs=-1, required=True)
@click.option(
    "--regions",
    multiple=True,
    help="Regions to score (comma-separated or repeated); default: every region found.",
)
@click.option(
    "--footprints",
    "footprint_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Footprints: a folder per region on tiles; with --labels, any OGR vector.",
)
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
@click.option(
    "--labels",
    "labels_path",
    default=None,
    help="Score S_damage_prob.tif (or the bundle on imagery) against these damage labels.",
)
@click.option(
    "--threshold",
    type=float,
    default=None,
    help="With --labels: the damage threshold (default: the bundle's).",
)
@imagery_options
@label_options
@json_option
def evaluate(
    model: str,
    data_root: tuple[str, ...],
    regions: tuple[str, ...],
    footprint_dir: Path | None,
    tiles_meta_dir: Path | None,
    device: str,
    batch_size: int,
    out_dir: Path | None,
    labels_path: str | None,
    threshold: float | None,
    mosaic: str | None,
    asset: str,
    aoi: str | None,
    bands: tuple[int, ...] | None,
    label_field: str | None,
    damaged: tuple[str, ...],
    undamaged: tuple[str, ...],
    ignore: tuple[str, ...],
    snap_m: float,
    point_radius_m: float,
    as_json: bool,
) -> None:
    """Score a model bundle per region (precision, recall, accuracy, f1, iou1, iou0,
    miou), or with --labels a damage map against vector labels (ROC AUC, precision,
    recall, F1, IoU on labelled pixels only; mean probability and share flagged per
    source class).

    \b
    Examples:
      stmap evaluate --model runs/lodo/bundle ST_Turkey_2023 --regions hatay,nurdagi
      stmap evaluate --model default data --json
      stmap evaluate out/city_damage_prob.tif --labels ems_grading.gpkg
      stmap evaluate --model adapted city.tif --labels unosat.shp.zip --footprints osm.gpkg
    """
    if labels_path is not None:
        _evaluate_labels(
            model,
            data_root,
            labels_path,
            threshold,
            footprint_dir,
            device,
            (mosaic, asset, aoi, bands),
            (label_field, damaged, undamaged, ignore, snap_m, point_radius_m),
            as_json,
        )
        return
    if len(data_root) != 1:
        raise click.UsageError("give one DATA_ROOT (a tile dataset), or --labels FILE")
    from stmap.cli.train import log_to_stderr
    from stmap.train.evaluate import evaluate_bundle
    from stmap.train.reports import render_markdown

    log_to_stderr()
    names = [name for group in regions for name in group.split(",") if name] or None
    report = evaluate_bundle(
        model,
        Path(data_root[0]),
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


def _evaluate_labels(
    model: str,
    inputs: tuple[str, ...],
    labels_path: str,
    threshold: float | None,
    footprints: Path | None,
    device: str,
    imagery: tuple,
    label_settings: tuple,
    as_json: bool,
) -> None:
    """``--labels``: one probability map, or the bundle on imagery."""
    from stmap.bundle import open_bundle
    from stmap.errors import InputError
    from stmap.train.adapt import ImageryOptions, LabelOptions
    from stmap.train.label_evaluate import (
        evaluate_bundle_on_imagery,
        evaluate_probability_map,
        is_probability_map,
    )
    from stmap.train.label_metrics import markdown
    from stmap.train.loop import resolve_device

    field, damaged, undamaged, ignore, snap_m, radius_m = label_settings
    options = LabelOptions(
        labels_path,
        field,
        damaged,
        undamaged,
        ignore,
        None if footprints is None else str(footprints),
        snap_m,
        radius_m,
    )
    if threshold is not None and not 0 < threshold < 1:
        raise InputError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    if len(inputs) == 1 and imagery[0] is None and is_probability_map(inputs[0]):
        chosen = open_bundle(model).manifest.threshold if threshold is None else threshold
        report = evaluate_probability_map(inputs[0], options, chosen)
    else:
        if threshold is not None:
            raise InputError(
                "--threshold applies to a probability map; on imagery the "
                "bundle's threshold is used"
            )
        imagery_options = ImageryOptions(inputs, *imagery)
        report = evaluate_bundle_on_imagery(model, imagery_options, options, resolve_device(device))
    for message in report.pop("messages"):
        click.echo(message, err=True)
    if as_json:
        emit_json(report)
    else:
        click.echo(markdown(report))

"""``stmap adapt``: adapt a bundle to a new event with a responder's labels; thin."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from stmap.cli.label_options import imagery_options, label_options
from stmap.cli.options import emit_json, json_option, model_option


@click.command("adapt")
@model_option
@click.argument("inputs", nargs=-1, required=True)
@click.option("--labels", "labels_path", required=True, help="Damage labels: any OGR vector.")
@click.option(
    "-o",
    "--out",
    default=None,
    help="The new bundle (required when --model is the shipped bundle or a zip; "
    "else the bundle is replaced in place, with --restart).",
)
@click.option("--restart", is_flag=True, help="Replace an existing output bundle.")
@click.option("--footprints", default=None, help="Building footprints (any OGR vector).")
@imagery_options
@label_options
@click.option(
    "--fold-block",
    "fold_block_m",
    type=float,
    default=200.0,
    show_default=True,
    help="Side of the spatial blocks dealt to validation folds, metres.",
)
@click.option(
    "--threshold",
    "threshold_mode",
    type=click.Choice(["keep", "fit"]),
    default="keep",
    show_default=True,
    help="keep: the source bundle's threshold; fit: the F1-best on the validation folds "
    "(labelled pixels only: no background among them, so it tends to run low).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Decoder epochs over the labelled tiles (the method's 10).",
)
@click.option(
    "--anchor",
    type=click.FloatRange(min=0),
    default=10.0,  # AdaptSettings().anchor: the train stage is imported only when adapt runs
    show_default=True,
    help="Weight keeping unlabelled pixels at the source bundle's probability (soft "
    "targets, never negatives); labels cover buildings only, and with 0 the adapted map "
    "flags more and more outside them (benchmarks/results/adapt_synthetic*.md).",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@json_option
def adapt(
    model: str,
    inputs: tuple[str, ...],
    labels_path: str,
    out: str | None,
    restart: bool,
    footprints: str | None,
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
    fold_block_m: float,
    threshold_mode: str,
    epochs: int,
    anchor: float,
    seed: int,
    device: str,
    as_json: bool,
) -> None:
    """Adapt a bundle to a new event from damage labels, and say how much it helped.

    Reads only the tiles around the labels, as stmap infer reads them; trains the
    decoder on the frozen backbone's features (and LoRA on a foundation model, with
    the method's few-shot settings); scores before and after on spatially blocked
    folds; writes a normal bundle with its provenance and figures.

    \b
    Examples:
      stmap adapt city.tif --labels ems_grading.gpkg -o adapted
      stmap adapt tiles/ --mosaic city --labels points.gpkg --footprints osm.gpkg -o adapted
      stmap adapt --model adapted city.tif --labels more.gpkg --restart
    """
    from stmap.train.adapt import (
        MIN_PER_CLASS,
        AdaptSettings,
        ImageryOptions,
        LabelOptions,
        adapt_scene,
        check_output,
        load_labelled_scene,
        write_adapted,
    )
    from stmap.train.label_metrics import markdown
    from stmap.train.loop import resolve_device

    target = check_output(model, out, restart)
    settings = AdaptSettings(
        epochs=epochs,
        fold_block_m=fold_block_m,
        fit_threshold=threshold_mode == "fit",
        anchor=anchor,
        seed=seed,
    )
    torch_device = resolve_device(device)
    scene = load_labelled_scene(
        model,
        ImageryOptions(inputs, mosaic, asset, aoi, bands),
        LabelOptions(
            labels_path,
            label_field,
            damaged,
            undamaged,
            ignore,
            footprints,
            snap_m,
            point_radius_m,
        ),
        MIN_PER_CLASS,
    )
    for message in scene.messages:
        click.echo(message, err=True)
    adapted, report = adapt_scene(scene, settings, torch_device)
    command = "stmap " + " ".join(sys.argv[1:])
    written = write_adapted(target, adapted, scene, report, command, scene.inputs)
    if as_json:
        emit_json({"bundle": str(written), **report})
    else:
        click.echo(markdown(report))
        click.echo(f"\n{report['validation']}.", err=True)
        threshold = report["threshold"]
        click.echo(f"adapted bundle: {Path(written)} (threshold {threshold:.3f})", err=True)

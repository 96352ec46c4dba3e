"""Options of the commands that read damage labels (adapt, evaluate --labels), defined once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from stmap.cli.infer import BandList


def label_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--label-field, --damaged, --undamaged, --ignore, --snap, --point-radius."""
    options = [
        click.option(
            "--label-field",
            default=None,
            help="The labels' damage field (default: recognised by name: EMS damage_gra/"
            "grading, UNOSAT Main_Damage_Site_Class, xBD subtype, OSM destroyed:building, "
            "a 0/1 damaged column).",
        ),
        click.option(
            "--damaged",
            multiple=True,
            metavar="V",
            help="A value meaning damaged (repeat); replaces the preset's list.",
        ),
        click.option(
            "--undamaged",
            multiple=True,
            metavar="V",
            help="A value meaning undamaged (repeat); replaces the preset's list.",
        ),
        click.option(
            "--ignore",
            multiple=True,
            metavar="V",
            help="A value to ignore (repeat); added to the preset's list.",
        ),
        click.option(
            "--snap",
            "snap_m",
            type=float,
            default=5.0,
            show_default=True,
            help="A point labels the footprint within this many metres (with --footprints).",
        ),
        click.option(
            "--point-radius",
            "point_radius_m",
            type=float,
            default=3.0,
            show_default=True,
            help="A point without footprint labels a disk of this radius, metres.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def imagery_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--mosaic, --asset, --aoi, --bands: the imagery read as stmap infer reads it."""
    options = [
        click.option("--mosaic", default=None, help="All inputs form one virtual scene NAME."),
        click.option("--asset", default="visual", show_default=True, help="STAC asset key."),
        click.option("--aoi", default=None, help="Use only labels inside this vector's polygons."),
        click.option("--bands", type=BandList(), default=None, help="Input bands, model order."),
    ]
    for option in reversed(options):
        command = option(command)
    return command

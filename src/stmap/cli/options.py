"""Options shared by several commands, defined once."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click

# the runtime's declarations, read without importing torch
from stmap.runtime.backends import BACKENDS, PRECISIONS
from stmap.runtime.tta_modes import DESCRIPTIONS, TTA_MODES, VIEWS

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object on stdout (text goes to stderr)."
)
quiet_option = click.option("--quiet", "-q", is_flag=True, help="No progress, only errors.")
model_option = click.option(
    "--model",
    "model",
    default="default",
    show_default=True,
    help="Model bundle (directory or .zip); 'default' is the demo bundle shipped with stmap.",
)

tta_option = click.option(
    "--tta",
    type=click.Choice(TTA_MODES),
    default="none",
    show_default=True,
    help="Test-time augmentation: the mean probability over views of each tile ("
    + "; ".join(
        f"{mode}: {DESCRIPTIONS[mode]}, {len(VIEWS[mode])}×"
        for mode in TTA_MODES
        if len(VIEWS[mode]) > 1
    )
    + "), at as many times the compute.",
)


def emit_json(obj: Any) -> None:
    """The one machine-readable object a command prints with --json."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


class BatchSize(click.ParamType):
    """``auto`` or a positive integer."""

    name = "auto|N"

    def convert(self, value, param, ctx) -> int | None:
        if value is None or str(value).lower() == "auto":
            return None
        try:
            number = int(value)
        except ValueError:
            number = 0
        if number < 1:
            self.fail(f"{value!r} is neither auto nor a positive integer", param, ctx)
        return number


def execution_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--backend, --device, --precision and --batch-size: how infer and bench run the model."""
    options = [
        click.option(
            "--backend",
            type=click.Choice(["auto", *BACKENDS]),
            default="auto",
            show_default=True,
            help="Inference backend; auto picks the fastest one available: "
            + ", then ".join(BACKENDS)
            + ".",
        ),
        click.option(
            "--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."
        ),
        click.option(
            "--precision",
            type=click.Choice(["auto", *PRECISIONS]),
            default="auto",
            show_default=True,
            help="auto: bf16 (or fp16) on CUDA; on the CPU, with --backend auto, the fastest "
            "precision whose probabilities stay within 2/255 of fp32 (measured once per "
            "model and machine, cached), else fp32. bf16 and int8 (linear layers quantised) "
            "on the CPU are refused where they differ more.",
        ),
        click.option(
            "--batch-size",
            type=BatchSize(),
            default="auto",
            show_default=True,
            help="Tiles per forward pass; auto halves it on out-of-memory.",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command

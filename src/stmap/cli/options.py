"""Options shared by several commands, defined once."""

from __future__ import annotations

import json
import sys
from typing import Any

import click

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


def emit_json(obj: Any) -> None:
    """The one machine-readable object a command prints with --json."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")

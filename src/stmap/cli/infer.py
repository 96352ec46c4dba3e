"""``stmap infer``: not available in this version yet (the runtime lands with its issue)."""

from __future__ import annotations

import click

from stmap.errors import NotAvailableError


@click.command("infer", context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def infer(args: tuple[str, ...]) -> None:
    """Map building damage over rasters (not available yet in this version)."""
    raise NotAvailableError(
        "`stmap infer` is not available in this version yet: the streaming runtime "
        "has not landed. No output was written."
    )

"""``stmap bench``: parse the options, then one library call (``stmap.runtime.bench``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from stmap.cli.options import (
    emit_json,
    execution_options,
    json_option,
    model_option,
    quiet_option,
    tta_option,
)


@click.command("bench")
@model_option
@click.option(
    "--backbone",
    default=None,
    metavar="NAME",
    help="Instead of --model: a random-weight model of this registered backbone "
    "(trained on 128-px tiles, decoder 256 channels; a CNN maps in the 1024-px tiles "
    "its trained bundles use), e.g. vit_large_patch16_dinov3.sat493m.",
)
@execution_options
@tta_option
@click.option(
    "--size",
    type=click.IntRange(min=1),
    default=2048,
    show_default=True,
    help="Side of the synthetic city mapped end to end, in pixels.",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed repeats of the model-only loop (their median is reported).",
)
@json_option
@quiet_option
def bench(
    model: str,
    backbone: str | None,
    backend: str,
    device: str,
    precision: str,
    batch_size: int | None,
    tta: str,
    size: int,
    repeats: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Measure model-only and end-to-end throughput on this machine, in one run.

    Model-only: resident uint8 tiles through the backend, measured before and after
    the end-to-end run and averaged; end-to-end: `stmap infer` on a synthetic city;
    efficiency is their ratio. Also: per-stage times, peak
    memory, FLOPs per tile against the measured matrix-multiply rate, km²/hour.

    \b
    Examples:
      stmap bench --size 2048
      stmap bench --backbone vit_large_patch16_dinov3.sat493m --device cuda --json
    """
    from stmap.runtime.bench import BenchOptions, run_bench

    result = run_bench(
        BenchOptions(
            model=model,
            backbone=backbone,
            backend=backend,
            device=device,
            precision=precision,
            batch_size=batch_size,
            tta=tta,
            size=size,
            repeats=repeats,
        ),
        synthetic_city,
    )
    if as_json:
        emit_json(result)
    elif not quiet:
        _print_table(result)


def synthetic_city(path: Path, size: int, gsd: float, seed: int) -> Path:
    """A ``size``² synthetic city at ``gsd`` m (``stmap synth``): what the bench maps."""
    from stmap.synth import generate_city

    generate_city(path, width=size, height=size, gsd=gsd, seed=seed, overwrite=True)
    return path


def _print_table(result: dict[str, Any]) -> None:
    """The headline figures as a rich table on stderr (stdout stays for --json)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"stmap bench: {result['backbone']} · {result['backend']} · "
        f"{result['device']} ({result['device_name']}) · {result['precision']} · "
        f"batch {result['batch_size']} · tta {result['tta']} · {result['size']}² px"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("model-only Mpx/s (stride² per tile)", result["model_mpx_per_s"]),
        ("model-only Mpx/s (tile² per tile)", result["model_tile_mpx_per_s"]),
        ("model-only tiles/s", result["model_tiles_per_s"]),
        (
            "model-only tiles/s before / after the run",
            f"{result['model_tiles_per_s_before']} / {result['model_tiles_per_s_after']}",
        ),
        ("end-to-end Mpx/s", result["end_to_end_mpx_per_s"]),
        ("efficiency (end-to-end / model-only)", result["efficiency"]),
        ("km²/hour end-to-end", result["km2_per_hour"]),
        *((f"stage {k} s", v) for k, v in result["stages"].items()),
        ("peak RSS MiB", result["peak_rss_mb"]),
        ("peak device MiB", result["peak_device_mb"]),
        ("GFLOP per tile", round(result["flops_per_tile"] / 1e9, 3)),
        ("matmul TFLOP/s (measured)", result["matmul_tflops"]),
        ("fraction of ceiling", result["fraction_of_ceiling"]),
        ("phase shift flips / flagged, p99 |Δ|/255", _phase_cell(result["phase_shift"])),
    ]
    for name, value in rows:
        table.add_row(name, "–" if value is None else str(value))
    Console(file=sys.stderr).print(table)


def _phase_cell(phase: dict[str, Any] | None) -> str | None:
    """The phase-stability figure in one cell: a crop's shift, its flips and p99."""
    if phase is None:
        return None
    relative = phase["flips_of_flagged"]
    flips = "–" if relative is None else f"{relative:.1%}"
    return f"{flips}, {phase['p99_dprob_255']} (shift {tuple(phase['offset'])})"

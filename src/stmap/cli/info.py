"""``stmap info PATH``: what a bundle holds, or what infer would do with a raster."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from stmap.cli.options import emit_json, json_option


@click.command("info")
@click.argument("path", required=False)
@click.option("--model", default="default", show_default=True, help="Bundle for raster advice.")
@click.option("--system", is_flag=True, help="Describe this machine: GPUs, backends, versions.")
@json_option
def info(path: str | None, model: str, system: bool, as_json: bool) -> None:
    """Describe a model bundle (manifest, verified hashes), a raster, or this machine.

    \b
    Examples:
      stmap info default
      stmap info city.tif
      stmap info --system
    """
    from stmap.bundle import DEFAULT, MANIFEST

    if system or path is None:
        report = system_report()
    elif path == DEFAULT or (Path(path) / MANIFEST).exists() or path.lower().endswith(".zip"):
        report = bundle_report(path)
    else:
        report = raster_report(path, model)
    if as_json:
        emit_json(report)
    else:
        _print_table(report)


def bundle_report(path: str) -> dict[str, Any]:
    from stmap.bundle import open_bundle

    bundle = open_bundle(path)
    manifest = bundle.manifest.model_dump(mode="json")
    return {"kind": "bundle", "path": str(bundle.source), "hashes_verified": True, **manifest}


def raster_report(path: str, model: str) -> dict[str, Any]:
    from stmap.bundle import open_bundle
    from stmap.io.raster import describe_raster

    raster = describe_raster(path)
    manifest = open_bundle(model).manifest
    scale = raster.gsd_m / manifest.gsd_m if raster.gsd_m else 1.0
    resample = abs(scale - 1.0) > 0.10
    model_px = (math.ceil(raster.width * scale), math.ceil(raster.height * scale))
    return {
        "kind": "raster",
        "path": raster.path,
        "driver": raster.driver,
        "size": [raster.width, raster.height],
        "bands": raster.count,
        "dtype": raster.dtype,
        "crs": raster.crs.to_string() if raster.crs else None,
        "georeferenced": raster.is_georeferenced,
        "north_up": raster.is_north_up,
        "gsd_m": raster.gsd_m,
        "block_shape": list(raster.block_shape),
        "compression": raster.compression,
        "overviews": list(raster.overviews),
        "nodata": raster.nodata,
        "alpha_band": raster.has_alpha,
        "internal_mask": raster.has_mask,
        "model_gsd_m": manifest.gsd_m,
        "resampled_for_model": resample,
        "model_grid_px": list(model_px) if resample else [raster.width, raster.height],
        "model_tiles": math.ceil(model_px[0] / manifest.infer_tile)
        * math.ceil(model_px[1] / manifest.infer_tile),
    }


def system_report() -> dict[str, Any]:
    """Versions, GPUs and which optional backends can be imported here."""
    import platform
    from importlib.util import find_spec

    import rasterio
    import torch

    from stmap import __version__

    gpus = [
        {
            "name": torch.cuda.get_device_name(i),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(i))),
        }
        for i in range(torch.cuda.device_count())
    ]
    optional = ("onnxruntime", "tensorrt", "ray")
    return {
        "kind": "system",
        "stmap": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpus,
        "rasterio": rasterio.__version__,
        "gdal": rasterio.__gdal_version__,
        "installed_backends": ["torch", *(name for name in optional if find_spec(name))],
    }


def _print_table(report: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    for key, value in report.items():
        table.add_row(f"[bold]{key}[/bold]", _short(value))
    Console().print(table)


def _short(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}={_short(v)}" for k, v in value.items()) or "—"
    return str(value)

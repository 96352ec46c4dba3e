"""``S_summary.json``: what was mapped, with which model, how fast, and what was found.

A pure function of the run's facts; ``stmap.runtime.infer`` writes it. Field names
are part of the command-line contract (cli.md): extend them, never rename them.
"""

from __future__ import annotations

import math
from typing import Any

from stmap import __version__
from stmap.bundle import Bundle


def build_summary(
    *,
    source: dict[str, Any],
    bundle: Bundle,
    run: dict[str, Any],
    pipeline: Any,
    finalise_s: float,
    seconds: float,
    pixel_area_m2: float,
    damaged_area_m2: float,
    damaged_polygons: int,
    buildings: dict[str, Any] | None,
    grid: dict[str, Any] | None,
    outputs: list[str],
    warnings: list[str],
) -> dict[str, Any]:
    """The summary of one input.

    source: facts about the input raster (path, size, CRS, GSD, bands, resampling).
    run: backend, device, precision, batch size, tile, overlap, block size, workers.
    pipeline: the ``PipelineResult``; finalise_s: COGs, vectors, quicklook.
    seconds: wall time of the whole input, finalisation included.
    pixel_area_m2: ground area of one input pixel (assumed for ungeoreferenced input).
    buildings: footprint counts and the damaged-fraction histogram, when given.
    grid: the damage grid's figures and worst cells (``density_grid.grid_facts``).
    """
    manifest = bundle.manifest
    area_km2 = pipeline.pixels * pixel_area_m2 / 1e6
    return {
        "stmap_version": __version__,
        "inputs": [source],
        "model": {
            "name": manifest.name,
            "hash": bundle.hash(),
            "path": str(bundle.source),
            "backbone": manifest.backbone,
            "backbone_weights": manifest.backbone_weights,
            "tile_size": manifest.infer_tile,
            "trained_tile_size": manifest.tile_size,
            "gsd_m": manifest.gsd_m,
            "threshold": run["threshold"],
            "provenance": manifest.provenance,
            "metrics": manifest.metrics,
        },
        **{k: v for k, v in run.items() if k != "threshold"},
        "times": {
            **pipeline.times.as_dict(),
            "pipeline": round(pipeline.seconds, 4),
            "finalise": round(finalise_s, 4),
        },
        "blocks": pipeline.blocks,
        "tiles": pipeline.tiles,
        "resumed_blocks": pipeline.resumed_blocks,
        "pixels": pipeline.pixels,
        "valid_pixels": pipeline.valid_pixels,
        "skipped_pixels": pipeline.skipped_pixels,
        "seconds": round(seconds, 4),
        # 6 decimals: small test rasters run at hundredths of a Mpx/s
        "mpx_per_s": round(pipeline.pixels / 1e6 / seconds, 6) if seconds else None,
        "km2_per_hour": round(area_km2 / seconds * 3600, 6) if seconds else None,
        "area_km2": round(area_km2, 6),
        "damaged_pixels": pipeline.damaged_pixels,
        "damaged_area_m2": round(damaged_area_m2, 3) if math.isfinite(damaged_area_m2) else None,
        "damaged_polygons": damaged_polygons,
        "buildings": buildings,
        "grid": grid,
        "outputs": outputs,
        "warnings": warnings,
    }


def run_summary(summaries: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    """``run_summary.json``: the totals of a run over several inputs, and each input's summary.

    seconds: wall time of the whole run, so that rates are those of the batch (inputs
    mapped side by side on several workers overlap in time).
    """
    pixels = sum(s["pixels"] for s in summaries)
    area_km2 = sum(s["area_km2"] for s in summaries)
    damaged = [s["damaged_area_m2"] for s in summaries if s["damaged_area_m2"] is not None]
    return {
        "stmap_version": __version__,
        "scenes": len(summaries),
        "pixels": pixels,
        "valid_pixels": sum(s["valid_pixels"] for s in summaries),
        "seconds": round(seconds, 4),
        "mpx_per_s": round(pixels / 1e6 / seconds, 6) if seconds else None,
        "km2_per_hour": round(area_km2 / seconds * 3600, 6) if seconds else None,
        "area_km2": round(area_km2, 6),
        "damaged_pixels": sum(s["damaged_pixels"] for s in summaries),
        "damaged_area_m2": round(sum(damaged), 3),
        "damaged_polygons": sum(s["damaged_polygons"] for s in summaries),
        "runs": summaries,
    }

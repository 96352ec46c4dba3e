"""``evaluate_bundle``: score any bundle on a tile dataset the way training reports scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stmap.bundle import open_bundle
from stmap.cache import user_cache_dir
from stmap.model import Normalize
from stmap.train.datasets import load_tile_data
from stmap.train.loop import Inputs, evaluate, resolve_device
from stmap.train.metrics import scores
from stmap.train.reports import summarise, write_overlays, write_report


def evaluate_bundle(
    bundle_path: str | Path,
    data_root: Path,
    regions: Sequence[str] | None = None,
    *,
    footprint_dir: Path | None = None,
    tiles_meta_dir: Path | None = None,
    device: str = "auto",
    batch_size: int = 32,
    out_dir: Path | None = None,
    overlays: int = 16,
    workers: int = 2,
) -> dict[str, Any]:
    """Per-region scores of the bundle over every tile of ``regions`` (all when None).

    Tiles are resized to the bundle's tile size and thresholded at its threshold;
    pixels are pooled per region (one "fold", so std 0). With ``out_dir``, writes
    ``report.json``, ``report.tsv``, ``report.md`` and ``overlays/`` there.
    Returns the report as a dict.
    """
    bundle = open_bundle(bundle_path)
    manifest = bundle.manifest
    target = resolve_device(device)
    model = bundle.load_segmenter().to(target)
    data = load_tile_data(
        Path(data_root),
        regions,
        manifest.tile_size,
        footprint_dir,
        tiles_meta_dir,
        workers,
        gsd_m=manifest.gsd_m,
        cache_dir=user_cache_dir("xbd-tiles"),
    )
    inputs = Inputs(data, Normalize(manifest.preprocessing("uint8")), target)
    everything = torch.arange(len(data))
    counts = evaluate(model, inputs, everything, batch_size, manifest.threshold)
    summary = summarise({"evaluate": {r: [scores(c)] for r, c in counts.items()}})
    report: dict[str, Any] = {
        "command_name": "evaluate",
        "title": f"{manifest.name} on {data_root}",
        "summary": summary,
        "facts": [
            f"Bundle {bundle.source} ({manifest.backbone}, tile {manifest.tile_size}, "
            f"threshold {manifest.threshold:g}) on all {len(data)} tiles of "
            f"{', '.join(data.region_names)}; std is 0 with a single evaluation.",
            *data.notes,
        ],
        "bundle": str(bundle.source),
        "overlays": [],
    }
    if out_dir is not None:
        report["overlays"] = write_overlays(
            out_dir / "overlays",
            model,
            inputs,
            everything,
            overlays,
            manifest.threshold,
            batch_size,
        )
        write_report(out_dir, report)
    return report

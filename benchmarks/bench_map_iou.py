"""IoU1 of the map a bundle makes, against the labels, city by city (#20).

``stmap evaluate`` scores a bundle on its 128-px training tiles; a CNN bundle maps in
much larger tiles (its ``tiling``), whose edges the blend leaves out, so the tile score
weighs edges the map never has. This runs ``stmap infer``'s pipeline (``run_inference``,
default options) on each city raster of ``scripts/build_demo_bundle.sh``'s work
directory and scores the damaged flag against the city's label raster (1 = damaged),
pooled over each city's pixels.

Run from the repository root, after ``scripts/build_demo_bundle.sh --variant ... WORKDIR``
(about 2 minutes a bundle on one CPU thread)::

    python -m benchmarks.bench_map_iou --cities WORKDIR --models OLD_BUNDLE,default \\
        --out benchmarks/results/demo_bundle_maps

``--synth SIZE`` makes the seven cities itself (the build's styles, SIZE² px; the build's
seeds, or fresh cities with ``--seed``) instead: the smoke run, and cities no model saw.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.report import finish, markdown_table, provenance, provenance_lines
from stmap.io.raster import read_band
from stmap.runtime.infer import InferOptions, run_inference
from stmap.synth import generate_city

CITIES = ("citycentre", "citycentreb", "oldtown", "oldtownb", "village", "villageb")
HELDOUT = "periurban"


def map_iou(bundle: str, cities: Path, root: Path) -> dict[str, float]:
    """{city: IoU1 of the bundle's map of ``cities/<city>.tif``} for every city."""
    scores = {}
    for city in (*CITIES, HELDOUT):
        out = root / city
        options = InferOptions(model=bundle, device="cpu", workers=1)
        run_inference([str(cities / f"{city}.tif")], out, options)
        flagged = read_band(out / f"{city}_damage.tif") == 1
        damaged = read_band(cities / f"{city}_labels.tif") == 1
        scores[city] = round(
            float((flagged & damaged).sum() / max((flagged | damaged).sum(), 1)), 4
        )
    return scores


def synth_cities(root: Path, size: int, seed: int = 11) -> Path:
    """The build's cities at ``size``² px in ``root``: ``seed`` at damage rate 0.2, the b
    cities ``seed`` + 1 at 0.25 (the build's seeds are 11; others give fresh cities)."""
    for city in (*CITIES, HELDOUT):
        style, second = city.removesuffix("b"), city.endswith("b")
        generate_city(
            root / f"{city}.tif",
            width=size,
            height=size,
            style=style,
            seed=seed + 1 if second else seed,
            damage_rate=0.25 if second else 0.2,
            workers=1,
        )
    return root


def markdown(report: dict[str, Any]) -> str:
    header = ["model", *CITIES, f"{HELDOUT} (held out)"]
    rows = [[r["model"], *(r["iou1"][c] for c in (*CITIES, HELDOUT))] for r in report["runs"]]
    return "\n\n".join(
        [
            "# IoU1 of the map, city by city (#20)",
            f"The cities of `scripts/build_demo_bundle.sh` ({report['cities']}): each mapped "
            "whole by `stmap infer`'s pipeline with default options; IoU1 of the damaged flag "
            "against the label raster. Written by `benchmarks/bench_map_iou.py`.",
            provenance_lines(report["provenance"]),
            markdown_table(header, rows),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--cities", type=Path, help="the build's WORKDIR")
    where.add_argument("--synth", type=int, metavar="SIZE", help="make the cities, SIZE² px")
    parser.add_argument("--seed", type=int, default=11, help="--synth: the cities' seed")
    parser.add_argument("--models", default="default", help="bundle paths or default")
    parser.add_argument("--out", type=Path, default=None, help="STEM: write STEM.json, STEM.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="stmap-map-iou-") as tmp:
        cities = args.cities or synth_cities(Path(tmp) / "cities", args.synth, args.seed)
        made = f"synthesised, {args.synth}² px, seeds {args.seed}/{args.seed + 1}"
        place = str(args.cities) if args.cities else made
        report: dict[str, Any] = {"provenance": provenance(), "cities": place, "runs": []}
        for k, model in enumerate(args.models.split(",")):
            scores = map_iou(model, cities, Path(tmp) / f"maps-{k}")
            seen = round(float(np.mean([scores[c] for c in CITIES])), 4)
            report["runs"].append({"model": model, "iou1": scores, "mean_seen": seen})
    finish(report, markdown(report), args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

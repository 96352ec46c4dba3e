"""Every sub-stride phase: how far a CNN bundle's map moves under each shift (#20).

``bench_phase.py`` maps eight crop offsets through the pipeline; #20 asks for stability
"under any phase shift". A fully convolutional model of output stride 16 maps a raster
shifted by 16 px as it maps the raster, so the shifts (dy, dx) in 0..15 × 0..15 are every
phase there is. Here the model runs on the whole mirror-padded raster at once
(``bench_phase.whole_image``: no tiles, so the figures are the model's alone; the
pipeline's tiles add their borders, which ``bench_phase.py`` measures) for a synthetic
city of every style and each of the 255 shifts, and the maps are compared as
``bench_phase`` compares them (``runtime.phase.compare_shifted``, quantised to 1/255).

Reported per bundle: flips of the flagged pixels and p99 |Δprob| pooled over every
shift, the worst shift, how many shifts flip more than 2 % of the flagged pixels (#20's
bound), the largest p99 of a shift, and the grid of flips per shift.

Run, from the repository root (about 4 minutes a bundle of the shipped one's cost on one
core):

    python -m benchmarks.bench_phase_sweep --models default,PATH/TO/bundle \
        --out benchmarks/results/phase_sweep
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_phase import _pct, bench_cities, city_style, map_layers, whole_image
from benchmarks.peers.report import finish, markdown_table, provenance, provenance_lines
from stmap.bundle import open_bundle
from stmap.io.raster import read_pixels
from stmap.model import InferenceModel
from stmap.model.backbones import get_spec
from stmap.runtime.phase import PhaseStats, compare_shifted, pool
from stmap.runtime.vectorize import damage_cutoff
from stmap.synth import STYLES

BOUND = 0.02  # #20: flips of at most 2 % of the flagged pixels under any phase shift


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="default", help="default or bundle paths (CNNs)")
    parser.add_argument("--size", type=int, default=768)
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--margin", type=int, default=64, help="px left out at every edge")
    parser.add_argument(
        "--cities", type=int, default=1, help="cities of each style (other seeds after the first)"
    )
    parser.add_argument("--out", type=Path, default=None, help="STEM: write STEM.json, STEM.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    styles = args.styles.split(",")
    report: dict[str, Any] = {
        "provenance": provenance(),
        "size": args.size,
        "styles": styles,
        "cities_per_style": args.cities,
        "margin": args.margin,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="stmap-phase-sweep-") as tmp:
        cities = bench_cities(Path(tmp), args.size, styles, extra=args.cities - 1)
        images = {name: read_pixels(city.image) for name, city in cities.items()}
        for name in args.models.split(","):
            run = sweep(name, images, args.margin)
            report["runs"].append(run)
            worst = run["worst_shift"]
            print(
                f"{name}: pooled {run['pooled']['flips_of_flagged']}, worst {worst['shift']} "
                f"{worst['flips_of_flagged']}, over the bound {run['shifts_over_bound']}",
                file=sys.stderr,
                flush=True,
            )
    finish(report, markdown(report), args.out)
    return 0


def sweep(name: str, images: dict[str, np.ndarray], margin: int) -> dict[str, Any]:
    """One bundle's map of every city, compared with its map of every shifted crop."""
    bundle = open_bundle(name)
    manifest = bundle.manifest
    spec = get_spec(manifest.backbone)
    if not spec.any_tile:
        raise SystemExit(f"{name}: {spec.name} maps one tile size only; the sweep needs a CNN")
    model = InferenceModel(bundle.load_segmenter(), manifest.preprocessing("uint8")).eval()
    cutoff, stride, tile = damage_cutoff(manifest.threshold), spec.patch_size, manifest.tile_size
    shifts = [(dy, dx) for dy in range(stride) for dx in range(stride) if dy or dx]
    per_shift: dict[tuple[int, int], list[PhaseStats]] = {shift: [] for shift in shifts}
    per_style: dict[str, list[PhaseStats]] = {city_style(city): [] for city in images}
    for city, image in images.items():
        full = map_layers(whole_image(model, image, tile), cutoff)
        for dy, dx in shifts:
            crop = np.ascontiguousarray(image[:, dy:, dx:])
            shifted = map_layers(whole_image(model, crop, tile), cutoff)
            stats = compare_shifted(full, shifted, (dy, dx), margin)
            per_shift[dy, dx].append(stats)
            per_style[city_style(city)].append(stats)
    pooled = {shift: pool(stats) for shift, stats in per_shift.items()}
    flips = {shift: s.flips_of_flagged or 0.0 for shift, s in pooled.items()}
    worst = max(shifts, key=lambda s: (flips[s], pooled[s].quantile(0.99)))
    return {
        "model": name,
        "backbone": manifest.backbone,
        "model_hash": bundle.hash()[:12],
        "stride": stride,
        "pooled": pool([s for stats in per_shift.values() for s in stats]).as_dict(),
        "worst_shift": {"shift": list(worst), **pooled[worst].as_dict()},
        "per_style": {style: pool(stats).as_dict() for style, stats in per_style.items()},
        "shifts_over_bound": sum(f > BOUND for f in flips.values()),
        "shifts": len(shifts),
        "max_p99_dprob_255": max(s.quantile(0.99) for s in pooled.values()),
        "flips_of_flagged_per_shift": {
            f"{dy},{dx}": s.as_dict()["flips_of_flagged"] for (dy, dx), s in pooled.items()
        },
    }


def markdown(report: dict[str, Any]) -> str:
    header = [
        "bundle",
        "flips / flagged, all shifts",
        "p99 abs Δ, all shifts",
        "worst shift: flips / flagged, p99",
        f"shifts over {BOUND:.0%}",
        "largest p99 of a shift",
    ]
    rows = [
        [
            f"{run['model']} ({run['backbone']}, {run['model_hash']})",
            _pct(run["pooled"]["flips_of_flagged"]),
            run["pooled"]["p99_dprob_255"],
            f"{tuple(run['worst_shift']['shift'])}: "
            f"{_pct(run['worst_shift']['flips_of_flagged'])}, "
            f"{run['worst_shift']['p99_dprob_255']}",
            f"{run['shifts_over_bound']} of {run['shifts']}",
            run["max_p99_dprob_255"],
        ]
        for run in report["runs"]
    ]
    parts = [
        "# Phase stability under every sub-stride shift (#20)",
        f"Synthetic cities of {report['size']}² px ({report.get('cities_per_style', 1)} of each "
        f"style: {', '.join(report['styles'])}), "
        "each bundle run on the whole mirror-padded city (no tiles) and on its crop from "
        "every shift (dy, dx) in 0..15 × 0..15 but (0, 0); compared "
        f"{report['margin']} px from the edges, pooled over the styles. Written by "
        "`benchmarks/bench_phase_sweep.py`.",
        provenance_lines(report["provenance"]),
        markdown_table(header, rows),
        "Per style, over every shift (flips / flagged, flagged share, p99 abs Δ):",
        markdown_table(
            ["bundle", *report["styles"]],
            [
                [
                    run["model"],
                    *(
                        f"{_pct(s['flips_of_flagged'])}, {_pct(s['flagged_share'], 2)}, "
                        f"{s['p99_dprob_255']}"
                        for s in run["per_style"].values()
                    ),
                ]
                for run in report["runs"]
            ],
        ),
    ]
    for run in report["runs"]:
        grid = run["flips_of_flagged_per_shift"]
        side = run["stride"]
        cells = [
            [dy, *(_pct(grid.get(f"{dy},{dx}"), 1) if dy or dx else "·" for dx in range(side))]
            for dy in range(side)
        ]
        parts += [
            f"## {run['model']}: flips / flagged per shift (rows dy, columns dx)",
            markdown_table(["dy \\ dx", *map(str, range(side))], cells),
        ]
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())

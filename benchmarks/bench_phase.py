"""Phase stability: how far a damage map moves when the tile grid falls elsewhere (#20).

For a synthetic city of every style (``--size`` px, 0.5 m), the city is mapped, then
crops of it that start at sub-stride offsets, placed at the city's corner (``crop_at``),
so their tile grids have another phase over the same pixels. The maps are compared on
the pixels both hold, a tile (128 px) away from either raster's edge
(``stmap.runtime.phase``): the share of pixels whose damaged flag flips (absolute
and relative to the flagged share) and the median / p99 of |Δprob| in 1/255 steps,
pooled over the offsets per style and over all styles, the worst offset (the most
flips of its flagged pixels) and the largest p99 of an offset.

Configurations:

* ``pipeline``: ``run_inference`` (what ``stmap infer`` runs) for each ``--models``
  entry at each ``--overlaps`` value (``auto``: the model's own, as ``stmap infer``
  picks it). Models: the shipped bundle (``default``), a random-weight ViT-S/16
  (``vits``, DINOv3 architecture, as ``stmap bench --backbone`` builds it), bundle
  paths; ``NAME@TILE`` maps a CNN bundle in TILE-px tiles (``@128``: its training
  tiles, the shipped bundle before its ``tiling``). Cost: end-to-end Mpx/s of the
  whole cities in the same run, and the model pixels per mapped pixel relative to
  128-px tiles at overlap 16 (the default before #20).
* ``--diagnose`` (shipped bundle): where the instability comes from, with the same
  model in memory. ``whole image``: the model on the whole mirror-padded raster at
  once, no tiles at all (what no window or overlap can beat; shifts that are
  multiples of 16 px, the model's output stride, move it by nothing); two tile
  grids averaged, the second shifted by half a stride (like ``--tta``, on the
  device), at overlap 16 and 0. Their cost is in model tiles per mapped pixel
  (compute), relative to overlap 16; ``lab_vs_pipeline`` checks that the in-memory
  tiling is the pipeline's (max |Δ| of the overlap-16 maps, in 1/255 steps).

Run, from the repository root (about 15 minutes on a loaded 2-core CPU; the ViT-S
takes about 50 s a map there):

    python -m benchmarks.bench_phase --size 1024 --models default@128,default \
        --overlaps 16,auto --out benchmarks/results/phase_stability_tiling
    python -m benchmarks.bench_phase --size 1024 --models vits --overlaps 16,32 \
        --offsets '73,77;25,13;1,1;37,90' --out benchmarks/results/phase_stability_vits

Imagery off the model's GSD runs on a resampled grid (most real imagery does): ``--gsd``
writes the cities at another pixel size, ``--images`` maps given rasters instead (real
imagery: no labels, so no IoU; the crops are placed at the raster's corner, as for the
cities, so the content moves against the world's lattice by a fraction of a model pixel)::

    python -m benchmarks.bench_phase --size 1024 --gsd 0.62 --models default \
        --overlaps auto --out benchmarks/results/phase_stability_resampled
    python -m benchmarks.bench_phase --images joplin_post.tif --models default \
        --overlaps auto --offsets '73,77;1,1;8,8;16,16;409,301;37,23' \
        --out benchmarks/results/phase_stability_real

The cost of each tiling on a larger city, alone (about 5 minutes):

    python -m benchmarks.bench_phase --cost-only 2048 --models default@128,default \
        --overlaps 16,32,auto --rounds 3 --out benchmarks/results/phase_cost

Tiny smoke run: ``--size 384 --styles citycentre --offsets 1,1 --overlaps auto
--models default``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.peers.report import finish, markdown_table, provenance, provenance_lines
from stmap.bundle import ANY_TILE_INFER, Tiling, open_bundle, write_retiled
from stmap.io.raster import describe_raster, read_band, read_pixels
from stmap.model import InferenceModel
from stmap.runtime.bench import random_bundle
from stmap.runtime.blend import ramp
from stmap.runtime.grid import reflect_index
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.phase import PhaseStats, compare_shifted, crop_at, pool, read_layers
from stmap.runtime.vectorize import damage_cutoff
from stmap.synth import STYLES, generate_city

VITS = "vit_small_patch16_dinov3.lvd1689m"
# (409, 301) mod 112 and mod 96 (the crop under overlaps 16 and 32), one-pixel
# and half-patch shifts, a pure multiple of the output stride, and a few others.
OFFSETS = [(73, 77), (25, 13), (1, 1), (8, 8), (3, 64), (37, 90), (16, 16), (56, 56)]
SEED = 7  # city seeds: SEED + the style's index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--styles", default=",".join(STYLES))
    parser.add_argument("--offsets", default=";".join(f"{r},{c}" for r, c in OFFSETS))
    parser.add_argument(
        "--overlaps", default="16,24,32", help="px, or auto: the model's own (stmap infer's)"
    )
    parser.add_argument(
        "--models",
        default="default,vits",
        help=(
            "default (the shipped bundle), vits (a random-weight ViT-S/16) or bundle paths; "
            "NAME@TILE maps a CNN bundle in TILE-px tiles (its training tile: no tiling)"
        ),
    )
    parser.add_argument(
        "--gsd",
        type=float,
        default=0.5,
        help="the cities' pixel size in m: off the model's, the pipeline resamples them",
    )
    parser.add_argument(
        "--images",
        default=None,
        metavar="PATH[,PATH]",
        help="map these rasters (real imagery, say) in place of the synthetic cities: no IoU",
    )
    parser.add_argument("--diagnose", action="store_true")
    parser.add_argument(
        "--cost-only",
        type=int,
        default=None,
        metavar="SIZE",
        help="only the cost: map one SIZE² city with each model × overlap, --rounds times",
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--reference-python",
        default=None,
        metavar="PYTHON",
        help=(
            "with --cost-only: a first row, the default `stmap infer` of the stmap that "
            "PYTHON imports (an older checkout: the cost as it was), the rest relative to it"
        ),
    )
    parser.add_argument("--out", type=Path, default=None, help="STEM: write STEM.json, STEM.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # the figures are ratios within one run; one thread is steadier
    styles = args.styles.split(",")
    offsets = [tuple(int(v) for v in pair.split(",")) for pair in args.offsets.split(";")]
    overlaps = [None if v == "auto" else int(v) for v in args.overlaps.split(",")]
    report: dict[str, Any] = {
        "provenance": provenance(),
        "size": args.size,
        "styles": styles,
        "offsets": offsets,
        "margin": 128,
        "gsd_m": args.gsd,
        "images": args.images.split(",") if args.images else None,
        "runs": [],
    }
    if args.cost_only is not None:
        with tempfile.TemporaryDirectory(prefix="stmap-phase-cost-") as tmp:
            measured = cost(
                args.cost_only,
                args.models.split(","),
                overlaps,
                args.rounds,
                Path(tmp),
                args.reference_python,
                gsd=args.gsd,
            )
        report = {"provenance": report["provenance"], "gsd_m": args.gsd, **measured}
        finish(report, cost_markdown(report), args.out)
        return 0
    with tempfile.TemporaryDirectory(prefix="stmap-phase-") as tmp:
        root = Path(tmp)
        if args.images:
            cities = {Path(path).stem: given_image(Path(path)) for path in args.images.split(",")}
        else:
            cities = bench_cities(root, args.size, styles, gsd=args.gsd)
        for model in args.models.split(","):
            bundle = resolve_model(model, root)
            for overlap in overlaps:
                run = pipeline_run(bundle, model, overlap, cities, offsets, root)
                report["runs"].append(run)
                print(_line(run), file=sys.stderr, flush=True)
        if args.diagnose:
            for run in diagnose(cities, offsets, root):
                report["runs"].append(run)
                print(_line(run), file=sys.stderr, flush=True)
    finish(report, markdown(report), args.out)
    return 0


CITY_SEED_STEP = 100  # the k-th extra city of a style: seed + k × this


def bench_cities(
    root: Path, size: int, styles: list[str], extra: int = 0, gsd: float = 0.5
) -> dict[str, Any]:
    """The benchmark's synthetic city of each style, ``size``² px of ``gsd`` m, under
    ``root``: the same cities for every run of a size (``bench_phase_sweep`` compares on
    them too). ``extra`` more cities of each style (other seeds) are keyed ``style#k``."""
    return {
        style + (f"#{k}" if k else ""): generate_city(
            root / f"{style}{k or ''}" / "city.tif",
            width=size,
            height=size,
            gsd=gsd,
            style=style,
            seed=SEED + list(STYLES).index(style) + k * CITY_SEED_STEP,
            overwrite=True,
            workers=1,
        )
        for k in range(extra + 1)
        for style in styles
    }


@dataclass(frozen=True)
class GivenImage:
    """A raster of the user's (``--images``) in place of a synthetic city: no labels."""

    image: Path
    height: int
    width: int
    labels: Path | None = None


def given_image(path: Path) -> GivenImage:
    info = describe_raster(path)
    return GivenImage(path, info.height, info.width)


def map_files(folder: Path, stem: str) -> tuple[Path, Path]:
    """The (probability, damaged flag) rasters ``stmap infer`` writes for ``stem``."""
    return folder / f"{stem}_damage_prob.tif", folder / f"{stem}_damage.tif"


def city_style(name: str) -> str:
    """The style of a ``bench_cities`` key (``style`` or ``style#k``)."""
    return name.split("#")[0]


def resolve_model(model: str, root: Path) -> str:
    """A bundle path for a ``--models`` entry; ``NAME@TILE`` writes a copy of NAME whose
    manifest maps it in TILE-px tiles (``tiling``; none at the training tile)."""
    name, _, tile = model.partition("@")
    if name == "vits":
        name = str(random_bundle(root / "vits", VITS, 0))
    if not tile:
        return name
    source = open_bundle(name)
    tiling = None
    if int(tile) != source.manifest.tile_size:
        tiling = Tiling(tile_size=int(tile), overlap=ANY_TILE_INFER.overlap)
    return str(write_retiled(source, root / "bundles" / model.replace("/", "_"), tiling))


def pipeline_run(
    bundle: str, model: str, overlap: int | None, cities: dict[str, Any], offsets, root: Path
) -> dict[str, Any]:
    """Every city and its crops through ``run_inference`` at ``overlap`` (None: stmap
    infer's default for the model)."""
    options = InferOptions(model=bundle, overlap=overlap, device="cpu", workers=1)
    per_style: dict[str, list[PhaseStats]] = {}
    seconds = pixels = 0.0
    ious = []
    for style, city in cities.items():
        out = root / f"{model.replace('/', '_')}-{overlap}" / style
        summary = run_inference([str(city.image)], out / "full", options)[0]
        tile, overlap_used = summary["model"]["tile_size"], summary["overlap"]
        seconds, pixels = seconds + summary["seconds"], pixels + summary["pixels"]
        full = read_layers(*map_files(out / "full", Path(city.image).stem))
        if city.labels is not None:
            ious.append(_iou(full[1], read_band(city.labels)))
        per_style[style] = []
        for offset in offsets:
            crop = out / f"crop_{offset[0]}_{offset[1]}.tif"
            crop_at(city.image, crop, offset, (city.height, city.width))
            run_inference([str(crop)], out / crop.stem, options)
            shifted = read_layers(*map_files(out / crop.stem, crop.stem))
            per_style[style].append(compare_shifted(full, shifted, offset, margin=128))
    compute = (tile / (tile - overlap_used)) ** 2 / (128 / 112) ** 2
    return _summarise(
        name=f"{model} · tiles {tile}, overlap {overlap_used}",
        kind="pipeline",
        model=model,
        per_style=per_style,
        offsets=offsets,
        cost={
            "tile": tile,
            "overlap": overlap_used,
            "compute_vs_128_16": round(compute, 3),
            "mpx_per_s": round(pixels / seconds / 1e6, 4),
        },
        iou=float(np.mean(ious)) if ious else None,
    )


def cost(
    size: int,
    models: list[str],
    overlaps: list[int | None],
    rounds: int,
    root: Path,
    reference_python: str | None = None,
    gsd: float = 0.5,
) -> dict[str, Any]:
    """End-to-end Mpx/s and model seconds of each model × overlap on one ``size``² city,
    the configurations interleaved ``rounds`` times (a shared machine drifts); first, with
    ``reference_python``, the default run of the stmap that interpreter imports."""
    configs = [(m, o) for m in models for o in overlaps]
    bundles = {m: resolve_model(m, root) for m in models}
    options = [
        InferOptions(model=bundles[m], overlap=o, device="cpu", workers=1) for m, o in configs
    ]
    city = generate_city(root / "city.tif", width=size, height=size, gsd=gsd, seed=SEED).image
    runners = [partial(map_city, option, city) for option in options]
    names = [model for model, _ in configs]
    if reference_python:
        runners.insert(0, partial(reference_run, reference_python, city))
        names.insert(0, f"default, as `{reference_python}` maps it")
    runs: list[list[dict[str, Any]]] = [[] for _ in runners]
    for i, runner in enumerate(runners):  # warm-up: caches, kernels chosen
        runner(root / f"warmup-{i}")
    for r in range(rounds):
        for i, runner in enumerate(runners):
            runs[i].append(runner(root / f"{i}-{r}"))
    rows = []
    for model, summaries in zip(names, runs, strict=True):
        first = summaries[0]
        rows.append(
            {
                "model": model,
                "backend": f"{first.get('backend', '?')} {first.get('precision', '')}".strip(),
                "tile": first["model"]["tile_size"],
                "overlap": first.get("overlap"),
                "tiles": first["tiles"],
                "model_mpx": round(first["tiles"] * first["model"]["tile_size"] ** 2 / 1e6, 3),
                "end_to_end_mpx_per_s": round(
                    float(np.mean([s["mpx_per_s"] for s in summaries])), 4
                ),
                "model_seconds": round(
                    float(np.mean([s["times"]["compute"] for s in summaries])), 3
                ),
            }
        )
    base = rows[0]
    for row in rows:
        row["model_px_vs_first"] = round(row["model_mpx"] / base["model_mpx"], 3)
        row["model_seconds_vs_first"] = round(row["model_seconds"] / base["model_seconds"], 3)
        row["time_vs_first"] = round(base["end_to_end_mpx_per_s"] / row["end_to_end_mpx_per_s"], 3)
    return {"size": size, "rounds": rounds, "cost": rows}


def map_city(option: InferOptions, city: Path, outdir: Path) -> dict[str, Any]:
    """The summary of this stmap mapping ``city`` into ``outdir`` with ``option``."""
    return run_inference([str(city)], outdir, option)[0]


# run by another interpreter: its stmap's default `stmap infer` of one raster, one thread
REFERENCE_RUN = """
import json, sys
import torch
torch.set_num_threads(1)
from stmap.runtime.infer import InferOptions, run_inference
summary = run_inference([sys.argv[1]], sys.argv[2], InferOptions(device="cpu", workers=1))[0]
print(json.dumps(summary, default=str))
"""


def reference_run(python: str, city: Path, outdir: Path) -> dict[str, Any]:
    """The summary of ``python``'s stmap mapping ``city`` into ``outdir`` by default."""
    done = subprocess.run(
        [python, "-c", REFERENCE_RUN, str(city), str(outdir)],
        check=True,
        capture_output=True,
        text=True,
        cwd=city.parent,  # not a checkout whose packages would shadow ``python``'s
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# the cost table's columns: header, key of a row of ``cost``
COST_COLUMNS = [
    ("model", "model"),
    ("backend", "backend"),
    ("tile", "tile"),
    ("overlap", "overlap"),
    ("tiles", "tiles"),
    ("model Mpx", "model_mpx"),
    ("model s", "model_seconds"),
    ("end-to-end Mpx/s", "end_to_end_mpx_per_s"),
    ("model px ×", "model_px_vs_first"),
    ("model s ×", "model_seconds_vs_first"),
    ("time ×", "time_vs_first"),
]


def cost_markdown(report: dict[str, Any]) -> str:
    header = [title for title, _ in COST_COLUMNS]
    rows = [[r[key] for _, key in COST_COLUMNS] for r in report["cost"]]
    return "\n\n".join(
        [
            "# Cost of the tiling (#20)",
            f"One {report['size']}² synthetic city of {report.get('gsd_m', 0.5)} m, one torch "
            "thread, each configuration "
            f"{report['rounds']} times, interleaved; means. × : relative to the first row. "
            "Model Mpx: the pixels of all model tiles (tiles × tile²), what the model computes. "
            "Written by "
            "`benchmarks/bench_phase.py --cost-only`.",
            provenance_lines(report["provenance"]),
            markdown_table(header, rows),
        ]
    )


# -- diagnosis: the same model in memory -------------------------------------------------


def diagnose(cities: dict[str, Any], offsets, root: Path) -> list[dict[str, Any]]:
    """The shipped model without tiles, and with two tile grids averaged (module doc)."""
    bundle = open_bundle("default")
    manifest = bundle.manifest
    model = InferenceModel(bundle.load_segmenter(), manifest.preprocessing("uint8")).eval()
    cutoff = damage_cutoff(manifest.threshold)
    tile = manifest.tile_size
    variants = {
        "whole image, no tiles": (whole_image, None),
        "tiles, overlap 16 (in memory)": (_tiled(16, ((0, 0),)), (tile / 112) ** 2),
        "two grids, overlap 16, second +(56, 56)": (
            _tiled(16, ((0, 0), (56, 56))),
            2 * (tile / 112) ** 2,
        ),
        "two grids, overlap 0, second +(64, 64)": (_tiled(0, ((0, 0), (64, 64))), 2.0),
    }
    runs = []
    for name, (mapper, tiles_per_px) in variants.items():
        per_style: dict[str, list[PhaseStats]] = {}
        ious, seconds, pixels = [], 0.0, 0
        for style, city in cities.items():
            image = read_pixels(city.image)
            start = time.perf_counter()
            full = map_layers(mapper(model, image, tile), cutoff)
            seconds, pixels = seconds + time.perf_counter() - start, pixels + full[0].size
            if city.labels is not None:
                ious.append(_iou(full[1], read_band(city.labels)))
            per_style[style] = []
            for row, col in offsets:
                crop = np.ascontiguousarray(image[:, row:, col:])
                shifted = map_layers(mapper(model, crop, tile), cutoff)
                per_style[style].append(compare_shifted(full, shifted, (row, col), margin=128))
        cost: dict[str, Any] = {"mpx_per_s_in_memory": round(pixels / seconds / 1e6, 4)}
        if tiles_per_px is not None:
            cost["compute_vs_overlap16"] = round(tiles_per_px / (tile / 112) ** 2, 3)
        iou = float(np.mean(ious)) if ious else None
        run = _summarise(name, "diagnosis", "default", per_style, offsets, cost, iou)
        if name.startswith("tiles, overlap 16"):
            run["lab_vs_pipeline_max_dprob_255"] = _agreement(model, cities, root, tile)
        runs.append(run)
    return runs


@torch.inference_mode()
def whole_image(model: torch.nn.Module, image: np.ndarray, tile: int) -> np.ndarray:
    """(C, H, W) uint8 → (H, W) probability of the model on the whole raster at once.

    Mirror-padded by half a tile and up to a multiple of 16 (the output stride), so
    that every pixel has the context a tile's centre has.
    """
    _, height, width = image.shape
    pad = tile // 2
    rows = reflect_index(-pad, -(-(height + 2 * pad) // 16) * 16 - pad, height)
    cols = reflect_index(-pad, -(-(width + 2 * pad) // 16) * 16 - pad, width)
    x = torch.from_numpy(image)[:, rows][:, :, cols][None]
    return model(x)[0, 0, pad : pad + height, pad : pad + width].numpy()


def _tiled(overlap: int, grids: tuple[tuple[int, int], ...]):
    """A mapper: tiles of the pipeline's grid (origin k·stride − overlap / 2), one
    grid per shift in ``grids``, blended with the pipeline's window over all of them."""

    @torch.inference_mode()
    def mapper(model: torch.nn.Module, image: np.ndarray, tile: int) -> np.ndarray:
        channels, height, width = image.shape
        stride, pad = tile - overlap, overlap // 2
        w = torch.from_numpy(ramp(tile, overlap))
        window = torch.outer(w, w)
        acc = torch.zeros(height, width, dtype=torch.float64)
        weight = torch.zeros_like(acc)
        for dy, dx in grids:
            (r0, nr), (c0, nc) = (
                _first(height, dy, pad, stride, tile),
                _first(width, dx, pad, stride, tile),
            )
            r1, c1 = r0 + (nr - 1) * stride + tile, c0 + (nc - 1) * stride + tile
            x = torch.from_numpy(image)
            x = x[:, reflect_index(r0, r1, height)][:, :, reflect_index(c0, c1, width)]
            tiles = x.unfold(1, tile, stride).unfold(2, tile, stride)
            tiles = tiles.permute(1, 2, 0, 3, 4).reshape(-1, channels, tile, tile)
            probs = torch.cat([model(tiles[i : i + 64]) for i in range(0, len(tiles), 64)])
            probs = probs[:, 0].double() * window
            canvas = torch.zeros(r1 - r0, c1 - c0, dtype=torch.float64)
            sums = torch.zeros_like(canvas)
            for k, p in enumerate(probs):
                i, j = divmod(k, nc)
                canvas[i * stride : i * stride + tile, j * stride : j * stride + tile] += p
                sums[i * stride : i * stride + tile, j * stride : j * stride + tile] += window
            acc += canvas[-r0 : -r0 + height, -c0 : -c0 + width]
            weight += sums[-r0 : -r0 + height, -c0 : -c0 + width]
        return (acc / weight).float().numpy()

    return mapper


def _first(size: int, shift: int, pad: int, stride: int, tile: int) -> tuple[int, int]:
    """(origin of the first tile, tile count) of one axis of a grid shifted by ``shift``:
    the pipeline's axis (``grid.AxisTiles``) when ``shift`` is 0."""
    origin = shift - pad
    while origin > -pad:
        origin -= stride
    return origin, max(0, -(-(size - origin - tile) // stride)) + 1


def _agreement(model, cities: dict[str, Any], root: Path, tile: int) -> int | None:
    """Max |Δ| (1/255) between the in-memory overlap-16 map and the pipeline's, if run."""
    worst = None
    for style, city in cities.items():
        path, _ = map_files(root / "default-16" / style / "full", Path(city.image).stem)
        if path.exists():
            ours = _quantise(_tiled(16, ((0, 0),))(model, read_pixels(city.image), tile))
            delta = int(np.abs(ours.astype(int) - read_band(path)).max())
            worst = delta if worst is None else max(worst, delta)
    return worst


def _quantise(prob: np.ndarray) -> np.ndarray:
    """As the pipeline stores it: × 255, rounded, 254 at most (255 is nodata)."""
    return np.clip(np.round(prob * 255), 0, 254).astype(np.uint8)


def map_layers(prob: np.ndarray, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """A float map as the pipeline writes it: (uint8 probability, damaged flag), the pair
    ``compare_shifted`` compares."""
    quantised = _quantise(prob)
    return quantised, (quantised > cutoff).astype(np.uint8)


def _iou(damage: np.ndarray, labels: np.ndarray) -> float:
    flagged, damaged = damage == 1, labels == 1
    return float((flagged & damaged).sum() / max((flagged | damaged).sum(), 1))


# -- the report --------------------------------------------------------------------------


def _summarise(name, kind, model, per_style, offsets, cost, iou) -> dict[str, Any]:
    every = [s for stats in per_style.values() for s in stats]
    by_offset = [pool([stats[i] for stats in per_style.values()]) for i in range(len(offsets))]
    # #20 bounds both per shift: the worst offset is the one flipping the most of its flagged
    # pixels (p99 breaks ties), and the largest p99 over the offsets is reported beside it
    worst = max(
        range(len(offsets)),
        key=lambda i: (by_offset[i].flips_of_flagged or 0.0, by_offset[i].quantile(0.99)),
    )
    return {
        "name": name,
        "kind": kind,
        "model": model,
        "cost": cost,
        "iou1_full_city": None if iou is None else round(iou, 4),
        "pooled": pool(every).as_dict(),
        "per_style": {style: pool(stats).as_dict() for style, stats in per_style.items()},
        "worst_offset": {"offset": list(offsets[worst]), **by_offset[worst].as_dict()},
        "max_p99_dprob_255": max(stats.quantile(0.99) for stats in by_offset),
        "per_offset": {
            f"{r},{c}": s.as_dict() for (r, c), s in zip(offsets, by_offset, strict=True)
        },
    }


def _line(run: dict[str, Any]) -> str:
    p = run["pooled"]
    return (
        f"{run['name']}: flips/flagged {p['flips_of_flagged']}, p99 {p['p99_dprob_255']}, "
        f"median {p['median_dprob_255']}, cost {run['cost']}"
    )


def markdown(report: dict[str, Any]) -> str:
    runs = report["runs"]
    header = [
        "configuration",
        "flips / flagged",
        "flips (all px)",
        "median abs Δ",
        "p99 abs Δ",
        "worst offset: flips / flagged, p99",
        "largest p99 of an offset",
        "IoU1",
        "cost",
    ]
    rows = []
    for run in runs:
        p, w = run["pooled"], run["worst_offset"]
        rows.append(
            [
                run["name"],
                _pct(p["flips_of_flagged"]),
                _pct(p["flip_share"], 2),
                p["median_dprob_255"],
                p["p99_dprob_255"],
                f"{tuple(w['offset'])}: {_pct(w['flips_of_flagged'])}, {w['p99_dprob_255']}",
                run.get("max_p99_dprob_255", "–"),
                run["iou1_full_city"] if run["iou1_full_city"] is not None else "–",
                ", ".join(f"{k} {v}" for k, v in run["cost"].items()),
            ]
        )
    style_header = ["configuration", *report["styles"]]
    style_rows = [
        [
            run["name"],
            *(
                f"{_pct(s['flips_of_flagged'])}, p99 {s['p99_dprob_255']}"
                for s in run["per_style"].values()
            ),
        ]
        for run in runs
    ]
    return "\n\n".join(
        [
            "# Phase stability of the damage map (#20)",
            f"{_what_was_mapped(report)}, each mapped whole "
            f"and as crops from the offsets {', '.join(str(tuple(o)) for o in report['offsets'])}; "
            f"compared {report['margin']} px from both rasters' edges. "
            "abs Δ: |Δprob| in 1/255 steps; "
            "flips / flagged: pixels whose damaged flag differs over the mean flagged "
            "pixels, pooled over styles and offsets. Written by "
            "`benchmarks/bench_phase.py`.",
            provenance_lines(report["provenance"]),
            "## Pooled over styles and offsets",
            markdown_table(header, rows),
            "## Per style (flips / flagged, p99 abs Δ)",
            markdown_table(style_header, style_rows),
        ]
    )


def _what_was_mapped(report: dict[str, Any]) -> str:
    if report.get("images"):
        return f"The rasters {', '.join(f'`{Path(p).name}`' for p in report['images'])}"
    gsd = report.get("gsd_m", 0.5)
    return f"Synthetic cities of {report['size']}² px of {gsd} m (one per style)"


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100 * value:.{digits}f} %"


if __name__ == "__main__":
    sys.exit(main())

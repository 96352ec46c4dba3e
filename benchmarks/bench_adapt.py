"""`stmap adapt` on the synthetic test bed: how much do N labelled buildings buy?

The shipped demo bundle was trained on three synthetic styles (citycentre, oldtown,
village; benchmarks/results/demo_bundle.md) and never saw ``periurban``. A
periurban city (``--size`` px at 0.5 m, damage rate 0.3, seed 21) is made with EMS
grading points (``stmap synth --grading``: one point per building, 10 % "Possibly
damaged"). Labels are drawn from its west part only (x below 45 % of the width):
N buildings with a definite grade, in the west part's proportion of damaged ones but
at least 3 of each class (what adapt needs), seed = the draw. For each N and draw the bundle is
adapted (`stmap adapt` defaults; points label their footprint), the adapted bundle
maps the whole city (`stmap infer`) and is scored densely, as the paper scores, on
the east part (x above 55 %): every pixel against ``city_labels.tif`` — ROC AUC, and
F1 and IoU of damage at the bundle's threshold. "before" is the demo bundle itself.
Also recorded: adapt's own cross-validated figures (spatial folds on the labels),
and the seconds an adaptation takes (demo bundle; optionally a ViT-S backbone with
random, frozen weights, ``--vits``). Run from the repository root:

    python benchmarks/bench_adapt.py --out benchmarks/results/adapt_synthetic

(writes OUT.json and OUT.md); ``--size 512 --style oldtown --n 6 --draws 1 --folds 2
--epochs 1`` is a smoke run (periurban is sparse: 4096 px hold ~500 buildings).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch

from stmap.bundle import Normalization, manifest_for, open_bundle, write_bundle
from stmap.io.vectors import read_vector, write_vector
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.model.backbones import IMAGENET_MEAN, IMAGENET_STD
from stmap.runtime.infer import InferOptions, run_inference
from stmap.synth import Grading, generate_city
from stmap.train.adapt import (
    MIN_PER_CLASS,
    AdaptSettings,
    ImageryOptions,
    LabelOptions,
    adapt_scene,
    load_labelled_scene,
    write_adapted,
)
from stmap.train.label_metrics import PixelScores

WEST, EAST = 0.45, 0.55  # labels from x < 45 % of the width, scores on x > 55 %


def make_city(work: Path, size: int, style: str) -> Path:
    city = work / "city.tif"
    if not city.exists():
        generate_city(
            city,
            width=size,
            height=size,
            style=style,
            damage_rate=0.3,
            seed=21,
            grading=Grading(0.1, 0.0),
        )
    return city


def draw_labels(city: Path, n: int, draw: int, out: Path) -> Path:
    """N west-part grading points with a definite grade (≥ 3 of each class), into ``out``."""
    points = read_vector(city.with_name("city_grading.gpkg"))
    with rasterio.open(city) as ds:
        split = ds.bounds.left + WEST * (ds.bounds.right - ds.bounds.left)
    x = np.array([p.x for p in points.geometries])
    grade = points.attributes["damage_gra"]
    west = x < split
    damaged = np.flatnonzero(west & np.isin(grade, ["Destroyed", "Damaged"]))
    intact = np.flatnonzero(west & (grade == "No visible damage"))
    rng = np.random.default_rng(draw)
    share = len(damaged) / (len(damaged) + len(intact))
    k = min(max(round(n * share), MIN_PER_CLASS), n - MIN_PER_CLASS)
    chosen = np.concatenate(
        [rng.choice(damaged, k, replace=False), rng.choice(intact, n - k, replace=False)]
    )
    write_vector(out, points.take(np.sort(chosen)))
    return out


def dense_scores(city: Path, prob: Path, threshold: float) -> dict[str, float]:
    """AUC, F1 and IoU1 of the map over every pixel of the east part."""
    with rasterio.open(prob) as p, rasterio.open(city.with_name("city_labels.tif")) as t:
        prob8, truth = p.read(1), t.read(1)
    known = np.zeros(truth.shape, dtype=bool)
    known[:, int(EAST * truth.shape[1]) :] = True
    scores = PixelScores()
    scores.add(prob8, truth, known)
    s = scores.scores(threshold)
    return {"auc": s["auc"], "f1": s["f1"], "iou1": s["iou1"]}


def map_city(city: Path, bundle: Path, out: Path) -> dict[str, float]:
    run_inference([str(city)], out, InferOptions(model=str(bundle), restart=True))
    return dense_scores(city, out / "city_damage_prob.tif", open_bundle(bundle).manifest.threshold)


def adapt_once(
    city: Path, bundle: str, labels: Path, out: Path, settings: AdaptSettings
) -> tuple[Path, dict, float]:
    start = time.perf_counter()
    scene = load_labelled_scene(
        bundle,
        ImageryOptions((str(city),)),
        LabelOptions(str(labels), footprints=str(city.with_name("city_footprints.gpkg"))),
        MIN_PER_CLASS,
    )
    model, report = adapt_scene(scene, settings, torch.device("cpu"))
    path = write_adapted(out, model, scene, report, "bench_adapt.py", scene.inputs)
    return path, report, time.perf_counter() - start


def vits_bundle(path: Path) -> Path:
    """A ViT-S/16 bundle, random frozen backbone and decoder: adaptation time only."""
    if path.exists():
        return path
    torch.manual_seed(0)
    config = SegmenterConfig(backbone="vit_small_patch16_dinov3.lvd1689m", tile_size=128)
    manifest = manifest_for(
        config,
        name="vits-random",
        backbone_weights="random (timing only)",
        normalization=Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    )
    return write_bundle(path, DamageSegmenter(config), manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--style", default="periurban", help="the target style (smoke: denser)")
    parser.add_argument("--n", type=int, nargs="+", default=[10, 25, 50, 100, 200])
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=AdaptSettings().epochs)
    parser.add_argument("--folds", type=int, default=AdaptSettings().max_folds)
    parser.add_argument("--vits", action="store_true", help="also time a ViT-S adaptation")
    parser.add_argument(
        "--anchor", type=float, default=AdaptSettings().anchor, help="stmap adapt --anchor W"
    )
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "stmap-adapt")
    parser.add_argument("--out", type=Path, default=None, help="write OUT.json and OUT.md")
    args = parser.parse_args()
    work = args.work / f"{args.style}-{args.size}"
    work.mkdir(parents=True, exist_ok=True)
    city = make_city(work, args.size, args.style)
    settings = AdaptSettings(
        epochs=args.epochs, fold_block_m=100.0, max_folds=args.folds, anchor=args.anchor
    )
    before = map_city(city, Path(open_bundle("default").root), work / "map-before")
    rows: list[dict] = []
    result = {
        "size": args.size,
        "epochs": args.epochs,
        "max_folds": args.folds,
        "fold_block_m": settings.fold_block_m,
        "anchor": settings.anchor,
        "dense_before": before,
        "rows": rows,
        "vits": None,
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    if args.vits:
        n = args.n[len(args.n) // 2]
        labels = draw_labels(city, n, 0, work / f"labels_vits_{n}.gpkg")
        source = vits_bundle(work / "vits-random")
        _, report, seconds = adapt_once(city, str(source), labels, work / "adapted_vits", settings)
        result["vits"] = {"n": n, "seconds": round(seconds, 1), "tiles": report["tiles"]}
        print(json.dumps({"vits": result["vits"]}), flush=True)
    for draw in range(args.draws):  # every N once before any N twice: partial runs are usable
        for n in args.n:
            labels = draw_labels(city, n, draw, work / f"labels_{n}_{draw}.gpkg")
            bundle, report, seconds = adapt_once(
                city, "default", labels, work / f"adapted_{n}_{draw}", settings
            )
            after = map_city(city, bundle, work / f"map_{n}_{draw}")
            row = {
                "n": n,
                "draw": draw,
                "seconds": round(seconds, 1),
                "tiles": report["tiles"],
                "threshold": report["threshold"],
                "dense_after": after,
                "cv_before": {k: report["before"][k] for k in ("auc", "f1", "iou1")},
                "cv_after": {k: report["after"][k] for k in ("auc", "f1", "iou1")},
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            save(result, args.out)
    save(result, args.out)
    if args.out is None:
        print(render(result))


def save(result: dict, out: Path | None) -> None:
    """OUT.json and OUT.md, rewritten after every row."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        out.with_suffix(".md").write_text(render(result))


def render(result: dict) -> str:
    """Mean ± std over draws per N, dense (east part) and cross-validated (labels)."""
    lines = [
        "| N | draws | dense AUC | dense F1 | dense IoU1 | CV AUC before → after | "
        "CV F1 before → after | seconds |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    b = result["dense_before"]
    cells = f"{b['auc']:.3f} | {b['f1']:.3f} | {b['iou1']:.3f}"
    lines.append(f"| 0 (demo bundle) | – | {cells} | | | |")
    for n in sorted({r["n"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["n"] == n]

        def ms(values: list[float]) -> str:
            return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

        dense = {k: ms([r["dense_after"][k] for r in rows]) for k in ("auc", "f1", "iou1")}
        cv = {
            k: f"{np.mean([r['cv_before'][k] for r in rows]):.3f} → "
            f"{np.mean([r['cv_after'][k] for r in rows]):.3f}"
            for k in ("auc", "f1")
        }
        seconds = np.mean([r["seconds"] for r in rows])
        lines.append(
            f"| {n} | {len(rows)} | {dense['auc']} | {dense['f1']} | {dense['iou1']} | "
            f"{cv['auc']} | {cv['f1']} | {seconds:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

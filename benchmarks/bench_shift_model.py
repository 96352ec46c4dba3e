"""Does a shift-consistent model lower the phase floor of the damage map? (#20, model side)

Small synthetic cities (``--size`` px, 0.5 m) in the four styles of
``scripts/build_demo_bundle.sh`` (synth seed 11, damage rate 0.2, ``--seeds`` adds more
cities per style); the same training recipe (``stmap train``: fullsup, photometric
augmentation, decoder 16 channels, lr 3e-3, two folds) with fewer ``--epochs``, for each
variant:

* ``tiny``: the shipped architecture (baseline);
* ``aa``: ``backbone=tiny-aa`` (blur-pool downsampling) + ``decoder_upsample=bilinear``;
* ``cons``: ``tiny`` + ``shift_consistency``;
* ``aa-cons``: both; ``blur-cons``: ``tiny-blur`` (blur before each stride-2 conv, at
  tiny's cost) + bilinear + consistency; ``blur``: the same without consistency;
  ``cons-0.1``, ``aa-cons-0.1``: a tenth of the
  consistency weight (optional, ``--variants``).

Figures per variant: IoU1 of the held-out style (periurban, never trained on) and of
the seen styles, from ``stmap evaluate``; the *phase floor*: the model on the whole
mirror-padded city at once (``bench_phase.whole_image``, no tiles, so no tile border)
against the same on the city cropped at sub-16-px offsets, compared 128 px from the
edges (``stmap.runtime.phase``) — flips / flagged, p99 and max |Δprob| in 1/255 steps,
pooled over the cities and offsets, and the worst offset; training seconds (the
epochs' sum, both folds); model-only speed (tiles/s,
batches of 32 tiles of 128², one thread, interleaved rounds) relative to ``tiny``.
The shipped bundle's floor on the same cities is given for reference.

Run from the repository root (about 40 minutes on a shared 2-core CPU)::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_shift_model --size 1024 --seeds 11,12 \\
        --epochs 40 --out benchmarks/results/shift_model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.bench_phase import _iou, map_layers, whole_image
from benchmarks.peers.report import finish, markdown_table, provenance, provenance_lines
from stmap.bundle import open_bundle
from stmap.io.raster import read_band, read_pixels
from stmap.model import DamageSegmenter, InferenceModel, Preprocessing, SegmenterConfig, get_spec
from stmap.runtime.phase import PhaseStats, compare_shifted, pool
from stmap.runtime.vectorize import damage_cutoff

STYLES = ("citycentre", "oldtown", "village", "periurban")
HELDOUT = "periurban"
# sub-stride offsets (one pixel, half a stride, unequal, the largest), and (16, 16): a
# multiple of the output stride, which a stride-16 model ignores (a control, not pooled)
OFFSETS = [(1, 1), (3, 7), (8, 8), (5, 13), (15, 15), (11, 2)]
CONTROL = (16, 16)
VARIANTS: dict[str, list[str]] = {
    "tiny": [],
    "aa": ["backbone=tiny-aa", "decoder_upsample=bilinear"],
    "cons": ["shift_consistency=1"],
    "aa-cons": ["backbone=tiny-aa", "decoder_upsample=bilinear", "shift_consistency=1"],
    "blur-cons": ["backbone=tiny-blur", "decoder_upsample=bilinear", "shift_consistency=1"],
    "blur": ["backbone=tiny-blur", "decoder_upsample=bilinear"],
    "cons-0.1": ["shift_consistency=0.1"],
    "aa-cons-0.1": ["backbone=tiny-aa", "decoder_upsample=bilinear", "shift_consistency=0.1"],
}
RECIPE = [
    "backbone=tiny",
    "decoder_channels=16",
    "photometric_augment=1",
    "lr=3e-3",
    "k_folds=2",
    "batch_size=8",  # small cities: 8-tile batches give the demo's step count in fewer epochs
    "device=cpu",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--seeds", default="11", help="synth seeds: one city per style each")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--variants", default="tiny,aa,cons,aa-cons")
    parser.add_argument("--work", type=Path, default=None, help="keep runs here (default: tmp)")
    parser.add_argument("--rounds", type=int, default=5, help="speed: interleaved rounds")
    parser.add_argument("--out", type=Path, default=None, help="STEM: write STEM.json, STEM.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    variants = args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    report: dict[str, Any] = {
        "provenance": provenance(),
        "size": args.size,
        "seeds": seeds,
        "epochs": args.epochs,
        "offsets": OFFSETS,
        "control_offset": CONTROL,
        "margin": 128,
        "recipe": RECIPE,
        "runs": [],
    }
    with tempfile.TemporaryDirectory(prefix="stmap-shift-model-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cities = synthesise(work, args.size, seeds)
        speeds = speed(variants, args.rounds)
        for name in variants:
            run = train(work, name, args.epochs, seeds)
            bundle = run.pop("bundle")
            run["speed"] = speeds[name]
            run.update(evaluate(bundle, work))
            run["phase"] = phase_floor(bundle, cities)
            report["runs"].append(run)
            print(_line(run), file=sys.stderr, flush=True)
            if args.out:  # a partial report after every variant (no speeds yet)
                save_partial(report, args.out)
        shipped = {"name": "shipped demo bundle (reference)", "variant": "shipped"}
        shipped["phase"] = phase_floor("default", cities)
        report["reference"] = shipped
    finish(report, markdown(report), args.out)
    if args.out:
        Path(f"{args.out}.partial.json").unlink(missing_ok=True)
    return 0


def save_partial(report: dict[str, Any], stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.partial.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


def _stmap(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "stmap", *args]
    return subprocess.run(command, cwd=cwd, check=True, capture_output=True, text=True)


def synthesise(work: Path, size: int, seeds: list[int]) -> dict[str, list[dict[str, Any]]]:
    """The build script's cities at ``size``²: per style one city per seed (regions
    ``<style>``, ``<style>b``, ...); returns style → [{image, labels}]."""
    cities: dict[str, list[dict[str, Any]]] = {style: [] for style in STYLES}
    for k, seed in enumerate(seeds):
        for style in STYLES:
            region = style + ("" if k == 0 else "b" * k)
            image = work / f"{region}.tif"
            if not image.exists():
                _stmap(
                    "synth", image.name, "--size", str(size), "--style", style,
                    "--seed", str(seed), "--damage-rate", "0.2", "--region", region,
                    "--tiles", "tiles", cwd=work,
                )  # fmt: skip
            labels = work / f"{region}_labels.tif"
            cities[style].append({"region": region, "image": image, "labels": labels})
    return cities


def train(work: Path, name: str, epochs: int, seeds: list[int]) -> dict[str, Any]:
    sources = [s + ("" if k == 0 else "b" * k) for k in range(len(seeds)) for s in STYLES[:3]]
    sets = [*RECIPE, f"epochs={epochs}", f"source_regions=[{','.join(sources)}]"]
    sets += ["data_root=tiles", f"out_dir=run-{name}", *VARIANTS[name]]
    out = work / f"run-{name}"
    if not (out / "bundle" / "manifest.json").exists():  # a finished run in --work is reused
        _stmap("train", "--config", "fullsup", *(a for s in sets for a in ("--set", s)), cwd=work)
    meta = json.loads((out / "bundle" / "manifest.json").read_text())
    tasks = json.loads((out / "report.json").read_text())["tasks"]
    seconds = sum(epoch["seconds"] for task in tasks for epoch in task["history"])
    return {
        "variant": name,
        "sets": [s for s in sets if not s.startswith(("data_root", "out_dir"))],
        "train_seconds": round(seconds, 1),
        "selected": meta["metrics"]["selected"],
        "architecture": {"backbone": meta["backbone"], **meta["architecture"]},
        "bundle": out / "bundle",
    }


def evaluate(bundle: Path, work: Path) -> dict[str, Any]:
    """IoU1 per region from ``stmap evaluate`` on every tile (held out and seen)."""
    result = _stmap("evaluate", "--model", str(bundle), "tiles", "--json", cwd=work)
    regions = json.loads(result.stdout)["summary"]["evaluate"]["regions"]
    iou1 = {region: round(scores["iou1"][0], 4) for region, scores in sorted(regions.items())}
    held = [v for r, v in iou1.items() if r.startswith(HELDOUT)]
    seen = [v for r, v in iou1.items() if not r.startswith(HELDOUT)]
    return {
        "iou1": iou1,
        "iou1_heldout": round(float(np.mean(held)), 4),
        "iou1_seen_mean": round(float(np.mean(seen)), 4),
    }


def phase_floor(bundle: Path | str, cities: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Whole-image maps of every city against its crops at OFFSETS (and CONTROL)."""
    opened = open_bundle(bundle)
    manifest = opened.manifest
    model = InferenceModel(opened.load_segmenter(), manifest.preprocessing("uint8")).eval()
    cutoff = damage_cutoff(manifest.threshold)
    tile = manifest.tile_size
    by_offset: dict[tuple[int, int], list[PhaseStats]] = {o: [] for o in [*OFFSETS, CONTROL]}
    ious = {}
    for entries in cities.values():
        for city in entries:
            image = read_pixels(city["image"])
            full = map_layers(whole_image(model, image, tile), cutoff)
            ious[city["region"]] = round(_iou(full[1], read_band(city["labels"])), 4)
            for row, col in by_offset:
                crop = np.ascontiguousarray(image[:, row:, col:])
                shifted = map_layers(whole_image(model, crop, tile), cutoff)
                by_offset[(row, col)].append(compare_shifted(full, shifted, (row, col), 128))
    pooled = {o: pool(s) for o, s in by_offset.items()}
    worst = max(OFFSETS, key=lambda o: pooled[o].quantile(0.99))
    return {
        "pooled": pool([s for o in OFFSETS for s in by_offset[o]]).as_dict(),
        "worst_offset": {"offset": list(worst), **pooled[worst].as_dict()},
        "control_16_16": pooled[CONTROL].as_dict(),
        "per_offset": {f"{r},{c}": pooled[(r, c)].as_dict() for r, c in OFFSETS},
        "iou1_whole_image": ious,
    }


def _architecture(name: str) -> tuple[str, int, str]:
    sets = dict(s.split("=", 1) for s in [*RECIPE, *VARIANTS[name]])
    upsample = sets.get("decoder_upsample", "nearest")
    return sets["backbone"], int(sets["decoder_channels"]), upsample


@torch.inference_mode()
def speed(variants: list[str], rounds: int) -> dict[str, dict[str, float | None]]:
    """Model-only tiles/s of each variant's architecture (random weights: the cost does not
    depend on them; variants of one architecture share its figure), batches of 32 uint8
    128² tiles, one thread, rounds interleaved, the median round."""
    architectures = sorted({_architecture(name) for name in [*variants, "tiny"]})
    models = {}
    for backbone, channels, upsample in architectures:
        config = SegmenterConfig(backbone, 128, channels, decoder_upsample=upsample)
        spec = get_spec(backbone)
        models[(backbone, channels, upsample)] = InferenceModel(
            DamageSegmenter(config), Preprocessing(spec.mean, spec.std)
        ).eval()
    x = torch.randint(0, 256, (32, 3, 128, 128), generator=torch.Generator().manual_seed(0))
    x = x.to(torch.uint8)
    times: dict[tuple[str, int, str], list[float]] = {key: [] for key in models}
    for model in models.values():
        model(x)  # warm-up
    for _ in range(rounds):
        for key, model in models.items():
            start = time.perf_counter()
            for _ in range(3):
                model(x)
            times[key].append((time.perf_counter() - start) / 3)
    base = float(np.median(times[_architecture("tiny")]))
    out = {}
    for name in variants:
        seconds = float(np.median(times[_architecture(name)]))
        out[name] = {
            "tiles_per_s": round(32 / seconds, 1),
            "time_vs_tiny": round(seconds / base, 2),
        }
    return out


def _line(run: dict[str, Any]) -> str:
    p = run["phase"]["pooled"]
    return (
        f"{run['variant']}: IoU1 held-out {run['iou1_heldout']}, seen {run['iou1_seen_mean']}; "
        f"flips/flagged {p['flips_of_flagged']}, p99 {p['p99_dprob_255']}, "
        f"max {p['max_dprob_255']}; trained in {run['train_seconds']} s"
    )


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def markdown(report: dict[str, Any]) -> str:
    header = [
        "variant",
        "settings (beyond the recipe)",
        "IoU1 held out (periurban)",
        "IoU1 seen (mean)",
        "flips / flagged",
        "p99 abs Δ",
        "max abs Δ",
        "worst offset: flips / flagged, p99",
        "(16, 16) p99",
        "model time vs tiny",
        "train s",
    ]
    rows = []
    for run in [*report["runs"], report["reference"]]:
        p, w, c = (
            run["phase"]["pooled"],
            run["phase"]["worst_offset"],
            run["phase"]["control_16_16"],
        )
        speed_ = run.get("speed", {})
        rows.append(
            [
                run["variant"],
                ", ".join(VARIANTS[run["variant"]]) or "–"
                if run["variant"] != "shipped"
                else "scripts/build_demo_bundle.sh (2048², 60 epochs)",
                run.get("iou1_heldout", "0.595 (its own 2048² cities)"),
                run.get("iou1_seen_mean", "–"),
                _pct(p["flips_of_flagged"]),
                p["p99_dprob_255"],
                p["max_dprob_255"],
                f"{tuple(w['offset'])}: {_pct(w['flips_of_flagged'])}, {w['p99_dprob_255']}",
                c["p99_dprob_255"],
                speed_.get("time_vs_tiny", "–"),
                run.get("train_seconds", "–"),
            ]
        )
    return "\n\n".join(
        [
            "# A shift-consistent model against the phase floor (#20)",
            f"Synthetic cities of {report['size']}² px, synth seeds {report['seeds']}, one per "
            f"style and seed; trained on citycentre, oldtown, village with `stmap train "
            f"--config fullsup` ({', '.join(report['recipe'])}, epochs {report['epochs']}); "
            "periurban is held out. Phase floor: the model on the whole mirror-padded city "
            "(no tiles) against the same on crops from the offsets "
            f"{', '.join(str(tuple(o)) for o in report['offsets'])}, compared "
            f"{report['margin']} px from the edges, pooled over all cities and offsets; abs Δ "
            "in 1/255 steps; (16, 16) is a multiple of the output stride (a control). Model "
            "time: batches of 32 tiles of 128², one thread, median of interleaved rounds. "
            "Written by `benchmarks/bench_shift_model.py`.",
            provenance_lines(report["provenance"]),
            markdown_table(header, rows),
        ]
    )


if __name__ == "__main__":
    sys.exit(main())

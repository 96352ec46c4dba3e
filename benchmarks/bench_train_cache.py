"""Per-epoch training time with and without the feature cache, on a frozen ViT.

A synthetic city cut into 128² tiles (64 by default), DINOv3 ViT-S/16 (or
``--backbone``) with random weights (the speed does not depend on the weights), the
loop of ``stmap train`` (batch 32, PC + DPT on) on 3/4 of the tiles and validation on
the rest. An epoch's
time includes its validation pass, as in the loop's history; building the cache
is timed on its own. The speed-up compares the fastest epoch of each run (the one
least disturbed by other work on a shared machine); the median and the process CPU
time per epoch (prototype pass and validation included) are printed too.
Run from the repository root:

    python benchmarks/bench_train_cache.py [--tiles 64] [--epochs 3] [--device cpu]
        [--backbone vit_small_patch16_dinov3.lvd1689m] [--threads N]

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.synth import generate_city
from stmap.train.config import build_config
from stmap.train.datasets import load_tile_data
from stmap.train.features import FeatureCache
from stmap.train.loop import Inputs, make_deterministic, reinitialise, resolve_device, train_fold

BACKBONE = "vit_small_patch16_dinov3.lvd1689m"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default=BACKBONE)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    make_deterministic(device)
    side = 128 * math.ceil(math.sqrt(args.tiles))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_city(root / "city.tif", width=side, height=side, seed=0, tiles_dir=root / "t")
        data = load_tile_data(root / "t", None, 128)
    data_index = torch.arange(min(args.tiles, len(data)))
    split = len(data_index) * 3 // 4
    train, val = data_index[:split], data_index[split:]

    spec = get_spec(args.backbone)
    torch.manual_seed(0)
    model = DamageSegmenter(SegmenterConfig(spec.name, 128)).to(device)
    normalize = Normalize(Preprocessing(spec.mean, spec.std)).to(device)
    config = build_config(
        {
            "protocol": "fullsup",
            "data_root": ".",
            "out_dir": ".",
            "backbone": spec.name,
            "epochs": args.epochs,
        }
    )

    def epochs(inputs: Inputs) -> tuple[list[float], float]:
        """Wall seconds of each epoch, and CPU seconds of the whole fold per epoch."""
        reinitialise(model, config.seed)
        cpu = time.process_time()
        history = train_fold(model, inputs, train, val, config, 0).history
        return [h["seconds"] for h in history], (time.process_time() - cpu) / args.epochs

    without, without_cpu = epochs(Inputs(data, normalize, device))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        cache = FeatureCache.build(
            model, data.images[data_index], normalize, device, 32, 1 << 30, Path(tmp)
        )
        build_seconds = time.perf_counter() - start
        with_cache, with_cache_cpu = epochs(Inputs(data, normalize, device, cache))
        cache.close()

    # the fastest epoch of each: the least disturbed by other work on a shared machine
    slow, fast = min(without), min(with_cache)
    print(
        json.dumps(
            {
                "backbone": spec.name,
                "device": str(device),
                "tiles": len(data_index),
                "train_tiles": len(train),
                "val_tiles": len(val),
                "epochs": args.epochs,
                "epoch_seconds_without_cache": without,
                "epoch_seconds_with_cache": with_cache,
                "cpu_seconds_per_epoch_without_cache": without_cpu,
                "cpu_seconds_per_epoch_with_cache": with_cache_cpu,
                "cache_build_seconds": build_seconds,
                "speedup_fastest_epochs": slow / fast,
                "speedup_median_epochs": statistics.median(without) / statistics.median(with_cache),
                "speedup_cpu_time": without_cpu / with_cache_cpu,
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()

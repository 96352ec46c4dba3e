"""``stmap bench``: how fast this machine maps, and how close that is to its ceiling.

One run measures, for one model on one backend, device and precision:

1. model-only throughput: batches of uint8 tiles already on the device through the
   backend's ``infer`` (the pipeline's own ``Batcher``), warm-up first, the device
   synchronised before every clock read, the median of several repeats; measured
   before and again after the end-to-end run, and averaged, because a shared
   machine's speed drifts (±25 % within minutes on a 2-core cloud VM): the two
   bracket the run they are compared with, and both are reported;
2. end-to-end throughput: ``run_inference`` (the call ``stmap infer`` makes) on a
   city the caller makes (``stmap bench``: a synthetic one), with its per-stage
   times, the process's peak RSS and, on CUDA, the peak device memory;
3. their ratio, ``efficiency``: how much of the model's speed the pipeline keeps;
4. the ceiling: the model's FLOPs per tile, counted, against the device's measured
   matrix-multiply rate in the same precision.

Pixel convention. Tiles overlap, so a tile yields fewer output pixels than it has:
``model_mpx_per_s`` counts ``stride²`` output pixels per tile (``stride = tile -
overlap``, the overlap ``stmap infer`` used), which makes it comparable with the
end-to-end rate, which counts raster pixels. ``model_tile_mpx_per_s`` counts all
``tile²`` pixels a tile has; ``model_grid_mpx_per_s`` counts the city's pixels over
the time its whole tile grid (edge tiles included) would take, the figure to
compare end-to-end with on small cities, where edge tiles weigh more.
"""

from __future__ import annotations

import logging
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from stmap.bundle import Normalization, default_tiling, manifest_for, open_bundle, write_bundle
from stmap.errors import InputError
from stmap.model import DamageSegmenter, InferenceModel, SegmenterConfig, get_spec
from stmap.provenance import git_commit
from stmap.runtime.backends.base import (
    Batcher,
    check_precision,
    create_backend,
    resolve_device,
    synchronize,
)
from stmap.runtime.grid import TileGrid
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.phase import BENCH_OFFSET, compare_shifted, crop_at, read_layers
from stmap.runtime.tta import VIEWS, with_tta

log = logging.getLogger(__name__)

BACKBONE_TILE = 128  # --backbone models: the tile and decoder of the shipped configs
BACKBONE_DECODER_CHANNELS = 256
MATMUL_SIDE = {"cuda": 8192, "cpu": 1024}  # big enough to reach the device's peak rate
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# Writes a city raster of side ``size`` px at ``gsd`` m with ``seed`` to ``path`` and
# returns its path: the caller's, so that the runtime does not know how cities are made.
MakeCity = Callable[[Path, int, float, int], Path]


@dataclass(frozen=True)
class BenchOptions:
    """The options of ``stmap bench`` (cli.md); None means "choose for me".

    model: a bundle path or "default"; backbone: instead, a random-weight model of
    this registered backbone (tile 128, decoder 256 channels). size: the side of the
    city in pixels. repeats: timed repeats of the model-only loop (median).
    min_repeat_s: each repeat runs enough batches to last at least this long.
    tta: test-time augmentation ("none", "flip", "d4") in both measurements; its cost
    is the drop in tiles per second against the same run without it.
    """

    model: str = "default"
    backbone: str | None = None
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    tta: str = "none"
    size: int = 2048
    repeats: int = 5
    min_repeat_s: float = 0.5
    seed: int = 0


def run_bench(options: BenchOptions, make_city: MakeCity) -> dict[str, Any]:
    """Measure ``options``' model on this machine; one JSON-ready dict (see the module doc).

    make_city: writes the cities mapped end to end, at the model's GSD.

    Raises InputError subclasses (exit 2) for bad options, bundles or devices, before
    any work.
    """
    if options.size < 1:
        raise InputError(f"--size {options.size}: must be a positive number of pixels")
    if options.repeats < 1:
        raise InputError(f"--repeats {options.repeats}: must be at least 1")
    if options.backbone is not None and options.model != "default":
        raise InputError("--backbone and --model: give one of them, not both")
    device = resolve_device(options.device)
    check_precision(options.precision)
    with tempfile.TemporaryDirectory(prefix="stmap-bench-") as tmp:
        root = Path(tmp)
        bundle_path = options.model
        if options.backbone is not None:
            bundle_path = str(random_bundle(root / "bundle", options.backbone, options.seed))
        bundle = open_bundle(bundle_path)
        manifest = bundle.manifest
        backend = with_tta(
            create_backend(options.backend, bundle, device, options.precision, "uint8"),
            options.tta,
        )
        batcher = Batcher(backend, options.batch_size)
        tile = manifest.infer_tile

        before_s = _model_only_seconds(batcher, tile, options.repeats, options.min_repeat_s)
        # With test-time augmentation a tile costs one forward per view.
        flops_per_tile = len(VIEWS[options.tta]) * count_flops_per_tile(
            InferenceModel(bundle.load_segmenter(), manifest.preprocessing("uint8")), tile
        )
        matmul_flops = measure_matmul_flops(device, backend.precision)

        city = make_city(root / "city.tif", options.size, manifest.gsd_m, options.seed)
        infer_options = InferOptions(
            model=bundle_path,
            backend=backend.name,  # the backend "auto" picked, for both measurements
            device=str(device),
            precision=backend.precision,
            batch_size=batcher.size,
            tta=options.tta,
            timings=True,  # the per-stage times it reports are the device's
        )
        # A small run first: kernel selection and (on CUDA) compilation are paid once
        # per process, not per city, and would otherwise be charged to the measured run.
        make_city(root / "warmup.tif", min(options.size, 4 * tile), manifest.gsd_m, 1)
        # The model-only loop's backend, already compiled for this batch size: building
        # (and compiling) another one would be charged to the end-to-end time.
        run_inference([str(root / "warmup.tif")], root / "warmup", infer_options, backend=backend)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        rss_reset, rss_before_mb = reset_peak_rss(), peak_rss_mb("VmRSS")
        summary = run_inference([str(city)], root / "out", infer_options, backend=backend)[0]
        peak_device_mb = (
            torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
        )
        after_s = _model_only_seconds(batcher, tile, options.repeats, options.min_repeat_s)
        peak_rss = peak_rss_mb()  # before the phase run below, which maps a second city
        stride = tile - summary["overlap"]
        phase = phase_shift(city, root / "out", root / "phase", infer_options, tile, stride)

    overlap = summary["overlap"]
    before, after = batcher.size / before_s, batcher.size / after_s
    tiles_per_s = (before + after) / 2
    margin = summary["tile_grid"]["margin_px"]
    grid_tiles = TileGrid(options.size, options.size, tile, overlap, margin=margin).count
    model_mpx = tiles_per_s * stride**2 / 1e6
    e2e_mpx = summary["mpx_per_s"]
    gsd = manifest.gsd_m
    return {
        "model_mpx_per_s": round(model_mpx, 4),
        "model_tile_mpx_per_s": round(tiles_per_s * tile**2 / 1e6, 4),
        "model_grid_mpx_per_s": round(options.size**2 / (grid_tiles / tiles_per_s) / 1e6, 4),
        "model_tiles_per_s": round(tiles_per_s, 2),
        "model_tiles_per_s_before": round(before, 2),  # the two measurements averaged
        "model_tiles_per_s_after": round(after, 2),
        "end_to_end_mpx_per_s": e2e_mpx,
        "pipeline_mpx_per_s": round(summary["pixels"] / summary["times"]["pipeline"] / 1e6, 4),
        "efficiency": round(e2e_mpx / model_mpx, 4),
        "device": summary["device"],
        "device_name": _device_name(device),
        "backend": backend.name,
        "precision": backend.precision,
        "backbone": manifest.backbone,
        "tta": options.tta,
        "model": manifest.name if options.backbone is None else "random weights",
        "tile": tile,
        "overlap": overlap,
        "stride": stride,
        "batch_size": batcher.size,
        "size": options.size,
        "pixels": summary["pixels"],
        "tiles": summary["tiles"],
        "grid_tiles": grid_tiles,
        "seconds": summary["seconds"],
        "stages": summary["times"],
        "phase_shift": phase,
        "peak_rss_mb": round(peak_rss, 1),
        "rss_before_mb": round(rss_before_mb, 1),  # torch and the model, already loaded
        "peak_rss_scope": "end-to-end run" if rss_reset else "whole bench process",
        "peak_device_mb": round(peak_device_mb, 1) if peak_device_mb is not None else None,
        "flops_per_tile": flops_per_tile,
        "matmul_tflops": round(matmul_flops / 1e12, 4),
        "ceiling_tiles_per_s": round(matmul_flops / flops_per_tile, 2),
        "fraction_of_ceiling": round(tiles_per_s * flops_per_tile / matmul_flops, 4),
        "gsd_m": gsd,
        "km2_per_hour": round(km2_per_hour(e2e_mpx, gsd), 3),
        "model_km2_per_hour": round(km2_per_hour(model_mpx, gsd), 3),
        "threads": torch.get_num_threads(),
        "machine": _machine(),
        "versions": versions(),
        "commit": git_commit(),
    }


EDGE_MARGIN = 128  # px from a raster's edge beyond which its mirroring moves no pixel


def phase_shift(
    city: Path, mapped: Path, workdir: Path, options: InferOptions, tile: int, stride: int
) -> dict[str, Any] | None:
    """How far the map of ``city`` (in ``mapped``) moves when the tile grid shifts.

    One crop of the city, from ``BENCH_OFFSET`` modulo the stride (a shift of the
    tile phase, whatever the city's size), at most 1024 px plus a margin on each side,
    mapped with the same options and compared with the city's map away from both
    edges (``runtime.phase``). The margin is a tile, at most EDGE_MARGIN px: the two
    rasters' mirrored edges move their maps within the model's receptive field (about
    100 px for the tiny family), not a whole large tile. None when the city is too small
    to hold such a crop. It runs after the figures of the end-to-end run are taken.
    """
    offset = (BENCH_OFFSET[0] % stride, BENCH_OFFSET[1] % stride)
    margin = min(tile, EDGE_MARGIN)
    side = 1024 + 2 * margin
    crop = workdir / "crop.tif"
    workdir.mkdir()
    try:
        height, width = crop_at(city, crop, offset, (side, side))
    except ValueError:  # the city ends before the offset (a small city, a large stride)
        return None
    if min(height, width) <= 2 * margin:
        return None
    run_inference([str(crop)], workdir / "out", options)
    stats = compare_shifted(
        read_layers(mapped / "city_damage_prob.tif", mapped / "city_damage.tif"),
        read_layers(workdir / "out" / "crop_damage_prob.tif", workdir / "out" / "crop_damage.tif"),
        offset,
        margin=margin,
    )
    return {"offset": list(offset), "margin": margin, **stats.as_dict()}


def reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count of this process (Linux); False if it cannot.

    The model-only loop, the FLOP count and the synthetic city come first and would
    otherwise set the peak that should be the end-to-end run's own.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mb(field: str = "VmHWM") -> float:
    """Peak resident memory of this process in MiB since the last ``reset_peak_rss``.

    field: "VmHWM" (the peak) or "VmRSS" (now), from /proc/self/status; elsewhere
    the process's lifetime peak from getrusage.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def random_bundle(path: Path, backbone: str, seed: int) -> Path:
    """A bundle of ``backbone`` with random weights: speed does not depend on them. It maps
    in the tiles a trained bundle of the backbone would (``default_tiling``: 1024 px for
    the CNNs), so its figures are the ones such a bundle gets."""
    spec = get_spec(backbone)
    torch.manual_seed(seed)
    config = SegmenterConfig(
        backbone=spec.name, tile_size=BACKBONE_TILE, decoder_channels=BACKBONE_DECODER_CHANNELS
    )
    manifest = manifest_for(
        config,
        name=f"bench-{spec.name}",
        backbone_weights="random (stmap bench)",
        normalization=Normalization(mean=spec.mean, std=spec.std),
        tiling=default_tiling(spec.name, BACKBONE_TILE),
    )
    return write_bundle(path, DamageSegmenter(config).eval(), manifest)


def time_median(
    fn: Callable[[], object],
    device: torch.device,
    *,
    repeats: int,
    min_repeat_s: float,
    warmup: int = 2,
) -> float:
    """Median seconds of one ``fn()`` call over ``repeats`` timed repeats.

    Warm-up calls first (kernel selection, compilation, caches); then one call is
    timed to choose how many calls a repeat makes, so that each repeat lasts about
    ``min_repeat_s`` and the clock's resolution and launch jitter do not matter.
    The median, not the mean: on a shared machine a few repeats are disturbed.
    """
    for _ in range(warmup):
        fn()
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    calls = max(1, round(min_repeat_s / max(time.perf_counter() - start, 1e-9)))
    samples = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        synchronize(device)
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def _model_only_seconds(batcher: Batcher, tile: int, repeats: int, min_repeat_s: float) -> float:
    """Median seconds of one full batch of resident uint8 tiles through the backend."""
    device = batcher.backend.device
    generator = torch.Generator().manual_seed(0)
    # channels-last uint8 tiles, as the pipeline cuts them, already on the device
    tiles = torch.randint(0, 256, (batcher.size, tile, tile, 3), generator=generator)
    tiles = tiles.to(torch.uint8).to(device).permute(0, 3, 1, 2)
    batcher(tiles)  # with --batch-size auto this settles the batch size on OOM
    tiles = tiles[: batcher.size]
    return time_median(lambda: batcher(tiles), device, repeats=repeats, min_repeat_s=min_repeat_s)


def count_flops_per_tile(model: torch.nn.Module, tile: int, channels: int = 3) -> int:
    """FLOPs of one forward of ``model`` on one (1, C, tile, tile) uint8 tile, counted.

    ``FlopCounterMode`` counts matrix multiplies and convolutions (2 per
    multiply-add), the work that bounds a model's speed; elementwise work is left
    out. Attention runs through the math kernel while counting, because the fused
    CPU kernel has no FLOP formula and would count as zero. Counted on the CPU in
    float32: the count does not depend on the device or the precision.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = model.to("cpu").eval()
    pixels = torch.zeros((1, channels, tile, tile), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), counter:
        model(pixels)
    return int(counter.get_total_flops())


def measure_matmul_flops(device: torch.device, precision: str, side: int | None = None) -> float:
    """The device's measured FLOP/s for one square matrix multiply in ``precision``.

    The practical ceiling of a model made of matrix multiplies, measured the same
    way as the model (warm-up, synchronise, median) rather than taken from a data
    sheet. Side: 8192 on CUDA, 1024 on the CPU unless given. int8: an int8 matrix
    multiply (``torch._int_mm``), the rate of the int8 rung's linear layers.
    """
    side = side or MATMUL_SIDE.get(device.type, MATMUL_SIDE["cpu"])
    generator = torch.Generator().manual_seed(0)
    if precision == "int8":  # the int8 rung's linear layers: int8 × int8 → int32
        a, b = (
            torch.randint(-128, 128, (side, side), generator=generator, dtype=torch.int8)
            for _ in range(2)
        )
        a, b = a.to(device), b.to(device)
        matmul = torch._int_mm
    else:
        a = torch.randn((side, side), generator=generator).to(device, _DTYPES[precision])
        b = torch.randn((side, side), generator=generator).to(device, _DTYPES[precision])
        matmul = torch.matmul
    seconds = time_median(lambda: matmul(a, b), device, repeats=5, min_repeat_s=0.3)
    return 2 * side**3 / seconds


def km2_per_hour(mpx_per_s: float, gsd_m: float) -> float:
    """Ground area mapped per hour at ``mpx_per_s`` million pixels of ``gsd_m`` metres."""
    return mpx_per_s * gsd_m**2 * 3600


def versions() -> dict[str, str | None]:
    """Versions that decide the figures: Python, torch, stmap, GDAL and friends."""
    import rasterio

    found: dict[str, str | None] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gdal": rasterio.__gdal_version__,
    }
    for package in ("stmap", "rasterio", "timm", "onnxruntime", "onnxruntime-gpu", "tensorrt"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def _machine() -> dict[str, Any]:
    import os

    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "gpus": torch.cuda.device_count() if torch.cuda.is_available() else 0,
    }

"""``stmap infer``: map damage over whole rasters, resumably, with atomic outputs.

For each input: validate → stream its blocks through the pipeline into partial
rasters (journalled) → finalise: COGs, damage polygons, per-building damage,
quicklook and summary, all staged in a hidden directory and renamed into OUTDIR
when complete. Every input is validated, and existing outputs refused, before any
work starts. An interrupted run keeps its journal and resumes where it stopped.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from rasterio.transform import Affine

from stmap import __version__
from stmap.bundle import Bundle, Manifest, open_bundle
from stmap.errors import InputError, Interrupted, OutputExistsError, RasterError, VectorError
from stmap.io.blocks import ReadSpec, describe_bands, file_identity, streaming_env
from stmap.io.raster import RasterInfo, describe_raster, ground_pixel_size
from stmap.io.vectors import read_vector, write_vector
from stmap.io.writers import (
    BlockWriter,
    empty_dir,
    prepare_output_dir,
    publish,
    remove,
    write_cog,
    write_json,
)
from stmap.runtime.backends.base import (
    Backend,
    Batcher,
    check_precision,
    create_backend,
    resolve_device,
)
from stmap.runtime.buildings import building_damage, damaged_fraction_histogram
from stmap.runtime.grid import (
    BlockPlan,
    TileGrid,
    check_overlap,
    choose_block_size,
    model_grid_size,
)
from stmap.runtime.journal import Journal
from stmap.runtime.pipeline import DAMAGE, PROB, Pipeline, PipelineResult
from stmap.runtime.quicklook import write_quicklook
from stmap.runtime.summary import build_summary
from stmap.runtime.vectorize import damage_cutoff, damage_polygons

log = logging.getLogger(__name__)

RESAMPLE_TOLERANCE = 0.10  # resample when the input's GSD is off the model's by more
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class InferOptions:
    """The options of ``stmap infer`` (cli.md); None means "choose for me"."""

    model: str = "default"
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    overlap: int | None = None  # default: tile / 8 (16 px at 128-px tiles)
    block_size: int | None = None
    bands: tuple[int, ...] | None = None
    footprints: str | None = None
    threshold: float | None = None
    restart: bool = False
    allow_ungeoreferenced: bool = False
    workers: int | None = None
    checkpoint_s: float = 1.0


@dataclass(frozen=True)
class InputPlan:
    """One validated input: which bands to read, on which grid, in which blocks."""

    info: RasterInfo
    stem: str
    bands: tuple[int, ...]
    masked: bool
    scale: tuple[float, float]  # model pixels per input pixel, (rows, cols)
    pixel_area_m2: float
    gsd_m: tuple[float, float] | None  # (along a row, along a column); None: unknown
    block_size: int
    notes: tuple[str, ...] = ()

    @property
    def model_shape(self) -> tuple[int, int]:
        return model_grid_size(self.info.height, self.info.width, self.scale)

    @property
    def model_transform(self) -> Affine | None:
        if self.scale == (1.0, 1.0):
            return None
        return self.info.transform @ Affine.scale(1 / self.scale[1], 1 / self.scale[0])


@dataclass(frozen=True)
class OutputPaths:
    """The files of one input in OUTDIR: final names, and the hidden work files."""

    outdir: Path
    stem: str
    footprints: bool

    @property
    def finals(self) -> list[str]:
        names = ["damage_prob.tif", "damage.tif", "damage.gpkg", "quicklook.png", "summary.json"]
        if self.footprints:
            names.insert(3, "buildings.gpkg")
        return [self.final(name) for name in names]

    def final(self, suffix: str) -> str:
        return f"{self.stem}_{suffix}"

    @property
    def journal(self) -> Path:
        return self.outdir / f".{self.stem}.journal.json"

    @property
    def partials(self) -> dict[str, Path]:
        return {
            PROB: self.outdir / f".{self.stem}_damage_prob.partial.tif",
            DAMAGE: self.outdir / f".{self.stem}_damage.partial.tif",
        }

    @property
    def staging(self) -> Path:
        return self.outdir / f".{self.stem}.staging"

    def discard_work(self) -> None:
        remove(self.journal, *self.partials.values(), self.staging)


@dataclass
class _Warnings:
    """Warnings of one input: logged as they happen, and kept for the summary."""

    items: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        log.warning(message)
        self.items.append(message)


@dataclass
class _Session:
    """What the inputs of one run share: the model, the options, the backends."""

    bundle: Bundle
    options: InferOptions
    threshold: float
    overlap: int
    device: torch.device
    backends: dict[str, Backend] = field(default_factory=dict)

    def backend(self, dtype: str) -> Backend:
        """The backend for rasters of ``dtype`` (the model's input scaling depends on it)."""
        if dtype not in self.backends:
            self.backends[dtype] = create_backend(
                self.options.backend, self.bundle, self.device, self.options.precision, dtype
            )
        return self.backends[dtype]


def run_inference(
    inputs: Sequence[str],
    outdir: str | os.PathLike[str],
    options: InferOptions = InferOptions(),
    *,
    progress: ProgressFactory | None = None,
) -> list[dict[str, Any]]:
    """Map every input into ``outdir``; returns one summary per input.

    Raises InputError subclasses (exit 2) for bad inputs, options, bundles, devices
    or outputs, before any work where they can be known in advance; Interrupted
    (exit 130) on Ctrl-C or SIGTERM, with the journal kept for resume.
    """
    if not inputs:
        raise InputError("no input raster given")
    bundle = open_bundle(options.model)
    manifest = bundle.manifest
    threshold = manifest.threshold if options.threshold is None else options.threshold
    if not 0 < threshold < 1:
        raise InputError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    overlap = manifest.tile_size // 8 if options.overlap is None else options.overlap
    check_overlap(overlap, manifest.tile_size)
    check_precision(options.precision)
    plans = [plan_input(path, manifest, options) for path in inputs]
    outdir = Path(outdir)
    paths = [OutputPaths(outdir, plan.stem, options.footprints is not None) for plan in plans]
    _check_outputs(paths, options.restart)
    device = resolve_device(options.device)
    session = _Session(bundle, options, threshold, overlap, device)
    prepare_output_dir(outdir)
    with streaming_env():
        return [
            _map_input(plan, out, session, progress) for plan, out in zip(plans, paths, strict=True)
        ]


def plan_input(path: str, manifest: Manifest, options: InferOptions) -> InputPlan:
    """Validate one input against the model; every refusal names the file and the fix."""
    info = describe_raster(path)
    notes: list[str] = []
    if not info.is_georeferenced and not options.allow_ungeoreferenced:
        raise RasterError(
            f"{path}: has no georeferencing (CRS and geotransform), so its maps could not "
            "be placed; georeference it, or pass --allow-ungeoreferenced to map it in pixel "
            f"coordinates at the model's {manifest.gsd_m} m GSD"
        )
    if info.dtype not in manifest.input_scaling:
        raise RasterError(
            f"{path}: {info.dtype} pixels, but the model reads "
            f"{' or '.join(manifest.input_scaling)}; convert it (gdal_translate -ot)"
        )
    bands_info = describe_bands(path)
    bands = select_bands(path, bands_info, manifest.bands, options.bands)
    masked = not all(bands_info[b - 1].all_valid for b in bands)
    gsd = ground_pixel_size(info.crs, info.transform, info.width, info.height)
    if gsd is None:
        notes.append(f"no georeferencing: pixels taken to be {manifest.gsd_m} m, the model's GSD")
        scale, area = (1.0, 1.0), manifest.gsd_m**2
    else:
        ratios = (gsd[1] / manifest.gsd_m, gsd[0] / manifest.gsd_m)
        off = any(abs(r - 1) > RESAMPLE_TOLERANCE for r in ratios)
        scale = ratios if off else (1.0, 1.0)
        area = gsd[0] * gsd[1] * _skew_factor(info.transform)
        if off:
            notes.append(
                f"GSD {gsd[0]:.3g} × {gsd[1]:.3g} m differs from the model's {manifest.gsd_m} m "
                "by more than 10 %: the model runs on a resampled grid, outputs stay on the input's"
            )
    if info.is_georeferenced and not info.is_north_up:
        notes.append(
            "rotated or south-up geotransform: the model sees the image as stored; outputs "
            "carry the same geotransform"
        )
    block_size = choose_block_size(options.block_size, info.block_shape)
    return InputPlan(info, _stem(path), bands, masked, scale, area, gsd, block_size, tuple(notes))


def select_bands(
    path: str,
    bands_info: Sequence[Any],
    wanted: Sequence[str],
    requested: Sequence[int] | None,
) -> tuple[int, ...]:
    """1-based bands to feed the model, in its order (``wanted``: colour names).

    ``--bands`` wins; else bands whose colour interpretation names the model's
    bands; else the first non-alpha bands.
    """
    count = len(bands_info)
    need = len(wanted)
    if requested is not None:
        bad = [b for b in requested if not 1 <= b <= count]
        if bad:
            raise InputError(f"--bands {_csv(requested)}: {path} has bands 1 to {count} only")
        if len(requested) != need:
            raise InputError(
                f"--bands {_csv(requested)}: the model needs {need} bands ({', '.join(wanted)})"
            )
        return tuple(requested)
    by_color = {band.color: band.index for band in bands_info}
    if all(name in by_color for name in wanted):
        return tuple(by_color[name] for name in wanted)
    image = [band.index for band in bands_info if band.color != "alpha"]
    if len(image) < need:
        raise RasterError(
            f"{path}: has {len(image)} image band(s), the model needs {need} "
            f"({', '.join(wanted)}); give a raster with those bands"
        )
    return tuple(image[:need])


def _map_input(
    plan: InputPlan, out: OutputPaths, session: _Session, progress: ProgressFactory | None
) -> dict[str, Any]:
    """One input: the pipeline into partial rasters, then the finished outputs."""
    start = time.perf_counter()
    warn = _Warnings()
    for note in plan.notes:
        log.info("%s: %s", plan.info.path, note)
    result, run = _stream(plan, out, session, progress, warn)
    if result.valid_pixels == 0:
        warn(f"{plan.info.path}: no valid pixel (all nodata or masked); the outputs are empty")
    t_finalise = time.perf_counter()
    facts = _finalise(plan, out, session.threshold, session.options.footprints, warn)
    finalise_s = time.perf_counter() - t_finalise
    damaged_area = facts["damaged_area_m2"]
    if not math.isfinite(damaged_area):  # polygons have no area without a CRS
        damaged_area = result.damaged_pixels * plan.pixel_area_m2
    summary = build_summary(
        source=_source_facts(plan, session.bundle.manifest.bands),
        bundle=session.bundle,
        run=run,
        pipeline=result,
        finalise_s=finalise_s,
        seconds=time.perf_counter() - start,
        pixel_area_m2=plan.pixel_area_m2,
        damaged_area_m2=damaged_area,
        damaged_polygons=facts["damaged_polygons"],
        buildings=facts["buildings"],
        outputs=[str(out.outdir / name) for name in facts["finals"]],
        warnings=warn.items,
    )
    write_json(out.staging / out.final("summary.json"), summary)
    publish(out.staging, out.outdir)
    out.discard_work()
    return summary


def _stream(
    plan: InputPlan,
    out: OutputPaths,
    session: _Session,
    progress: ProgressFactory | None,
    warn: _Warnings,
) -> tuple[PipelineResult, dict[str, Any]]:
    """Every block not yet journalled through the pipeline into the partial rasters."""
    bundle, options, info = session.bundle, session.options, plan.info
    manifest, threshold, overlap = bundle.manifest, session.threshold, session.overlap
    backend = session.backend(info.dtype)
    identity = {
        "input": file_identity(info),
        "model": bundle.hash(),
        "bands": list(plan.bands),
        "tile": manifest.tile_size,
        "overlap": overlap,
        "threshold": threshold,
        "precision": backend.precision,
        "scale": list(plan.scale),
        "stmap": __version__,
    }
    journal = _open_journal(out, identity, options.restart, warn)
    open_writer = partial(
        BlockWriter,
        out.partials,
        height=info.height,
        width=info.width,
        crs=info.crs,
        transform=info.transform,
    )
    if journal is not None:
        try:
            writer = open_writer(resume=True)
        except RasterError as exc:
            warn(
                f"the interrupted run's partial rasters cannot be reopened ({exc}); starting afresh"
            )
            out.discard_work()
            journal = None
    if journal is None:
        writer = open_writer(resume=False)
        journal = Journal.create(out.journal, identity, plan.block_size)
    block_size = journal.block_size
    if block_size != plan.block_size and options.block_size is not None:
        warn(f"resuming with the interrupted run's block size {block_size}")
    rows, cols = plan.model_shape
    grid_plan = BlockPlan(
        info.height,
        info.width,
        block_size,
        TileGrid(rows, cols, manifest.tile_size, overlap),
        plan.scale,
    )
    spec = ReadSpec(
        info.path, plan.bands, info.dtype, plan.masked, (rows, cols), plan.model_transform
    )
    workers = options.workers or (1 if backend.device.type == "cpu" else 4)
    batcher = Batcher(backend, options.batch_size)
    bar = progress(out.stem, info.width * info.height) if progress else nullcontext(None)
    with bar as advance:
        pipeline = Pipeline(
            grid_plan,
            spec,
            batcher,
            writer,
            journal,
            cutoff=damage_cutoff(threshold),
            workers=workers,
            checkpoint_s=options.checkpoint_s,
            progress=advance,
        )
        try:
            result = pipeline.run()
        except KeyboardInterrupt:
            raise Interrupted(
                f"interrupted: {len(journal.blocks)} of {len(grid_plan)} blocks of {info.path} "
                f"are kept in {out.outdir}; run the same command again to resume"
            ) from None
        except RasterError:
            if not pipeline.output_failed:
                out.discard_work()  # the input cannot be decoded: nothing worth resuming
            raise
        finally:
            writer.close()
    run = {
        "backend": backend.name,
        "device": str(backend.device),
        "precision": backend.precision,
        "batch_size": batcher.size,
        "tile_size": manifest.tile_size,
        "overlap": overlap,
        "block_size": block_size,
        "workers": workers,
        "threshold": threshold,
    }
    return result, run


def _finalise(
    plan: InputPlan,
    out: OutputPaths,
    threshold: float,
    footprints: str | None,
    warn: _Warnings,
) -> dict[str, Any]:
    """COGs, polygons, buildings and quicklook, staged for publication.

    Every step reads the partial rasters, not the COGs, so none waits for another:
    the COGs (GDAL, multi-threaded) and the quicklook (a decimated read of the input,
    rendering, PNG) run in threads beside the polygons and buildings.
    """
    empty_dir(out.staging)
    prob, damage = out.partials[PROB], out.partials[DAMAGE]
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="stmap-finalise") as pool:
        cogs = pool.submit(_write_cogs, out)
        quicklook = pool.submit(
            write_quicklook,
            plan.info.path,
            prob,
            out.staging / out.final("quicklook.png"),
            threshold=threshold,
            bands=plan.bands,
        )
        polygons = damage_polygons(damage, prob)
        write_vector(out.staging / out.final("damage.gpkg"), polygons)
        areas = polygons.attributes["area_m2"]
        facts: dict[str, Any] = {
            "damaged_area_m2": float(areas.sum()) if len(polygons) else 0.0,
            "damaged_polygons": len(polygons),
            "buildings": None,
        }
        if footprints is not None:
            facts["buildings"] = _buildings(plan, out, prob, footprints, threshold, warn)
        cogs.result()
        quicklook.result()
    facts["finals"] = [*(p.name for p in sorted(out.staging.iterdir())), out.final("summary.json")]
    return facts


def _write_cogs(out: OutputPaths) -> None:
    for layer, name, resampling in (
        (PROB, "damage_prob.tif", "average"),
        (DAMAGE, "damage.tif", "nearest"),
    ):
        target = out.staging / out.final(name)
        write_cog(out.partials[layer], target, overview_resampling=resampling)


def _buildings(
    plan: InputPlan,
    out: OutputPaths,
    prob: Path,
    footprints: str,
    threshold: float,
    warn: _Warnings,
) -> dict[str, Any] | None:
    """Per-building damage into the staging directory; a warning when it cannot be done."""
    info = plan.info
    if info.crs is None:
        warn(f"--footprints {footprints}: {info.path} has no CRS to place them on; skipped")
        return None
    try:
        table = read_vector(footprints, crs=info.crs, bbox=_bounds(info))
    except (VectorError, InputError) as exc:
        warn(f"--footprints {footprints}: cannot be used ({exc}); no buildings output")
        return None
    if len(table) == 0:
        warn(f"--footprints {footprints}: no footprint overlaps {info.path}; no buildings output")
        return None
    buildings = building_damage(prob, table, threshold=threshold)
    write_vector(out.staging / out.final("buildings.gpkg"), buildings)
    labels = list(buildings.attributes["label"])
    return {
        "total": len(buildings),
        **{name: labels.count(name) for name in ("damaged", "undamaged", "unknown")},
        "damaged_fraction_histogram": damaged_fraction_histogram(buildings),
    }


def _open_journal(
    out: OutputPaths, identity: dict[str, Any], restart: bool, warn: _Warnings
) -> Journal | None:
    """The journal to resume from, or None to start afresh (stale work files removed)."""
    journal = None if restart else Journal.load(out.journal)
    if journal is None:
        if out.journal.exists() and not restart:
            warn(f"{out.journal}: unreadable journal of an interrupted run; starting afresh")
    elif not all(p.exists() for p in out.partials.values()):
        warn(f"{out.outdir}: the interrupted run's partial rasters are gone; starting afresh")
    else:
        journal.check(identity)
        log.info("%s: resuming, %d blocks already done", out.journal, len(journal.blocks))
        return journal
    out.discard_work()
    return None


def _check_outputs(paths: Sequence[OutputPaths], restart: bool) -> None:
    stems = [p.stem for p in paths]
    for stem in stems:
        if stems.count(stem) > 1:
            raise InputError(
                f"two inputs are named {stem!r}: their outputs would collide in one directory; "
                "rename one or map them separately"
            )
    if restart:
        return
    for out in paths:
        for name in out.finals:
            if (out.outdir / name).exists():
                raise OutputExistsError(
                    f"{out.outdir / name}: already exists; pass --restart to overwrite it, "
                    "or choose another -o"
                )


def _stem(path: str) -> str:
    return Path(path.rstrip("/")).stem


def _csv(values: Sequence[int]) -> str:
    return ",".join(str(v) for v in values)


def _skew_factor(transform: Affine) -> float:
    """|sin| of the angle between the pixel axes: 1 for the usual rectangular pixels."""
    a, b, d, e = transform.a, transform.b, transform.d, transform.e
    return abs(a * e - b * d) / (math.hypot(a, d) * math.hypot(b, e))


def _bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    corners = [info.transform @ (c, r) for c in (0, info.width) for r in (0, info.height)]
    xs, ys = zip(*corners, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def _source_facts(plan: InputPlan, band_names: Sequence[str]) -> dict[str, Any]:
    info = plan.info
    return {
        "path": info.path,
        "width": info.width,
        "height": info.height,
        "count": info.count,
        "dtype": info.dtype,
        "crs": info.crs.to_string() if info.crs else None,
        "transform": list(info.transform)[:6],
        "gsd_m": list(plan.gsd_m) if plan.gsd_m else None,
        "bands": dict(zip(band_names, plan.bands, strict=True)),
        "resampled": plan.scale != (1.0, 1.0),
        "model_grid": list(plan.model_shape),
        "notes": list(plan.notes),
    }

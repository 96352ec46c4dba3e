"""Planning a run of ``stmap infer``: options, validation, and each input's plan.

Every input is validated, and existing outputs refused, before any work starts:
the plans that come out (``RunPlan``, ``InputPlan``, ``OutputPaths``) are what
streaming (``stream``) and finishing (``finish``) are given, and all they need.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from rasterio.transform import Affine

from stmap.budget import BlockCost, check_block, check_raster, default_budget, largest_block
from stmap.bundle import Bundle, Manifest, open_bundle
from stmap.errors import InputError, OutputExistsError, RasterError, VectorError
from stmap.io.aoi import Aoi, read_aoi
from stmap.io.blocks import IMAGE_RESAMPLING, describe_bands, streaming_env
from stmap.io.footprints import footprint_files, read_footprints
from stmap.io.inputs import SceneInput, expand_inputs
from stmap.io.mosaic import Mosaic, build_mosaic
from stmap.io.outdir import check_name, check_writes, output_name, read_paths
from stmap.io.paths import check_utf8, is_virtual
from stmap.io.raster import (
    BitDepth,
    GroundPixel,
    RasterInfo,
    bit_depth,
    check_geotransform,
    describe_raster,
    ground_pixel,
)
from stmap.io.writers import remove
from stmap.runtime.backends.base import check_precision
from stmap.runtime.grid import (
    TileGrid,
    WorldShift,
    check_overlap,
    choose_block_size,
    default_overlap,
    lattice_offset,
    model_grid_size,
    model_scale,
    world_shift,
)
from stmap.runtime.index_page import INDEX
from stmap.runtime.journal import Journal
from stmap.runtime.sinks import DAMAGE, PROB
from stmap.runtime.tta import TTA_MODES
from stmap.runtime.viewer_tiles import DEFAULT_VIEWER, VIEWER_MODES

log = logging.getLogger(__name__)

RESAMPLE_TOLERANCE = 0.10  # resample when the input's GSD is off the model's by more
# Imagery coarser than this many times the model's GSD is refused: at 8× a 0.5 m model
# sees 4 m pixels, where a 10 m building is under three pixels across.
MAX_COARSER = 8.0
READ_BUFFERS = 2 + 4 + 1  # the pipeline's read pool: queue depth + readers (at most 4) + 1
MAX_GRID_CELLS = 10_000_000  # per input: the grid's tallies stay within ~300 MB
RUN_SUMMARY = "run_summary.json"  # the combined summary of a run over several inputs
ProgressFactory = Callable[[str, int], AbstractContextManager[Callable[[int], None]]]


@dataclass(frozen=True)
class InferOptions:
    """The options of ``stmap infer`` (cli.md); None means "choose for me"."""

    model: str = "default"
    backend: str = "auto"
    device: str = "auto"
    precision: str = "auto"
    batch_size: int | None = None
    overlap: int | None = None  # default: the model's tiling, else tile / 4 (run_overlap)
    block_size: int | None = None
    memory_budget: int | None = None  # bytes; default: stmap.budget.default_budget()
    bands: tuple[int, ...] | None = None
    footprints: str | None = None
    threshold: float | None = None
    restart: bool = False
    allow_ungeoreferenced: bool = False
    workers: int | None = None
    checkpoint_s: float = 1.0
    mosaic: str | None = None  # NAME: all inputs form one virtual scene
    asset: str = "visual"  # the STAC asset of each item
    aoi: str | None = None  # a vector file: map only inside its polygons
    crs: str | None = None  # the mosaic's grid: default the UTM zone of its centre
    gsd: float | None = None  # the mosaic's pixel size in metres: default the model's
    grid_m: float = 250.0  # side of the damage grid's cells
    building_buffers: tuple[float, ...] = (0.0, 10.0)  # metres around each footprint
    tta: str = "none"  # test-time augmentation: none, flip or d4
    timings: bool = False  # synchronise the device per stage: exact stage times, slower
    viewer: str = DEFAULT_VIEWER  # the report's zoomable map: none, lite or full


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
    aoi: Aoi | None = None  # in the raster's CRS
    mosaic: Mosaic | None = None  # when the raster is a mosaic of the run's inputs
    depth: BitDepth | None = None  # the range integer pixels fill; None: the dtype's
    ground: GroundPixel | None = None  # the pixel's size in the CRS and on the ground
    warnings: tuple[str, ...] = ()  # known at planning, reported with the run's

    @property
    def value_max(self) -> float | None:
        """The raw value the model's 1.0 stands for; None: the manifest's for the dtype."""
        return self.depth.value_max if self.depth and self.depth.source != "dtype" else None

    @property
    def model_shape(self) -> tuple[int, int]:
        return model_grid_size(self.info.height, self.info.width, self.scale, self.model_offset)

    @property
    def model_offset(self) -> tuple[float, float]:
        """(rows, cols) model pixels from the resampled model grid's corner, on the world's
        lattice of model pixels, to the raster's (``runtime.grid``); (0, 0) unresampled."""
        if self.scale == (1.0, 1.0):
            return 0.0, 0.0
        col, row = ~self._scaled_transform @ (0.0, 0.0)
        return lattice_offset((row, col))

    @property
    def model_transform(self) -> Affine | None:
        if self.scale == (1.0, 1.0):
            return None
        rows, cols = self.model_offset
        return self._scaled_transform @ Affine.translation(-cols, -rows)

    def model_pixel_m(self, model_gsd_m: float) -> tuple[float, float]:
        """(down, across) ground metres of one model pixel: the input's pixel where the
        model runs on its grid, the rounded resampled pixel where it does not, and
        ``model_gsd_m`` for an input of unknown size."""
        if self.gsd_m is None:
            return model_gsd_m, model_gsd_m
        return _model_pixel(self.gsd_m, self.scale)

    @property
    def _scaled_transform(self) -> Affine:
        """The raster's transform with model-sized pixels, from the raster's corner."""
        return self.info.transform @ Affine.scale(1 / self.scale[1], 1 / self.scale[0])

    def world_shift(self, stride: int) -> WorldShift:
        """Where the world's tile lattice of ``stride`` model pixels falls on this input."""
        transform = self.model_transform or self.info.transform
        col, row = ~transform * (0.0, 0.0)
        return world_shift((row, col), stride)

    def tile_grid(self, tile: int, overlap: int, margin: int = 0) -> TileGrid:
        """The input's model-grid tiles, anchored to the world (see ``runtime.grid``)."""
        rows, cols = self.model_shape
        shift = self.world_shift(tile - overlap).shift
        return TileGrid(rows, cols, tile, overlap, shift, margin)

    def tile_grid_facts(
        self, tile: int, overlap: int, gsd_m: float, margin: int = 0
    ) -> dict[str, Any]:
        """Where the tiles fell: the world lattice they follow, how far they were snapped,
        and each tile's margin the blend leaves out."""
        stride = tile - overlap
        world = self.world_shift(stride)
        return {
            "anchor": "CRS origin" if self.info.is_georeferenced else "raster corner",
            "stride_px": stride,
            # (down, across): the model pixel's ground size, not the model's nominal GSD
            "stride_m": [round(stride * m, 3) for m in self.model_pixel_m(gsd_m)],
            "margin_px": margin,
            "shift_px": list(world.shift),
            # model pixels by which this raster's pixel grid lies off the lattice's: rasters
            # on one pixel grid share the figure, and with it their tiles and probabilities
            "snapped_px": [round(v, 4) + 0.0 for v in world.snapped_px],  # + 0.0: no -0.0
        }


def _model_pixel(gsd_m: tuple[float, float], scale: tuple[float, float]) -> tuple[float, float]:
    """(down, across) ground metres of a model pixel, for input pixels of ``gsd_m`` (along
    a row, along a column) and ``scale`` (rows, cols) model pixels per input pixel."""
    across, down = gsd_m
    return down / scale[0], across / scale[1]


@dataclass(frozen=True)
class OutputPaths:
    """The files of one input in OUTDIR: final names, and the hidden work files."""

    outdir: Path
    stem: str
    footprints: bool

    @property
    def finals(self) -> list[str]:
        names = [
            "damage_prob.tif",
            "damage_prob.qml",
            "damage.tif",
            "damage.qml",
            "damage.gpkg",
            "grid.gpkg",
            "map",
            "quicklook.png",
            "report.html",
            "summary.json",
        ]
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

    @property
    def writes(self) -> list[Path]:
        """Every path the run may create for this input: outputs and work files."""
        finals = [self.outdir / name for name in self.finals]
        return [*finals, self.journal, *self.partials.values(), self.staging, self.map_work]

    @property
    def map_work(self) -> Path:
        """Where the viewer's tiles are written while the blocks stream."""
        return self.outdir / f".{self.stem}.map"

    def discard_work(self) -> None:
        remove(self.journal, *self.partials.values(), self.staging, self.map_work)


@dataclass
class Warnings:
    """Warnings of one input: logged as they happen, and kept for the summary."""

    items: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        log.warning(message)
        self.items.append(message)


@dataclass(frozen=True)
class RunPlan:
    """A validated run: the model, its threshold and overlap, each input with its outputs."""

    bundle: Bundle
    options: InferOptions
    threshold: float
    overlap: int
    outdir: Path
    inputs: tuple[tuple[InputPlan, OutputPaths], ...]


def run_overlap(manifest: Manifest, requested: int | None) -> int:
    """``--overlap``, else the model's own (its manifest's ``tiling``), else a quarter of
    its tile; checked against the tile."""
    if requested is not None:
        return check_overlap(requested, manifest.infer_tile)
    if manifest.infer_overlap is not None:
        return manifest.infer_overlap
    return default_overlap(manifest.infer_tile)


def run_margin(manifest: Manifest, overlap: int) -> int:
    """The tile margin the blend leaves out (``blend.ramp``): the model's tiling's, when
    the run keeps the tiling's overlap; none with another ``--overlap``."""
    tiling = manifest.tiling
    return tiling.margin if tiling is not None and overlap == tiling.overlap else 0


def plan_run(
    inputs: Sequence[str], outdir: str | os.PathLike[str], options: InferOptions
) -> RunPlan:
    """Validate the model, the options, every input and its outputs, before any work."""
    if not inputs:
        raise InputError("no input raster given")
    check_utf8(outdir, what="-o ")
    bundle = open_bundle(options.model)
    manifest = bundle.manifest
    threshold = manifest.threshold if options.threshold is None else options.threshold
    if not 0 < threshold < 1:
        raise InputError(f"--threshold {threshold}: must lie strictly between 0 and 1")
    overlap = run_overlap(manifest, options.overlap)
    check_precision(options.precision)
    if options.mosaic is None and (options.crs is not None or options.gsd is not None):
        raise InputError("--crs and --gsd set the grid of a mosaic: use them with --mosaic NAME")
    scenes = expand_inputs(inputs, options.asset)
    stems = [output_name(s.id, s.href) for s in scenes]
    bundle_files = [str(bundle.source), *(str(bundle.root / name) for name in manifest.files)]
    footprints = [options.footprints, *_footprint_files(options)]
    hrefs = [*map(str, inputs), *(s.href for s in scenes), *footprints, options.aoi]
    reads = read_paths([*hrefs, *bundle_files])
    with streaming_env():  # remote inputs are opened with the settings they are read with
        if options.mosaic is None:
            plans = [
                plan_input(s.href, manifest, options, stem=stem)
                for s, stem in zip(scenes, stems, strict=True)
            ]
        else:
            plans = [plan_mosaic(scenes, Path(outdir), manifest, options, reads)]
    outdir = Path(outdir)
    paths = [OutputPaths(outdir, plan.stem, options.footprints is not None) for plan in plans]
    summary = [outdir / RUN_SUMMARY, outdir / INDEX] if len(paths) > 1 else []
    try:  # collisions first: a file that must not be touched is not even read as a product
        _check_outputs(paths, options.restart, reads, summary)
        _check_products(plans, options)
    except InputError:
        for plan in plans:  # a refused run leaves no work file behind
            if plan.mosaic is not None:
                remove(plan.mosaic.workdir)
        raise
    planned = tuple(zip(plans, paths, strict=True))
    return RunPlan(bundle, options, threshold, overlap, outdir, planned)


def plan_input(
    path: str, manifest: Manifest, options: InferOptions, *, stem: str | None = None
) -> InputPlan:
    """Validate one input against the model; every refusal names the file and the fix.

    stem: names its outputs (default: the file's stem).
    """
    info = describe_raster(path)
    check_geotransform(info)
    notes: list[str] = []
    if not info.is_georeferenced and not options.allow_ungeoreferenced:
        raise RasterError(
            f"{path}: has no georeferencing (CRS and geotransform), so its maps could not "
            "be placed; georeference it, or pass --allow-ungeoreferenced to map it in pixel "
            f"coordinates at the model's {manifest.gsd_m} m GSD"
        )
    if len(set(info.dtypes)) > 1:
        raise RasterError(
            f"{path}: its bands mix data types ({', '.join(info.dtypes)}); the model reads "
            "one; convert it to one (gdal_translate -ot)"
        )
    if info.dtype not in manifest.input_scaling:
        raise RasterError(
            f"{path}: {info.dtype} pixels, but the model reads "
            f"{' or '.join(manifest.input_scaling)}; convert it (gdal_translate -ot)"
        )
    bands_info = describe_bands(path)
    bands = select_bands(path, bands_info, manifest.bands, options.bands)
    masked = not all(bands_info[b - 1].all_valid for b in bands)
    depth, warnings = _bit_depth(path, info, bands)
    ground = ground_pixel(info.crs, info.transform, info.width, info.height)
    gsd = ground.size_m if ground else None
    if ground is not None and ground.scale is not None:
        notes.append(
            f"pixels of {ground.crs_size[0]:.4g} × {ground.crs_size[1]:.4g} CRS units are "
            f"{gsd[0]:.4g} × {gsd[1]:.4g} m on the ground (projection scale factor "
            f"{ground.scale[0]:.4g} at the centre): the ground size is used"
        )
    if gsd is None:
        notes.append(f"no georeferencing: pixels taken to be {manifest.gsd_m} m, the model's GSD")
        scale, area = (1.0, 1.0), manifest.gsd_m**2
    else:
        ratios = (gsd[1] / manifest.gsd_m, gsd[0] / manifest.gsd_m)
        if max(ratios) > MAX_COARSER:
            raise RasterError(
                f"{path}: pixels of {gsd[0]:.3g} × {gsd[1]:.3g} m are {max(ratios):.3g}× the "
                f"model's {manifest.gsd_m} m (at most {MAX_COARSER:g}× is accepted): "
                "buildings are too few pixels for it to see; give imagery of at most "
                f"{MAX_COARSER * manifest.gsd_m:g} m pixels"
            )
        off = any(abs(r - 1) > RESAMPLE_TOLERANCE for r in ratios)
        scale = (model_scale(ratios[0]), model_scale(ratios[1])) if off else (1.0, 1.0)
        area = gsd[0] * gsd[1] * _skew_factor(info.transform)
        if off:
            down, across = _model_pixel(gsd, scale)
            notes.append(
                f"GSD {gsd[0]:.3g} × {gsd[1]:.3g} m differs from the model's {manifest.gsd_m} m "
                f"by more than 10 %: the model runs on a grid of {across:.4g} × {down:.4g} m "
                f"pixels fixed in the world ({IMAGE_RESAMPLING.name} resampling), outputs "
                "stay on the input's"
            )
    if info.is_georeferenced and not info.is_north_up:
        notes.append(
            "rotated or south-up geotransform: the model sees the image as stored; outputs "
            "carry the same geotransform"
        )
    block_size = _check_memory(options, manifest, info, bands, scale)
    aoi = None
    if options.aoi is not None:
        if info.crs is None:
            raise RasterError(f"--aoi {options.aoi}: {path} has no CRS to place the AOI on")
        aoi = read_aoi(options.aoi, info.crs, within=bounds(info))
        aoi.check_overlap(bounds(info), path)
    stem = stem or _stem(path)
    return InputPlan(
        info,
        stem,
        bands,
        masked,
        scale,
        area,
        gsd,
        block_size,
        tuple(notes),
        aoi=aoi,
        depth=depth,
        ground=ground,
        warnings=tuple(warnings),
    )


def _check_memory(
    options: InferOptions,
    manifest: Manifest,
    info: RasterInfo,
    bands: tuple[int, ...],
    scale: tuple[float, float],
) -> int:
    """The block size, checked against the memory budget before anything is allocated:
    a chosen size that does not fit is refused; the automatic one shrinks to fit."""
    block_size = choose_block_size(options.block_size, info.block_shape)
    budget = options.memory_budget or default_budget()
    check_raster(info.path, info.height, info.width, budget)
    overlap = run_overlap(manifest, options.overlap)
    itemsize = np.dtype(info.dtype).itemsize
    shape = (info.height, info.width)
    tile = manifest.infer_tile
    cost = BlockCost(block_size, shape, scale, tile, overlap, len(bands), itemsize, READ_BUFFERS)
    if options.block_size is None:
        block_size = largest_block(cost, budget) or block_size
        cost = replace(cost, block=block_size)
    check_block(
        cost,
        budget,
        block_option=options.block_size is not None,
        overlap_option=options.overlap is not None,
    )
    return block_size


def _bit_depth(path: str, info: RasterInfo, bands: tuple[int, ...]) -> tuple[BitDepth, list[str]]:
    """The range the pixels fill (``bit_depth`` for integers wider than a byte, the
    dtype's otherwise), and a warning when sampled pixels exceed it: scaled beyond 1.0,
    they are brighter than anything the model was trained on."""
    if info.dtype == "uint8" or not np.issubdtype(np.dtype(info.dtype), np.integer):
        bits = 8 * np.dtype(info.dtype).itemsize
        return BitDepth(info.dtype, bits, "dtype", None), []
    depth = bit_depth(path, bands)
    warnings = []
    if depth.sampled_max is not None and depth.sampled_max > depth.value_max:
        warnings.append(
            f"{path}: pixels up to {depth.sampled_max} exceed the {depth.bits}-bit range the "
            f"file states (NBITS={depth.bits}); the model sees them brighter than white"
        )
    return depth, warnings


def plan_mosaic(
    scenes: Sequence[SceneInput],
    outdir: Path,
    manifest: Manifest,
    options: InferOptions,
    reads: Collection[Path] = (),
) -> InputPlan:
    """All scenes as one raster named ``options.mosaic``: a VRT in OUTDIR's work area.

    The VRT is written only once the inputs, the options and the outputs are checked
    (reads: the files the run reads, which no output may overwrite).
    """
    name = check_name(options.mosaic or "", "--mosaic")
    out = OutputPaths(outdir, name, options.footprints is not None)
    workdir = outdir / f".{name}.mosaic"
    _check_outputs([out], options.restart, reads, [workdir])
    mosaic = build_mosaic(
        scenes,
        workdir,
        gsd_m=manifest.gsd_m if options.gsd is None else options.gsd,
        crs=options.crs,
        aoi=options.aoi,
        context_m=manifest.infer_tile * manifest.gsd_m,  # a tile: all a model pixel sees
    )
    try:
        plan = plan_input(str(mosaic.path), manifest, options, stem=name)
    except InputError:
        remove(mosaic.workdir)
        raise
    return replace(plan, mosaic=mosaic)


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


def _check_products(plans: Sequence[InputPlan], options: InferOptions) -> None:
    """The grid, building-buffer and TTA options, refused before any work."""
    grid_m = options.grid_m
    if not (math.isfinite(grid_m) and grid_m > 0):
        raise InputError(f"--grid {grid_m:g}: the cells' side must be a positive number of metres")
    for plan in plans:
        cells = plan.info.width * plan.info.height * plan.pixel_area_m2 / grid_m**2
        if cells > MAX_GRID_CELLS:
            raise InputError(
                f"--grid {grid_m:g}: would cut {plan.info.path} into {cells:.3g} cells, more "
                f"than {MAX_GRID_CELLS:.0e}; choose larger cells"
            )
    for metres in options.building_buffers:
        if not (math.isfinite(metres) and metres >= 0):
            raise InputError(f"--building-buffer {metres:g}: must be 0 or more metres")
    if options.viewer not in VIEWER_MODES:
        raise InputError(
            f"--viewer {options.viewer}: unknown mode; choose one of {', '.join(VIEWER_MODES)}"
        )
    if options.tta not in TTA_MODES:
        raise InputError(f"--tta {options.tta}: unknown mode; choose one of {', '.join(TTA_MODES)}")
    if options.footprints is not None:  # bad geometries (NaN vertices) refused now, not after
        for plan in plans:
            if plan.info.crs is not None:
                read_footprints(options.footprints, crs=plan.info.crs, bbox=bounds(plan.info))


def _footprint_files(options: InferOptions) -> list[str]:
    """The files --footprints stands for (a STAC document's too), refused now, not after
    the run, when a local one is not there."""
    files = footprint_files(options.footprints) if options.footprints else []
    for path in files:
        if not is_virtual(path) and not os.path.exists(path):
            raise VectorError(f"--footprints {path}: file not found")
    return files


def _check_outputs(
    paths: Sequence[OutputPaths],
    restart: bool,
    reads: Collection[Path] = (),
    extra: Sequence[Path] = (),
) -> None:
    """Refuse outputs that collide, leave OUTDIR, overwrite an input (``reads``) or,
    without ``restart``, a file that exists; ``extra``: other paths the run writes."""
    stems = [p.stem for p in paths]
    for stem in stems:
        if stems.count(stem) > 1:
            raise InputError(
                f"two inputs are named {stem!r}: their outputs would collide in one directory; "
                "rename one or map them separately"
            )
    if paths:
        check_writes(paths[0].outdir, [*(w for p in paths for w in p.writes), *extra], reads)
    if restart:
        return
    for out in paths:
        if Journal.load(out.journal) is not None and all(p.exists() for p in out.partials.values()):
            continue  # an interrupted run may have published some: resuming finishes them
        for name in out.finals:
            if not (out.outdir / name).exists():
                continue
            if out.journal.exists():  # unreadable, forged or orphaned: it licenses nothing
                raise OutputExistsError(
                    f"{out.journal}: not the journal of a run that can be resumed, and "
                    f"{out.outdir / name} already exists; pass --restart to overwrite it, "
                    "or choose another -o"
                )
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


def bounds(info: RasterInfo) -> tuple[float, float, float, float]:
    corners = [info.transform @ (c, r) for c in (0, info.width) for r in (0, info.height)]
    xs, ys = zip(*corners, strict=True)
    return min(xs), min(ys), max(xs), max(ys)


def source_facts(plan: InputPlan, manifest: Manifest) -> dict[str, Any]:
    info, band_names = plan.info, manifest.bands
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
        "pixel_values": plan.depth.describe() if plan.depth else None,
        "value_max": plan.value_max or manifest.input_scaling.get(info.dtype),
        "ground_pixel": plan.ground.describe() if plan.ground else None,
        "model_grid": list(plan.model_shape),
        "notes": list(plan.notes),
        "aoi": plan.aoi.path if plan.aoi else None,
        "mosaic": plan.mosaic.describe() if plan.mosaic else None,
    }

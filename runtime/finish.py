"""Finishing one mapped input: every output from its sinks, staged, then published.

COGs from the partial rasters; the quicklook, damage grid, polygons and map tiles
from the gathering sinks, completed from the files for what the stream did not
see; per-building damage fed from the probability raster; then the summary and
the report. Everything is staged in a hidden directory and renamed into OUTDIR
when complete.
"""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from stmap.errors import InputError, VectorError
from stmap.io.blocks import LayerReader
from stmap.io.footprints import read_footprints
from stmap.io.vectors import VectorTable, write_vector
from stmap.io.writers import empty_dir, move, publish, remove, write_cog, write_json
from stmap.runtime.buildings import BuildingDamage, building_facts
from stmap.runtime.density_grid import grid_facts, grid_table
from stmap.runtime.gather import Gathered
from stmap.runtime.plan import InputPlan, OutputPaths, Warnings, bounds, source_facts
from stmap.runtime.quicklook import save_quicklook
from stmap.runtime.report import write_report
from stmap.runtime.sinks import DAMAGE, PROB, feed_missing
from stmap.runtime.stream import Session, StreamResult, gather_spec
from stmap.runtime.styles import buildings_style, damage_style, grid_style, write_raster_styles
from stmap.runtime.summary import build_summary
from stmap.runtime.vectorize import polygons_table
from stmap.runtime.viewer import viewer_data


@dataclass
class FinishFacts:
    """What the finished outputs found, for the summary and the report."""

    damaged_area_m2: float
    damaged_polygons: int
    buildings: dict[str, Any] | None
    grid: dict[str, Any]
    viewer: dict[str, Any] | None
    finals: list[str]  # the published file names


def finish_input(
    plan: InputPlan,
    out: OutputPaths,
    session: Session,
    streamed: StreamResult,
    warn: Warnings,
    start: float,
) -> dict[str, Any]:
    """COGs, vectors, grid, quicklook, summary and report of a mapped input, published;
    returns its summary. start: when mapping the input began (``perf_counter``)."""
    t_finalise = time.perf_counter()
    gathered = streamed.gathered or Gathered(
        plan, out, gather_spec(plan, session, trace_damage=False)
    )
    facts = _outputs(plan, out, session, gathered, warn)
    finalise_s = time.perf_counter() - t_finalise
    result = streamed.pipeline
    damaged_area = facts.damaged_area_m2
    if not math.isfinite(damaged_area):  # polygons have no area without a CRS
        damaged_area = result.damaged_pixels * plan.pixel_area_m2
    summary = build_summary(
        source=source_facts(plan, session.bundle.manifest),
        bundle=session.bundle,
        run=streamed.run.as_dict(),
        pipeline=result,
        finalise_s=finalise_s,
        seconds=time.perf_counter() - start,
        pixel_area_m2=plan.pixel_area_m2,
        damaged_area_m2=damaged_area,
        damaged_polygons=facts.damaged_polygons,
        buildings=facts.buildings,
        grid=facts.grid,
        outputs=[str(out.outdir / name) for name in facts.finals],
        warnings=warn.items,
    )
    write_report(
        out.staging / out.final("report.html"),
        summary,
        out.staging / out.final("quicklook.png"),
        viewer=facts.viewer,
    )
    write_json(out.staging / out.final("summary.json"), summary)
    if facts.viewer is not None:
        remove(out.outdir / out.final("map"))  # a folder is not replaced by a rename
    publish(out.staging, out.outdir)
    out.discard_work()
    if plan.mosaic is not None:
        remove(plan.mosaic.workdir)
    return summary


def _outputs(
    plan: InputPlan, out: OutputPaths, session: Session, gathered: Gathered, warn: Warnings
) -> FinishFacts:
    """COGs, polygons, buildings, damage grid, quicklook and map, staged for publication.

    The sinks are completed from the partial rasters, not the COGs, so none waits for
    another: the COGs (GDAL, multi-threaded), the quicklook (rendering, PNG) and the
    map's lower levels run in threads beside the polygons and buildings.
    """
    empty_dir(out.staging)
    options, threshold = session.options, session.threshold
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="stmap-finalise") as pool:
        cogs = pool.submit(_write_cogs, out)
        gathered = gathered.complete()
        png = out.staging / out.final("quicklook.png")
        quicklook = pool.submit(
            save_quicklook, png, gathered.image, gathered.prob, threshold=threshold
        )
        tiles = gathered.tiles
        levels = [pool.submit(t.finish) for t in ([tiles.image, tiles.prob] if tiles else [])]
        info = plan.info
        polygons = polygons_table(gathered.tracer.finish(), info.crs, info.transform)
        write_vector(out.staging / out.final("damage.gpkg"), polygons, style=damage_style())
        areas = polygons.attributes["area_m2"]
        buildings = None
        if options.footprints is not None:
            buildings = _buildings(plan, out, session, warn)
        grid = grid_table(gathered.grid.finish(), buildings)
        write_vector(
            out.staging / out.final("grid.gpkg"),
            grid,
            geometry_type="Polygon",
            style=grid_style(options.grid_m),
        )
        viewer = None
        if tiles is not None:
            for level in levels:
                level.result()
            move(out.map_work, out.staging / out.final("map"))
            viewer = viewer_data(
                tiles=out.final("map"),
                pyramid=tiles.pyramid,
                crs=info.crs,
                transform=info.transform,
                metres_per_px=math.sqrt(plan.pixel_area_m2),
                threshold=threshold,
                cell_m=options.grid_m,
                damage=polygons,
                buildings=buildings,
                grid=grid,
            )
        cogs.result()
        quicklook.result()
    return FinishFacts(
        damaged_area_m2=float(areas.sum()) if len(polygons) else 0.0,
        damaged_polygons=len(polygons),
        buildings=None if buildings is None else building_facts(buildings),
        grid=grid_facts(grid, options.grid_m),
        viewer=viewer,
        finals=[
            *(p.name for p in sorted(out.staging.iterdir())),
            out.final("report.html"),
            out.final("summary.json"),
        ],
    )


def _write_cogs(out: OutputPaths) -> None:
    for layer, name, resampling in (
        (PROB, "damage_prob.tif", "average"),
        (DAMAGE, "damage.tif", "nearest"),
    ):
        target = out.staging / out.final(name)
        write_cog(out.partials[layer], target, overview_resampling=resampling)
    write_raster_styles(
        out.staging / out.final("damage_prob.tif"), out.staging / out.final("damage.tif")
    )


def _buildings(
    plan: InputPlan, out: OutputPaths, session: Session, warn: Warnings
) -> VectorTable | None:
    """Per-building damage into the staging directory; a warning when it cannot be done."""
    info, options = plan.info, session.options
    footprints = options.footprints
    if info.crs is None:
        warn(f"--footprints {footprints}: {info.path} has no CRS to place them on; skipped")
        return None
    try:
        table = read_footprints(footprints, crs=info.crs, bbox=bounds(info))
    except (VectorError, InputError) as exc:
        warn(f"--footprints {footprints}: cannot be used ({exc}); no buildings output")
        return None
    if plan.aoi is not None:  # nothing was mapped outside the AOI
        table = table.take(plan.aoi.touches(table.geometries))
    if len(table) == 0:
        warn(f"--footprints {footprints}: no footprint overlaps {info.path}; no buildings output")
        return None
    sink = BuildingDamage(
        info, table, threshold=session.threshold, buffers_m=options.building_buffers
    )
    with LayerReader(out.partials, None) as reader:
        feed_missing([sink], reader)
    buildings = sink.finish()
    write_vector(out.staging / out.final("buildings.gpkg"), buildings, style=buildings_style())
    return buildings

"""``S_report.html``: one self-contained page a coordinator opens in a browser.

Everything is inline (the quicklook as a base64 PNG, the scale bar, north arrow and
histogram as SVG, the styles in one <style>, the zoomable map's library and vectors,
``viewer``), so the file opens offline; it names no URL, and the only files it loads
are the map's tiles beside it (``S_map/``). The page is a pure function of the run's
summary, the quicklook's bytes and the map's data: every figure on it is one the
summary or the output layers also hold, and it holds no timing, so the same run
gives the same page byte for byte.
"""

from __future__ import annotations

import base64
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from stmap.bundle import default_bundle_path
from stmap.io.writers import write_text

from .buildings import LABEL_FRACTION
from .quicklook import DAMAGE_EDGE, DAMAGE_FILL, FILL_ALPHA, NO_IMAGE
from .viewer import map_section

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Bundles trained before the provenance recorded ``training_data`` name only their
# regions; one whose regions all bear the names of stmap synth's styles of that time was
# trained on synthetic cities. Frozen: the runtime does not know the generator.
LEGACY_SYNTHETIC_REGIONS = frozenset({"citycentre", "oldtown", "village", "periurban"})
_STYLE = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d232a;
margin:0 auto;max-width:1080px;padding:20px 28px 48px;background:#fff}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;
border-bottom:1px solid #d6dbe0;padding-bottom:4px}
.sub{color:#56606b;margin:0 0 14px}
.warn{background:#fff4e0;border-left:5px solid #e08a00;padding:10px 14px;margin:12px 0}
.map{position:relative;line-height:0;border:1px solid #c8ced4}
.map img{width:100%;height:auto;image-rendering:pixelated}
.map svg{position:absolute;left:0;top:0;width:100%;height:100%}
.legend{display:flex;flex-wrap:wrap;gap:6px 22px;margin:8px 0 0;font-size:14px}
.key{display:inline-block;width:16px;height:12px;margin-right:6px;vertical-align:-1px;
border:1px solid #777}
.figures{display:grid;grid-template-columns:repeat(auto-fill,minmax(190px,1fr));gap:10px}
.figure{border:1px solid #d6dbe0;border-radius:6px;padding:8px 12px}
.figure b{display:block;font-size:20px}.figure span{color:#56606b;font-size:13px}
table{border-collapse:collapse;font-size:14px;margin:4px 0}
td,th{border-bottom:1px solid #e3e7eb;padding:4px 10px;text-align:left;vertical-align:top}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
code{font-size:13px;word-break:break-all}
@media print{body{padding:0}.map img{image-rendering:auto}}
"""


def render_report(
    summary: Mapping[str, Any], quicklook_png: bytes, viewer: Mapping[str, Any] | None = None
) -> str:
    """The report page of one input.

    summary: the input's ``S_summary.json`` object (``build_summary``).
    quicklook_png: the bytes of ``S_quicklook.png``, drawn over the input's extent.
    viewer: the zoomable map's data (``viewer.viewer_data``), shown above the
        quicklook; None: the quicklook alone.
    """
    source = summary["inputs"][0]
    name = Path(str(source["path"]).rstrip("/")).stem
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>Damage map: {escape(name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Building damage: {escape(name)}</h1>",
        f'<p class="sub">Mapped by stmap {escape(str(summary["stmap_version"]))} with the '
        f"model {escape(str(summary['model']['name']))}; every figure is in "
        f"<code>{escape(name)}_summary.json</code>.</p>",
        f'<p class="warn"><b>What the model knows.</b> {escape(training_note(summary["model"]))}'
        "</p>",
        *_warnings(summary["warnings"]),
        "<h2>Map</h2>",
        *map_section(viewer),
        _map(quicklook_png, source, summary["model"]),
        "<h2>Figures</h2>",
        _figures(summary),
        "<h2>Buildings by damaged fraction</h2>",
        _histogram_section(summary.get("buildings")),
        "<h2>Most damaged grid cells</h2>",
        _worst_cells(summary.get("grid")),
        "<h2>Inputs</h2>",
        _inputs(source),
        "<h2>Model and provenance</h2>",
        _model(summary["model"]),
        "<h2>Run</h2>",
        _run(summary),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def write_report(
    target: str | os.PathLike[str],
    summary: Mapping[str, Any],
    quicklook: str | os.PathLike[str],
    *,
    viewer: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``render_report`` of ``summary`` and the PNG at ``quicklook`` to ``target``.

    The page appears at ``target`` only once complete.
    """
    target = Path(target)
    write_text(target, render_report(summary, Path(quicklook).read_bytes(), viewer))
    return target


def training_note(model: Mapping[str, Any]) -> str:
    """One honest sentence on what the model was trained on, and what that allows."""
    provenance = model.get("provenance") or {}
    trained_on = provenance.get("trained_on")
    regions = provenance.get("regions") or []
    # The shipped demo predates ``training_data``: it is known by where it lies.
    shipped = _same_path(model.get("path"), default_bundle_path())
    if shipped or trained_on_synthetic(provenance):
        return (
            ("This is the demo model shipped with stmap: it was " if shipped else "It was ")
            + "trained on synthetic cities only (stmap synth"
            + (f": {', '.join(regions)}" if regions else "")
            + "). It shows how the tool works, not where real buildings are damaged: "
            "do not use this map for real decisions."
        )
    if trained_on:
        return (
            f"{trained_on} Its accuracy is known only on data like that; check the map "
            "against a few buildings whose state is known before relying on it."
        )
    return (
        "The model's bundle does not say what it was trained on, so nothing is known "
        "of its accuracy here; treat this map as unverified."
    )


def trained_on_synthetic(provenance: Mapping[str, Any]) -> bool:
    """The provenance says the model saw synthetic cities only (``training_data``, or for
    an older bundle without it, its regions' names: ``LEGACY_SYNTHETIC_REGIONS``)."""
    kind = provenance.get("training_data")
    if kind is not None:
        return kind == "synthetic"
    regions = provenance.get("regions") or []
    return bool(regions) and all(region in LEGACY_SYNTHETIC_REGIONS for region in regions)


def png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG from its header."""
    if png[:8] != _PNG_SIGNATURE or png[12:16] != b"IHDR":
        raise ValueError("not a PNG image")
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def scale_bar_metres(ground_width_m: float) -> float:
    """A round length (1, 2 or 5 × 10^k m) near a fifth of the map's width."""
    target = ground_width_m / 5
    power = 10 ** math.floor(math.log10(target))
    return max(step * power for step in (1, 2, 5) if step * power <= target)


def north_angle(transform: Sequence[float]) -> float:
    """Degrees clockwise from the image's up to grid north, for a (a, b, c, d, e, f) transform."""
    a, b, _, d, e, _ = transform
    det = a * e - b * d
    col, row = -b / det, a / det  # the pixel step that moves one unit north
    return math.degrees(math.atan2(col, -row))


def _map(png: bytes, source: Mapping[str, Any], model: Mapping[str, Any]) -> str:
    width, height = png_size(png)
    gsd = source.get("gsd_m")
    assumed = gsd is None
    metres_per_px = (gsd[0] if gsd else model["gsd_m"]) * source["width"] / width
    overlay = _overlay(width, height, metres_per_px, None if assumed else source["transform"])
    image = base64.b64encode(png).decode("ascii")
    legend = [
        (_rgb(DAMAGE_FILL, FILL_ALPHA), f"damage (probability > {model['threshold']:g})"),
        (_rgb(DAMAGE_EDGE), "outline of damaged areas"),
        (f"rgb({NO_IMAGE},{NO_IMAGE},{NO_IMAGE})", "no imagery"),
        ("#8a8a8a", "imagery without a prediction (dimmed)"),
    ]
    keys = "".join(
        f'<span><i class="key" style="background:{colour}"></i>{escape(text)}</span>'
        for colour, text in legend
    )
    note = (
        "No georeferencing: the scale assumes the model's GSD and north is unknown."
        if assumed
        else f"One map pixel is {metres_per_px:.3g} m on the ground."
    )
    return (
        f'<div class="map"><img alt="quicklook of the damage map" width="{width}" '
        f'height="{height}" src="data:image/png;base64,{image}">{overlay}</div>'
        f'<div class="legend">{keys}</div><p class="sub">{escape(note)}</p>'
    )


def _overlay(
    width: int, height: int, metres_per_px: float, transform: Sequence[float] | None
) -> str:
    """An SVG in the PNG's pixel units: a scale bar, and a north arrow when georeferenced."""
    unit = min(max(width, height) / 40, min(width, height) / 6)  # scales with the image
    length_m = scale_bar_metres(width * metres_per_px)
    bar = length_m / metres_per_px
    label = f"{length_m / 1000:g} km" if length_m >= 1000 else f"{length_m:g} m"
    x0, y0 = unit, height - unit
    shapes = [
        f'<rect x="{x0 - unit / 3:.1f}" y="{y0 - 1.9 * unit:.1f}" width="{bar + unit / 1.5:.1f}"'
        f' height="{2.3 * unit:.1f}" fill="#fff" fill-opacity="0.8" rx="{unit / 5:.1f}"/>',
        f'<rect x="{x0:.1f}" y="{y0 - unit / 3:.1f}" width="{bar / 2:.1f}" '
        f'height="{unit / 3:.1f}" fill="#111"/>',
        f'<rect x="{x0 + bar / 2:.1f}" y="{y0 - unit / 3:.1f}" width="{bar / 2:.1f}" '
        f'height="{unit / 3:.1f}" fill="#fff" stroke="#111" stroke-width="{unit / 15:.2f}"/>',
        f'<text x="{x0 + bar / 2:.1f}" y="{y0 - unit * 0.6:.1f}" font-size="{unit:.1f}" '
        f'text-anchor="middle" font-family="sans-serif">{label}</text>',
    ]
    if transform is not None:
        cx, cy = width - 1.6 * unit, 2.8 * unit
        shapes.append(
            f'<g transform="translate({cx:.1f} {cy:.1f}) rotate({north_angle(transform):.1f})">'
            f'<rect x="{-1.1 * unit:.1f}" y="{-2.3 * unit:.1f}" width="{2.2 * unit:.1f}" '
            f'height="{3.4 * unit:.1f}" rx="{unit / 4:.1f}" fill="#fff" fill-opacity="0.85"/>'
            f'<text y="{-1.15 * unit:.1f}" font-size="{unit:.1f}" text-anchor="middle" '
            f'font-family="sans-serif" font-weight="bold">N</text>'
            f'<path d="M0 {-0.9 * unit:.1f} L{0.55 * unit:.1f} {0.9 * unit:.1f} L0 '
            f'{0.45 * unit:.1f} L{-0.55 * unit:.1f} {0.9 * unit:.1f} Z" fill="#111"/></g>'
        )
    return (
        f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none" role="img" '
        f'aria-label="scale bar and north arrow">{"".join(shapes)}</svg>'
    )


def _figures(summary: Mapping[str, Any]) -> str:
    damaged_m2 = summary.get("damaged_area_m2")
    items = [
        (f"{summary['area_km2']:.3g} km²", "area mapped"),
        (
            "–" if damaged_m2 is None else f"{damaged_m2 / 1e4:,.2f} ha",
            "damaged area (probability above the threshold)",
        ),
        (f"{summary['damaged_polygons']:,}", "damaged areas (polygons)"),
    ]
    buildings = summary.get("buildings")
    if buildings:
        items += [
            (f"{buildings['total']:,}", "buildings (footprints)"),
            (f"{buildings['damaged']:,}", "labelled damaged"),
            (f"{buildings['undamaged']:,}", "labelled undamaged"),
            (f"{buildings['unknown']:,}", "unknown (no imagery over most of it)"),
        ]
    grid = summary.get("grid")
    if grid:
        items.append(
            (
                f"{grid['cells_with_damage']:,} of {grid['cells']:,}",
                f"{grid['cell_m']:g} m cells with damage",
            )
        )
    valid = summary["valid_pixels"] / summary["pixels"] if summary["pixels"] else 0.0
    items.append((f"{100 * valid:.1f} %", "of the scene had imagery"))
    return (
        '<div class="figures">'
        + "".join(
            f'<div class="figure"><b>{escape(value)}</b><span>{escape(text)}</span></div>'
            for value, text in items
        )
        + "</div>"
    )


def _histogram_section(buildings: Mapping[str, Any] | None) -> str:
    if not buildings:
        return (
            '<p class="sub">No building footprints were given (<code>--footprints</code>), '
            "so there are no per-building figures.</p>"
        )
    histogram = buildings["damaged_fraction_histogram"]
    missing = histogram["missing"]
    note = f" {missing:,} building(s) had no imagery at all and are left out." if missing else ""
    return histogram_svg(histogram["edges"], histogram["counts"]) + (
        '<p class="sub">Share of each footprint whose pixels are damaged; a building is '
        f"labelled damaged from {LABEL_FRACTION:g}.{escape(note)}</p>"
    )


def histogram_svg(edges: Sequence[float], counts: Sequence[int]) -> str:
    """An inline SVG bar chart of ``counts`` over the bins between ``edges``."""
    width, height, left, bottom, top = 560, 220, 52, 34, 14
    plot_w, plot_h = width - left - 12, height - bottom - top
    peak = max(max(counts, default=0), 1)
    bar_w = plot_w / max(len(counts), 1)
    parts = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
        'aria-label="histogram of damaged fraction" font-family="sans-serif" font-size="12">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" '
        'stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
        f'<text x="{left - 6}" y="{top + 4}" text-anchor="end">{peak:,}</text>',
        f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end">0</text>',
        f'<text x="{left + plot_w / 2}" y="{height - 4}" text-anchor="middle">'
        "damaged fraction of the footprint</text>",
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + i * bar_w
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}" fill="{"#d7191c" if edges[i] >= LABEL_FRACTION else "#7f8c99"}">'
            f"<title>{edges[i]:.2g}–{edges[i + 1]:.2g}: {count:,} buildings</title></rect>"
        )
        if count:
            parts.append(
                f'<text x="{x + bar_w / 2:.1f}" y="{top + plot_h - h - 3:.1f}" '
                f'text-anchor="middle">{count:,}</text>'
            )
    for i, edge in enumerate(edges):
        parts.append(
            f'<text x="{left + i * bar_w:.1f}" y="{top + plot_h + 15}" '
            f'text-anchor="middle">{edge:.2g}</text>'
        )
    return "".join(parts) + "</svg>"


def _worst_cells(grid: Mapping[str, Any] | None) -> str:
    if not grid:
        return '<p class="sub">No grid was computed.</p>'
    cells = grid["worst_cells"]
    if not cells:
        return f'<p class="sub">No {grid["cell_m"]:g} m cell has damage.</p>'
    buildings = "buildings_total" in cells[0]
    head = ["#", "cell", "latitude", "longitude", "damaged m²", "imaged"]
    if buildings:
        head += ["damaged / buildings", "damaged per km²"]
    rows = []
    for rank, cell in enumerate(cells, start=1):
        row = [
            str(rank),
            str(cell["cell_id"]),
            _degrees(cell["centre_lat"]),
            _degrees(cell["centre_lon"]),
            f"{cell['damaged_area_m2']:,.0f}",
            f"{100 * cell['imaged_fraction']:.0f} %",
        ]
        if buildings:
            row += [
                f"{cell['buildings_damaged']:,} / {cell['buildings_total']:,}",
                f"{cell['damaged_building_density_per_km2']:,.0f}",
            ]
        rows.append(row)
    ranked_by = "damaged buildings per km², then damaged area" if buildings else "damaged area"
    return _table(head, rows, numeric_from=2) + (
        f'<p class="sub">{len(cells)} worst of {grid["cells"]:,} cells of {grid["cell_m"]:g} m '
        f"(ranked by {ranked_by}); coordinates are cell centres (WGS84). All cells are in "
        "the grid GeoPackage.</p>"
    )


def _inputs(source: Mapping[str, Any]) -> str:
    gsd = source.get("gsd_m")
    rows = [
        ("file", f"<code>{escape(str(source['path']))}</code>"),
        (
            "size",
            f"{source['width']:,} × {source['height']:,} px, {source['count']} band(s), "
            f"{escape(str(source['dtype']))}",
        ),
        ("CRS", escape(str(source.get("crs") or "none (pixel coordinates)"))),
        ("pixel size", f"{gsd[0]:.3g} × {gsd[1]:.3g} m" if gsd else "unknown"),
        ("bands used", escape(", ".join(f"{k} = {v}" for k, v in source["bands"].items()))),
        ("resampled", "yes, to the model's GSD" if source.get("resampled") else "no"),
        *(("note", escape(str(note))) for note in source.get("notes", [])),
    ]
    return _pairs(rows)


def _model(model: Mapping[str, Any]) -> str:
    provenance = model.get("provenance") or {}
    rows = [
        ("name", escape(str(model["name"]))),
        ("backbone", escape(f"{model['backbone']} ({model['backbone_weights']})")),
        ("bundle", f"<code>{escape(str(model['path']))}</code>"),
        ("hash", f"<code>{escape(str(model['hash']))}</code>"),
        ("tile, GSD", f"{_tile(model)}, {model['gsd_m']:g} m"),
        ("threshold", f"{model['threshold']:g}"),
    ]
    for key, label in (
        ("trained_on", "trained on"),
        ("command", "training command"),
        ("data_root", "training data"),
        ("git_commit", "code commit"),
        ("stmap_version", "trained with stmap"),
    ):
        if provenance.get(key):
            rows.append((label, f"<code>{escape(str(provenance[key]))}</code>"))
    rows += _adaptation_rows(provenance.get("adaptation") or {})
    table = _pairs(rows)
    metrics = (model.get("metrics") or {}).get("mean_over_regions") or {}
    for protocol, scores in metrics.items():
        names = [k for k, v in scores.items() if isinstance(v, int | float)]
        table += f"<p>Validation scores ({escape(str(protocol))}, mean over regions):</p>"
        table += _table(names, [[f"{scores[k]:.3f}" for k in names]], numeric_from=0)
    adaptation = (model.get("metrics") or {}).get("adaptation") or {}
    if adaptation.get("before") and adaptation.get("after"):
        names = ["auc", "precision", "recall", "f1", "iou1"]
        table += (
            "<p>Adaptation to this event's labels, on labelled pixels only "
            f"({escape(str(adaptation.get('validation', '')))}):</p>"
        )
        table += _table(
            ["", *names],
            [
                [when, *(_score(adaptation[when].get(k)) for k in names)]
                for when in ("before", "after")
            ],
            numeric_from=1,
        )
    return table


def _adaptation_rows(adaptation: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Where an adapted bundle came from (``stmap adapt``): source bundle and labels."""
    if not adaptation:
        return []
    digest = str(adaptation.get("source_bundle_hash"))[:12]
    source = f"{adaptation.get('source_bundle')} (hash {digest})"
    counts = adaptation.get("label_counts") or {}
    labels = (
        f"{adaptation.get('labels')} (SHA-256 {str(adaptation.get('labels_sha256'))[:12]}; "
        + ", ".join(f"{v} {k}" for k, v in counts.items())
        + ")"
    )
    return [
        ("adapted from", f"<code>{escape(source)}</code>"),
        ("adapted on labels", f"<code>{escape(labels)}</code>"),
        ("adaptation command", f"<code>{escape(str(adaptation.get('command', '')))}</code>"),
    ]


def _score(value: Any) -> str:
    return "—" if value is None else f"{value:.3f}"


def _run(summary: Mapping[str, Any]) -> str:
    """How the map was made; timings stay in the summary, so the page is reproducible."""
    rows = [
        ("backend", escape(f"{summary['backend']} on {summary['device']}")),
        ("precision", escape(str(summary["precision"]))),
        ("test-time augmentation", escape(str(summary["tta"]))),
        (
            "outputs",
            "<br>".join(f"<code>{escape(Path(o).name)}</code>" for o in summary["outputs"]),
        ),
    ]
    return _pairs(rows)


def _warnings(warnings: Iterable[str]) -> list[str]:
    return [f'<p class="warn"><b>Warning.</b> {escape(str(w))}</p>' for w in warnings]


def _pairs(rows: Iterable[tuple[str, str]]) -> str:
    """A two-column table of (label, already escaped HTML) rows."""
    body = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int) -> str:
    """A table of plain-text cells; columns from ``numeric_from`` on are right-aligned."""

    def cell(tag: str, i: int, text: str) -> str:
        css = ' class="n"' if i >= numeric_from else ""
        return f"<{tag}{css}>{escape(text)}</{tag}>"

    header = "".join(cell("th", i, h) for i, h in enumerate(head))
    body = "".join(
        "<tr>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>" for row in rows
    )
    return f"<table><tr>{header}</tr>{body}</table>"


def _degrees(value: float | None) -> str:
    return "–" if value is None else f"{value:.5f}"


def _rgb(colour: Sequence[float], alpha: float = 1.0) -> str:
    """A CSS colour for the quicklook's ``colour`` drawn at ``alpha`` over mid grey."""
    r, g, b = (round(alpha * c + (1 - alpha) * 128) for c in colour)
    return f"rgb({r},{g},{b})"


def _same_path(path: Any, other: Path) -> bool:
    return bool(path) and Path(str(path)).resolve() == other.resolve()


def _tile(model: dict[str, Any]) -> str:
    """The tile the map was made with, and the training tile where that differs."""
    trained = model.get("trained_tile_size", model["tile_size"])
    same = trained == model["tile_size"]
    return f"{model['tile_size']} px" + ("" if same else f" (trained on {trained} px)")

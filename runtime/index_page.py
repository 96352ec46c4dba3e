"""``run_index.html``: one page for a mapping of many scenes, linking each scene's report.

A coordinator given a folder of fifty reports needs the one that matters first: the
page lists the scenes with their figures, most damaged first, each name linking to
its ``S_report.html`` (a relative link, so the folder can be moved or copied). It is
a pure function of ``run_summary.json`` and names no URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape
from pathlib import Path
from typing import Any

from stmap.io.writers import write_text

from .report import _STYLE

INDEX = "run_index.html"


def render_index(combined: Mapping[str, Any]) -> str:
    """The index page of a run's combined summary (``summary.run_summary``)."""
    runs = sorted(combined["runs"], key=lambda s: (-(s.get("damaged_area_m2") or 0.0), _stem(s)))
    with_buildings = any(s.get("buildings") for s in runs)
    head = ["scene", "area km²", "damaged ha", "damaged areas"]
    if with_buildings:
        head += ["buildings damaged / all"]
    head += ["warnings"]
    rows = []
    for s in runs:
        stem = _stem(s)
        damaged = s.get("damaged_area_m2")
        cells = [
            f'<a href="{escape(stem)}_report.html">{escape(stem)}</a>',
            f"{s['area_km2']:.3g}",
            "–" if damaged is None else f"{damaged / 1e4:,.2f}",
            f"{s['damaged_polygons']:,}",
        ]
        if with_buildings:
            b = s.get("buildings")
            cells.append(f"{b['damaged']:,} / {b['total']:,}" if b else "–")
        cells.append(str(len(s.get("warnings", []))))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    header = "".join(f"<th>{escape(h)}</th>" for h in head)
    total_ha = combined["damaged_area_m2"] / 1e4
    return (
        "\n".join(
            [
                "<!DOCTYPE html>",
                '<html lang="en"><head><meta charset="utf-8">',
                '<meta name="viewport" content="width=device-width,initial-scale=1">',
                f"<title>Building damage: {combined['scenes']} scenes</title>"
                f"<style>{_STYLE}</style></head><body>",
                f"<h1>Building damage: {combined['scenes']} scenes</h1>",
                f'<p class="sub">{combined["area_km2"]:.3g} km² mapped, {total_ha:,.2f} ha '
                f"damaged in {combined['damaged_polygons']:,} areas; mapped by stmap "
                f"{escape(str(combined['stmap_version']))}. Every figure is in "
                "<code>run_summary.json</code>; each scene's report has its zoomable map.</p>",
                "<h2>Scenes, most damaged first</h2>",
                f"<table><tr>{header}</tr>{''.join(rows)}</table>",
                "</body></html>",
            ]
        )
        + "\n"
    )


def write_index(outdir: Path, combined: Mapping[str, Any]) -> Path:
    """Write the index page into ``outdir``, atomically."""
    target = outdir / INDEX
    write_text(target, render_index(combined))
    return target


def _stem(summary: Mapping[str, Any]) -> str:
    """The stem naming a scene's outputs (its report is ``STEM_report.html``)."""
    report = next(o for o in summary["outputs"] if o.endswith("_report.html"))
    return Path(report).name.removesuffix("_report.html")

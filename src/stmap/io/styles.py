"""QGIS styles for the outputs: ``.qml`` sidecars of rasters, ``layer_styles`` rows of GeoPackages.

QGIS applies a style automatically in two places: a ``NAME.qml`` file beside a
raster ``NAME.tif``, and the row of a GeoPackage's ``layer_styles`` table that is
marked ``useAsDefault`` for the layer (the table QGIS itself writes on "Save as
default"). Both hold the same QML document; the table also holds an SLD version
for other clients (GeoServer, MapServer). The documents are built with
ElementTree, so they are well-formed XML whatever the labels hold.
"""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from stmap.errors import VectorError
from stmap.io.writers import write_failure, write_text

QGIS_VERSION = "3.28.0"  # the oldest long-term release whose QML these documents follow
RGBA = tuple[int, int, int, int]
_SLD = "http://www.opengis.net/sld"
_SE = "http://www.opengis.net/se"
_OGC = "http://www.opengis.net/ogc"


@dataclass(frozen=True)
class Fill:
    """A polygon symbol: fill and outline colours (RGBA 0-255), outline width in mm."""

    fill: RGBA
    outline: RGBA
    width_mm: float = 0.26


@dataclass(frozen=True)
class Category:
    """Features whose ``field`` equals ``value`` get ``symbol``."""

    value: str
    label: str
    symbol: Fill


@dataclass(frozen=True)
class Range:
    """Features whose ``field`` lies in [lower, upper] get ``symbol``."""

    lower: float
    upper: float
    label: str
    symbol: Fill


@dataclass(frozen=True)
class VectorStyle:
    """One layer's style: a single symbol, categories or ranges of ``field``."""

    name: str
    description: str
    single: Fill | None = None
    field: str | None = None
    categories: Sequence[Category] = ()
    ranges: Sequence[Range] = ()

    def qml(self) -> str:
        root = _qgis_root("Symbology")
        if self.single is not None:
            renderer = ET.SubElement(root, "renderer-v2", type="singleSymbol", **_RENDERER)
            symbols = [self.single]
        elif self.categories:
            renderer = ET.SubElement(
                root, "renderer-v2", type="categorizedSymbol", attr=str(self.field), **_RENDERER
            )
            parent = ET.SubElement(renderer, "categories")
            for i, c in enumerate(self.categories):
                ET.SubElement(
                    parent, "category", render="true", symbol=str(i), value=c.value, label=c.label
                )
            symbols = [c.symbol for c in self.categories]
        else:
            renderer = ET.SubElement(
                root,
                "renderer-v2",
                type="graduatedSymbol",
                attr=str(self.field),
                graduatedMethod="GraduatedColor",
                **_RENDERER,
            )
            parent = ET.SubElement(renderer, "ranges")
            for i, r in enumerate(self.ranges):
                ET.SubElement(
                    parent,
                    "range",
                    render="true",
                    symbol=str(i),
                    lower=f"{r.lower:g}",
                    upper=f"{r.upper:g}",
                    label=r.label,
                )
            symbols = [r.symbol for r in self.ranges]
        holder = ET.SubElement(renderer, "symbols")
        for i, symbol in enumerate(symbols):
            _fill_symbol(holder, str(i), symbol)
        return _document(root)

    def sld(self, layer: str) -> str:
        """The same symbology as an SLD 1.1 document (rules, no legend niceties)."""
        ET.register_namespace("", _SLD)
        ET.register_namespace("se", _SE)
        ET.register_namespace("ogc", _OGC)
        root = ET.Element(f"{{{_SLD}}}StyledLayerDescriptor", version="1.1.0")
        named = ET.SubElement(root, f"{{{_SLD}}}NamedLayer")
        ET.SubElement(named, f"{{{_SE}}}Name").text = layer
        user = ET.SubElement(named, f"{{{_SLD}}}UserStyle")
        ET.SubElement(user, f"{{{_SE}}}Name").text = self.name
        rules = ET.SubElement(user, f"{{{_SE}}}FeatureTypeStyle")
        if self.single is not None:
            _sld_rule(rules, self.name, None, self.single)
        for c in self.categories:
            test = _ogc("PropertyIsEqualTo", str(self.field), c.value)
            _sld_rule(rules, c.label, test, c.symbol)
        for r in self.ranges:
            test = ET.Element(f"{{{_OGC}}}And")
            test.append(_ogc("PropertyIsGreaterThanOrEqualTo", str(self.field), f"{r.lower:g}"))
            test.append(_ogc("PropertyIsLessThanOrEqualTo", str(self.field), f"{r.upper:g}"))
            _sld_rule(rules, r.label, test, r.symbol)
        return ET.tostring(root, encoding="unicode", xml_declaration=False) + "\n"


_RENDERER = {"symbollevels": "0", "enableorderby": "0", "forceraster": "0"}


def pseudocolor_qml(stops: Sequence[tuple[float, RGBA, str]], maximum: float) -> str:
    """A single-band raster style interpolating colour and opacity between ``stops``.

    stops: (pixel value, RGBA, label); an alpha of 0 makes that value transparent.
    maximum: the largest data value (the band's nodata is transparent on its own).
    """
    root = _qgis_root("AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe,
        "rasterrenderer",
        type="singlebandpseudocolor",
        band="1",
        opacity="1",
        alphaBand="-1",
        classificationMin=f"{stops[0][0]:g}",
        classificationMax=f"{maximum:g}",
        nodataColor="",
    )
    ET.SubElement(renderer, "rasterTransparency")
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader")
    shader.attrib.update(
        colorRampType="INTERPOLATED",
        classificationMode="1",
        clip="0",
        minimumValue=f"{stops[0][0]:g}",
        maximumValue=f"{maximum:g}",
        labelPrecision="2",
    )
    for value, rgba, label in stops:
        ET.SubElement(
            shader, "item", value=f"{value:g}", color=_hex(rgba), alpha=str(rgba[3]), label=label
        )
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return _document(root)


def paletted_qml(entries: Sequence[tuple[int, RGBA, str]]) -> str:
    """A single-band class raster style: one colour (and opacity) per pixel value."""
    root = _qgis_root("AllStyleCategories")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(
        pipe, "rasterrenderer", type="paletted", band="1", opacity="1", alphaBand="-1"
    )
    renderer.set("nodataColor", "")
    ET.SubElement(renderer, "rasterTransparency")
    palette = ET.SubElement(renderer, "colorPalette")
    for value, rgba, label in entries:
        ET.SubElement(
            palette,
            "paletteEntry",
            value=str(value),
            color=_hex(rgba),
            alpha=str(rgba[3]),
            label=label,
        )
    ET.SubElement(pipe, "brightnesscontrast", brightness="0", contrast="0", gamma="1")
    ET.SubElement(pipe, "rasterresampler", maxOversampling="2")
    ET.SubElement(root, "blendMode").text = "0"
    return _document(root)


def qml_sidecar(raster: Path) -> Path:
    """Where QGIS looks for a raster's default style: ``NAME.qml`` beside ``NAME.tif``."""
    return raster.with_suffix(".qml")


def write_qml(raster: Path, qml: str) -> Path:
    """Write ``qml`` as the sidecar style of ``raster``, atomically."""
    target = qml_sidecar(raster)
    write_text(target, qml)
    return target


def add_layer_style(gpkg: Path, layer: str, geometry_column: str, style: VectorStyle) -> None:
    """Store ``style`` as the default style of ``layer`` in the GeoPackage ``gpkg``.

    The ``layer_styles`` table has the columns QGIS writes and reads, and is
    registered in ``gpkg_contents`` as an attributes table, as GDAL registers it.
    Called on the file before it is renamed into place, so layer and style appear
    together.
    """
    try:
        with sqlite3.connect(gpkg) as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS layer_styles ("
                "id INTEGER PRIMARY KEY AUTOINCREMENT, f_table_catalog TEXT(256), "
                "f_table_schema TEXT(256), f_table_name TEXT(256), "
                "f_geometry_column TEXT(256), styleName TEXT(30), styleQML TEXT, "
                "styleSLD TEXT, useAsDefault BOOLEAN, description TEXT, owner TEXT(30), "
                "ui TEXT(30), update_time DATETIME DEFAULT "
                "(strftime('%Y-%m-%dT%H:%M:%fZ','now')))"
            )
            db.execute(
                "INSERT OR IGNORE INTO gpkg_contents (table_name, data_type, identifier, "
                "description) VALUES ('layer_styles', 'attributes', 'layer_styles', "
                "'QGIS layer styles')"
            )
            db.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, ?, 1, ?, 'stmap', NULL)",
                (
                    layer,
                    geometry_column,
                    style.name,
                    style.qml(),
                    style.sld(layer),
                    style.description,
                ),
            )
        db.close()
    except sqlite3.Error as exc:
        raise VectorError(write_failure(gpkg, exc, " the layer style")) from exc


def _qgis_root(categories: str) -> ET.Element:
    return ET.Element("qgis", version=QGIS_VERSION, styleCategories=categories)


def _document(root: ET.Element) -> str:
    body = ET.tostring(root, encoding="unicode")
    return f"<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n{body}\n"


def _fill_symbol(parent: ET.Element, name: str, fill: Fill) -> None:
    symbol = ET.SubElement(
        parent, "symbol", type="fill", name=name, alpha="1", clip_to_extent="1", force_rhr="0"
    )
    layer = ET.SubElement(symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0"})
    options = ET.SubElement(layer, "Option", type="Map")
    for key, value in (
        ("color", _qgis_rgba(fill.fill)),
        ("style", "solid" if fill.fill[3] else "no"),
        ("outline_color", _qgis_rgba(fill.outline)),
        ("outline_style", "solid" if fill.outline[3] else "no"),
        ("outline_width", f"{fill.width_mm:g}"),
        ("outline_width_unit", "MM"),
        ("joinstyle", "bevel"),
    ):
        ET.SubElement(options, "Option", name=key, type="QString", value=value)


def _sld_rule(parent: ET.Element, name: str, test: ET.Element | None, fill: Fill) -> None:
    rule = ET.SubElement(parent, f"{{{_SE}}}Rule")
    ET.SubElement(rule, f"{{{_SE}}}Name").text = name
    if test is not None:
        ET.SubElement(rule, f"{{{_OGC}}}Filter").append(test)
    symbolizer = ET.SubElement(rule, f"{{{_SE}}}PolygonSymbolizer")
    for tag, colour, extra in (
        ("Fill", fill.fill, ()),
        ("Stroke", fill.outline, (("stroke-width", f"{fill.width_mm * 3.78:.2g}"),)),
    ):
        if not colour[3]:
            continue
        kind = "fill" if tag == "Fill" else "stroke"
        element = ET.SubElement(symbolizer, f"{{{_SE}}}{tag}")
        for key, value in (
            (kind, _hex(colour)),
            (f"{kind}-opacity", f"{colour[3] / 255:.2f}"),
            *extra,
        ):
            ET.SubElement(element, f"{{{_SE}}}SvgParameter", name=key).text = value


def _ogc(operator: str, field: str, literal: str) -> ET.Element:
    element = ET.Element(f"{{{_OGC}}}{operator}")
    ET.SubElement(element, f"{{{_OGC}}}PropertyName").text = field
    ET.SubElement(element, f"{{{_OGC}}}Literal").text = literal
    return element


def _hex(rgba: RGBA) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgba[:3])


def _qgis_rgba(rgba: RGBA) -> str:
    return ",".join(str(c) for c in rgba)

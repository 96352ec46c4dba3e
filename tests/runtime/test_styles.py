"""QGIS styles: the .qml sidecars of the COGs and the GeoPackages' default styles."""

from __future__ import annotations

import sqlite3
import warnings
import xml.etree.ElementTree as ET

import numpy as np
import pyogrio
import pytest
import shapely

from stmap.io.vectors import VectorTable, read_vector, write_vector
from stmap.runtime.styles import (
    buildings_style,
    damage_qml,
    grid_style,
    prob_lut,
    prob_qml,
)


def test_prob_qml_is_a_ramp_over_band_1_transparent_at_0():
    root = ET.fromstring(prob_qml().split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "singlebandpseudocolor" and renderer.get("band") == "1"
    items = renderer.findall("rastershader/colorrampshader/item")
    values = [float(i.get("value")) for i in items]
    assert values == sorted(values) and values[0] == 0 and values[-1] == 254
    assert items[0].get("alpha") == "0" and int(items[-1].get("alpha")) > 200


def test_damage_qml_shows_class_1_only():
    root = ET.fromstring(damage_qml().split("\n", 1)[1])
    renderer = root.find("pipe/rasterrenderer")
    assert renderer.get("type") == "paletted" and renderer.get("band") == "1"
    entries = {e.get("value"): int(e.get("alpha")) for e in renderer.iter("paletteEntry")}
    assert entries == {"0": 0, "1": 255}


def test_prob_lut_matches_the_qml_ramp():
    lut = prob_lut()
    assert lut.shape == (256, 4) and lut[0, 3] == 0 and lut[255, 3] == 0  # 0 and nodata clear
    assert np.all(np.diff(lut[:255, 3].astype(int)) >= 0), "opacity grows with probability"


def _table(n: int) -> VectorTable:
    boxes = np.array([shapely.box(i, 0, i + 1, 1) for i in range(n)], dtype=object)
    labels = np.array(["damaged", "undamaged", "unknown"][:n], dtype=object)
    return VectorTable(
        boxes, {"building_id": np.arange(n, dtype=np.int64), "label": labels}, "EPSG:32637"
    )


def test_geopackage_carries_its_default_style(tmp_path):
    path = tmp_path / "b.gpkg"
    write_vector(path, _table(3), style=buildings_style())
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT f_table_name, f_geometry_column, useAsDefault, styleQML, styleSLD "
            "FROM layer_styles"
        ).fetchall()
        registered = db.execute(
            "SELECT data_type FROM gpkg_contents WHERE table_name = 'layer_styles'"
        ).fetchone()
    db.close()
    assert registered == ("attributes",)
    [(table, geometry, default, qml, sld)] = rows
    assert (table, geometry, default) == ("b", "geom", 1)
    renderer = ET.fromstring(qml.split("\n", 1)[1]).find("renderer-v2")
    assert renderer.get("type") == "categorizedSymbol" and renderer.get("attr") == "label"
    fields = set(pyogrio.read_info(path, layer="b")["fields"])
    assert renderer.get("attr") in fields
    values = {c.get("value") for c in renderer.iter("category")}
    assert values == {"damaged", "undamaged", "unknown"}
    assert ET.fromstring(sld).tag.endswith("StyledLayerDescriptor")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not "More than one layer found"
        assert len(read_vector(path)) == 3, "the data layer is read, not the styles"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.gpkg"]


@pytest.mark.parametrize("cell_m", [100.0, 250.0])
def test_grid_style_grades_the_damaged_area_of_its_cells(cell_m):
    renderer = ET.fromstring(grid_style(cell_m).qml().split("\n", 1)[1]).find("renderer-v2")
    assert renderer.get("attr") == "damaged_area_m2"
    uppers = [float(r.get("upper")) for r in renderer.iter("range")]
    assert uppers[0] == 0 and uppers[-1] == cell_m**2 and uppers == sorted(uppers)

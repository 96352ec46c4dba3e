"""Labels from any vector: presets, overrides, CRS, geometry kinds, regions and pixels."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io.labels import (
    DAMAGED,
    IGNORED,
    UNDAMAGED,
    label_regions,
    normalise,
    read_labels,
)
from stmap.io.vectors import VectorTable

UTM = "EPSG:32637"
X0, Y0 = 500000.0, 4200000.0
PIXELS = Affine(0.5, 0.0, X0, 0.0, -0.5, Y0)


def write_layer(
    path: Path,
    geoms: list[shapely.Geometry],
    fields: dict[str, list],
    crs: str | None = UTM,
    driver: str | None = None,
) -> Path:
    arrays = [
        np.asarray(v, dtype=object if isinstance(v[0], str) else None) for v in fields.values()
    ]
    pyogrio.raw.write(
        str(path),
        shapely.to_wkb(np.asarray(geoms, dtype=object)),
        field_data=arrays,
        fields=list(fields),
        crs=crs,
        driver=driver,
        geometry_type="Unknown",
    )
    return path


def boxes(n: int) -> list[shapely.Geometry]:
    return [shapely.box(X0 + 10 * i, Y0 - 10, X0 + 10 * i + 6, Y0 - 4) for i in range(n)]


def test_ems_grading_maps_current_and_older_products(tmp_path: Path) -> None:
    grades = ["Destroyed", "Damaged", "No visible damage", "Possibly damaged", "Not Applicable", ""]
    path = write_layer(tmp_path / "ems.gpkg", boxes(6), {"damage_gra": grades})
    labels = read_labels(path, UTM)
    assert labels.mapping.preset == "ems"
    assert labels.classes.tolist() == [DAMAGED, DAMAGED, UNDAMAGED, IGNORED, IGNORED, IGNORED]
    older = ["Completely Destroyed", "Highly Damaged", "Not Affected"]
    older.append("Negligible to slight damage")
    old = read_labels(write_layer(tmp_path / "old.gpkg", boxes(4), {"grading": older}), UTM)
    assert old.classes.tolist() == [DAMAGED, DAMAGED, UNDAMAGED, UNDAMAGED]
    assert "'Destroyed'" in labels.describe() and "1 damaged" not in labels.describe()


def test_xbd_unosat_osm_and_binary_presets(tmp_path: Path) -> None:
    xbd = ["major-damage", "destroyed", "no-damage", "minor-damage", "un-classified"]
    labels = read_labels(write_layer(tmp_path / "x.geojson", boxes(5), {"subtype": xbd}), UTM)
    assert (labels.mapping.preset, labels.classes.tolist()) == ("xbd", [1, 1, 0, 0, -1])
    # UNOSAT: the latest pass's field wins; codes as in the Gaza CDA product
    unosat = {"Main_Damage_Site_Class": [6, 6, 6, 6], "Main_Damage_Site_Class_2": [1, 2, 3, 6]}
    labels = read_labels(write_layer(tmp_path / "u.gpkg", boxes(4), unosat), UTM)
    assert labels.mapping.field == "Main_Damage_Site_Class_2"
    assert labels.classes.tolist() == [DAMAGED, DAMAGED, IGNORED, UNDAMAGED]
    osm = {"destroyed:building": ["yes", "house", "", "no"]}
    labels = read_labels(write_layer(tmp_path / "o.geojson", boxes(4), osm), UTM)
    assert (labels.mapping.preset, labels.classes.tolist()) == ("osm", [1, 1, -1, 0])
    binary = {"damage": ["collapsed", "none", "none"], "damaged": [1, 0, 0]}
    labels = read_labels(write_layer(tmp_path / "b.gpkg", boxes(3), binary), UTM)
    assert (labels.mapping.field, labels.classes.tolist()) == ("damaged", [1, 0, 0])


def test_user_overrides_move_values_between_classes(tmp_path: Path) -> None:
    grades = ["Destroyed", "Possibly damaged", "No visible damage"]
    path = write_layer(tmp_path / "ems.gpkg", boxes(3), {"damage_gra": grades})
    labels = read_labels(path, UTM, damaged=["Destroyed", "possibly-damaged"])
    assert labels.classes.tolist() == [DAMAGED, DAMAGED, UNDAMAGED]
    custom = write_layer(tmp_path / "c.gpkg", boxes(3), {"state": ["bad", "ok", "?"]})
    labels = read_labels(custom, UTM, label_field="STATE", damaged=["bad"], undamaged=["ok"])
    assert (labels.mapping.preset, labels.classes.tolist()) == ("custom", [1, 0, -1])
    assert labels.value_counts["?"] == ("unmapped→ignored", 1)


def test_unrecognised_field_names_fields_and_presets(tmp_path: Path) -> None:
    path = write_layer(tmp_path / "c.gpkg", boxes(2), {"state": ["bad", "ok"]})
    with pytest.raises(InputError, match=r"fields found: state; presets: ems \(damage_gra"):
        read_labels(path, UTM)
    with pytest.raises(InputError, match="values: bad, ok"):
        read_labels(path, UTM, label_field="state")
    with pytest.raises(InputError, match="--label-field nope: .* no such field"):
        read_labels(path, UTM, label_field="nope")


@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_file_without_crs_is_refused(tmp_path: Path) -> None:
    # (GeoJSON without a CRS is WGS84 by its specification: a Shapefile without .prj)
    path = write_layer(tmp_path / "n.shp", boxes(2), {"damaged": [1, 0]}, crs=None)
    with pytest.raises(VectorError, match="--labels .*n.shp: the layer has no CRS"):
        read_labels(path, UTM)


def test_zipped_shapefile_any_crs_multi_parts_and_invalid_polygons(tmp_path: Path) -> None:
    bowtie = shapely.Polygon([(X0, Y0), (X0 + 4, Y0 - 4), (X0 + 4, Y0), (X0, Y0 - 4)])
    pair = shapely.MultiPolygon(boxes(3)[1:])
    write_layer(tmp_path / "l.shp", [bowtie, pair], {"damaged": [1, 0]})
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as z:
        for part in tmp_path.glob("l.*"):
            if part.suffix != ".zip":
                z.write(part, part.name)
                part.unlink()
    labels = read_labels(tmp_path / "l.zip", "EPSG:4326")  # reprojected to degrees
    assert labels.classes.tolist() == [1, 1, 0, 0]  # the bowtie repaired into two triangles
    assert any("1 invalid geometries repaired" in n for n in labels.notes)
    assert labels.bounds[0] == pytest.approx(39.0, abs=1)  # degrees, not metres


def test_points_multipoints_kept_lines_skipped_and_counted(tmp_path: Path) -> None:
    multi = shapely.MultiPoint([(X0 + 20, Y0 - 5), (X0 + 30, Y0 - 5)])
    line = shapely.LineString([(X0, Y0), (X0 + 5, Y0)])
    geoms = [multi, line, shapely.Point(X0 + 50, Y0 - 5)]
    path = write_layer(tmp_path / "p.fgb", geoms, {"damaged": [0, 1, 1]}, driver="FlatGeobuf")
    labels = read_labels(path, UTM)
    assert sorted(labels.classes.tolist()) == [0, 0, 1]  # (FlatGeobuf orders spatially)
    assert any("1 line" in n for n in labels.notes)


def test_overlap_and_class_minimum_errors_name_both_sides(tmp_path: Path) -> None:
    path = write_layer(tmp_path / "e.gpkg", boxes(3), {"damaged": [1, 1, 0]})
    labels = read_labels(path, UTM)
    with pytest.raises(InputError, match=r"do not overlap scene.tif: the labels span \(5000"):
        labels.check_overlap((0.0, 0.0, 10.0, 10.0), "scene.tif")
    with pytest.raises(InputError, match="2 damaged and 1 undamaged .* at least 2 of each"):
        labels.check_classes(2)
    labels.check_classes(1)


def test_points_label_footprints_else_disks_and_pixels_stay_unknown() -> None:
    from stmap.io.labels import LabelSet, Mapping

    house = shapely.box(X0 + 2, Y0 - 8, X0 + 8, Y0 - 2)  # 6 m square
    footprints = VectorTable(np.array([house], dtype=object), {}, UTM)
    xy = [(X0 + 5, Y0 - 5), (X0 + 9, Y0 - 5), (X0 + 30, Y0 - 30)]
    points = np.array([shapely.Point(p) for p in xy], dtype=object)
    mapping = Mapping("damaged", "binary", ("1",), ("0",), ("",))
    labels = LabelSet("p", None, UTM, mapping, points, np.array([1, 1, 0], np.int8), points)
    regions = label_regions(labels, footprints=footprints, snap_m=2.0, point_radius_m=2.0)
    assert shapely.equals(regions.geometries[0], house)
    assert shapely.equals(regions.geometries[1], house)  # 1 m away: snapped
    assert regions.geometries[2].area == pytest.approx(np.pi * 4, rel=0.05)  # disk
    target, known, region = regions.rasterise(PIXELS, 80, 80)
    assert known.sum() - 144 == pytest.approx(np.pi * 16, abs=6)  # house + disk pixels
    assert target.sum() == 144 and (target[~known] == 0).all()
    assert (region[known] >= 0).all() and (region[~known] == -1).all()


def test_conflicting_labels_are_unknown() -> None:
    from stmap.io.labels import LabelRegions

    a, b = shapely.box(X0, Y0 - 4, X0 + 4, Y0), shapely.box(X0 + 2, Y0 - 4, X0 + 6, Y0)
    regions = LabelRegions(
        np.array([a, b], dtype=object), np.array([1, 0], np.int8), np.array(["d", "u"], object)
    )
    target, known, _ = regions.rasterise(PIXELS, 8, 12)
    assert known[:, :4].all() and not known[:, 4:8].any() and known[:, 8:].all()
    assert target[:, :4].all() and not target[:, 8:].any()


def test_normalise_folds_case_separators_and_numbers() -> None:
    assert normalise(" Major-Damage ") == "major damage" == normalise("major_damage")
    assert normalise(2.0) == "2" and normalise(None) == "" and normalise(True) == "true"

"""`stmap adapt` and `stmap evaluate --labels` end to end on a tiny bundle and city."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyogrio.raw
import pytest
import shapely
from click.testing import CliRunner

from stmap.bundle import open_bundle
from stmap.cli import main
from stmap.io.vectors import VectorTable, read_vector, write_vector
from tests.conftest import UTM_HALF_METRE, write_band


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def labels_args(city: Path) -> list[str]:
    grading = city.with_name("city_grading.gpkg")
    footprints = city.with_name("city_footprints.gpkg")
    return ["--labels", str(grading), "--footprints", str(footprints)]


def test_adapt_writes_a_normal_bundle_with_provenance_and_figures(
    graded_city: Path, tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "adapted"
    args = ["adapt", "--model", tiny_bundle, graded_city, *labels_args(graded_city)]
    args += ["-o", out, "--epochs", "1", "--fold-block", "40", "--threshold", "fit", "--json"]
    # the process's command line is what provenance records, whoever started the tests
    monkeypatch.setattr(sys, "argv", ["stmap", *map(str, args)])
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "field 'damage_gra' (preset ems)" in result.stderr
    printed = json.loads(result.stdout)
    bundle = open_bundle(out)  # hashes verified
    manifest = bundle.manifest
    origin = manifest.provenance["adaptation"]
    assert origin["source_bundle_hash"] == open_bundle(tiny_bundle).hash()
    assert len(origin["labels_sha256"]) == 64
    assert origin["class_mapping"]["preset"] == "ems"
    assert origin["command"].startswith(f"stmap adapt --model {tiny_bundle} ")
    figures = manifest.metrics["adaptation"]
    assert figures["adapted"] == "decoder" and figures["folds"] >= 2
    for when in ("before", "after"):
        assert 0 <= figures[when]["auc"] <= 1
        assert "No visible damage" in figures[when]["per_class"]
    assert figures["after"]["damaged_pixels"] == figures["before"]["damaged_pixels"]
    assert printed["threshold"] == pytest.approx(manifest.threshold)
    assert len(figures["after"]["fold_thresholds"]) == figures["folds"]  # each from other folds
    source = open_bundle(tiny_bundle).load_segmenter().state_dict()
    adapted = bundle.load_segmenter().state_dict()
    assert source.keys() == adapted.keys()
    changed = [k for k in source if not np.array_equal(source[k].numpy(), adapted[k].numpy())]
    assert changed and all(k.startswith("decoder.") for k in changed)  # tiny: the decoder
    info = run("info", out, "--json")
    assert json.loads(info.stdout)["metrics"]["adaptation"]["before"]["auc"] is not None
    # the bundle is used like any other, and evaluate scores its map against the labels
    mapped = run("infer", graded_city, "--model", out, "-o", tmp_path / "maps", "-q")
    assert mapped.exit_code == 0, mapped.output
    page = (tmp_path / "maps" / "city_report.html").read_text()
    assert "adapted on labels" in page and origin["labels_sha256"][:12] in page
    assert "Adaptation to this event" in page
    prob = tmp_path / "maps" / "city_damage_prob.tif"
    scored = run("evaluate", prob, "--model", out, *labels_args(graded_city), "--json")
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.stdout)["scores"]
    assert scores["threshold"] == pytest.approx(manifest.threshold)
    assert abs(scores["auc"] - figures["before"]["auc"]) < 0.5
    again = run(*args, "-o", out, "--epochs", "1", "--fold-block", "40")
    assert again.exit_code == 2 and "--restart" in again.stderr


@pytest.mark.filterwarnings("ignore:.crs. was not provided")
def test_refusals_exit_2_and_write_nothing(
    graded_city: Path, tiny_bundle: Path, tmp_path: Path
) -> None:
    out = tmp_path / "adapted"
    base = ["adapt", "--model", tiny_bundle, graded_city, "-o", out]
    no_o = run("adapt", graded_city, *labels_args(graded_city))
    assert no_o.exit_code == 2 and "-o is required when the source is the shipped" in no_o.stderr
    far = tmp_path / "far.gpkg"
    labels = read_vector(graded_city.with_name("city_grading.gpkg"))
    moved = shapely.transform(labels.geometries, lambda xy: xy + 50_000)
    write_vector(far, VectorTable(moved, labels.attributes, labels.crs))
    result = run(*base, "--labels", far)
    assert result.exit_code == 2
    assert "do not overlap" in result.stderr
    assert "the labels span (" in result.stderr and "city.tif spans (317" in result.stderr
    one_class = tmp_path / "one.gpkg"
    keep = labels.attributes["damage_gra"] == "No visible damage"
    write_vector(one_class, labels.take(keep))
    result = run(*base, "--labels", one_class)
    assert result.exit_code == 2 and "0 damaged and" in result.stderr
    nameless = tmp_path / "nameless.gpkg"
    ids = {"x": labels.attributes["building_id"]}
    write_vector(nameless, VectorTable(labels.geometries, ids, labels.crs))
    result = run(*base, "--labels", nameless)
    assert result.exit_code == 2 and "fields found: x; presets:" in result.stderr
    no_crs = tmp_path / "nocrs.shp"
    pyogrio.raw.write(
        str(no_crs),
        shapely.to_wkb(labels.geometries),
        field_data=[np.asarray(labels.attributes["damage_gra"], dtype=object)],
        fields=["damage_gra"],
        geometry_type="Point",
    )
    result = run(*base, "--labels", no_crs)
    assert result.exit_code == 2 and "has no CRS" in result.stderr
    assert not out.exists() and not list(tmp_path.glob(".adapted*"))


def test_evaluate_labels_on_a_map_counts_only_labelled_pixels(tmp_path: Path) -> None:
    prob = np.full((40, 40), 254, np.uint8)  # "all damaged" where nothing is labelled
    prob[0:10, 0:10] = 200  # damaged house: above 0.5
    prob[0:10, 20:30] = 30  # intact house: below
    prob[20:30, 0:10] = 150  # intact house flagged: a false positive
    prob[20:30, 20:30] = 255  # nodata: never counts
    path = write_band(tmp_path / "s_damage_prob.tif", prob)
    x0, y0 = UTM_HALF_METRE.c, UTM_HALF_METRE.f
    houses = [
        shapely.box(x0 + c * 0.5, y0 - (r + 10) * 0.5, x0 + (c + 10) * 0.5, y0 - r * 0.5)
        for r, c in ((0, 0), (0, 20), (20, 0), (20, 20))
    ]
    labels = tmp_path / "labels.gpkg"
    fields = {"damaged": np.array([1, 0, 0, 1], np.int32)}
    write_vector(labels, VectorTable(np.array(houses, dtype=object), fields, "EPSG:32637"))
    result = run("evaluate", path, "--labels", labels, "--threshold", "0.5", "--json")
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["scores"]
    assert (scores["damaged_pixels"], scores["undamaged_pixels"]) == (100, 200)
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == 1.0
    assert scores["auc"] == 1.0  # every damaged pixel (200) above every intact one (30, 150)
    assert scores["per_class"]["0"]["flagged_share"] == 0.5
    text = run("evaluate", path, "--labels", labels)
    assert "| scores | 1.000 | 0.500 | 1.000 |" in text.stdout


def test_evaluate_labels_refuses_labels_off_the_map_or_of_one_class(tmp_path: Path) -> None:
    path = write_band(tmp_path / "s_damage_prob.tif", np.full((20, 20), 100, np.uint8))
    x0, y0 = UTM_HALF_METRE.c, UTM_HALF_METRE.f
    inside = [shapely.box(x0 + 1, y0 - 4, x0 + 4, y0 - 1), shapely.box(x0 + 5, y0 - 4, x0 + 8, y0)]
    far = [shapely.box(x0 + 900, y0 - 4, x0 + 904, y0)] * 2
    for name, geoms, values, message in (
        ("far", far, [1, 0], "do not overlap"),
        ("one", inside, [1, 1], "2 damaged and 0 undamaged objects"),
    ):
        labels = tmp_path / f"{name}.gpkg"
        fields = {"damaged": np.array(values, np.int32)}
        write_vector(labels, VectorTable(np.array(geoms, dtype=object), fields, "EPSG:32637"))
        result = run("evaluate", path, "--labels", labels)
        assert result.exit_code == 2 and message in result.stderr, result.output


def test_the_cli_anchor_default_is_the_library_default():
    import click

    from stmap.cli import main
    from stmap.train.adapt import AdaptSettings

    command = main.get_command(click.Context(main), "adapt")
    (option,) = [p for p in command.params if p.name == "anchor"]
    assert option.default == AdaptSettings().anchor > 0

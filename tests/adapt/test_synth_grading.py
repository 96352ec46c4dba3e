"""`stmap synth --grading`: EMS grading points from each building's true state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stmap.cli import main
from stmap.io.labels import read_labels
from stmap.io.vectors import read_vector


def test_grading_points_follow_the_truth_with_possibly_and_wrong_shares(tmp_path: Path) -> None:
    out = tmp_path / "city.tif"
    args = ["synth", str(out), "--size", "512", "--seed", "2", "--grading"]
    result = CliRunner().invoke(main, [*args, "--possibly-damaged", "0.2", "--wrong-grades", "0.1"])
    assert result.exit_code == 0, result.output
    points = read_vector(tmp_path / "city_grading.gpkg")
    footprints = read_vector(tmp_path / "city_footprints.gpkg")
    assert len(points) == len(footprints)
    grade = points.attributes["damage_gra"]
    truth = points.attributes["true_damaged"]
    n = len(grade)
    assert (grade == "Possibly damaged").sum() == round(0.2 * n)
    graded = grade != "Possibly damaged"
    said_damaged = np.isin(grade, ["Destroyed", "Damaged"])
    wrong = graded & (said_damaged != (truth == 1))
    assert wrong.sum() == round(0.1 * (n - round(0.2 * n)))
    assert np.array_equal(truth, footprints.attributes["damaged"])
    inside = [f.contains(p) for f, p in zip(footprints.geometries, points.geometries, strict=True)]
    assert all(inside)
    labels = read_labels(tmp_path / "city_grading.gpkg", "EPSG:32637")
    assert labels.mapping.preset == "ems"


def test_grading_refuses_bad_shares_before_writing(tmp_path: Path) -> None:
    out = tmp_path / "city.tif"
    args = ["synth", str(out), "--size", "128", "--grading", "--wrong-grades", "1.5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2 and "--wrong-grades 1.5" in result.output
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("grading", [False, True])
def test_same_seed_same_points(tmp_path: Path, grading: bool) -> None:
    for name in ("a", "b"):
        args = ["synth", str(tmp_path / f"{name}.tif"), "--size", "256", "--seed", "4"]
        assert CliRunner().invoke(main, args + (["--grading"] if grading else [])).exit_code == 0
    if grading:
        first, second = (tmp_path / f"{n}_grading.gpkg" for n in "ab")
        assert first.read_bytes() == second.read_bytes()
    else:
        assert not (tmp_path / "a_grading.gpkg").exists()

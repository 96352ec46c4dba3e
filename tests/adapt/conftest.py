"""A small synthetic city with EMS grading points: the test bed of adapt and evaluate."""

from __future__ import annotations

from pathlib import Path

import pytest

from stmap.synth import Grading, generate_city


@pytest.fixture(scope="session")
def graded_city(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """city.tif (384 px, 0.5 m), city_footprints.gpkg and city_grading.gpkg."""
    out = tmp_path_factory.mktemp("city") / "city.tif"
    generate_city(out, width=384, height=384, seed=5, damage_rate=0.3, grading=Grading(0.1, 0.0))
    return out

"""Shared by the reliability tests: one tiny model, one 9-block scene, one reference run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.killpoints import Sabotage, run_stmap
from tests.reliability.outputs import STEM, infer_args
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def scene(tmp_path_factory) -> Path:
    """1100 × 1300 px: 3 × 3 blocks of 512 px, the last ones partial."""
    return write_raster(tmp_path_factory.mktemp("scene") / f"{STEM}.tif", smooth_image(1100, 1300))


@pytest.fixture(scope="session")
def reference(tmp_path_factory, scene, bundle) -> Path:
    """OUTDIR of an uninterrupted run: what every interrupted run must end up with."""
    out = tmp_path_factory.mktemp("reference") / "out"
    log = out.with_suffix(".log")
    code = run_stmap(infer_args(scene, out, bundle), log, Sabotage(checkpoint_every_block=True))
    assert code == 0, log.read_text()
    return out

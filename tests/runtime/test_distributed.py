"""``stmap infer --distributed ray``: a local Ray cluster maps scenes, and strips of a
scene, into outputs identical to a single-process run, also when a worker dies."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner

from stmap.cli import main
from stmap.errors import MissingDependencyError
from stmap.io.vectors import read_vector
from stmap.runtime import distributed
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.plan import plan_run
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

BLOCK = 512  # the smallest block: several block rows in a small raster


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for the module: starting one takes seconds."""
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install 'stmap[dev]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A bundle whose outputs vary, a scene of 3 block rows with a nodata corner, two small."""
    root = tmp_path_factory.mktemp("distributed")
    tall = smooth_image(1100, 600, seed=1)
    tall[:, 1024:, 512:] = 0  # the last block holds no valid pixel: never written
    return {
        "bundle": make_varied_bundle(root / "bundle"),
        "tall": write_raster(root / "tall.tif", tall, nodata=0),
        "a": write_raster(root / "a.tif", smooth_image(300, 520, seed=2)),
        "b": write_raster(root / "b.tif", smooth_image(300, 520, seed=3)),
    }


@pytest.fixture(scope="module")
def single(data: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: every scene mapped by a single-process run."""
    out = tmp_path_factory.mktemp("single")
    run_inference([str(data[n]) for n in SCENES], out, _options(data))
    return out


SCENES = ["tall", "a", "b"]


def _options(data: dict[str, Path]) -> InferOptions:
    return InferOptions(model=str(data["bundle"]), block_size=BLOCK)


def assert_same_outputs(expected: Path, actual: Path, stems: list[str]) -> None:
    """Rasters equal bit for bit with their georeferencing; vectors as sets of geometries."""
    for stem in stems:
        for raster in sorted(expected.glob(f"{stem}_*.tif")):
            with rasterio.open(raster) as want, rasterio.open(actual / raster.name) as got:
                assert (got.crs, got.transform, got.nodata) == (want.crs, want.transform, 255)
                np.testing.assert_array_equal(got.read(), want.read(), err_msg=raster.name)
        vectors = sorted(expected.glob(f"{stem}_*.gpkg"))
        assert vectors
        for vector in vectors:
            want, got = read_vector(vector), read_vector(actual / vector.name)
            assert {g.wkb for g in got.geometries} == {g.wkb for g in want.geometries}
    assert not [p.name for p in actual.iterdir() if p.name.startswith(".")], "work files left"


def test_one_scene_is_split_into_strips_of_block_rows(data):
    run = plan_run([str(data["tall"]), str(data["a"])], "unused", _options(data))
    tall, small = distributed.split_scenes(run, workers=2)
    assert tall == [range(0, 1), range(1, 3)]  # 1100 px: 3 rows of 512-px blocks
    assert small == [range(0, 1)]  # smaller than a worker's share: mapped whole


def test_strips_and_scenes_match_a_single_process_run(cluster, data, single, tmp_path):
    scenes = [str(data[n]) for n in SCENES]
    options = ["--model", str(data["bundle"]), "--block-size", str(BLOCK), "--json", "-q"]
    result = CliRunner().invoke(
        main, ["infer", *scenes, "-o", str(tmp_path), "--distributed", "ray", *options]
    )
    assert result.exit_code == 0, result.output
    combined = json.loads(result.stdout)
    assert json.loads((tmp_path / "run_summary.json").read_text()) == combined
    assert [s["inputs"][0]["path"] for s in combined["runs"]] == scenes  # in input order
    tall, a, b = combined["runs"]
    assert tall["strips"] == 2 and "strips" not in a and "strips" not in b
    assert tall["blocks"] == 6 and tall["skipped_pixels"] > 0
    assert tall["pixels"] == 1100 * 600
    assert_same_outputs(single, tmp_path, SCENES)
    assert combined["pixels"] == sum(s["pixels"] for s in combined["runs"])


def test_strips_of_a_resampled_scene_match_a_single_process_run(cluster, data, tmp_path):
    """A scene off the model's GSD runs on a model grid fixed in the world, which starts
    up to a model pixel before the raster: its strips' blocks must read the model pixels
    a single run reads, so the outputs are the same bit for bit."""
    coarse = write_raster(tmp_path / "coarse.tif", smooth_image(1100, 420, seed=4), gsd=0.62)
    run_inference([str(coarse)], tmp_path / "single", _options(data))
    options = ["--model", str(data["bundle"]), "--block-size", str(BLOCK), "--json", "-q"]
    result = CliRunner().invoke(
        main, ["infer", str(coarse), "-o", str(tmp_path / "ray"), "--distributed", "ray", *options]
    )
    assert result.exit_code == 0, result.output
    run = json.loads(result.stdout)  # one scene: its own summary
    assert run["strips"] == 2 and run["inputs"][0]["resampled"]
    assert_same_outputs(tmp_path / "single", tmp_path / "ray", ["coarse"])


def test_a_worker_killed_mid_job_is_restarted_and_outputs_stay_identical(
    cluster, data, single, tmp_path
):
    ray = cluster
    out = tmp_path / "ray"
    before = set(ray.util.list_named_actors())
    outcome: dict[str, object] = {}

    def job() -> None:
        outcome["summaries"] = distributed.run_on_ray([str(data["tall"])], out, _options(data))

    thread = threading.Thread(target=job)
    thread.start()
    # generous: Ray's workers start slowly on a loaded 2-core runner (60 s was not enough
    # beside two trainings), and the loop ends as soon as a strip starts
    deadline = time.monotonic() + 300
    while not list(out.glob(".tall.strip-*.journal.json")):  # a strip is being mapped
        assert time.monotonic() < deadline and thread.is_alive(), "no strip started"
        time.sleep(0.02)
    workers = set(ray.util.list_named_actors()) - before
    assert workers
    for name in workers:
        ray.kill(ray.get_actor(name), no_restart=False)
    assert thread.is_alive(), "the job ended before its workers were killed"
    thread.join(timeout=120)
    assert "summaries" in outcome, "the job did not complete after its workers were killed"
    assert_same_outputs(single, out, ["tall"])


def test_without_ray_the_command_exits_2_with_the_install_hint(data, tmp_path, monkeypatch):
    def missing(name: str):
        raise MissingDependencyError(
            f"{name} is not installed; install it with: pip install 'stmap[distributed]'"
        )

    monkeypatch.setattr(distributed, "lazy_import", missing)
    args = ["infer", str(data["a"]), "-o", str(tmp_path / "out"), "--model", str(data["bundle"])]
    result = CliRunner().invoke(main, [*args, "--distributed", "ray"])
    assert result.exit_code == 2, result.output
    assert "pip install 'stmap[distributed]'" in result.output
    assert not (tmp_path / "out").exists()

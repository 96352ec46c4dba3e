"""Many scenes from one ``stmap infer``: files or a text file of paths, one combined summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from stmap.cli import main
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture
def scenes(tmp_path: Path) -> list[Path]:
    return [
        write_raster(tmp_path / "a.tif", smooth_image(200, 300, seed=1)),
        write_raster(tmp_path / "b.tif", smooth_image(120, 260, seed=2)),
    ]


def infer(bundle: Path, *args: str):
    return CliRunner().invoke(main, ["infer", *args, "--model", str(bundle), "--json", "-q"])


def test_several_files_give_each_scene_its_outputs_and_one_combined_summary(
    bundle, scenes, tmp_path
):
    out = tmp_path / "out"
    result = infer(bundle, *map(str, scenes), "-o", str(out))
    assert result.exit_code == 0, result.output
    combined = json.loads(result.stdout)
    assert json.loads((out / "run_summary.json").read_text()) == combined
    runs = combined["runs"]
    assert [Path(r["inputs"][0]["path"]).name for r in runs] == ["a.tif", "b.tif"]
    for run in runs:
        stem = Path(run["inputs"][0]["path"]).stem
        assert json.loads((out / f"{stem}_summary.json").read_text()) == run
        assert (out / f"{stem}_damage_prob.tif").exists()
    assert combined["scenes"] == 2
    assert combined["pixels"] == 200 * 300 + 120 * 260
    assert combined["damaged_pixels"] == sum(r["damaged_pixels"] for r in runs)
    assert combined["damaged_area_m2"] == pytest.approx(sum(r["damaged_area_m2"] for r in runs))
    assert combined["area_km2"] == pytest.approx(sum(r["area_km2"] for r in runs))
    # the batch's rate is over its wall time, which covers every scene's
    assert combined["seconds"] >= max(r["seconds"] for r in runs)
    assert combined["mpx_per_s"] == pytest.approx(
        combined["pixels"] / 1e6 / combined["seconds"], rel=1e-3
    )


def test_a_text_file_of_paths_maps_every_scene_it_lists(bundle, scenes, tmp_path):
    listing = tmp_path / "scenes.txt"
    listing.write_text("# post-event scenes\na.tif\n\nb.tif\n")  # relative to the list
    out = tmp_path / "out"
    result = infer(bundle, str(listing), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["scenes"] == 2
    for stem in ("a", "b"):
        assert (out / f"{stem}_damage.tif").exists()
    assert (out / "run_summary.json").exists()


def test_one_input_writes_no_combined_summary(bundle, scenes, tmp_path):
    out = tmp_path / "out"
    result = infer(bundle, str(scenes[0]), "-o", str(out))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["pixels"] == 200 * 300
    assert not (out / "run_summary.json").exists()


def test_a_corrupt_second_scene_stops_the_run_before_any_work(bundle, scenes, tmp_path):
    corrupt = tmp_path / "corrupt.tif"
    corrupt.write_bytes(b"II*\x00" + b"\x00" * 64)  # a TIFF header, then nothing readable
    out = tmp_path / "out"
    result = infer(bundle, str(scenes[0]), str(corrupt), "-o", str(out))
    assert result.exit_code == 2, result.output
    assert "corrupt.tif" in result.output
    assert not out.exists(), "nothing is written when an input is bad"

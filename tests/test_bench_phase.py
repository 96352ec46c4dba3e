"""bench_phase: what #20's figures are read from.

``--cost-only --reference-python``: the cost as another stmap ran it. The figure behind
#20's compute bound compares the shipped default with the default of an older
checkout, run by that checkout's interpreter; here the reference is this interpreter,
so its row must describe the same run as the shipped bundle's own.
"""

from __future__ import annotations

import sys
from pathlib import Path

from benchmarks.bench_phase import cost


def test_the_reference_row_comes_first_and_the_rest_relative_to_it(tmp_path: Path) -> None:
    report = cost(256, ["default"], [None], 1, tmp_path, reference_python=sys.executable)
    reference, shipped = report["cost"]
    assert reference["model"] == f"default, as `{sys.executable}` maps it"
    assert shipped["model"] == "default"
    for key in ("tile", "overlap", "tiles", "model_mpx", "backend"):
        assert reference[key] == shipped[key], key
    assert reference["time_vs_first"] == 1.0
    assert shipped["model_px_vs_first"] == 1.0
    assert shipped["time_vs_first"] > 0


def test_the_worst_offset_is_the_one_flipping_most_of_its_flagged_pixels() -> None:
    """#20 bounds the flips and the p99 under any shift: the worst offset is chosen on the
    flips of flagged pixels (a shift with a larger p99 but fewer flips is not it), and
    the largest p99 of any offset is reported beside it."""
    import numpy as np

    from benchmarks.bench_phase import _summarise
    from stmap.runtime.phase import PhaseStats

    def stats(flips: int, p99: int) -> PhaseStats:
        histogram = np.zeros(256, dtype=np.int64)
        histogram[0], histogram[p99] = 90, 10
        return PhaseStats(pixels=100, flips=flips, flagged=50.0, histogram=histogram)

    offsets = [(1, 1), (3, 64), (73, 77)]
    per_style = {"oldtown": [stats(1, 9), stats(3, 2), stats(2, 5)]}
    run = _summarise("m", "pipeline", "m", per_style, offsets, {}, 0.5)
    assert run["worst_offset"]["offset"] == [3, 64]
    assert run["worst_offset"]["flips_of_flagged"] == 3 / 50
    assert run["max_p99_dprob_255"] == 9


def test_the_sweep_compares_every_shift_pixel_for_pixel(monkeypatch) -> None:
    """bench_phase_sweep: with a map that moves exactly with the image (each pixel's value
    its own), all 255 shifts of a stride-16 bundle compare equal, pixel for pixel; a
    crop compared at the wrong place, or a missing shift, fails here."""
    import numpy as np

    import benchmarks.bench_phase_sweep as sweep_module

    def pointwise(model, image: np.ndarray, tile: int) -> np.ndarray:
        return image[0].astype(np.float32) / 255

    monkeypatch.setattr(sweep_module, "whole_image", pointwise)
    rng = np.random.default_rng(0)
    images = {city: rng.integers(0, 255, (3, 64, 80), dtype=np.uint8) for city in ("a", "a#1")}
    run = sweep_module.sweep("default", images, margin=4)
    assert run["shifts"] == 255 and len(run["flips_of_flagged_per_shift"]) == 255
    assert "0,0" not in run["flips_of_flagged_per_shift"]
    assert set(run["flips_of_flagged_per_shift"].values()) == {0.0}
    assert run["pooled"]["max_dprob_255"] == 0 and run["shifts_over_bound"] == 0
    assert run["pooled"]["flagged_share"] > 0.3  # half the random pixels are "damaged"
    assert list(run["per_style"]) == ["a"]  # a style's second city pools into its figures
    assert run["per_style"]["a"]["pixels"] == run["pooled"]["pixels"]


def test_given_rasters_are_mapped_in_place_of_the_cities(tmp_path: Path) -> None:
    """``--images``: real imagery has no labels (no IoU) and a name of its own; here a
    small 0.62 m raster, which the pipeline resamples."""
    import json

    from benchmarks.bench_phase import main
    from stmap.synth import generate_city

    scene = generate_city(tmp_path / "scene.tif", width=384, height=384, gsd=0.62, seed=3)
    stem = tmp_path / "report"
    argv = ["--images", str(scene.image), "--models", "default", "--overlaps", "auto",
            "--offsets", "16,16;5,9", "--out", str(stem)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(stem.with_suffix(".json").read_text())
    (run,) = report["runs"]
    assert report["images"] == [str(scene.image)]
    assert list(run["per_style"]) == ["scene"]
    assert run["iou1_full_city"] is None
    assert run["pooled"]["pixels"] > 0
    assert "The rasters `scene.tif`" in stem.with_suffix(".md").read_text()


def test_the_diagnosis_of_given_rasters_has_no_iou(tmp_path: Path) -> None:
    """``--images --diagnose``: the in-memory variants map a raster without labels too."""
    import json

    from benchmarks.bench_phase import main
    from stmap.synth import generate_city

    scene = generate_city(tmp_path / "scene.tif", width=320, height=320, seed=3)
    stem = tmp_path / "report"
    argv = ["--images", str(scene.image), "--models", "default", "--overlaps", "auto",
            "--offsets", "5,9", "--diagnose", "--out", str(stem)]  # fmt: skip
    assert main(argv) == 0
    runs = json.loads(stem.with_suffix(".json").read_text())["runs"]
    diagnosis = [run for run in runs if run["kind"] == "diagnosis"]
    assert len(diagnosis) == 4
    assert all(run["iou1_full_city"] is None for run in diagnosis)

"""Report maths (mean ± population std over folds, mean over regions), tables, overlays,
and scoring a bundle with evaluate_bundle."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from stmap.train.evaluate import evaluate_bundle
from stmap.train.metrics import METRICS
from stmap.train.reports import (
    FN_COLOUR,
    FP_COLOUR,
    MEAN_ROW,
    OVERLAY_ALPHA,
    TP_COLOUR,
    overlay,
    overlay_sample,
    render_markdown,
    render_tsv,
    summarise,
)


def fold(miou: float, f1: float = 0.5) -> dict[str, float]:
    scores = dict.fromkeys(METRICS, 0.0)
    scores.update(miou=miou, f1=f1)
    return scores


FOLD_SCORES = {"lodo": {"hatay": [fold(0.6), fold(0.8)], "nurdagi": [fold(0.4), fold(0.4)]}}


def test_summary_is_mean_and_population_std_over_folds_then_over_regions():
    block = summarise(FOLD_SCORES)["lodo"]
    assert block["regions"]["hatay"]["miou"] == pytest.approx((0.7, 0.1))  # ddof 0
    assert block["regions"]["nurdagi"]["miou"] == pytest.approx((0.4, 0.0))
    # the mean row: mean and std of the region means (0.7, 0.4)
    assert block["mean"]["miou"] == pytest.approx((0.55, 0.15))
    assert block["mean"]["f1"] == pytest.approx((0.5, 0.0))
    assert block["folds"] == {"hatay": 2, "nurdagi": 2}


def test_tsv_has_a_mean_and_std_column_per_metric_and_a_mean_row():
    lines = render_tsv(summarise(FOLD_SCORES)).splitlines()
    header = lines[0].split("\t")
    assert header[:4] == ["setting", "region", "precision_mean", "precision_std"]
    assert len(header) == 2 + 2 * len(METRICS)
    rows = {line.split("\t")[1]: line.split("\t") for line in lines[1:]}
    assert set(rows) == {"hatay", "nurdagi", MEAN_ROW}
    miou = header.index("miou_mean")
    assert math.isclose(float(rows[MEAN_ROW][miou]), 0.55)


def test_markdown_states_the_run_and_its_differences():
    report = {
        "command_name": "train",
        "title": "protocol lodo",
        "summary": summarise(FOLD_SCORES),
        "facts": ["backbone_rope_jitter: false"],
        "differences": ["One projection head is kept."],
        "overlays": ["a.png"],
    }
    text = render_markdown(report)
    assert "| hatay | 0.0000 ± 0.0000 |" in text
    assert "0.7000 ± 0.1000" in text and f"**{MEAN_ROW}**" in text
    assert "backbone_rope_jitter: false" in text and "One projection head" in text
    assert "true positives green" in text


def test_overlay_colours_true_and_false_positives_and_misses():
    image = torch.zeros(3, 2, 2, dtype=torch.uint8)
    truth = torch.tensor([[True, True], [False, False]])
    predicted = torch.tensor([[True, False], [True, False]])
    out = overlay(image, truth, predicted)
    assert out.dtype.name == "uint8" and out.shape == (3, 2, 2)

    def tinted(pixel, colour) -> bool:  # black blended with the colour, up to rounding
        return all(abs(p - OVERLAY_ALPHA * c) <= 1 for p, c in zip(pixel, colour, strict=True))

    assert tinted(out[:, 0, 0], TP_COLOUR)
    assert tinted(out[:, 0, 1], FN_COLOUR)
    assert tinted(out[:, 1, 0], FP_COLOUR)
    assert out[:, 1, 1].tolist() == [0, 0, 0]


def test_overlay_sample_spreads_over_damaged_tiles_first():
    index = torch.arange(10, 20)
    damaged = torch.tensor([i % 3 == 0 for i in range(10)])  # positions 10, 13, 16, 19
    assert overlay_sample(damaged, index, 2).tolist() == [10, 19]
    assert set(overlay_sample(damaged, index, 6).tolist()) >= {10, 13, 16, 19}
    assert len(overlay_sample(damaged, index, 0)) == 0


def test_evaluate_bundle_scores_each_region_and_writes_the_report(
    tiny_bundle: Path, tile_root: Path, tmp_path: Path
):
    out = tmp_path / "eval"
    report = evaluate_bundle(tiny_bundle, tile_root, ["beta"], out_dir=out, overlays=3)
    block = report["summary"]["evaluate"]
    assert list(block["regions"]) == ["beta"]
    assert block["regions"]["beta"]["miou"][1] == 0.0  # one evaluation, no spread
    assert 0.0 <= block["mean"]["miou"][0] <= 1.0
    assert json.loads((out / "report.json").read_text())["summary"] == json.loads(
        json.dumps(report["summary"])
    )
    assert len(list((out / "overlays").glob("beta_*.png"))) == 3
    assert (out / "report.md").is_file() and (out / "report.tsv").is_file()

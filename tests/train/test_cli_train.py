"""``stmap train`` and ``stmap evaluate``: help, --json, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from stmap.cli import main


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_shows_examples():
    for command in ("train", "evaluate"):
        result = run(command, "--help")
        assert result.exit_code == 0
        assert "Examples:" in result.output and f"stmap {command} " in result.output


def test_train_then_evaluate_with_json(tile_root: Path, tmp_path: Path):
    out = tmp_path / "run"
    result = run(
        "train",
        "--config",
        "fullsup",
        "--set", f"data_root={tile_root}",
        "--set", f"out_dir={out}",
        "--set", "backbone=tiny",
        "--set", "decoder_channels=8",
        "--set", "epochs=1",
        "--set", "k_folds=2",
        "--set", "batch_size=6",
        "--set", "overlays=0",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["bundle"] == str(out / "bundle")
    assert "fullsup" in payload["mean_over_regions"]

    regions = ["--regions", "alpha,beta"]
    result = run("evaluate", "--model", payload["bundle"], str(tile_root), *regions, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report["summary"]["evaluate"]["regions"]) == {"alpha", "beta"}


def test_unknown_key_exits_2_naming_it(tile_root: Path):
    result = run("train", "--config", "lodo", "--set", "lamda_pc=0.1")
    assert result.exit_code == 2
    assert "unknown key 'lamda_pc'" in result.output and "lambda_pc" in result.output


def test_missing_region_exits_2(tiny_bundle: Path, tile_root: Path):
    result = run("evaluate", "--model", str(tiny_bundle), str(tile_root), "--regions", "hatay")
    assert result.exit_code == 2
    assert "'hatay'" in result.output and "alpha, beta" in result.output

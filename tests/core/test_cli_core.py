"""The command group: lazy commands, exit codes, `stmap info`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stmap.bundle import MANIFEST, WEIGHTS
from stmap.cli import COMMANDS, main
from tests.conftest import make_tiny_bundle, write_rgb_raster


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_help_lists_commands_without_importing_them():
    code = (
        "import sys, stmap.cli as c; c.main(['--help'], standalone_mode=False); "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'timm', 'rasterio'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "synth" in out.stdout and "infer" in out.stdout
    assert out.stdout.strip().endswith("[]"), "stmap --help must not import heavy packages"


def test_every_registered_command_imports_and_has_an_example():
    for name, (target, _) in COMMANDS.items():
        command = main.get_command(click.Context(main), name)
        assert isinstance(command, click.Command), target
        assert "stmap " in (command.help or ""), f"{name} --help needs an example"


def test_info_bundle_json_reports_verified_manifest(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    result = run("info", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["kind"] == "bundle" and report["hashes_verified"] is True
    assert report["backbone"] == "tiny" and report["tile_size"] == 128
    assert WEIGHTS in report["files"]


def test_info_on_a_corrupted_bundle_exits_2_with_a_message(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    (path / MANIFEST).write_text("{")
    result = run("info", str(path))
    assert result.exit_code == 2
    assert "manifest.json is corrupted or truncated" in result.stderr


def test_info_raster_says_what_infer_would_do(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "b")
    raster = write_rgb_raster(tmp_path / "x.tif", 300, 200, gsd=0.3)
    result = run("info", str(raster), "--model", str(bundle), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["size"] == [300, 200] and report["bands"] == 3
    assert report["crs"] == "EPSG:32637" and report["gsd_m"] == pytest.approx(0.3)
    assert report["resampled_for_model"] is True
    assert report["model_grid_px"] == [180, 120]


def test_info_on_a_missing_raster(tmp_path):
    result = run(
        "info", str(tmp_path / "none.tif"), "--model", str(make_tiny_bundle(tmp_path / "b"))
    )
    assert result.exit_code == 2
    assert "none.tif: file not found" in result.stderr


def test_info_system_lists_versions_and_backends():
    result = run("info", "--system", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert "torch" in report["installed_backends"] and report["gdal"]


def test_internal_errors_exit_1_and_keep_the_traceback(monkeypatch):
    import stmap.cli.info as info_module

    def bug():
        raise ZeroDivisionError("oops")

    monkeypatch.setattr(info_module, "system_report", bug)
    result = run("info", "--system")
    assert result.exit_code == 1
    assert "internal error: ZeroDivisionError: oops" in result.stderr
    log = result.stderr.split("traceback is in ")[1].strip()
    assert "ZeroDivisionError" in Path(log).read_text()


def test_keyboard_interrupt_exits_130(monkeypatch):
    import stmap.cli.info as info_module

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(info_module, "system_report", interrupted)
    assert run("info", "--system").exit_code == 130

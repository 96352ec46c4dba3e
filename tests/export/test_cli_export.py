"""`stmap export`: exit codes, -o copies, the shipped bundle, JSON output."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
from click.testing import CliRunner

from stmap.bundle import MANIFEST, WEIGHTS, open_bundle
from stmap.cli import main
from stmap.export.parity import TOLERANCES
from tests.export.conftest import snapshot


def run(*args: str):
    return CliRunner().invoke(main, ["export", *args])


def test_export_json_reports_files_and_parity(lively_bundle):
    result = run(str(lively_bundle), "--format", "onnx", "--fp16", "--json", "--quiet")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["files"] == ["model.onnx", "model_fp16.onnx"]
    assert report["parity"]["model.onnx"]["max_abs_diff"] <= 1e-3
    assert report["parity"]["model_fp16.onnx"]["max_abs_diff"] <= 1e-2
    manifest = open_bundle(lively_bundle).manifest
    assert manifest.exports["onnx"]["parity"] == report["parity"]["model.onnx"]


def test_text_output_gives_the_measured_difference(lively_bundle):
    result = run(str(lively_bundle), "--format", "onnx")
    assert result.exit_code == 0, result.output
    assert "model.onnx: max |Δ probability|" in result.stdout
    assert "checking model.onnx against PyTorch" in result.stderr


def test_output_copy_leaves_the_source_alone(lively_bundle, tmp_path):
    before = snapshot(lively_bundle)
    copy = tmp_path / "copy"
    assert run(str(lively_bundle), "--format", "onnx", "-o", str(copy)).exit_code == 0
    assert snapshot(lively_bundle) == before
    assert sorted(open_bundle(copy).manifest.files) == ["model.onnx", WEIGHTS]
    assert sorted(p.name for p in copy.iterdir()) == [MANIFEST, "model.onnx", WEIGHTS]

    again = run(str(lively_bundle), "--format", "onnx", "-o", str(copy))
    assert again.exit_code == 2 and "--overwrite" in again.stderr
    assert (
        run(str(lively_bundle), "--format", "onnx", "-o", str(copy), "--overwrite").exit_code == 0
    )


def test_the_shipped_bundle_needs_an_output(lively_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr("stmap.bundle.default_bundle_path", lambda: lively_bundle)
    before = snapshot(lively_bundle)
    for name in ("default", str(lively_bundle)):
        result = run(name, "--format", "onnx")
        assert result.exit_code == 2
        assert "never modified in place; give -o NEW_BUNDLE" in result.stderr
    assert snapshot(lively_bundle) == before
    result = run("default", "--format", "onnx", "-o", str(tmp_path / "mine"))
    assert result.exit_code == 0, result.output
    assert "model.onnx" in open_bundle(tmp_path / "mine").manifest.files


def test_missing_and_corrupt_bundles_exit_2(lively_bundle, tmp_path):
    result = run(str(tmp_path / "nowhere"), "--format", "onnx")
    assert result.exit_code == 2 and "model bundle not found" in result.stderr
    weights = lively_bundle / WEIGHTS
    weights.write_bytes(weights.read_bytes()[:-10])
    result = run(str(lively_bundle), "--format", "onnx")
    assert result.exit_code == 2 and "does not match its SHA-256" in result.stderr
    assert not (lively_bundle / "model.onnx").exists()


def test_unsupported_opset_exits_2(lively_bundle):
    before = snapshot(lively_bundle)
    result = run(str(lively_bundle), "--format", "onnx", "--opset", "9")
    assert result.exit_code == 2 and "--opset 9 is not supported" in result.stderr
    assert snapshot(lively_bundle) == before


def test_tensorrt_without_tensorrt_exits_2_with_the_install_hint(lively_bundle, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    before = snapshot(lively_bundle)
    result = run(str(lively_bundle), "--format", "tensorrt", "--fp16")
    assert result.exit_code == 2
    assert "pip install 'stmap[tensorrt]'" in result.stderr
    assert snapshot(lively_bundle) == before


@pytest.mark.parametrize("output", [False, True])
def test_parity_failure_exits_2_and_changes_nothing(lively_bundle, tmp_path, monkeypatch, output):
    monkeypatch.setitem(TOLERANCES, "fp16", 0.0)
    before = snapshot(lively_bundle)
    extra = ["-o", str(tmp_path / "copy")] if output else []
    result = run(str(lively_bundle), "--format", "onnx", "--fp16", *extra)
    assert result.exit_code == 2
    assert "model_fp16.onnx in ONNX Runtime differs from PyTorch" in result.stderr
    assert "nothing was added to the bundle" in result.stderr
    assert snapshot(lively_bundle) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_a_zipped_bundle_is_exported_into_a_directory_copy(lively_bundle, tmp_path):
    archive = shutil.make_archive(str(tmp_path / "zipped"), "zip", lively_bundle)
    result = run(archive, "--format", "onnx")
    assert result.exit_code == 2 and "give -o NEW_BUNDLE" in result.stderr
    result = run(archive, "--format", "onnx", "-o", str(tmp_path / "unzipped"))
    assert result.exit_code == 0, result.output
    assert "model.onnx" in open_bundle(tmp_path / "unzipped").manifest.files

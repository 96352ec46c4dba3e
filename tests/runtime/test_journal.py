"""Resume, not restart: a killed run continues from its journal; outputs appear atomically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from stmap.cli import main
from stmap.errors import InputError
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.journal import Journal
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster

# `stmap` with a model slowed down, so that a test can stop it half-way. SIGINT gets
# Python's default handler back: a runner started as a background job ignores it, and
# the child would inherit that.
SLOW_STMAP = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
from stmap.runtime.backends import torch_backend

infer = torch_backend.TorchBackend.infer
def slow_infer(self, tiles):
    time.sleep(0.15)
    return infer(self, tiles)
torch_backend.TorchBackend.infer = slow_infer

from stmap.cli import main
main()
"""
OPTIONS = ("--block-size", "512", "--batch-size", "8")
FINALS = ("city_damage_prob.tif", "city_damage.tif", "city_summary.json", "city_damage.gpkg")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def scene(tmp_path_factory) -> Path:
    return write_raster(tmp_path_factory.mktemp("scene") / "city.tif", smooth_image(1024, 1024))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, bundle, scene) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run_inference([str(scene)], out, InferOptions(model=str(bundle), block_size=512, batch_size=8))
    return out


def _start_slow(scene: Path, out: Path, bundle: Path) -> subprocess.Popen:
    args = [sys.executable, "-c", SLOW_STMAP, "infer", str(scene), "-o", str(out)]
    return subprocess.Popen(
        [*args, "--model", str(bundle), *OPTIONS], stderr=subprocess.PIPE, text=True
    )


def _wait_for_blocks(process: subprocess.Popen, out: Path) -> int:
    """Poll the journal until it records a finished block; no final output may exist yet."""
    journal = out / ".city.journal.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        assert not any((out / name).exists() for name in FINALS)
        if journal.exists() and json.loads(journal.read_text())["blocks"]:
            return len(json.loads(journal.read_text())["blocks"])
        time.sleep(0.05)
    raise AssertionError("no block was journalled in time")


def test_a_killed_run_resumes_to_the_same_rasters(tmp_path, bundle, scene, uninterrupted):
    process = _start_slow(scene, tmp_path, bundle)
    done = _wait_for_blocks(process, tmp_path)
    process.kill()  # SIGKILL: no chance to clean up
    process.wait()
    assert not any((tmp_path / name).exists() for name in FINALS)

    # the journal belongs to these options: other ones are refused, naming the fix
    args = ["infer", str(scene), "-o", str(tmp_path), "--model", str(bundle), *OPTIONS]
    result = CliRunner().invoke(main, [*args, "--threshold", "0.3"])
    assert result.exit_code == 2, result.output
    assert "made with another threshold" in result.stderr and "--restart" in result.stderr

    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["resumed_blocks"] >= done and summary["blocks"] == 4
    for name in ("city_damage_prob.tif", "city_damage.tif"):
        assert np.array_equal(read_band(tmp_path / name), read_band(uninterrupted / name))
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir()), "work files are removed"


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_run_exits_130_and_keeps_its_journal(tmp_path, bundle, scene, sig):
    process = _start_slow(scene, tmp_path, bundle)
    _wait_for_blocks(process, tmp_path)
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "resume" in stderr
    journal = Journal.load(tmp_path / ".city.journal.json")
    assert journal is not None and journal.blocks
    assert not any((tmp_path / name).exists() for name in FINALS)


def test_existing_outputs_are_never_overwritten_without_restart(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(100, 120))
    out = tmp_path / "out"
    args = ["infer", str(scene), "-o", str(out), "--model", str(bundle)]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = (out / "city_damage_prob.tif").stat().st_mtime_ns
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert f"{out / 'city_damage_prob.tif'}: already exists" in result.stderr
    assert (out / "city_damage_prob.tif").stat().st_mtime_ns == before
    assert CliRunner().invoke(main, [*args, "--restart"]).exit_code == 0
    assert (out / "city_damage_prob.tif").stat().st_mtime_ns != before


def test_journal_identity_names_what_differs(tmp_path):
    journal = Journal.create(tmp_path / "j.json", {"model": "a", "bands": [1, 2, 3]}, 512)
    journal.record({3: (10, 2)})
    loaded = Journal.load(tmp_path / "j.json")
    assert loaded.blocks == {3: (10, 2)} and loaded.block_size == 512
    loaded.check({"model": "a", "bands": [1, 2, 3]})
    with pytest.raises(InputError, match="made with another bands, model"):
        loaded.check({"model": "b", "bands": [3, 2, 1]})
    (tmp_path / "j.json").write_text("{ truncated")
    assert Journal.load(tmp_path / "j.json") is None


def _fail_after_first_block(tmp_path: Path, bundle: Path, monkeypatch) -> tuple[list[str], Path]:
    """Run until the disk "fills up" after one block; returns the CLI args and OUTDIR."""
    from stmap.errors import RasterError
    from stmap.io.writers import BlockWriter

    scene = write_raster(tmp_path / "city.tif", smooth_image(512, 1024))
    write = BlockWriter.write
    calls = []

    def write_until_full(self, name, row_off, col_off, data):
        calls.append(name)
        if len(calls) > 2:  # the second block does not fit any more
            raise RasterError(f"{self.paths[name]}: cannot write (No space left on device)")
        write(self, name, row_off, col_off, data)

    monkeypatch.setattr(BlockWriter, "write", write_until_full)
    out = tmp_path / "out"
    args = ["infer", str(scene), "-o", str(out), "--model", str(bundle), "--block-size", "512"]
    result = CliRunner().invoke(main, args)
    monkeypatch.setattr(BlockWriter, "write", write)  # space freed
    assert result.exit_code == 2, result.output
    assert "No space left on device" in result.stderr
    return args, out


def test_a_full_disk_stops_with_exit_2_and_keeps_the_journal(tmp_path, bundle, monkeypatch):
    """The blocks written before the disk filled up are journalled; --restart drops them."""
    args, out = _fail_after_first_block(tmp_path, bundle, monkeypatch)
    assert Journal.load(out / ".city.journal.json").blocks.keys() == {0}
    assert not (out / "city_damage_prob.tif").exists()
    result = CliRunner().invoke(main, [*args, "--restart", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["resumed_blocks"] == 0


def test_damaged_partial_rasters_are_recomputed_with_a_warning(tmp_path, bundle, monkeypatch):
    args, out = _fail_after_first_block(tmp_path, bundle, monkeypatch)
    (out / ".city_damage_prob.partial.tif").write_bytes(b"II*\x00 truncated")
    result = CliRunner().invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert "cannot be reopened" in result.stderr and "starting afresh" in result.stderr
    assert json.loads(result.stdout)["resumed_blocks"] == 0


def test_an_unwritable_output_directory_is_exit_2(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(100, 100))
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(
        main, ["infer", str(scene), "-o", str(blocker / "out"), "--model", str(bundle)]
    )
    assert result.exit_code == 2
    assert f"-o {blocker / 'out'}: cannot write there" in result.stderr
    assert os.path.isfile(blocker)

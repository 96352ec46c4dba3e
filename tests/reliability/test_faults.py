"""Faults: a full disk, a raster that fails to decode mid-run, a bundle changed during a
run, a device out of memory. Each gives exit 2 (or the documented back-off) with a
message naming the cause, and loses nothing: finished work is kept, and the same
command finishes the job once the cause is gone.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import rasterio

from stmap.bundle import WEIGHTS, open_bundle
from tests.reliability.killpoints import Sabotage, run_stmap
from tests.reliability.outputs import (
    STEM,
    assert_nothing_half_written,
    assert_resumes,
    assert_same_output,
    infer_args,
    journalled_blocks,
)
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster


def assert_disk_full_stop(
    out: Path, log: Path, reference: Path, *, blocks: int, names_the_cause: bool = True
) -> None:
    """A message naming the full disk, ``blocks`` blocks journalled, nothing half-written."""
    message = log.read_text()
    assert "internal error" not in message
    if names_the_cause:
        assert "no space left on the device" in message, message
    assert journalled_blocks(out) >= blocks, "the blocks finished before the disk filled are kept"
    assert_nothing_half_written(out, reference)


class Tmpfs:
    """A tmpfs file system of a given size, mounted for one test (needs root)."""

    def __init__(self, path: Path, size: str):
        self.path = path
        path.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(
                f"cannot mount a tmpfs here ({done.stderr.strip() or 'not root'}); "
                "test_a_write_failing_for_want_of_space covers a full disk without one"
            )

    def resize(self, size: str) -> None:
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.path)], check=True)

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=True)


@pytest.fixture
def small_disk(tmp_path):
    disks: list[Tmpfs] = []

    def mount(size: str) -> Tmpfs:
        disks.append(Tmpfs(tmp_path / "disk", size))
        return disks[-1]

    yield mount
    for disk in disks:
        disk.unmount()


# tmpfs sizes at which the disk fills (on this scene and model) while the blocks are
# written, then while finalising: the COGs, the polygons' GeoPackage and the quicklook
# are written side by side, and which one meets the full disk first varies. Only the
# raster writers name a full disk as such: stmap.io.vectors reports GDAL's words.
@pytest.mark.parametrize("size", ["128k", "1m", "2m"])
def test_a_full_disk_stops_with_exit_2_and_the_run_resumes_once_space_is_freed(
    tmp_path, scene, bundle, reference, small_disk, size
):
    disk = small_disk(size)
    out = disk.path / "out"
    # At 128k the viewer's tiles (regenerable) would fill the disk before the first
    # block is checkpointed; this size is about the blocks kept, so it runs without them
    # (and resumes with them: the tiles of the kept blocks come from the partial rasters).
    extra = ("--viewer", "none") if size == "128k" else ()
    args = infer_args(scene, out, bundle)
    code = run_stmap([*args, *extra], tmp_path / "full.log", Sabotage(checkpoint_every_block=True))
    assert code == 2, (tmp_path / "full.log").read_text()
    blocks, names_the_cause = (1, True) if size == "128k" else (9, False)
    assert_disk_full_stop(
        out, tmp_path / "full.log", reference, blocks=blocks, names_the_cause=names_the_cause
    )
    disk.resize("64m")
    assert_resumes(out, args, reference, tmp_path / "resumed.log")


# Where the disk fills (a write fails with ENOSPC): the N-th call of a killpoints target,
# and the blocks journalled by then. "text" counts the journal's saves (10), then the
# report and the summary.
FULL_AT = {
    "a block": ("gdal-write:5:enospc", 2),
    "the journal": ("text:4:enospc", 2),
    "a COG": ("cog:2:enospc", 9),
    "the summary": ("text:12:enospc", 9),
}


@pytest.mark.parametrize("where", list(FULL_AT))
def test_a_write_failing_for_want_of_space(tmp_path, scene, bundle, reference, where):
    """The size-capped writer: runs anywhere, root or not."""
    point, blocks = FULL_AT[where]
    out = tmp_path / "out"
    args = infer_args(scene, out, bundle)
    code = run_stmap(args, tmp_path / "full.log", Sabotage.at(point, checkpoint_every_block=True))
    assert code == 2, (tmp_path / "full.log").read_text()
    assert_disk_full_stop(out, tmp_path / "full.log", reference, blocks=blocks)
    assert_resumes(out, args, reference, tmp_path / "resumed.log")


def corrupt_tile(path: Path, row: int, col: int) -> None:
    """Overwrite internal tile (row, col) of a GeoTIFF with noise: it no longer decodes."""
    with rasterio.open(path) as ds:
        offset = int(ds.get_tag_item(f"BLOCK_OFFSET_{col}_{row}", "TIFF", bidx=1))
        size = int(ds.get_tag_item(f"BLOCK_SIZE_{col}_{row}", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())


def test_a_raster_failing_to_decode_mid_run_keeps_the_inputs_already_mapped(
    tmp_path, scene, bundle, reference
):
    bad = write_raster(tmp_path / "bad.tif", smooth_image(1100, 1300, seed=2), block=256)
    corrupt_tile(bad, 3, 3)  # rows 768–1024: first met by block 4 of 9, mid-run
    out = tmp_path / "out"
    args = ["infer", str(scene), str(bad), *infer_args(scene, out, bundle)[2:]]
    code = run_stmap(args, tmp_path / "run.log")
    message = (tmp_path / "run.log").read_text()
    assert code == 2, message
    assert f"{bad}: cannot decode rows " in message and "internal error" not in message
    for name in (p.name for p in reference.iterdir()):  # the first input is published, whole
        assert_same_output(out / name, reference / name)
    assert not any(p.name.startswith("bad") for p in out.iterdir()), "no output of bad.tif"


def test_weights_replaced_after_loading_leave_the_run_on_the_model_it_loaded(
    tmp_path, scene, bundle, reference
):
    """Documented: a run maps with the model it verified and loaded, and records its hash;
    the changed bundle is refused by the next run (its weights fail their SHA-256)."""
    mine = shutil.copytree(bundle, tmp_path / "bundle")
    other = make_varied_bundle(tmp_path / "other", seed=1)
    out, log = tmp_path / "out", tmp_path / "run.log"
    # the first block is read once the model is loaded
    swap = {"read": (str(other / WEIGHTS), str(mine / WEIGHTS))}
    code = run_stmap([*infer_args(scene, out, mine), "--json"], log, Sabotage(replace_before=swap))
    assert code == 0, log.read_text()
    assert (mine / WEIGHTS).read_bytes() != (bundle / WEIGHTS).read_bytes(), "it was replaced"
    for name in (p.name for p in reference.iterdir()):
        assert_same_output(out / name, reference / name)
    summary = json.loads((out / f"{STEM}_summary.json").read_text())
    assert summary["model"]["hash"] == open_bundle(bundle).hash()

    code = run_stmap(infer_args(scene, tmp_path / "again", mine), tmp_path / "again.log")
    assert code == 2
    assert f"{WEIGHTS} does not match its SHA-256" in (tmp_path / "again.log").read_text()


def test_weights_replaced_before_loading_are_refused(tmp_path, scene, bundle):
    """Between open_bundle's check and the backend's load the weights file may change:
    the run must stop (exit 2, naming the file) rather than map with unverified weights."""
    mine = shutil.copytree(bundle, tmp_path / "bundle")
    other = make_varied_bundle(tmp_path / "other", seed=1)
    log = tmp_path / "run.log"
    swap = {"load-weights": (str(other / WEIGHTS), str(mine / WEIGHTS))}
    code = run_stmap(infer_args(scene, tmp_path / "out", mine), log, Sabotage(replace_before=swap))
    assert code == 2, log.read_text()
    assert WEIGHTS in log.read_text()


def test_out_of_memory_with_auto_batch_size_halves_the_batch(tmp_path, scene, bundle, reference):
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = [*infer_args(scene, out, bundle), "--batch-size", "auto", "--json"]
    code = run_stmap(args, log, Sabotage(oom_above=8))
    assert code == 0, log.read_text()
    assert "out of memory: batch size reduced to 8" in log.read_text()
    for name in (p.name for p in reference.iterdir()):  # the reference ran at batch size 8
        assert_same_output(out / name, reference / name)
    assert json.loads((out / f"{STEM}_summary.json").read_text())["batch_size"] == 8


def test_out_of_memory_with_a_fixed_batch_size_is_exit_2(tmp_path, scene, bundle, reference):
    out, log = tmp_path / "out", tmp_path / "run.log"
    args = [*infer_args(scene, out, bundle), "--batch-size", "16"]
    code = run_stmap(args, log, Sabotage(oom_above=8))
    message = log.read_text()
    assert code == 2, message
    assert "out of memory on cpu at batch size 16" in message and "--batch-size" in message
    assert_nothing_half_written(out, reference)

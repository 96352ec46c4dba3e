"""An interrupted run resumes only with what it was made with; anything else is refused.

The journal of a killed run records the input (path, size, modification time and a
digest of its content and of the files GDAL reads with it), the
model's hash and the options the outputs depend on. Running into the same OUTDIR
with another model, overlap, bands or a changed input is refused with exit 2,
naming what differs and the fix, and leaves the interrupted run's work as it was;
``--restart`` discards it and maps afresh. (Another threshold: tests/runtime/test_journal.py.)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from stmap.io.outdir import LOCK_FILE
from tests.reliability.killpoints import Sabotage, run_stmap
from tests.reliability.outputs import STEM, infer_args, journalled_blocks
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

INTERRUPT = Sabotage.at("journal:4:after", checkpoint_every_block=True)  # 3 blocks journalled


def interrupt(scene: Path, out: Path, bundle: Path) -> None:
    code = run_stmap(infer_args(scene, out, bundle), out.with_suffix(".log"), INTERRUPT)
    assert code < 0 and journalled_blocks(out) == 3


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, scene, bundle) -> Path:
    """OUTDIR of a run killed after 3 of its 9 blocks."""
    out = tmp_path_factory.mktemp("interrupted") / "out"
    interrupt(scene, out, bundle)
    return out


def work_files(out: Path) -> dict[str, bytes]:
    """The killed run's work files, folders read recursively; its lock file (which the
    kernel released) may go."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def assert_refused_then_restarted(args: list[str], out: Path, tmp_path: Path, *expected: str):
    before = work_files(out)
    code = run_stmap(args, tmp_path / "refused.log")
    message = (tmp_path / "refused.log").read_text()
    assert code == 2, message
    assert "unfinished run in this output directory was made with another" in message
    for fragment in (*expected, "--restart"):
        assert fragment in message
    assert work_files(out) == before, "a refused run leaves the interrupted one as it was"

    code = run_stmap([*args, "--restart", "--json"], tmp_path / "restarted.log")
    assert code == 0, (tmp_path / "restarted.log").read_text()
    summary = json.loads((out / f"{STEM}_summary.json").read_text())
    assert summary["resumed_blocks"] == 0
    assert not any(p.name.startswith(".") for p in out.iterdir())


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("--overlap", "16"), "overlap 32 → 16"),
        (("--bands", "3,2,1"), "bands [1, 2, 3] → [3, 2, 1]"),
        ((), "another model"),
    ],
    ids=["overlap", "bands", "model"],
)
def test_other_options_or_model_are_refused(tmp_path, scene, bundle, interrupted, change, expected):
    out = tmp_path / "out"
    shutil.copytree(interrupted, out)
    model = bundle if change else make_varied_bundle(tmp_path / "other", seed=1)
    assert_refused_then_restarted(infer_args(scene, out, model, *change), out, tmp_path, expected)


def test_a_changed_input_is_refused(tmp_path, bundle):
    scene = write_raster(tmp_path / f"{STEM}.tif", smooth_image(1100, 1300))
    out = tmp_path / "out"
    interrupt(scene, out, bundle)
    write_raster(scene, smooth_image(1100, 1300, seed=1))  # new pixels, same name
    args = infer_args(scene, out, bundle)
    assert_refused_then_restarted(args, out, tmp_path, "input", "mtime_ns")


def test_an_input_changed_under_the_same_size_and_time_is_refused(tmp_path, bundle):
    """Size and modification time alone let a replaced file pass (cp -p, touch -r, a
    restore from backup): the content digest does not."""
    scene = write_raster(tmp_path / f"{STEM}.tif", smooth_image(1100, 1300), compress="none")
    out = tmp_path / "out"
    interrupt(scene, out, bundle)
    stat = scene.stat()
    write_raster(scene, smooth_image(1100, 1300, seed=1), compress="none")
    os.utime(scene, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert scene.stat().st_size == stat.st_size
    args = infer_args(scene, out, bundle)
    assert_refused_then_restarted(args, out, tmp_path, "input content changed")

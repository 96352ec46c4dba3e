"""Kill `stmap infer` anywhere, run the same command again: the same outputs.

For each kill point (``killpoints.TARGETS``) a run is SIGKILLed there, and the
same command run again. After the kill, whatever carries a final output name must
be complete; after the second run every output equals the uninterrupted reference
(rasters bit for bit, vectors as geometry sets), the journalled blocks were not
computed again, and no work file is left. SIGINT and SIGTERM stop a run with exit
130, saying how to resume, and the same command then finishes it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.reliability.killpoints import Sabotage, run_stmap, start_stmap, wait_for
from tests.reliability.outputs import (
    STEM,
    assert_nothing_half_written,
    assert_resumes,
    infer_args,
    journalled_blocks,
)

ROOT = Path(__file__).resolve().parents[2]
# A run of the 9-block scene calls: read 9×, model 20× (batches of 8 tiles),
# block-write 18× (2 layers × 9 blocks), checkpoint 9×, journal 10× (created, then
# once per block), cog 2× (GDAL reads their sources ~50× in all), vector 2× (damage
# polygons, grid), quicklook, report and summary 1×, publish once per output (7×),
# cleanup 2× (the second after publishing).
KILL_POINTS = [
    "read:1",
    "read:5",
    "model:1",
    "model:10",
    "block-write:1",
    "block-write:2:after",
    "block-write:18:after",
    "checkpoint:1",
    "checkpoint:5:after",
    "journal:1:after",
    "journal:6",
    "journal:10:after",
    "cog-source-read:10",
    "cog:1:after",
    "cog-source-read:40",
    "vector:1",
    "vector:2:after",
    "quicklook:1:after",
    "report:1",
    "summary:1:after",
    "publish:1",
    "publish:4",
    "publish:7:after",
    "cleanup:2",
]


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_run_killed_anywhere_resumes_to_the_same_outputs(
    tmp_path, scene, bundle, reference, point
):
    out = tmp_path / "out"
    args = infer_args(scene, out, bundle)
    sabotage = Sabotage.at(point, checkpoint_every_block=True)
    code = run_stmap(args, tmp_path / "killed.log", sabotage)
    assert code == -signal.SIGKILL, f"{point} was not reached: exit {code}"
    assert_nothing_half_written(out, reference)
    assert_resumes(out, args, reference, tmp_path / "resumed.log")


@pytest.mark.parametrize(
    ("sig", "phase"),
    [
        pytest.param(signal.SIGINT, "pipeline", id="SIGINT-pipeline"),
        pytest.param(signal.SIGTERM, "pipeline", id="SIGTERM-pipeline"),
        pytest.param(signal.SIGINT, "finalise", id="SIGINT-finalise"),
        pytest.param(signal.SIGTERM, "finalise", id="SIGTERM-finalise"),
    ],
)
def test_a_signal_stops_the_run_resumably(tmp_path, scene, bundle, reference, sig, phase):
    out, log = tmp_path / "out", tmp_path / "interrupted.log"
    args = infer_args(scene, out, bundle)
    if phase == "pipeline":  # slowed down, so that the signal comes half-way
        process = start_stmap(args, log, Sabotage(slow={"model": 0.15}))
        wait_for(process, lambda: journalled_blocks(out) > 0, "a journalled block")
    else:
        process = start_stmap(args, log, Sabotage(slow={"cog": 1.0}))
        wait_for(process, (out / f".{STEM}.staging").exists, "the finalisation")
    os.kill(process.pid, sig)
    process.join(120)
    assert process.exitcode == 130, log.read_text()
    assert journalled_blocks(out) > 0, "the journal is kept"
    assert_nothing_half_written(out, reference)
    message = log.read_text()
    assert_resumes(out, args, reference, tmp_path / "resumed.log")
    assert "run the same command again to resume" in message


def test_the_launcher_reproduces_a_kill_point_by_hand(tmp_path, scene, bundle):
    """`python -m tests.reliability.killpoints`: what a failing kill point is debugged with."""
    out = tmp_path / "out"
    launcher = [sys.executable, "-m", "tests.reliability.killpoints"]
    sabotage = ["--kill-at", "journal:4:after", "--checkpoint-every-block", "--"]
    done = subprocess.run(
        [*launcher, *sabotage, *infer_args(scene, out, bundle)], cwd=ROOT, capture_output=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert journalled_blocks(out) == 3

"""``bench_phase --cost-only --reference-python``: the cost as another stmap ran it.

The figure behind #20's compute bound compares the shipped default with the default
of an older checkout, run by that checkout's interpreter; here the reference is this
interpreter, so its row must describe the same run as the shipped bundle's own.
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

"""Fuzzing profiles, and a line that says how many inputs ran and for how long.

``HYPOTHESIS_PROFILE=long python -m pytest tests/fuzz`` fuzzes LONG_FACTOR times
longer than CI does (tests/properties/profiles.py); the session ends with
``fuzz: N inputs in S s``, S being the time spent in the fuzz tests' bodies.
"""

from __future__ import annotations

import pytest

import tests.properties.profiles  # noqa: F401  (registers and loads the profile)
from tests.fuzz.counting import InputCount


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Called for the tests of this folder only (pytest scopes runtest hooks by conftest)."""
    if report.when == "call":
        InputCount.seconds += report.duration


def pytest_terminal_summary(terminalreporter) -> None:
    if InputCount.total:
        terminalreporter.write_line(
            f"fuzz: {InputCount.total} inputs in {InputCount.seconds:.1f} s"
        )

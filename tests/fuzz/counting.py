"""How many inputs the fuzzers ran: ``fuzz_target`` counts each call of a test body."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


class InputCount:
    """Inputs run in this pytest session, and seconds spent in the fuzz tests."""

    total = 0
    seconds = 0.0


def fuzz_target(test: Callable[..., Any]) -> Callable[..., Any]:
    """Count every input Hypothesis feeds ``test`` (place it under ``@given``)."""

    @functools.wraps(test)
    def run(*args: Any, **kwargs: Any) -> Any:
        InputCount.total += 1
        return test(*args, **kwargs)

    return run

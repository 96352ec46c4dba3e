"""The block stream's consumers: every output of a run is a ``Sink``.

The pipeline hands each block to each sink once, as ``add(window, layers)``, and a
run ends with ``finish()``. What a run did not stream (blocks mapped before a
resume, strips mapped by other workers, everything when gathering failed) is read
from the files by one ``stmap.io`` reader and fed to the *same* sinks
(``feed_missing``), so every output has one code path.

Why sinks gather on the way: on a CPU with a light model, writing the outputs after
the run cost half as much as the run itself, most of it reading back and decoding
rasters the pipeline had just held in memory.

Layers. A sink declares the layers it ``needs``: the input's (``image``,
``valid``), which the pipeline hands over in a reader thread on the input grid, or
the outputs (``prob``, ``damage``), handed over in the writer thread. A window
without any valid pixel comes with no layers at all (an empty mapping); ``valid``
is absent when every pixel of the window is valid. A sink must not keep the arrays
it is given (they are reused buffers).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from stmap.io.blocks import IMAGE, VALID, LayerReader
from stmap.window import Window

log = logging.getLogger(__name__)

PROB, DAMAGE = "prob", "damage"  # the two output layers, (h, w) uint8
SOURCE = frozenset({IMAGE, VALID})  # handed over by the reader threads
OUTPUT = frozenset({PROB, DAMAGE})  # handed over by the writer thread
Layers = Mapping[str, np.ndarray]
NO_LAYERS: Layers = {}  # a window without any valid pixel


class Sink(Protocol):
    """One output of the block stream."""

    needs: frozenset[str]  # within SOURCE or within OUTPUT

    def add(self, window: Window, layers: Layers) -> None:
        """Take one window's layers (empty: no valid pixel); they are not to be kept."""

    def finish(self) -> Any:
        """The output, once every window was added."""


class Gathering(Sink, Protocol):
    """A sink that knows which windows it has not seen (``Coverage.missing``)."""

    def missing(self) -> Iterator[Window]: ...


class Guarded:
    """Gathering sinks that must not stop the mapping: the first failure of any of
    them drops them all, with a warning, and ``failed`` says why; the finishing step
    then builds fresh ones and reads everything back (``feed_missing``)."""

    def __init__(self, sinks: Sequence[Gathering]):
        self.sinks = list(sinks)
        self.failed: str | None = None
        self._lock = threading.Lock()

    def wrapped(self) -> list[Sink]:
        """The sinks as the pipeline is to call them."""
        return [_Guard(self, sink) for sink in self.sinks]

    def fail(self, exc: Exception) -> None:
        with self._lock:
            if self.failed is None:
                self.failed = f"{type(exc).__name__}: {exc}"
                log.warning(
                    "gathering the outputs while streaming failed (%s); they will be "
                    "computed from the finished rasters instead",
                    self.failed,
                )


class _Guard:
    def __init__(self, guard: Guarded, sink: Gathering):
        self.guard, self.sink, self.needs = guard, sink, sink.needs

    def add(self, window: Window, layers: Layers) -> None:
        if self.guard.failed:
            return
        try:
            self.sink.add(window, layers)
        except Exception as exc:  # an optimisation must not stop the mapping
            self.guard.fail(exc)

    def finish(self) -> None:
        """Nothing: the guarded sinks are finished by their owner."""


def feed(sinks: Iterable[Sink], windows: Iterable[tuple[Window, Layers]]) -> None:
    """Hand each (window, layers) to every sink, each with the layers it needs."""
    sinks = list(sinks)
    for window, layers in windows:
        for sink in sinks:
            sink.add(window, {k: v for k, v in layers.items() if k in sink.needs})


def feed_missing(sinks: Iterable[Gathering], reader: LayerReader) -> None:
    """Read what each sink did not see and add it: sinks that miss the same windows
    (they saw the same blocks) share one read of them."""
    groups: dict[tuple[Window, ...], list[Gathering]] = {}
    for sink in sinks:
        groups.setdefault(tuple(sink.missing()), []).append(sink)
    for windows, members in groups.items():
        if windows:
            needs = frozenset().union(*(s.needs for s in members))
            feed(members, reader.read(windows, needs))


class Progress:
    """Reports the output pixels of each block as it is written."""

    needs = OUTPUT

    def __init__(self, advance: Callable[[int], None]):
        self.advance = advance

    def add(self, window: Window, layers: Layers) -> None:
        self.advance(window.size)

    def finish(self) -> None:
        """Nothing to finish: progress is reported as it goes."""

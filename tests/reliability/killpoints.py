"""Run `stmap` and sabotage it at a chosen point of its run: the N-th call of a function.

    python -m tests.reliability.killpoints --kill-at block-write:3 [--kill-at journal:2:after]
        [--enospc-at text:4] [--oom-above 8] [--slow model:0.2] [--checkpoint-every-block] \
        [--replace-before read new.safetensors bundle/weights.safetensors] -- infer city.tif ...

Before stmap's click entry point runs, the functions named in ``TARGETS`` are
wrapped, in this process only. ``--kill-at NAME:N`` kills the process with SIGKILL
at the N-th call of NAME (counted over all threads), just before the call or, with
``:after``, just after it returned: what a power cut or the OOM killer does.
``--enospc-at NAME:N`` makes the N-th call raise ``OSError(ENOSPC)`` instead, as a
full disk would. ``--oom-above N`` makes the PyTorch backend raise CUDA's
out-of-memory error for batches of more than N tiles, as a small GPU would (on the
CPU too). ``--slow NAME:SECONDS`` sleeps before every call of NAME, so that a test
can act half-way through a run; ``--replace-before NAME SRC DST`` renames SRC over
DST just before the first call of NAME, as another process changing a file in the
middle of a run would. ``--checkpoint-every-block`` makes the pipeline checkpoint
(partial rasters, then journal) after every block rather than once a second, so
that how often the checkpoint functions are called does not depend on the
machine's speed. Nothing in stmap knows about any of it: the wrappers replace the
functions where stmap looks them up (a class attribute, a module attribute, and
every ``from ... import`` copy of it in stmap's modules).

The tests run many such processes: ``run_stmap`` forks each one from a server that
has imported torch and stmap once (saving 2–3 s per run), with the same effect as
the command line above.
"""

from __future__ import annotations

import argparse
import errno
import functools
import importlib
import io
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Target:
    """A function to count calls of: ``module`` and the dotted ``attribute`` in it.

    caller: count only calls made from a function of this name (``os.replace`` and
    ``Path.write_text`` are called from many places).
    """

    module: str
    attribute: str
    what: str
    caller: str | None = None


# The points of a run worth sabotaging, roughly in the order a run reaches them.
TARGETS: dict[str, Target] = {
    "load-weights": Target("stmap.bundle", "Bundle.load_segmenter", "the model's weights load"),
    "read": Target("stmap.io.blocks", "BlockReader.read_pixels", "a block's pixels are read"),
    "model": Target("stmap.runtime.backends.torch_backend", "TorchBackend.infer", "a batch"),
    "block-write": Target("stmap.io.writers", "BlockWriter.write", "a block's layer is written"),
    "gdal-write": Target("rasterio.io", "DatasetWriter.write", "rasterio writes into a raster"),
    "checkpoint": Target(
        "stmap.io.writers", "BlockWriter.checkpoint", "partial rasters closed and reopened"
    ),
    "journal": Target("stmap.runtime.journal", "Journal.save", "the journal is replaced"),
    "text": Target("pathlib", "Path.write_text", "a JSON or HTML file", caller="write_text"),
    "cog": Target("rasterio.shutil", "copy", "a partial raster becomes a COG"),
    "cog-source-read": Target(
        "rasterio.shutil", "copy", "GDAL reads a partial raster while writing a COG's overviews"
    ),
    "vector": Target("pyogrio.raw", "write", "GDAL writes a GeoPackage (temporary name)"),
    "quicklook": Target("stmap.runtime.quicklook", "save_quicklook", "the quicklook PNG"),
    "report": Target("stmap.runtime.report", "write_report", "the HTML report"),
    "summary": Target(
        "stmap.io.writers", "write_json", "the summary is staged", caller="finish_input"
    ),
    "publish": Target("os", "replace", "a staged output is renamed into OUTDIR", caller="publish"),
    "cleanup": Target("stmap.io.writers", "remove", "work files removed", caller="discard_work"),
}
ACTIONS = ("kill", "after", "enospc")


@dataclass(frozen=True)
class Point:
    """``NAME:N[:after|:enospc]``: what happens at the N-th call of target NAME.

    kill: SIGKILL before the call; after: SIGKILL once it returned; enospc: the
    call raises OSError(ENOSPC) instead of running.
    """

    name: str
    call: int
    action: str = "kill"

    @classmethod
    def parse(cls, text: str, default: str = "kill") -> Point:
        name, _, rest = text.partition(":")
        number, _, action = rest.partition(":")
        if name not in TARGETS or not number.isdigit() or int(number) < 1:
            raise ValueError(f"{text!r}: expected NAME:N[:after], NAME one of {', '.join(TARGETS)}")
        if (action or default) not in ACTIONS:
            raise ValueError(f"{text!r}: the third part must be one of {', '.join(ACTIONS)}")
        return cls(name, int(number), action or default)


@dataclass(frozen=True)
class Sabotage:
    """Everything done to one run (see the module doc)."""

    points: tuple[Point, ...] = ()
    slow: dict[str, float] = field(default_factory=dict)
    checkpoint_every_block: bool = False
    oom_above: int | None = None
    replace_before: dict[str, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def at(cls, *points: str, **options: Any) -> Sabotage:
        return cls(tuple(Point.parse(p) for p in points), **options)


def kill_now() -> None:
    """Die as a power cut or the OOM killer would: no handler, no flush, no cleanup."""
    os.kill(os.getpid(), signal.SIGKILL)


def disk_full() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class _Counter:
    """Calls of one target so far, over every thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls = 0

    def next(self) -> int:
        with self._lock:
            self.calls += 1
            return self.calls


def install(sabotage: Sabotage) -> None:
    """Wrap the functions ``sabotage`` names, in this process."""
    importlib.import_module("stmap.runtime.infer")  # binds the names the wrappers must replace
    names = [*(p.name for p in sabotage.points), *sabotage.slow, *sabotage.replace_before]
    for name in dict.fromkeys(names):
        points = {p.call: p.action for p in sabotage.points if p.name == name}
        first = sabotage.replace_before.get(name)
        _wrap(TARGETS[name], name, points, sabotage.slow.get(name, 0.0), first)
    if sabotage.checkpoint_every_block:
        from stmap.runtime.partials import PartialRasters

        init = PartialRasters.__init__

        @functools.wraps(init)
        def checkpoint_always(self, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **{**kwargs, "checkpoint_s": 0.0})

        PartialRasters.__init__ = checkpoint_always
    if sabotage.oom_above is not None:
        _run_out_of_memory_above(sabotage.oom_above)


def _run_out_of_memory_above(tiles: int) -> None:
    import torch

    from stmap.runtime.backends.torch_backend import TorchBackend

    infer = TorchBackend.infer

    @functools.wraps(infer)
    def small_device(self, batch: Any) -> Any:
        if len(batch) > tiles:
            raise torch.cuda.OutOfMemoryError(f"out of memory (simulated: {len(batch)} tiles)")
        return infer(self, batch)

    TorchBackend.infer = small_device


def _wrap(
    target: Target,
    name: str,
    points: dict[int, str],
    delay: float,
    first: tuple[str, str] | None,
) -> None:
    owner: Any = importlib.import_module(target.module)
    *path, attribute = target.attribute.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, attribute)
    if name == "cog-source-read":
        wrapper = _counting_source_reads(original, set(points))
    else:
        wrapper = _counting_calls(original, target.caller, points, delay, first)
    setattr(owner, attribute, wrapper)
    if not path:  # module functions: replace the copies made by `from module import name`
        for module_name, module in list(sys.modules.items()):
            if module_name.startswith("stmap") and getattr(module, attribute, None) is original:
                setattr(module, attribute, wrapper)


def _counting_calls(
    original: Callable[..., Any],
    caller: str | None,
    points: dict[int, str],
    delay: float,
    first: tuple[str, str] | None,
) -> Callable[..., Any]:
    counter = _Counter()

    @functools.wraps(original)
    def counted(*args: Any, **kwargs: Any) -> Any:
        if caller and sys._getframe(1).f_code.co_name != caller:
            return original(*args, **kwargs)
        number = counter.next()
        if number == 1 and first:
            os.replace(*first)
        action = points.get(number)
        if action == "kill":
            kill_now()
        if action == "enospc":
            raise disk_full()
        if delay:
            time.sleep(delay)
        result = original(*args, **kwargs)
        if action == "after":
            kill_now()
        return result

    return counted


def _counting_source_reads(copy: Callable[..., Any], kill_at: set[int]) -> Callable[..., Any]:
    """``rasterio.shutil.copy`` reading its source through Python, so that GDAL's N-th read
    of it (made while it writes the target and its overviews) can kill the process."""
    import rasterio

    counter = _Counter()

    class CountingFile(io.FileIO):
        def read(self, size: int = -1) -> bytes:
            if counter.next() in kill_at:
                kill_now()
            return super().read(size)

    def opener(path: str, mode: str = "rb") -> CountingFile:
        return CountingFile(path, "rb")

    @functools.wraps(copy)
    def counted_copy(source: Any, target: Any, **options: Any) -> Any:
        with rasterio.open(source, opener=opener) as dataset:
            return copy(dataset, target, **options)

    return counted_copy


def run_cli(args: Sequence[str], sabotage: Sabotage = Sabotage()) -> int:
    """``stmap ARGS`` in this process with ``sabotage`` installed; its exit code."""
    install(sabotage)
    from stmap.cli import main

    try:
        main.main(list(args), prog_name="stmap")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    return 0


def _child(args: Sequence[str], sabotage: Sabotage, log: str) -> None:
    """A forked run: its stdout and stderr go to ``log``; its exit code is stmap's.

    SIGINT gets Python's default handler back: the fork server ignores it, and so does
    a test runner started as a background job, yet the tests send it as Ctrl-C would.
    """
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with open(log, "wb") as stream:
        os.dup2(stream.fileno(), 1)
        os.dup2(stream.fileno(), 2)
    sys.exit(run_cli(args, sabotage))


@functools.cache
def _server() -> Any:
    """Processes forked from a server that has imported torch and stmap, once."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([_child.__module__, "stmap.cli", "stmap.runtime.infer"])
    return context


def start_stmap(args: Sequence[str], log: Path, sabotage: Sabotage = Sabotage()) -> Any:
    """``stmap ARGS`` started in a fresh process (forked from a preloaded server).

    Returns the ``multiprocessing.Process``; stdout and stderr go to ``log``.
    """
    process = _server().Process(target=_child, args=(list(args), sabotage, str(log)))
    process.start()
    return process


def wait_for(process: Any, ready: Callable[[], bool], what: str, timeout_s: float = 120) -> None:
    """Poll ``ready()`` while the run started by ``start_stmap`` goes on."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        assert process.exitcode is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout_s} s"
        time.sleep(0.05)


def run_stmap(
    args: Sequence[str], log: Path, sabotage: Sabotage = Sabotage(), *, timeout_s: float = 300
) -> int:
    """``stmap ARGS`` run in a fresh process; its exit code (-9: killed by a kill point)."""
    process = start_stmap(args, log, sabotage)
    process.join(timeout_s)
    if process.exitcode is None:
        process.kill()
        process.join()
        raise TimeoutError(f"stmap {' '.join(args)} ran over {timeout_s} s; see {log}")
    return process.exitcode


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.reliability.killpoints",
        description=__doc__.split("\n\n")[0],
        epilog="targets: " + "; ".join(f"{n} ({t.what})" for n, t in TARGETS.items()),
    )
    parser.add_argument("--kill-at", action="append", default=[], metavar="NAME:N[:after]")
    parser.add_argument("--enospc-at", action="append", default=[], metavar="NAME:N")
    parser.add_argument("--oom-above", type=int, default=None, metavar="TILES")
    parser.add_argument("--slow", action="append", default=[], metavar="NAME:SECONDS")
    parser.add_argument("--checkpoint-every-block", action="store_true")
    parser.add_argument(
        "--replace-before", nargs=3, action="append", default=[], metavar=("NAME", "SRC", "DST")
    )
    parser.add_argument("stmap_args", nargs=argparse.REMAINDER, help="-- then stmap's arguments")
    args = parser.parse_args(argv)
    points = [Point.parse(p) for p in args.kill_at]
    points += [Point.parse(p, default="enospc") for p in args.enospc_at]
    slow = {name: float(seconds) for name, _, seconds in (s.partition(":") for s in args.slow)}
    stmap_args = args.stmap_args[1:] if args.stmap_args[:1] == ["--"] else args.stmap_args
    replace = {name: (source, target) for name, source, target in args.replace_before}
    sabotage = Sabotage(tuple(points), slow, args.checkpoint_every_block, args.oom_above, replace)
    return run_cli(stmap_args, sabotage)


if __name__ == "__main__":
    sys.exit(main())

"""Where a benchmark's figures came from, and how they are written down.

Shared by bench_peers.py and bench_scaling.py: every saved result carries the
machine, the versions, the command and the commit (as `stmap bench` records them),
and is written as JSON for machines and as a Markdown table for people.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from stmap.provenance import git_commit
from stmap.runtime.bench import versions
from stmap.runtime.precision import cpu_model

EXTRA_PACKAGES = ("torchgeo", "numpy", "pillow", "rio-cogeo")


def provenance() -> dict[str, Any]:
    """Machine, versions, command, commit and time of this run."""
    found = versions()
    for package in EXTRA_PACKAGES:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return {
        "device": {
            "cpu": cpu_model(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "load_average_at_start": load_average(),
            "niceness": os.nice(0),  # negative: run ahead of the machine's other work
        },
        "versions": found,
        "command": shlex.join([Path(sys.executable).name, *sys.orig_argv[1:]]),
        "commit": git_commit(),
        "time_utc": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages: how busy the machine was (2 = 2 cores full)."""
    return [round(x, 2) for x in os.getloadavg()]


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table, cells as given."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def provenance_lines(meta: dict[str, Any]) -> str:
    """The provenance as a few lines of Markdown."""
    device, found = meta["device"], meta["versions"]
    shown = ", ".join(f"{name} {version}" for name, version in found.items() if version)
    load = f"at start {device['load_average_at_start']}"
    if "load_average_at_end" in device:
        load += f", at end {device['load_average_at_end']}"
    return "\n".join(
        [
            f"Command: `{meta['command']}`",
            "",
            f"Machine: {device['cpu']}, {device['cpu_count']} CPUs, torch threads "
            f"{device['torch_threads']}, niceness {device.get('niceness')}, "
            f"load average (1, 5, 15 min) {load} "
            f"({device['platform']}).",
            f"Versions: {shown}.",
            f"Commit: {meta['commit']}; run at {meta['time_utc']}.",
        ]
    )


def save(report: dict[str, Any], markdown: str, stem: Path) -> None:
    """Write ``stem``.json and ``stem``.md."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    stem.with_suffix(".md").write_text(markdown.rstrip() + "\n")


def finish(report: dict[str, Any], markdown: str, stem: Path | None) -> None:
    """Stamp the load average at the end, then save to ``stem`` or print the JSON."""
    report["provenance"]["device"]["load_average_at_end"] = load_average()
    if stem:
        save(report, markdown, stem)
        print(f"wrote {stem}.json and {stem}.md", file=sys.stderr)
    else:
        print(json.dumps(report, indent=2))

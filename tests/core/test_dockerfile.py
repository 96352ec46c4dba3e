"""The GPU image, checked without a Docker engine: what the Dockerfile copies, pins and runs.

tests/core/test_packaging.py checks its base, extras, entry point, user and Python
against pyproject; hadolint (in .ci/run) lints it. These check the rest a build or
a ``docker run`` would otherwise be the first to find.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from pathlib import Path

from click.testing import CliRunner

from stmap.cli import main
from stmap.memory import ENVIRONMENT

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_the_base_image_is_pinned_to_a_full_version():
    (base,) = [args for op, args in _instructions() if op == "ARG" and "CUDA_IMAGE=" in args]
    tag = base.split("=", 1)[1].split(":", 1)[1]
    assert re.match(r"\d+\.\d+\.\d+-", tag), f"{tag}: pin CUDA's full version, never latest"


def test_the_build_stage_copies_every_package_source_and_what_pyproject_reads():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    sources = {d.split("/")[0] for d in pyproject["tool"]["setuptools"]["package-dir"].values()}
    needed = {*sources, "pyproject.toml", pyproject["project"]["readme"], "constraints.txt"}
    build = _stages()[0]
    copied = {src for op, args in build if op == "COPY" for src in shlex.split(args)[:-1]}
    assert needed <= copied, f"the image would be built without {sorted(needed - copied)}"


def test_both_stages_run_the_same_python():
    """The virtual environment links to the build stage's interpreter."""
    versions = [
        set(re.findall(r"python3\.(\d+)=", " ".join(a for op, a in stage if op == "RUN")))
        for stage in _stages()
    ]
    assert len(versions) == 2 and len(versions[0]) == 1 and versions[0] == versions[1]


def test_the_healthcheck_runs_a_command_that_reports_gpus_backends_and_versions():
    (check,) = [args for op, args in _instructions() if op == "HEALTHCHECK"]
    command = json.loads(check.split("CMD", 1)[1])
    assert command[0] == "stmap"
    result = CliRunner().invoke(main, [*command[1:], "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"gpus", "installed_backends", "stmap", "torch", "cuda", "gdal"} <= set(report)
    assert "torch" in report["installed_backends"]


def test_the_image_sets_the_allocator_settings_of_stmap_memory():
    """glibc reads them when the process starts: the image must carry them all."""
    env = " ".join(args for op, args in _stages()[-1] if op == "ENV")
    for name, value in ENVIRONMENT.items():
        assert f"{name}={value}" in env, f"the image does not set {name}={value}"

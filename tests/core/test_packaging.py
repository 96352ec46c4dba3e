"""Packaging promises: README ↔ .ci/run, Dockerfile ↔ pyproject, layout."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _readme_commands() -> list[str]:
    """The two set-up commands: the shell lines in the README's 'Set up' section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(?:bash|sh)\n(.+?)\n```", section)


def test_ci_runs_exactly_the_readme_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in commands:
        assert command in ci_lines, f".ci/run does not run the README command: {command}"
    assert "pytest" in commands[1]


def test_no_importable_stmap_folder_at_the_root():
    assert not (ROOT / "stmap").exists()


def test_every_stage_is_packaged_from_its_folder():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert setuptools["package-dir"]["stmap.train"] == "train"
    assert setuptools["package-dir"]["stmap.export"] == "export"
    assert setuptools["package-dir"]["stmap.runtime"] == "runtime"
    listed = set(setuptools["packages"])
    for folder, prefix in (
        ("src/stmap", "stmap"),
        ("train", "stmap.train"),
        ("export", "stmap.export"),
        ("runtime", "stmap.runtime"),
    ):
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder).parts
            assert ".".join((prefix, *relative)) in listed, f"{init} is not packaged"


def test_extras_the_issue_names_exist():
    extras = _pyproject()["project"]["optional-dependencies"]
    assert {"gpu", "tensorrt", "distributed", "dev"} <= set(extras)
    assert any("onnxruntime-gpu" in d for d in extras["gpu"])
    assert any(d.startswith("ray") for d in extras["distributed"])


def test_runtime_dependencies_exclude_training_and_optional_backends():
    deps = " ".join(_pyproject()["project"]["dependencies"])
    for heavy in ("scikit-learn", "onnxruntime", "tensorrt", "ray", "pytest"):
        assert heavy not in deps


def test_dockerfile_matches_pyproject():
    docker = (ROOT / "Dockerfile").read_text()
    project = _pyproject()["project"]
    bases = re.findall(r"^ARG CUDA_IMAGE=(\S+)", docker, re.M)
    assert bases and bases[0].startswith("nvidia/cuda:") and "runtime" in bases[0]
    assert docker.count("FROM ${CUDA_IMAGE}") == 2, "multi-stage build on the CUDA runtime"
    installed = re.search(r'pip install .*"\.\[([^\]]+)\]"', docker)
    assert installed, "the image installs stmap with extras"
    extras = set(installed.group(1).split(","))
    assert extras == {"gpu", "tensorrt"}
    assert extras <= set(project["optional-dependencies"])
    assert re.search(r'^ENTRYPOINT \["stmap"\]', docker, re.M)
    assert project["scripts"]["stmap"] == "stmap.cli:main"
    user = re.findall(r"^USER (\S+)", docker, re.M)
    assert user and user[-1] not in ("root", "0")
    python = re.search(r"python3\.(\d+)", docker)
    minimum = int(re.search(r">=3\.(\d+)", project["requires-python"]).group(1))
    assert python and int(python.group(1)) >= minimum
    assert "constraints.txt" in docker, "the image installs the pinned versions"

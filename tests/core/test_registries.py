"""Backends, precisions and TTA modes are declared once; the CLI offers exactly those."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

from stmap.cli import main
from stmap.runtime.backends import BACKENDS, PRECISIONS
from stmap.runtime.tta_modes import TTA_MODES


def _choices(command: str, option: str) -> list[str]:
    (param,) = [
        p for p in main.get_command(click.Context(main), command).params if p.name == option
    ]
    return list(param.type.choices)


@pytest.mark.parametrize("command", ["infer", "bench"])
def test_the_cli_offers_what_the_registries_declare(command: str) -> None:
    assert _choices(command, "backend") == ["auto", *BACKENDS]
    assert _choices(command, "precision") == ["auto", *PRECISIONS]
    assert _choices(command, "tta") == list(TTA_MODES)


def test_each_declared_backend_is_the_class_its_row_names() -> None:
    for name, spec in BACKENDS.items():
        module, _, attribute = spec.factory.partition(":")
        assert getattr(importlib.import_module(module), attribute).name == name
        assert set(spec.precisions) <= set(PRECISIONS), name


def test_help_of_the_runtime_commands_imports_no_torch() -> None:
    """The choices come from the runtime's declarations, read without torch."""
    code = (
        "import sys\nfrom stmap.cli import main\n"
        "for name in ('infer', 'bench'):\n"
        "    main([name, '--help'], standalone_mode=False)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "--backend [auto|tensorrt|onnxruntime|torch]" in out.stdout
    assert out.stdout.strip().endswith("[]")

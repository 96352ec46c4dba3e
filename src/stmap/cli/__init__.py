"""The ``stmap`` command group: thin commands, loaded only when invoked.

Each command lives in its own module and is imported on first use, so ``stmap
--help`` stays instant. Errors become the exit codes of cli.md here, in one place.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile
import traceback

import click

from stmap import __version__
from stmap.errors import StmapError
from stmap.memory import tune_allocator

# name → ("module:attribute", one-line help shown by `stmap --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("stmap.cli.synth:synth", "Make a synthetic, georeferenced post-earthquake city."),
    "infer": ("stmap.cli.infer:infer", "Map building damage over whole rasters."),
    "info": ("stmap.cli.info:info", "Describe a model bundle or a raster."),
    "export": ("stmap.cli.export:export", "Add verified ONNX models and TensorRT engines."),
    "train": ("stmap.cli.train:train", "Train Smart Transfer under a protocol."),
    "evaluate": (
        "stmap.cli.evaluate:evaluate",
        "Score a bundle per region on tiles, or a map against damage labels.",
    ),
    "adapt": ("stmap.cli.adapt:adapt", "Adapt a bundle to a new event with damage labels."),
    "bench": ("stmap.cli.bench:bench", "Measure model-only and end-to-end throughput."),
}


class LazyGroup(click.Group):
    """A group whose commands are imported when run, and whose errors map to exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module_name, attribute = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module_name), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except StmapError as exc:
            click.echo(_printable(f"stmap: error: {exc}"), err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("stmap: interrupted", err=True)
            ctx.exit(130)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            log = _write_traceback()
            click.echo(
                _printable(
                    f"stmap: internal error: {type(exc).__name__}: {exc}\n"
                    f"  this is a bug; the full traceback is in {log}"
                ),
                err=True,
            )
            ctx.exit(1)


def _write_traceback() -> str:
    """The crash report's path; it is written whatever bytes the arguments or error hold
    (a file name that is not UTF-8 arrives as surrogate escapes), and where no file can
    be written the traceback goes to stderr instead."""
    try:
        with tempfile.NamedTemporaryFile(
            "w",
            prefix="stmap-crash-",
            suffix=".log",
            delete=False,
            encoding="utf-8",
            errors="backslashreplace",
        ) as f:
            f.write(f"stmap {__version__}\n{' '.join(sys.argv)}\n\n")
            traceback.print_exc(file=f)
            return f.name
    except OSError:
        traceback.print_exc(file=sys.stderr)
        return "stderr above (no crash log could be written)"


def _printable(text: str) -> str:
    """``text`` with undecodable bytes (surrogate escapes) shown as backslash escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="stmap")
def main() -> None:
    """stmap: building damage maps of whole cities from post-earthquake imagery.

    \b
    Quickstart:
      stmap synth demo.tif && stmap infer demo.tif -o out
    """
    tune_allocator()  # large model buffers reused, not faulted in afresh (stmap.memory)
    # A VRT is a text file anyone can hand over, and GDAL runs the Python pixel
    # functions it carries when this is YES; stmap needs none. GDAL reads the
    # variable when it opens a VRT, so this holds for every command and worker.
    os.environ["GDAL_VRT_ENABLE_PYTHON"] = "NO"

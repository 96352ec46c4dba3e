"""Typed errors with built-in bases; each class carries the CLI exit code it maps to.

Exit codes are a contract (cli.md): 1 internal error, 2 bad usage or bad input,
130 interrupted. A message names the file or option, what is wrong and the fix.
"""

from __future__ import annotations


class StmapError(Exception):
    """Base of every error stmap raises on purpose."""

    exit_code = 1


class InputError(StmapError, ValueError):
    """Bad usage or bad input: the user can fix it (exit 2)."""

    exit_code = 2


class RasterError(InputError, OSError):
    """A raster that cannot be opened, decoded or used as asked."""


class VectorError(InputError, OSError):
    """A vector file (footprints, AOI) that cannot be read or used."""


class BundleError(InputError):
    """A model bundle that is missing, corrupted, truncated or incompatible."""


class WeightsError(BundleError):
    """Weights that do not fit the model: missing file, wrong shapes or backbone."""


class OutputExistsError(InputError, FileExistsError):
    """An output the user made already exists and would be overwritten."""


class DeviceError(InputError, RuntimeError):
    """A device or backend that is asked for but not available here."""


class MissingDependencyError(InputError, ImportError):
    """An optional package is needed; the message says which extra installs it."""


class Interrupted(StmapError):
    """The run was interrupted; work done so far is kept for resume (exit 130)."""

    exit_code = 130

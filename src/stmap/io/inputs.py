"""What the user named on the command line, expanded into scenes: one raster each.

An argument is a raster file, a folder of rasters, a text file listing rasters, a
STAC JSON document, a GDAL virtual path (``/vsi...``) or a URL. Expansion only
looks at names and small text files; rasters are opened later, by the runtime.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from urllib.parse import urlparse

from stmap.errors import InputError, RasterError
from stmap.io.paths import check_input_path, is_gdal_virtual

RASTER_SUFFIXES = (".tif", ".tiff", ".vrt")  # what a folder contributes


@dataclass(frozen=True)
class SceneInput:
    """One raster to map: a GDAL-readable path, a name for its outputs, when it was taken.

    datetime: the acquisition time (STAC), None when unknown; orders a mosaic.
    """

    href: str
    id: str
    datetime: datetime | None = None


def expand_inputs(args: Sequence[str | SceneInput], asset: str = "visual") -> list[SceneInput]:
    """The scenes ``args`` name, in order (SceneInputs pass through unchanged).

    A folder gives its *.tif, *.tiff and *.vrt files sorted by name; a ``.txt`` file
    one raster per line (relative to the text file; blank lines and ``#`` comments
    skipped); a ``.json`` file its STAC items' ``asset``; an http(s)/s3/gs URL its
    GDAL virtual path. Raises InputError (or RasterError) naming the argument for
    a missing file, an empty folder or list, or an unreadable list or STAC file.
    """
    scenes: list[SceneInput] = []
    for arg in args:
        scenes += [arg] if isinstance(arg, SceneInput) else _expand(str(arg), asset)
    return scenes


def remote_path(href: str) -> str | None:
    """The GDAL virtual path of a remote URL (http, https, s3, gs); None for a local one."""
    scheme = urlparse(href).scheme.lower()
    if scheme in ("http", "https"):
        return f"/vsicurl/{href}"
    if scheme in ("s3", "gs"):
        return f"/vsi{scheme}/{href.split('://', 1)[1]}"
    return None


def _expand(arg: str, asset: str) -> list[SceneInput]:
    virtual = remote_path(arg) or (arg if is_gdal_virtual(arg) else None)
    if virtual is not None:
        return [_scene(virtual)]
    path = Path(arg)
    if path.is_dir():
        return _folder(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        from stmap.io.stac import read_stac  # stac builds SceneInputs from this module

        return read_stac(path, asset)
    if suffix == ".txt":
        return _listed(path)
    return [_scene(check_input_path(arg, RasterError))]


def _folder(folder: Path) -> list[SceneInput]:
    rasters = sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in RASTER_SUFFIXES
    )
    if not rasters:
        raise InputError(
            f"{folder}: a folder without rasters ({', '.join(RASTER_SUFFIXES)}); "
            "give raster files, a folder holding them, a text file of paths or a STAC file"
        )
    return [_scene(str(p)) for p in rasters]


def _listed(listing: Path) -> list[SceneInput]:
    """The rasters of a text file, one per line, relative to the text file."""
    check_input_path(listing, InputError)
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise InputError(f"{listing}: list of rasters not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{listing}: not a readable text file of paths ({exc})") from exc
    scenes = []
    for number, line in enumerate(lines, start=1):
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        virtual = remote_path(entry) or (entry if is_gdal_virtual(entry) else None)
        if virtual is not None:
            scenes.append(_scene(virtual))
            continue
        path = Path(entry) if Path(entry).is_absolute() else listing.parent / entry
        if not path.exists():
            raise RasterError(f"{listing}, line {number}: {entry}: file not found ({path})")
        where = f"{listing}, line {number}: "
        scenes.append(_scene(check_input_path(path, RasterError, what=where)))
    if not scenes:
        raise InputError(f"{listing}: lists no raster (only blank lines or # comments)")
    return scenes


def _scene(href: str) -> SceneInput:
    """A scene named after its file's stem (query strings of URLs left out)."""
    name = urlparse(href).path if "://" in href else href
    return SceneInput(href=href, id=Path(name.rstrip("/")).stem or os.path.basename(href))

"""Writers of the runtime's outputs: partial GeoTIFFs block by block, then COGs; JSON.

Partial rasters are tiled (512), fast-compressed GeoTIFFs, sparse (a tile never
written reads as nodata), written block by block and reopened in update mode when
a run resumes. GDAL writes a GeoTIFF's tile index only when the file is closed, so
``BlockWriter.checkpoint`` closes and reopens the files: what was written before a
checkpoint survives the process being killed. ``write_cog`` turns a finished
partial raster into a Cloud-Optimized GeoTIFF (DEFLATE, predictor, overviews).
Every final file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio._err import CPLE_BaseError
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError, RasterioIOError
from rasterio.transform import Affine

from stmap.errors import InputError, RasterError
from stmap.io.layout import NODATA, TILE
from stmap.io.raster import rio_window
from stmap.window import Window

PARTIAL_OPTIONS = {
    "driver": "GTiff",
    "count": 1,
    "dtype": "uint8",
    "nodata": NODATA,
    "tiled": True,
    "blockxsize": TILE,
    "blockysize": TILE,
    # ZSTD level 1 encodes at ~400 Mpx/s: the partial file is rewritten as a COG anyway.
    "compress": "zstd",
    "zstd_level": 1,
    "predictor": 2,
    "sparse_ok": True,
    "bigtiff": "if_safer",
}
COG_OPTIONS = {
    "COMPRESS": "DEFLATE",  # what every GeoTIFF reader decodes
    "LEVEL": 1,  # 3× faster than the default 6, files a few % larger
    "PREDICTOR": "YES",
    "BLOCKSIZE": TILE,
    "BIGTIFF": "IF_SAFER",
    "NUM_THREADS": "ALL_CPUS",
}
_GDAL_ERRORS = (RasterioError, CPLE_BaseError, OSError)
FULL_DISK_BYTES = 64 << 20  # a write that failed with less free space left: the disk is full


class BlockWriter:
    """uint8 single-band partial GeoTIFFs, one per layer, written window by window.

    paths: layer name → file. A new run creates them; ``resume`` reopens existing
    ones in update mode. Errors (a full disk, an unwritable directory) raise
    RasterError naming the file.
    """

    def __init__(
        self,
        paths: dict[str, Path],
        *,
        height: int,
        width: int,
        crs: CRS | None,
        transform: Affine,
        resume: bool,
    ):
        self.paths = paths
        self._profile = {**PARTIAL_OPTIONS, "height": height, "width": width}
        self._profile.update(crs=crs, transform=transform)
        self._datasets: dict[str, Any] = {}
        self._open(create=not resume)

    def write(self, name: str, row_off: int, col_off: int, data: np.ndarray) -> None:
        """Write (h, w) uint8 ``data`` into layer ``name`` at (row_off, col_off)."""
        window = rio_window(Window(row_off, col_off, *data.shape))
        self._guard(self.paths[name], lambda: self._datasets[name].write(data, 1, window=window))

    def checkpoint(self) -> None:
        """Make everything written so far durable against the process being killed."""
        self.close()
        self._open(create=False)

    def _open(self, *, create: bool) -> None:
        for name, path in self.paths.items():
            mode = {"mode": "w", **self._profile} if create else {"mode": "r+"}
            self._datasets[name] = self._guard(path, lambda p=path, m=mode: _open_raster(p, m))

    def close(self) -> None:
        for name, dataset in list(self._datasets.items()):
            self._guard(self.paths[name], dataset.close)
            del self._datasets[name]

    @staticmethod
    def _guard(path: Path, action):
        try:
            return action()
        except _GDAL_ERRORS as exc:
            raise RasterError(write_failure(path, exc)) from exc


def _open_raster(path: Path, mode: dict[str, Any]) -> Any:
    try:
        return rasterio.open(path, **mode)
    except TypeError as exc:
        # rasterio's "r+" raises TypeError for a file GDAL does not recognise, such as
        # a partial raster whose process was killed before it first closed the file.
        raise RasterioIOError(str(exc)) from exc


def write_cog(source: Path, target: Path, *, overview_resampling: str) -> Path:
    """Copy a finished GeoTIFF to a Cloud-Optimized GeoTIFF at ``target``.

    overview_resampling: "average" for probabilities, "nearest" for classes.
    """
    try:
        rasterio.shutil.copy(
            str(source),
            str(target),
            driver="COG",
            OVERVIEW_RESAMPLING=overview_resampling.upper(),
            **COG_OPTIONS,
        )
    except _GDAL_ERRORS as exc:
        target.unlink(missing_ok=True)
        raise RasterError(write_failure(target, exc, " the COG")) from exc
    return target


def write_png(path: Path, rgb: np.ndarray) -> Path:
    """Write (3, H, W) uint8 ``rgb`` as a PNG at ``path`` atomically (temporary name, rename).

    No georeferencing and no .aux.xml sidecar: a quicklook is a picture, not a raster.
    """
    tmp = path.with_name(f".{path.stem}.tmp.png")
    count, height, width = rgb.shape
    try:
        with rasterio.Env(GDAL_PAM_ENABLED="NO"), warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(
                tmp,
                "w",
                driver="PNG",
                width=width,
                height=height,
                count=count,
                dtype="uint8",
                ZLEVEL=1,  # 2× faster than the default 6; the file is a few % larger
            ) as dst:
                dst.write(rgb)
        os.replace(tmp, path)
    except _GDAL_ERRORS as exc:
        raise RasterError(write_failure(path, exc, " the PNG")) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a temporary file, then a rename)."""
    write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a link left under this name is not written through
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(write_failure(path, exc)) from exc


def write_failure(path: Path, exc: BaseException, what: str = "") -> str:
    """Why ``path`` could not be written, for the user, with a full disk named as such.

    GDAL often reports a full disk as "Write failed" only (its "No space left on
    device" goes to the log), so the free space left where ``path`` lives decides too.
    what: the kind of file, after "cannot write" (" the COG").
    """
    free = _free_bytes(path)
    if _is_enospc(exc) or (free is not None and free < FULL_DISK_BYTES):
        left = f", {free / 2**20:.1f} MiB free" if free is not None else ""
        return (
            f"{path}: cannot write{what}: no space left on the device ({path.parent}{left}); "
            "free some space there, or choose another output directory"
        )
    return f"{path}: cannot write{what} ({exc}); check the free space and permissions there"


def _is_enospc(exc: BaseException | None) -> bool:
    seen = 0
    while exc is not None and seen < 8:  # the error, and the ones it was raised from
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(exc):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (or of its nearest existing folder)."""
    for folder in path.parents:
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return None


def read_json(path: Path) -> Any:
    """The JSON object in ``path``, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def prepare_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and check that files can be created in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".stmap-write-test-{os.getpid()}"
        probe.unlink(missing_ok=True)  # a link left under this name is not written through
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise InputError(
            f"-o {path}: cannot write there ({exc.strerror or exc}); choose a writable directory"
        ) from exc
    return path


def publish(staging: Path, target: Path) -> list[Path]:
    """Move every file of ``staging`` into ``target`` (atomic renames), then remove it."""
    moved = []
    try:
        for item in sorted(staging.iterdir()):
            os.replace(item, target / item.name)
            moved.append(target / item.name)
        staging.rmdir()
    except OSError as exc:
        raise InputError(f"{target}: cannot move the finished outputs into place ({exc})") from exc
    return moved


def move(source: Path, target: Path) -> Path:
    """Rename ``source`` (a file or a folder) to ``target`` on the same file system."""
    try:
        os.replace(source, target)
    except OSError as exc:
        raise InputError(f"{target}: cannot move {source.name} into place ({exc})") from exc
    return target


def empty_dir(path: Path) -> Path:
    """``path`` as a new, empty directory (whatever was there is removed)."""
    remove(path)
    path.mkdir()
    return path


def remove(*paths: Path) -> None:
    """Delete files or directory trees that may or may not exist."""
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

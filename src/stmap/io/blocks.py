"""Block reads for the streaming runtime: pixels on the model's grid, validity on the input's.

A ``BlockReader`` holds its own GDAL handle (handles are not thread-safe), so each
reader thread opens one. Reads are large windows, aligned by the caller to the
output's 512-px tiling; GDAL's block cache, bounded by ``streaming_env``, keeps the
input tiles that neighbouring blocks' halos share, so they are decoded once.

When the model's ground sample distance differs from the input's, pixels are read
through a ``WarpedVRT`` onto the model grid: the same CRS, pixels scaled by the GSD
ratio, on the world's lattice of model pixels (``runtime.grid``). That mapping is
affine, so GDAL's linear approximation of it is exact and every model-grid pixel
has one value whatever window it is read in. The kernel is cubic (widened when
downsampling): bilinear softened fine detail by how far a model pixel fell between
two input pixels, so the same scene moved by a fraction of a pixel looked sharper or
softer to the model, and its map moved with it (#20: 2 % of the flagged pixels of a
real 0.6 m scene flipped). Lanczos keeps still more of the detail and flipped about
as many pixels of synthetic cities (fewer of that scene), at 2.7× cubic's warp time (9
against 25 model Mpx/s a thread when upsampling): the reader, not the model, would
bound a GPU. Validity (nodata, alpha band,
internal or sidecar mask, via GDAL's dataset mask) is always read on the input
grid, where the outputs live.
"""

from __future__ import annotations

import math
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from rasterio._env import del_gdal_config
from rasterio._err import CPLE_BaseError
from rasterio.enums import MaskFlags, Resampling
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.errors import RasterioError
from rasterio.transform import Affine
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window as RioWindow

from stmap.errors import RasterError
from stmap.io.aoi import Aoi
from stmap.io.raster import RasterInfo, open_raster, rio_window
from stmap.io.sources import content_digest, dataset_files
from stmap.window import Window

# How imagery off a grid is resampled onto it, here and by io.mosaic (the docstring: why)
IMAGE_RESAMPLING = Resampling.cubic
READ_CACHE_BYTES = 128 << 20  # GDAL block cache: two rows of 512-px tiles of a 40k-px-wide RGB
REMOTE_READS = {
    # Opening a remote file must not list its "directory" (one request per sidecar
    # guess, or a whole S3 prefix) nor probe for .aux.xml, .ovr or .msk files.
    "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    "CPL_VSIL_CURL_ALLOWED_EXTENSIONS": ".tif,.tiff,.vrt,.TIF,.TIFF,.VRT",
    # A COG's header and tile index in the first request, not in several small ones.
    "GDAL_INGESTED_BYTES_AT_OPEN": 65536,
    # Neighbouring tiles of one window in one request; parallel requests on one HTTP/2
    # connection where the server speaks it; the bytes fetched kept for the blocks
    # whose halos share them.
    "GDAL_HTTP_MERGE_CONSECUTIVE_RANGES": "YES",
    "GDAL_HTTP_MULTIPLEX": "YES",
    "CPL_VSIL_CURL_CACHE_SIZE": 256 << 20,
    "GDAL_HTTP_MAX_RETRY": 3,
    "GDAL_HTTP_RETRY_DELAY": 1,
}


@dataclass(frozen=True)
class BandInfo:
    """One band as the runtime sees it: its colour role and whether all its pixels are valid."""

    index: int  # 1-based
    color: str  # GDAL colour interpretation: "red", "green", "blue", "alpha", "gray", ...
    all_valid: bool  # no nodata, alpha or mask applies to it


def describe_bands(path: str | os.PathLike[str]) -> tuple[BandInfo, ...]:
    with open_raster(path) as ds:
        return tuple(
            BandInfo(
                index=i,
                color=ds.colorinterp[i - 1].name,
                all_valid=ds.mask_flag_enums[i - 1] == [MaskFlags.all_valid],
            )
            for i in ds.indexes
        )


@dataclass(frozen=True)
class ReadSpec:
    """What to read from one input raster, and on which grid.

    bands: 1-based band indexes, in the model's band order.
    masked: False when every pixel of those bands is valid (no mask is read then).
    model_shape: (rows, cols) of the grid the model runs on.
    model_transform: that grid's transform when it differs from the raster's
        (resampling); None when the model runs on the raster's own grid.
    aoi: pixels outside it are invalid, and windows that miss it are never read.
    """

    path: str
    bands: tuple[int, ...]
    dtype: str
    masked: bool
    model_shape: tuple[int, int]
    model_transform: Affine | None = None
    aoi: Aoi | None = None


def file_identity(info: RasterInfo) -> dict[str, Any]:
    """What identifies an input for resuming: path, size, modification time and a digest
    of the content of a local file and of every file GDAL reads with it (sidecars, a
    VRT's sources), plus the raster's shape, dtype and georeferencing (all a /vsi path has)."""
    identity: dict[str, Any] = {"path": info.path}
    if os.path.exists(info.path):
        stat = os.stat(info.path)
        identity.update(
            path=os.path.abspath(info.path),
            size=stat.st_size,
            mtime_ns=stat.st_mtime_ns,
            content=content_digest(dataset_files(info.path)),
        )
    identity.update(
        shape=[info.count, info.height, info.width],
        dtype=info.dtype,
        transform=list(info.transform)[:6],
        crs=info.crs.to_string() if info.crs else None,
    )
    return identity


@contextmanager
def streaming_env() -> Iterator[None]:
    """GDAL settings for streaming whole rasters: a bounded block cache (GDAL's default
    is 5 % of RAM, which a large raster fills, so memory would grow with its size), and
    range reads of remote rasters (``/vsicurl/``, ``/vsis3/``) in few, large requests.

    The remote settings are set process-wide for the duration, outside rasterio's
    per-thread Env bookkeeping, so that every thread (readers, finalisation) opens
    remote files with them; previous values come back afterwards.
    """
    previous = {key: get_gdal_config(key, normalize=False) for key in REMOTE_READS}
    for key, value in REMOTE_READS.items():
        set_gdal_config(key, str(value), normalize=False)
    try:
        with rasterio.Env(GDAL_CACHEMAX=READ_CACHE_BYTES):
            yield
    finally:
        for key, value in previous.items():
            if value is None:
                del_gdal_config(key)
            else:
                set_gdal_config(key, value, normalize=False)


def band_validity(
    dataset: rasterio.DatasetReader, bands: tuple[int, ...], window: RioWindow
) -> np.ndarray:
    """(height, width) bool: GDAL's validity of ``bands`` in ``window``.

    The dataset's mask (a ``.msk`` sidecar, an internal mask, an alpha band) when it
    has one; else the per-band masks (nodata) of those bands only, a pixel being valid
    where any of them is, as in GDAL's dataset mask: a band not read has no say.
    """
    flags = dataset.mask_flag_enums[bands[0] - 1]
    if MaskFlags.per_dataset in flags or MaskFlags.alpha in flags:
        return dataset.dataset_mask(window=window) > 0
    return np.logical_or.reduce(dataset.read_masks(list(bands), window=window) > 0, axis=0)


class BlockReader:
    """Reads windows of one raster; open one per thread."""

    def __init__(self, spec: ReadSpec):
        self.spec = spec
        self._dataset = open_raster(spec.path)
        self._pixels = self._dataset
        self._inside: tuple[tuple[int, int], tuple[int, int]] | None = None
        if spec.model_transform is not None:
            rows, cols = spec.model_shape
            to_raster = ~self._dataset.transform @ spec.model_transform
            self._inside = centres_inside(
                to_raster, spec.model_shape, (self._dataset.height, self._dataset.width)
            )
            self._pixels = WarpedVRT(
                self._dataset,
                crs=self._dataset.crs,
                transform=spec.model_transform,
                height=rows,
                width=cols,
                resampling=IMAGE_RESAMPLING,
            )

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pixels is not self._dataset:
            self._pixels.close()
        self._dataset.close()

    def read_valid(self, area: Window) -> np.ndarray | None:
        """(height, width) bool validity of an input-grid window; None when all pixels are.

        Outside the AOI nothing is valid; a window that misses it is not read at all.
        """
        window = rio_window(area)
        inside = None
        if self.spec.aoi is not None:
            transform = self._dataset.window_transform(window)
            inside = self.spec.aoi.mask(transform, area.height, area.width)
            if not inside.any():
                return inside
        if not self.spec.masked:
            return inside
        valid = self._guard(lambda: self._read_mask(window), window)
        return valid if inside is None else valid & inside

    def _read_mask(self, window: RioWindow) -> np.ndarray:
        return band_validity(self._dataset, self.spec.bands, window)

    def read_pixels(self, area: Window, out: np.ndarray | None = None) -> np.ndarray:
        """Read a model-grid window (inside the raster) into ``out``, (C, height, width)
        of the spec's dtype (None: a new array)."""
        window = rio_window(area)
        indexes = list(self.spec.bands)
        if self._inside is not None and not _within(area, self._inside):
            return self._guard(lambda: self._read_clamped(area, indexes, out), window)
        return self._guard(lambda: self._pixels.read(indexes, window=window, out=out), window)

    def _read_clamped(self, area: Window, indexes: list[int], out: np.ndarray | None) -> np.ndarray:
        """A model-grid window reaching the pixels whose centres lie past the raster:
        those repeat their in-raster neighbour (GDAL's warper would leave them at 0)."""
        assert self._inside is not None
        (r_first, r_last), (c_first, c_last) = self._inside
        rows = np.clip(np.arange(area.row_off, area.row_stop), r_first, r_last)
        cols = np.clip(np.arange(area.col_off, area.col_stop), c_first, c_last)
        r0, c0 = int(rows.min()), int(cols.min())
        span = RioWindow(c0, r0, int(cols.max()) - c0 + 1, int(rows.max()) - r0 + 1)
        data = self._pixels.read(indexes, window=span)[:, rows - r0][:, :, cols - c0]
        if out is None:
            return data
        out[...] = data
        return out

    def _guard(self, read, window: RioWindow):
        try:
            return read()
        except (RasterioError, CPLE_BaseError, OSError) as exc:
            detail = exc.__cause__ or exc  # rasterio keeps GDAL's own message one level down
            raise RasterError(
                f"{self.spec.path}: cannot decode rows {window.row_off}–"
                f"{window.row_off + window.height}, columns {window.col_off}–"
                f"{window.col_off + window.width} (corrupted or truncated file?): {detail}"
            ) from exc


def centres_inside(
    to_raster: Affine, model_shape: tuple[int, int], raster_shape: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((first, last) row, (first, last) col) of the model grid whose pixel centres lie
    inside the raster; ``to_raster`` maps model-grid pixel coordinates to the raster's
    (an axis-aligned scale and shift: the grid is the raster's, resized and moved). The
    grid, on the world's lattice, starts up to a model pixel before the raster and ends
    up to one past it. An axis with no such pixel (a raster smaller than one model
    pixel) spans the whole grid."""
    spans = []
    for step, start, count, size in (
        (to_raster.e, to_raster.f, model_shape[0], raster_shape[0]),
        (to_raster.a, to_raster.c, model_shape[1], raster_shape[1]),
    ):
        # model pixel u's centre lies at raster coordinate start + step · (u + 0.5); a
        # centre on the edge, to float rounding, counts as outside
        first = max(0, math.ceil(-start / step - 0.5 + 1e-9))
        last = min(count - 1, math.ceil((size - start) / step - 0.5 - 1e-9) - 1)
        spans.append((first, last) if first <= last else (0, count - 1))
    return spans[0], spans[1]


def _within(area: Window, inside: tuple[tuple[int, int], tuple[int, int]]) -> bool:
    (r_first, r_last), (c_first, c_last) = inside
    return (
        r_first <= area.row_off
        and area.row_stop - 1 <= r_last
        and c_first <= area.col_off
        and area.col_stop - 1 <= c_last
    )


IMAGE, VALID = "image", "valid"  # the input's pixels (C, h, w) and validity (h, w) bool


class LayerReader:
    """Windows of named layers, for what a run did not stream: each output layer
    (``prob``, ``damage``, (h, w) uint8) from its raster, ``image`` (C, h, w) and
    ``valid`` (h, w) bool from the input (``image``, read on its own grid).

    A window of ``valid`` is absent when every pixel is valid. Open it in one thread.
    """

    def __init__(self, outputs: Mapping[str, os.PathLike[str] | str], image: ReadSpec | None):
        self.outputs, self.image = outputs, image
        self._readers: dict[str, BlockReader] = {}

    def __enter__(self) -> LayerReader:
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def read(
        self, windows: Iterable[Window], names: Collection[str]
    ) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
        """(window, {name: array}) of ``names`` for each window, in order."""
        for window in windows:
            layers: dict[str, np.ndarray] = {}
            for name in names:
                if name == VALID:
                    valid = self._reader(IMAGE).read_valid(window)
                    if valid is not None:
                        layers[VALID] = valid
                elif name == IMAGE:
                    layers[IMAGE] = self._reader(IMAGE).read_pixels(window)
                else:
                    layers[name] = self._reader(name).read_pixels(window)[0]
            yield window, layers

    def _reader(self, name: str) -> BlockReader:
        if name not in self._readers:
            if name == IMAGE:
                if self.image is None:
                    raise ValueError("the input's pixels were asked for, but no input was given")
                spec = self.image
            else:
                spec = ReadSpec(str(self.outputs[name]), (1,), "uint8", False, (0, 0))
            self._readers[name] = BlockReader(spec)
        return self._readers[name]

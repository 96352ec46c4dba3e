"""What an input raster is made of on disk: its files, and a digest of their content.

GDAL reads more than the file the user named: sidecars (``.msk``, ``.aux.xml``,
world files) and, for a VRT, the files it references. Those are the files a run
must never write over, and the bytes a resumed run must find unchanged.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import rasterio
from rasterio.errors import RasterioError

from stmap.io.paths import is_virtual

SAMPLE_BYTES = 64 << 10  # one read of the digest
SAMPLES = 64  # evenly spaced reads of a large file: 4 MiB whatever its size
WHOLE_BELOW = SAMPLE_BYTES * SAMPLES  # smaller files are hashed whole


def dataset_files(href: str) -> list[Path]:
    """The local files GDAL reads for the raster at ``href`` (itself first); [] for remote.

    Falls back to ``href`` alone when GDAL cannot open it (the caller refuses it later).
    """
    if is_virtual(href):
        return []
    try:
        with rasterio.open(href) as dataset:
            names = [href, *(dataset.files or [])]
    except (RasterioError, OSError, ValueError):
        names = [href]
    files = {}
    for name in names:
        if not is_virtual(name) and os.path.isfile(name):
            files.setdefault(os.path.realpath(name), Path(name))
    return list(files.values())


def content_digest(files: Iterable[Path]) -> str:
    """A BLAKE2b digest of the files' sizes and bytes: each whole when small, else sampled.

    A large raster is sampled in SAMPLES evenly spaced reads, the first and last
    included, so the digest costs a few MiB of reads whatever the size (a full hash
    of a 20 GB scene would add a minute to every start and resume). It catches any
    re-encoding, re-tiling or new header (a GeoTIFF's header and tile index lie in
    the sampled first and last bytes), and every edit of a small file; an in-place
    edit of a large file's pixels between samples that keeps its size is what it
    can miss, which the modification time, kept beside it, still catches.
    """
    digest = hashlib.blake2b(digest_size=16)
    for path in files:
        size = path.stat().st_size
        digest.update(f"{size}:".encode())
        with open(path, "rb") as stream:
            if size <= WHOLE_BELOW:
                digest.update(stream.read())
                continue
            step = (size - SAMPLE_BYTES) / (SAMPLES - 1)
            for k in range(SAMPLES):
                stream.seek(round(k * step))
                digest.update(stream.read(SAMPLE_BYTES))
    return digest.hexdigest()

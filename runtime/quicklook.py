"""A downsampled RGB view of a scene with the damage drawn over it, as a PNG.

Image and probabilities come as thumbnails (``thumbnail.Thumbnail``, sinks of the
block stream): sampled from the blocks while the run streams them, and completed
from the files for whatever that run did not see, so the full-resolution rasters are never held and,
in a plain run, the input is not decoded twice. The image is stretched per band
(2-98 %) and slightly desaturated so the overlay stands out: damage (prob >
threshold) is a half-transparent red fill with a solid bright-red outline; pixels
without imagery are flat dark grey and pixels without a prediction are dimmed to
grey.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from stmap.errors import RasterError
from stmap.io.blocks import IMAGE, LayerReader, ReadSpec
from stmap.io.raster import describe_raster
from stmap.io.writers import NODATA, write_png

from .sinks import PROB, feed_missing
from .thumbnail import Thumbnail
from .vectorize import damage_cutoff

DAMAGE_FILL = np.array([235, 25, 35], dtype=np.float32)  # red, drawn at FILL_ALPHA
FILL_ALPHA = 0.55
DAMAGE_EDGE = np.array([255, 235, 60], dtype=np.float32)  # yellow outline
NO_IMAGE = 40  # grey level where the image has no data
DESATURATE = 0.6  # share of grey mixed into the image, so only damage is vivid
# The PNG's longer side. 1024 keeps the PNG near 2 MB and its encoding (zlib,
# single-threaded) a fraction of a second; at 2048 px it costs more than mapping a
# small city.
MAX_SIZE = 1024


def quicklook_shape(width: int, height: int, max_size: int = MAX_SIZE) -> tuple[int, int]:
    """(rows, cols) of a view whose longer side is at most max_size, same aspect."""
    scale = max(width, height) / max_size
    if scale <= 1:
        return height, width
    return max(1, round(height / scale)), max(1, round(width / scale))


def write_quicklook(
    image_path: str | os.PathLike[str],
    prob_path: str | os.PathLike[str],
    out_png: str | os.PathLike[str],
    *,
    threshold: float,
    bands: Sequence[int] = (1, 2, 3),
    max_size: int = MAX_SIZE,
) -> Path:
    """Write a PNG of `image_path` with the damage of `prob_path` drawn over it.

    image_path: the input scene; `bands` (1-based) are shown as RGB, or as grey
        when one band is given.
    prob_path: uint8 probability × 255 (nodata 255) covering the same extent.
    threshold: damage is drawn where prob / 255 > threshold.
    max_size: the longer side of the PNG in pixels (never upsampled).
    The PNG appears at `out_png` only once complete. Returns its path.
    """
    info = describe_raster(image_path)
    if max(bands) > info.count or min(bands) < 1:
        raise RasterError(f"{info.path}: has {info.count} band(s), cannot show bands {list(bands)}")
    image, prob = quicklook_thumbnails(info.height, info.width, len(bands), info.dtype, max_size)
    spec = ReadSpec(info.path, tuple(bands), info.dtype, True, (info.height, info.width))
    with LayerReader({PROB: prob_path}, spec) as reader:
        feed_missing([image, prob], reader)
    return save_quicklook(out_png, image, prob, threshold=threshold)


def quicklook_thumbnails(
    height: int, width: int, bands: int, dtype: str, max_size: int = MAX_SIZE
) -> tuple[Thumbnail, Thumbnail]:
    """The two sinks a quicklook is drawn from: the input's and the probabilities'."""
    shape = quicklook_shape(width, height, max_size)
    return (
        Thumbnail(height, width, shape, bands, dtype, layer=IMAGE),
        Thumbnail(height, width, shape, 1, layer=PROB),
    )


def save_quicklook(
    out_png: str | os.PathLike[str], image: Thumbnail, prob: Thumbnail, *, threshold: float
) -> Path:
    """Write the PNG of two complete thumbnails (``quicklook_thumbnails``)."""
    image, prob = image.finish(), prob.finish()
    probs = np.ma.masked_equal(prob.pixels[0], NODATA)
    rgb = render_quicklook(image.pixels, image.valid, probs, damage_cutoff(threshold))
    return write_png(Path(out_png), rgb)


def render_quicklook(
    image: np.ndarray, has_image: np.ndarray, prob: np.ma.MaskedArray, cutoff: int
) -> np.ndarray:
    """Compose the quicklook.

    image: (B, H, W) any numeric dtype, B = 3 (RGB) or 1 (grey).
    has_image: (H, W) bool, False where the image has no data.
    prob: (H, W) uint8 masked array, masked where there is no prediction.
    cutoff: damage where prob > cutoff.
    Returns (3, H, W) uint8 RGB.
    """
    stretched = np.stack([stretch(band, has_image) for band in image])  # float32
    if len(stretched) == 1:
        stretched = np.repeat(stretched, 3, axis=0)
    grey = stretched.mean(axis=0)
    out = (1 - DESATURATE) * stretched + DESATURATE * grey
    no_pred = np.ma.getmaskarray(prob) & has_image
    out[:, no_pred] = 0.35 * grey[no_pred] + 50  # dimmed: still readable, clearly out
    damaged = (np.ma.filled(prob, 0) > cutoff) & has_image
    edge = _outline(damaged)
    fill = damaged & ~edge
    out[:, fill] = (1 - FILL_ALPHA) * out[:, fill] + FILL_ALPHA * DAMAGE_FILL[:, None]
    out[:, edge] = DAMAGE_EDGE[:, None]
    out[:, ~has_image] = NO_IMAGE
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def stretch(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """(H, W) band -> float32 in [0, 255], its valid pixels' 2-98 % range to full scale."""
    values = band[valid]
    if values.size == 0:
        return np.zeros(band.shape, dtype=np.float32)
    low, high = np.percentile(values, [2, 98])
    span = max(float(high - low), 1e-6)
    scaled = (band.astype(np.float32) - np.float32(low)) * np.float32(255 / span)
    return np.clip(scaled, 0, 255, out=scaled)


def _outline(region: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels of `region` with a 4-neighbour outside it (image edge inside)."""
    padded = np.pad(region, 1, mode="edge")
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return region & ~interior

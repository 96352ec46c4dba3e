"""The viewer's tile files: ``LAYER/z/x/y.jpg`` (imagery) and ``.png`` (probabilities).

Tiles are 256 px. Imagery is JPEG (no alpha is needed: the map's background is
the grey of "no imagery"). Probabilities are 8-bit palette PNGs whose pixel
values are the uint8 probabilities themselves, coloured by the palette and its
transparency (tRNS) chunk: the browser shows the ramp, and a lower zoom level is
built from the values read back, not from colours. Pillow encodes both: a
256-px JPEG in about a millisecond, a palette PNG in less.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from stmap.errors import RasterError
from stmap.io.writers import write_failure

TILE = 256
JPEG_QUALITY = 80  # imagery; 75-85 is what web maps use
IMAGE, PROB = "image", "damage"  # the layers, and their folders
_EXT = {IMAGE: "jpg", PROB: "png"}


class TileStore:
    """The tiles of the viewer under ``root`` (one folder per layer, then z/x/y)."""

    def __init__(self, root: Path, lut: np.ndarray):
        """lut: (256, 4) uint8 RGBA of each probability value (the PNG palette)."""
        self.root = root
        self._palette = lut[:, :3].tobytes()
        self._alpha = lut[:, 3].tobytes()

    def path(self, layer: str, z: int, x: int, y: int) -> Path:
        return self.root / layer / str(z) / str(x) / f"{y}.{_EXT[layer]}"

    def write_image(self, z: int, x: int, y: int, rgb: np.ndarray) -> None:
        """(256, 256, 3) uint8 ``rgb`` as the imagery tile (z, x, y)."""
        self._save(self.path(IMAGE, z, x, y), Image.fromarray(rgb, "RGB"), quality=JPEG_QUALITY)

    def write_prob(self, z: int, x: int, y: int, values: np.ndarray) -> None:
        """(256, 256) uint8 probabilities as the damage tile (z, x, y)."""
        image = Image.fromarray(values, "L").convert("P")  # same indices, palette added next
        image.putpalette(self._palette)
        self._save(self.path(PROB, z, x, y), image, transparency=self._alpha, compress_level=1)

    def read_image(self, z: int, x: int, y: int) -> np.ndarray | None:
        """(256, 256, 3) uint8 of an imagery tile, or None when it was not written."""
        path = self.path(IMAGE, z, x, y)
        if not path.exists():
            return None
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))

    def read_prob(self, z: int, x: int, y: int) -> np.ndarray | None:
        """(256, 256) uint8 probabilities of a damage tile, or None when it was not written."""
        path = self.path(PROB, z, x, y)
        if not path.exists():
            return None
        with Image.open(path) as image:
            return np.asarray(image)  # palette indices: the values themselves

    @staticmethod
    def _save(path: Path, image: Image.Image, **options) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path, **options)
        except OSError as exc:
            raise RasterError(write_failure(path, exc, " the map tile")) from exc

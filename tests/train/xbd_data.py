"""A tiny dataset in the xBD (xView2) layout, written from the published format facts.

Each image is grey noise with rectangular buildings (damaged ones high-contrast
rubble, intact ones a flat roof), its label JSON carries every building in image
pixels (``xy``) and in EPSG:4326 (``lng_lat``), and ``metadata.gsd`` is the
misleading multispectral 2.65 m while the delivered pixel is ``pixel_m``.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import rasterio
from pyproj import CRS, Transformer
from rasterio.errors import NotGeoreferencedWarning

UTM = CRS.from_epsg(32637)  # Kahramanmaraş, Türkiye
SUBTYPES = ("no-damage", "minor-damage", "major-damage", "destroyed", "un-classified")


def write_xbd_image(
    split_dir: Path,
    disaster: str,
    number: int,
    *,
    size: int = 256,
    pixel_m: float = 0.5,
    origin: tuple[float, float] = (400_000.0, 4_160_000.0),
    disaster_type: str = "earthquake",
    subtypes: tuple[str, ...] = SUBTYPES,
    phase: str = "post",
    seed: int = 0,
) -> dict:
    """Write one image and its label; returns the label document."""
    rng = np.random.default_rng(seed)
    stem = f"{disaster}_{number:08d}_{phase}_disaster"
    image = rng.integers(60, 110, (3, size, size), dtype=np.uint8)
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    xy, lng_lat = [], []
    step = size // max(1, len(subtypes))
    for i, subtype in enumerate(subtypes):
        x0, y0 = 8 + i * step, 8 + (i * 37) % (size - 48)
        w, h = step - 16, 32
        if subtype in ("major-damage", "destroyed"):
            image[:, y0 : y0 + h, x0 : x0 + w] = rng.choice([20, 240], (3, h, w))
        else:
            image[:, y0 : y0 + h, x0 : x0 + w] = np.array([180, 90, 60])[:, None, None]
        ring = [(x0, y0), (x0 + w, y0), (x0 + w, y0 + h), (x0, y0 + h), (x0, y0)]
        lonlat = [
            to_lonlat.transform(origin[0] + c * pixel_m, origin[1] - r * pixel_m) for c, r in ring
        ]
        properties = {"feature_type": "building", "uid": f"{stem}-{i}"}
        if phase == "post":
            properties["subtype"] = subtype
        xy.append({"properties": properties, "wkt": _wkt(ring)})
        lng_lat.append({"properties": properties, "wkt": _wkt(lonlat)})
    document = {
        "features": {"lng_lat": lng_lat, "xy": xy},
        "metadata": {
            "disaster": disaster,
            "disaster_type": disaster_type,
            "gsd": 2.65,
            "pan_resolution": 0.66,
            "width": size,
            "height": size,
            "img_name": f"{stem}.png",
            "sensor": "WORLDVIEW02",
            "off_nadir_angle": 20.0,
            "capture_date": "2023-02-08T08:00:00.000Z",
        },
    }
    (split_dir / "labels").mkdir(parents=True, exist_ok=True)
    (split_dir / "labels" / f"{stem}.json").write_text(json.dumps(document))
    _write_png(split_dir / "images" / f"{stem}.png", image)
    return document


def make_xbd(
    root: Path, disasters: dict[str, int], *, size: int = 256, pixel_m: float = 0.5
) -> Path:
    """``disasters`` {name: post-disaster images} under ``root/train``, with a pre image each;
    a disaster named ``*earthquake*`` is of type earthquake, any other flooding."""
    for d, (disaster, count) in enumerate(disasters.items()):
        kind = "earthquake" if "earthquake" in disaster else "flooding"
        for n in range(count):
            origin = (400_000.0 + d * 5_000 + n * size * pixel_m, 4_160_000.0)
            for phase in ("pre", "post"):
                write_xbd_image(
                    root / "train",
                    disaster,
                    n,
                    size=size,
                    pixel_m=pixel_m,
                    origin=origin,
                    disaster_type=kind,
                    phase=phase,
                    seed=d * 100 + n,
                )
    return root


def _wkt(ring: list[tuple[float, float]]) -> str:
    return "POLYGON ((" + ", ".join(f"{x!r} {y!r}" for x, y in ring) + "))"


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    profile = {"driver": "PNG", "width": array.shape[2], "height": array.shape[1]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", count=3, dtype="uint8", **profile) as dst:
            dst.write(array)

"""Building footprints from what ``--footprints`` names: a vector file, or a STAC document.

A STAC document (an Item, ItemCollection, Catalog or Collection, in a ``.json``
file) names its footprint files as assets: the asset keyed or with the role
``footprints``, else ``buildings``, of every item. Anything else is read as a vector
file by OGR (GeoJSON included: a STAC item is GeoJSON too, so the test comes first).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from stmap.errors import InputError
from stmap.io.stac import read_stac
from stmap.io.vectors import VectorTable, read_vector

FOOTPRINT_ASSETS = ("footprints", "buildings")  # STAC asset keys or roles, in this order
_SNIFF_BYTES = 1 << 16  # STAC objects say "stac_version" near their start


def read_footprints(
    source: str | os.PathLike[str],
    *,
    crs: Any = None,
    bbox: tuple[float, float, float, float] | None = None,
) -> VectorTable:
    """The footprints of ``source`` (see the module doc), as ``read_vector`` reads them.

    Several files (one per STAC item) are concatenated in item order, keeping the
    columns they all have; their per-file FIDs are dropped, as they would collide.
    Raises InputError or VectorError naming the file.
    """
    tables = [read_vector(path, crs=crs, bbox=bbox) for path in footprint_files(source)]
    if len(tables) == 1:
        return tables[0]
    columns = [
        name
        for name in tables[0].attributes
        if name != tables[0].fid_name and all(name in t.attributes for t in tables[1:])
    ]
    return VectorTable(
        geometries=np.concatenate([t.geometries for t in tables]),
        attributes={name: np.concatenate([t.attributes[name] for t in tables]) for name in columns},
        crs=tables[0].crs,
    )


def footprint_files(source: str | os.PathLike[str]) -> list[str]:
    """The vector files ``source`` stands for: itself, or its STAC items' footprint assets."""
    text = os.fspath(source)
    if not _is_stac(Path(text)):
        return [text]
    refusals = []
    for asset in FOOTPRINT_ASSETS:
        try:
            return [scene.href for scene in read_stac(text, asset)]
        except InputError as exc:
            refusals.append(str(exc))
    raise InputError(
        f"--footprints {text}: a STAC document, but no footprint asset was found "
        f"({'; '.join(refusals)}); give the vector asset the key or role 'footprints'"
    )


def _is_stac(path: Path) -> bool:
    """Whether ``path`` is a STAC JSON document (by its name and its first bytes)."""
    if path.suffix.lower() != ".json" or not path.is_file():
        return False
    with path.open("rb") as f:
        return b'"stac_version"' in f.read(_SNIFF_BYTES)

"""Scenes from local STAC JSON: an Item, an ItemCollection, or a Catalog/Collection tree.

Tolerant of the optional (missing ids, datetimes, titles, extra links), strict on
what a scene needs: every item must carry the asked-for asset with an href. Asset
hrefs are resolved relative to the JSON file that names them; remote hrefs become
GDAL virtual paths (``https://`` → ``/vsicurl/``, ``s3://`` → ``/vsis3/``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from stmap.errors import InputError
from stmap.io.inputs import SceneInput, remote_path

_ITEM, _ITEM_COLLECTION = "Feature", "FeatureCollection"
_CONTAINERS = ("Catalog", "Collection")


def read_stac(path: str | os.PathLike[str], asset: str = "visual") -> list[SceneInput]:
    """Every item's ``asset`` under the STAC JSON at ``path``, as SceneInputs in file order.

    An asset is chosen by key ``asset``, else as the one asset whose roles include
    ``asset``. Catalogs and Collections are followed through their local ``item``
    and ``child`` links. Raises InputError naming the file and the item for a
    missing, unreadable or non-STAC file, an item without the asset, or no item.
    """
    source = Path(path)
    scenes = [
        SceneInput(href=_asset_href(item, where, asset), id=_item_id(item, where), datetime=when)
        for item, where in _items(source, seen=set())
        for when in [_item_datetime(item, where)]
    ]
    if not scenes:
        raise InputError(f"{source}: a STAC document without any item; nothing to map")
    return scenes


def _items(path: Path, seen: set[Path]) -> Iterator[tuple[Mapping[str, Any], Path]]:
    """(item, file it came from) for every item reachable from ``path``."""
    key = path.resolve()
    if key in seen:  # catalogs may link back to their parents
        return
    seen.add(key)
    doc = _load(path)
    kind = doc.get("type")
    if kind == _ITEM:
        yield doc, path
    elif kind == _ITEM_COLLECTION:
        features = doc.get("features")
        if not isinstance(features, list):
            raise InputError(f"{path}: an ItemCollection whose 'features' is not a list")
        for feature in features:
            if not isinstance(feature, Mapping):
                raise InputError(f"{path}: an ItemCollection feature that is not an object")
            yield feature, path
    elif kind in _CONTAINERS:
        links = doc.get("links") or []
        if not isinstance(links, list):
            raise InputError(f"{path}: a {kind} whose 'links' is not a list")
        for link in links:
            if isinstance(link, Mapping) and link.get("rel") in ("item", "child"):
                yield from _items(_linked_file(link, path), seen)
    else:
        raise InputError(
            f"{path}: not a STAC Item, ItemCollection, Catalog or Collection "
            f"(type {kind!r}); give a STAC JSON file, raster files or a folder"
        )


def _load(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: STAC file not found")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(doc, Mapping):
        raise InputError(f"{path}: a JSON {type(doc).__name__}, not a STAC object")
    return doc


def _linked_file(link: Mapping[str, Any], parent: Path) -> Path:
    href = link.get("href")
    if not isinstance(href, str) or not href or "\x00" in href:
        raise InputError(f"{parent}: a {link.get('rel')!r} link without a usable href")
    if remote_path(href) is not None:
        raise InputError(
            f"{parent}: links to the remote STAC document {href}; only local catalogs are "
            "read: download it, or list its assets' URLs in a text file"
        )
    return _local(href, parent)


def _asset_href(item: Mapping[str, Any], where: Path, asset: str) -> str:
    assets = item.get("assets")
    name = _item_id(item, where)
    if not isinstance(assets, Mapping) or not assets:
        raise InputError(f"{where}: item {name!r} has no assets")
    chosen = assets.get(asset)
    if chosen is None:
        by_role = [
            value
            for value in assets.values()
            if isinstance(value, Mapping) and asset in _roles(value)
        ]
        if len(by_role) > 1:
            raise InputError(
                f"{where}: item {name!r} has {len(by_role)} assets with role {asset!r}; "
                f"choose one with --asset (keys: {', '.join(map(str, assets))})"
            )
        chosen = by_role[0] if by_role else None
    if chosen is None:
        raise InputError(
            f"{where}: item {name!r} has no asset {asset!r} (by key or role); its assets "
            f"are {', '.join(map(str, assets))}: choose one with --asset"
        )
    href = chosen.get("href") if isinstance(chosen, Mapping) else None
    if not isinstance(href, str) or not href or "\x00" in href:
        raise InputError(f"{where}: asset {asset!r} of item {name!r} has no usable href")
    return remote_path(href) or str(_local(href, where))


def _roles(asset: Mapping[str, Any]) -> list[Any]:
    roles = asset.get("roles") or []
    return roles if isinstance(roles, list) else []


def _local(href: str, relative_to: Path) -> Path:
    """A local href (a path or a file:// URL) resolved against the file that names it."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        href = unquote(parsed.path)
    target = Path(href)
    return target if target.is_absolute() else relative_to.parent / target


def _item_id(item: Mapping[str, Any], where: Path) -> str:
    name = item.get("id")
    return str(name) if name not in (None, "") else where.stem


def _item_datetime(item: Mapping[str, Any], where: Path) -> datetime | None:
    """The acquisition time: ``datetime``, else ``start_datetime``; None when neither."""
    properties = item.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise InputError(f"{where}: item {_item_id(item, where)!r} has 'properties' not an object")
    text = properties.get("datetime") or properties.get("start_datetime")
    if text is None:
        return None
    try:
        return datetime.fromisoformat(str(text))
    except ValueError:
        raise InputError(
            f"{where}: item {_item_id(item, where)!r} has datetime {text!r}, not an "
            "RFC 3339 date-time such as 2023-02-07T08:15:00Z"
        ) from None

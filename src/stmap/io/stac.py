"""Scenes from local STAC JSON: an Item, an ItemCollection, or a Catalog/Collection tree.

Read with pystac, the STAC community's library: items, assets, roles, links and
the resolution of relative hrefs are its objects and rules. stmap is tolerant of
the optional (missing ids, datetimes, titles, extra links) and strict on what a
scene needs: every item must carry the asked-for asset with an href. So each
document is first reduced to what stmap reads, with defaults for what STAC
requires and stmap does not use, and whatever pystac then refuses is an
InputError naming the file. Asset hrefs resolve against the JSON file that names
them; remote hrefs become GDAL virtual paths (``https://`` → ``/vsicurl/``,
``s3://`` → ``/vsis3/``); catalogs are followed through local links only. An
item's id names its outputs, so it is made safe (``stmap.io.outdir.safe_name``):
an id such as ``../../escape`` cannot place a file outside OUTDIR.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pystac
from pystac.utils import str_to_datetime

from stmap.errors import InputError
from stmap.io.inputs import SceneInput, remote_path
from stmap.io.outdir import safe_name, show_name

log = logging.getLogger(__name__)

MAX_BYTES = 256 << 20  # a STAC file larger than this is refused before it is parsed
_ITEM, _ITEM_COLLECTION = "Feature", "FeatureCollection"
_CONTAINERS = ("Catalog", "Collection")
_FOLLOWED = ("item", "child")
# pystac requires a datetime that stmap does not (it only orders a mosaic by it):
# an item without one is given this, and read back as None.
_NO_DATETIME = "0001-01-01T00:00:00Z"
# What pystac raises for a document it cannot build its objects from.
_PYSTAC_ERRORS = (pystac.STACError, KeyError, TypeError, ValueError, AttributeError)


def read_stac(path: str | os.PathLike[str], asset: str = "visual") -> list[SceneInput]:
    """Every item's ``asset`` under the STAC JSON at ``path``, as SceneInputs in file order.

    An asset is chosen by key ``asset``, else as the one asset whose roles include
    ``asset``. Catalogs and Collections are followed through their local ``item``
    and ``child`` links. Raises InputError naming the file and the item for a
    missing, unreadable or non-STAC file, an item without the asset, or no item.
    """
    scenes = [_scene(doc, where, asset) for doc, where in _items(Path(path))]
    if not scenes:
        raise InputError(f"{path}: a STAC document without any item; nothing to map")
    return scenes


def _items(entry: Path) -> Iterator[tuple[Mapping[str, Any], Path]]:
    """(item document, file it came from) for every item reachable from ``entry``, in
    file order; depth-first without recursion, each file once (catalogs link back)."""
    seen: set[Path] = set()
    pending = [entry]
    while pending:
        path = pending.pop()
        key = path.resolve()
        if key in seen:
            continue
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
            pending += reversed(_linked_files(doc, path, kind))
        else:
            raise InputError(
                f"{path}: not a STAC Item, ItemCollection, Catalog or Collection "
                f"(type {ascii(kind)[:80]}); give a STAC JSON file, raster files or a folder"
            )


def _load(path: Path) -> Mapping[str, Any]:
    if not path.is_file():
        raise InputError(f"{path}: STAC file not found")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InputError(
                f"{path}: a STAC file over {MAX_BYTES >> 20} MiB; split it into smaller ones"
            )
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(doc, Mapping):
        raise InputError(f"{path}: a JSON {type(doc).__name__}, not a STAC object")
    return doc


def _linked_files(doc: Mapping[str, Any], path: Path, kind: str) -> list[Path]:
    """The local files of a Catalog's or Collection's ``item`` and ``child`` links, in order.

    Only the links are read: a Collection's extent, license and the rest are not
    needed to find its items.
    """
    links = doc.get("links") or []
    if not isinstance(links, list):
        raise InputError(f"{path}: a {kind} whose 'links' is not a list")
    catalog = pystac.Catalog(id="stmap", description="", href=str(path.absolute()))
    files = []
    for raw in links:
        if not isinstance(raw, Mapping) or raw.get("rel") not in _FOLLOWED:
            continue
        href = raw.get("href")
        if not isinstance(href, str) or not href or "\x00" in href:
            raise InputError(f"{path}: a {raw.get('rel')!r} link without a usable href")
        if remote_path(href) is not None:
            raise InputError(
                f"{path}: links to the remote STAC document {href}; only local catalogs are "
                "read: download it, or list its assets' URLs in a text file"
            )
        link = pystac.Link(rel=raw["rel"], target=href)
        link.set_owner(catalog)
        files.append(_local(link.get_absolute_href() or href))
    return files


def _scene(doc: Mapping[str, Any], where: Path, asset: str) -> SceneInput:
    """The SceneInput of one item document: its asset's href, its safe id, its datetime."""
    name = _item_id(doc, where)
    when = _item_datetime(doc, where, name)
    try:
        item = pystac.Item.from_dict(
            _reduced(doc, where, name, when),
            href=str(where.absolute()),
            migrate=False,
            preserve_dict=False,
        )
    except _PYSTAC_ERRORS as exc:
        raise InputError(
            f"{where}: item {show_name(name)} is not a STAC Item pystac can read ({exc})"
        ) from exc
    output_name = safe_name(name)
    if output_name != name:
        log.info("%s: item %s names its outputs %r", where, show_name(name), output_name)
    return SceneInput(href=_asset_href(item, where, asset), id=output_name, datetime=when)


def _reduced(
    doc: Mapping[str, Any], where: Path, name: str, when: datetime | None
) -> dict[str, Any]:
    """What stmap reads of an item, as a dict pystac builds an Item from.

    Assets that are not objects are left out, and roles that are not a list of
    strings dropped: stmap never reads them, and pystac would fail on them.
    """
    assets = doc.get("assets")
    if not isinstance(assets, Mapping) or not assets:
        raise InputError(f"{where}: item {show_name(name)} has no assets")
    reduced_assets = {}
    for key, value in assets.items():
        if not isinstance(value, Mapping):
            continue
        href, roles = value.get("href"), value.get("roles")
        reduced_assets[key] = {
            "href": href if isinstance(href, str) and "\x00" not in href else "",
            "roles": [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else [],
        }
    return {
        "type": _ITEM,
        "stac_version": pystac.get_stac_version(),
        "id": name,
        "geometry": None,
        "properties": {"datetime": when.isoformat() if when else _NO_DATETIME},
        "assets": reduced_assets,
        "links": [],
    }


def _asset_href(item: pystac.Item, where: Path, asset: str) -> str:
    name = item.id
    if not item.assets:
        raise InputError(f"{where}: item {show_name(name)} has no assets")
    chosen = item.assets.get(asset)
    if chosen is None:
        by_role = [value for value in item.assets.values() if asset in (value.roles or [])]
        if len(by_role) > 1:
            raise InputError(
                f"{where}: item {show_name(name)} has {len(by_role)} assets with role {asset!r}; "
                f"choose one with --asset (keys: {', '.join(item.assets)})"
            )
        chosen = by_role[0] if by_role else None
    if chosen is None:
        raise InputError(
            f"{where}: item {show_name(name)} has no asset {asset!r} (by key or role); its assets "
            f"are {', '.join(item.assets)}: choose one with --asset"
        )
    if not chosen.href:
        raise InputError(f"{where}: asset {asset!r} of item {show_name(name)} has no usable href")
    return remote_path(chosen.href) or str(_local(chosen.get_absolute_href() or chosen.href))


def _local(href: str) -> Path:
    """A local href, absolute after pystac resolved it (a path or a file:// URL)."""
    parsed = urlparse(href)
    if parsed.scheme == "file":
        href = unquote(parsed.path)
    return Path(href)


def _item_id(item: Mapping[str, Any], where: Path) -> str:
    name = item.get("id")
    return str(name) if name not in (None, "") else where.stem


def _item_datetime(item: Mapping[str, Any], where: Path, name: str) -> datetime | None:
    """The acquisition time: ``datetime``, else ``start_datetime``; None when neither."""
    properties = item.get("properties") or {}
    if not isinstance(properties, Mapping):
        raise InputError(f"{where}: item {show_name(name)} has 'properties' not an object")
    text = properties.get("datetime") or properties.get("start_datetime")
    if text is None:
        return None
    try:
        return str_to_datetime(str(text))
    except (ValueError, OverflowError):
        raise InputError(
            f"{where}: item {show_name(name)} has datetime {text!r}, not an "
            "RFC 3339 date-time such as 2023-02-07T08:15:00Z"
        ) from None

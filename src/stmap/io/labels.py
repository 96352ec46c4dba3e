"""Damage labels from whatever vector a responder holds, and their pixels on any window.

Any OGR source (GeoPackage, GeoJSON, zipped Shapefile, FlatGeobuf, ...) of points,
polygons or their multi-forms, in any CRS, is read into the raster's CRS. Its damage
field is recognised by name (a schema *preset*: Copernicus EMS grading, UNOSAT, xBD,
OpenStreetMap/HOT lifecycle tags, a 0/1 or boolean column) and each value is mapped
to damaged, undamaged or ignored; the user can name the field and move values
between the three. Supervision stays sparse and honest: a polygon labels its
interior, a point the footprint that holds it (or the nearest within ``snap_m``),
else a disk of ``point_radius_m``; every other pixel is unknown, never a negative.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import shapely
from pyproj import CRS
from rasterio.features import rasterize
from rasterio.transform import Affine

from stmap.errors import InputError, VectorError
from stmap.io.vectors import VectorTable, read_vector

DAMAGED, UNDAMAGED, IGNORED = 1, 0, -1
CLASS_NAMES = {DAMAGED: "damaged", UNDAMAGED: "undamaged", IGNORED: "ignored"}
ANY = "*"  # in a preset's damaged values: any non-empty value not listed elsewhere

Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class Preset:
    """A label schema: the field names that identify it and how its values map.

    Values are compared after ``normalise`` (case, separators and spaces folded).
    """

    name: str
    fields: tuple[str, ...]
    damaged: tuple[str, ...]
    undamaged: tuple[str, ...]
    ignored: tuple[str, ...] = ("",)
    binary: bool = False  # only matches a field whose values are all 0/1/true/false/yes/no
    suffixed: bool = False  # also matches FIELD_<n> (repeated passes); the highest n wins


PRESETS: tuple[Preset, ...] = (
    # Copernicus EMS rapid-mapping grading products (the schema): `damage_gra`,
    # older products `grading`.
    Preset(
        "ems",
        ("damage_gra", "grading"),
        damaged=("destroyed", "damaged", "completely destroyed", "highly damaged"),
        undamaged=("no visible damage", "not affected", "negligible to slight damage"),
        ignored=("possibly damaged", "moderately damaged", "not applicable", "unknown", ""),
    ),
    # UNOSAT damage points. Field and codes as published in UNOSAT's Gaza Strip
    # Comprehensive Damage Assessment geodatabase (OCHA_CBPF_OPT_031_UNOSAT_Gaza_Strip_
    # CDA_11October2025, one `Main_Damage_Site_Class[_n]` per imagery pass): 1 Destroyed,
    # 2 Severely Damaged, 3 Moderately Damaged, 4 Possibly Damaged, 6 No Visible Damage,
    # 11 Possible Damage from adjacent impact/debris — as documented in public code that
    # reads that product (github.com/alexjrshaw/gaza-damage-mapping, its UNOSAT
    # preprocessing) and the text classes "Destroyed", "Severe Damage", "Moderate Damage",
    # "Possible Damage" seen in QGIS tooling for UNOSAT points. We found no official UNOSAT
    # codebook; `Main_Damag` is the same field cut to 10 characters by Shapefile.
    Preset(
        "unosat",
        ("main_damage_site_class", "main_damag"),
        damaged=("1", "2", "destroyed", "severe damage", "severely damaged"),
        undamaged=("6", "no visible damage"),
        ignored=(
            "3",
            "4",
            "11",
            "moderate damage",
            "moderately damaged",
            "possible damage",
            "possibly damaged",
            "",
        ),
        suffixed=True,
    ),
    # xBD building polygons (`subtype`).
    Preset(
        "xbd",
        ("subtype",),
        damaged=("major damage", "destroyed"),
        undamaged=("no damage", "minor damage"),
        ignored=("un classified", ""),
    ),
    # OpenStreetMap / HOT lifecycle tags: `destroyed:building=yes` (or =house, ...).
    Preset(
        "osm",
        ("destroyed:building", "damaged:building"),
        damaged=(ANY,),
        undamaged=("no",),
    ),
    # A 0/1 or boolean column (stmap synth's footprints carry `damaged`).
    Preset(
        "binary",
        ("damaged", "is_damaged", "damage", "label"),
        damaged=("1", "true", "yes"),
        undamaged=("0", "false", "no"),
        binary=True,
    ),
)
_BINARY_VALUES = {"", "0", "1", "true", "false", "yes", "no"}


def normalise(value: Any) -> str:
    """A label value folded for comparison: ``"Major-Damage "`` → ``"major damage"``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return re.sub(r"[\s_\-]+", " ", str(value)).strip().lower()


@dataclass(frozen=True)
class Mapping:
    """How one field's values map to classes: the preset (or ``custom``) and the lists."""

    field: str
    preset: str
    damaged: tuple[str, ...]
    undamaged: tuple[str, ...]
    ignored: tuple[str, ...]

    def classify(self, value: str) -> int | None:
        """DAMAGED, UNDAMAGED or IGNORED for a normalised value; None when unmapped."""
        if value in self.undamaged:
            return UNDAMAGED
        if value in self.ignored:
            return IGNORED
        if value in self.damaged or (ANY in self.damaged and value):
            return DAMAGED
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "preset": self.preset,
            "damaged": list(self.damaged),
            "undamaged": list(self.undamaged),
            "ignored": list(self.ignored),
        }


@dataclass(frozen=True, eq=False)
class LabelSet:
    """Labelled objects in the raster's CRS.

    geometries: (N,) points or polygons (multi-parts split); classes: (N,) int8,
    DAMAGED / UNDAMAGED / IGNORED; values: (N,) the source value as written
    (str), which names the *source class* of per-class figures.
    """

    path: str
    sha256: str
    crs: Any
    mapping: Mapping
    geometries: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    notes: tuple[str, ...] = ()
    value_counts: dict[str, tuple[str, int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.geometries)

    @property
    def bounds(self) -> Bounds:
        return tuple(shapely.total_bounds(self.geometries).tolist())

    def counts(self) -> dict[str, int]:
        """Objects per class name."""
        return {name: int((self.classes == c).sum()) for c, name in CLASS_NAMES.items()}

    def describe(self) -> str:
        """The mapping and counts, as printed before any work."""
        c = self.counts()
        lines = [
            f"--labels {self.path}: field {self.mapping.field!r} (preset {self.mapping.preset}): "
            f"{c['damaged']} damaged, {c['undamaged']} undamaged, {c['ignored']} ignored"
        ]
        for raw, (name, n) in sorted(self.value_counts.items(), key=lambda kv: -kv[1][1]):
            lines.append(f"  {raw!r:32s} → {name:9s} {n}")
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)

    def check_classes(self, minimum: int) -> None:
        """Refuse labels with fewer than ``minimum`` damaged or undamaged objects."""
        c = self.counts()
        if c["damaged"] < minimum or c["undamaged"] < minimum:
            raise InputError(
                f"--labels {self.path}: after mapping field {self.mapping.field!r} there are "
                f"{c['damaged']} damaged and {c['undamaged']} undamaged objects "
                f"({c['ignored']} ignored); at least {minimum} of each are needed "
                "(move values with --damaged/--undamaged/--ignore, or add labels)"
            )

    def check_overlap(self, bounds: Bounds, what: str) -> None:
        """Refuse labels that miss ``bounds`` (of ``what``, in the labels' CRS)."""
        if not len(self) or not shapely.box(*bounds).intersects(shapely.box(*self.bounds)):
            raise InputError(
                f"--labels {self.path}: do not overlap {what}: the labels span "
                f"{_extent(self.bounds)}, {what} spans {_extent(bounds)} "
                f"({CRS.from_user_input(self.crs).name}); give labels inside the imagery"
            )

    def take(self, keep: np.ndarray) -> LabelSet:
        """The objects at ``keep`` (bool mask or indices), same mapping."""
        return LabelSet(
            self.path,
            self.sha256,
            self.crs,
            self.mapping,
            self.geometries[keep],
            self.classes[keep],
            self.values[keep],
            self.notes,
            self.value_counts,
        )


def read_labels(
    path: str | os.PathLike[str],
    crs: Any,
    *,
    label_field: str | None = None,
    damaged: Sequence[str] = (),
    undamaged: Sequence[str] = (),
    ignore: Sequence[str] = (),
) -> LabelSet:
    """Read, reproject to ``crs`` and classify a labels file (see the module doc).

    damaged, undamaged, ignore: values moved to that class (as written; compared
    normalised). Raises VectorError / InputError naming ``--labels`` for an unreadable
    file, a file without CRS, no usable geometry, or no recognisable label field.
    """
    text = os.fspath(path)
    report: dict[str, int] = {}
    try:
        table = read_vector(text, crs=crs, report=report)
    except VectorError as exc:
        raise VectorError(f"--labels {exc}") from exc
    notes = []
    if report.get("repaired"):
        notes.append(f"{report['repaired']} invalid geometries repaired")
    if report.get("dropped"):
        notes.append(f"{report['dropped']} null, empty or collapsed geometries skipped")
    mapping = _mapping(text, table, label_field, damaged, undamaged, ignore)
    raw = table.attributes[mapping.field]
    folded = np.array([normalise(v) for v in raw], dtype=object)
    classes = np.array(
        [IGNORED if (c := mapping.classify(v)) is None else c for v in folded], dtype=np.int8
    )
    shown = np.array(["" if normalise(v) == "" else str(v) for v in raw], dtype=object)
    value_counts: dict[str, tuple[str, int]] = {}
    for value, n in Counter(shown.tolist()).items():
        cls = mapping.classify(normalise(value))
        value_counts[value] = ("unmapped→ignored" if cls is None else CLASS_NAMES[cls], n)
    geometries, parents, skipped = _parts(table.geometries)
    if skipped:
        notes.append(f"{skipped} line or other non-point, non-polygon geometries skipped")
    if not len(geometries):
        raise VectorError(f"--labels {text}: holds no point or polygon label")
    return LabelSet(
        text,
        _sha256(text),
        crs,
        mapping,
        geometries,
        classes[parents],
        shown[parents],
        tuple(notes),
        value_counts,
    )


def _mapping(
    path: str,
    table: VectorTable,
    label_field: str | None,
    damaged: Sequence[str],
    undamaged: Sequence[str],
    ignore: Sequence[str],
) -> Mapping:
    """The field and value lists: the user's overrides on top of the recognised preset."""
    names = [n for n in table.attributes if n != table.fid_name]
    preset, field_name = None, None
    if label_field is not None:
        field_name = _find_field(names, label_field)
        if field_name is None:
            raise InputError(
                f"--label-field {label_field}: {path} has no such field; "
                f"fields found: {', '.join(names) or 'none'}"
            )
        preset = next((p for p in PRESETS if _preset_field(p, [field_name], table)), None)
    else:
        for candidate in PRESETS:
            field_name = _preset_field(candidate, names, table)
            if field_name is not None:
                preset = candidate
                break
    if field_name is None:
        raise InputError(
            f"--labels {path}: no recognisable label field; fields found: "
            f"{', '.join(names) or 'none'}; presets: "
            + "; ".join(f"{p.name} ({', '.join(p.fields)})" for p in PRESETS)
            + "; name one with --label-field and map its values with --damaged/--undamaged"
        )
    if preset is None and not (damaged or undamaged):
        values = sorted({normalise(v) for v in table.attributes[field_name]} - {""})
        raise InputError(
            f"--label-field {field_name}: no preset knows this field; say which of its values "
            f"are damaged and undamaged with --damaged V... --undamaged V... (values: "
            f"{', '.join(values[:20])}{' ...' if len(values) > 20 else ''})"
        )
    lists = {
        "damaged": list(preset.damaged) if preset else [],
        "undamaged": list(preset.undamaged) if preset else [],
        "ignored": list(preset.ignored) if preset else [""],
    }
    for target, moved in (("damaged", damaged), ("undamaged", undamaged), ("ignored", ignore)):
        folded = [normalise(v) for v in moved]
        if not folded:
            continue
        for name, values in lists.items():
            lists[name] = [v for v in values if v not in folded]
        lists[target] = folded if target != "ignored" else [*lists[target], *folded]
    return Mapping(
        field_name,
        preset.name if preset else "custom",
        tuple(lists["damaged"]),
        tuple(lists["undamaged"]),
        tuple(lists["ignored"]),
    )


def _find_field(names: Sequence[str], wanted: str) -> str | None:
    if wanted in names:
        return wanted
    return next((n for n in names if n.lower() == wanted.lower()), None)


def _preset_field(preset: Preset, names: Sequence[str], table: VectorTable) -> str | None:
    """The field of ``names`` that ``preset`` recognises (the latest pass if suffixed)."""
    for wanted in preset.fields:
        found = _find_field(names, wanted)
        if preset.suffixed:
            passes = [
                (int(m.group(1)), n)
                for n in names
                if (m := re.fullmatch(rf"{re.escape(wanted)}_(\d+)", n, re.IGNORECASE))
            ]
            if passes:
                found = max(passes)[1]
        if found is None:
            continue
        if preset.binary:
            values = {normalise(v) for v in table.attributes[found]}
            if not values <= _BINARY_VALUES:
                continue
        return found
    return None


def _parts(geometries: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Points and polygons of (N,) geometries with multi-parts split: (parts, parent
    index of each part, count of features with neither)."""
    parts, parents = shapely.get_parts(geometries, return_index=True)
    kinds = shapely.get_type_id(parts)
    keep = np.isin(kinds, (shapely.GeometryType.POINT, shapely.GeometryType.POLYGON))
    kept_parents = set(parents[keep].tolist())
    skipped = len(geometries) - len(kept_parents)
    return parts[keep], parents[keep], skipped


def _sha256(path: str) -> str | None:
    """The file's SHA-256 (provenance); None for a virtual path (``/vsi...``)."""
    if not os.path.isfile(path):
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _extent(bounds: Bounds) -> str:
    return "({:.1f}, {:.1f}) – ({:.1f}, {:.1f})".format(*bounds)


@dataclass(frozen=True, eq=False)
class LabelRegions:
    """The area each labelled object supervises: polygons in the raster's CRS.

    One region per labelled object, in the LabelSet's order (a region's index is its
    object's): geometries (N,) polygons; classes (N,) int8; values (N,) source class.
    """

    geometries: np.ndarray
    classes: np.ndarray
    values: np.ndarray
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tree", shapely.STRtree(self.geometries))

    def __len__(self) -> int:
        return len(self.geometries)

    def near(self, bounds: Bounds) -> np.ndarray:
        """Indices of the regions that intersect ``bounds`` (sorted)."""
        return np.sort(self._tree.query(shapely.box(*bounds)))

    def take(self, keep: np.ndarray) -> LabelRegions:
        return LabelRegions(
            self.geometries[keep], self.classes[keep], self.values[keep], self.notes
        )

    def rasterise(
        self, transform: Affine, height: int, width: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixels of a window (``transform``): (target, known, region) arrays (H, W).

        target: uint8, 1 damaged; known: bool, True where a damaged or undamaged label
        covers the pixel centre and no label of the other class does (conflicts are
        unknown); region: int32 index of the covering region, −1 where none. Ignored-
        class regions are unknown but keep their index (per-class figures).
        """
        corners = np.array([transform @ (c, r) for c in (0, width) for r in (0, height)])
        bounds = (*corners.min(axis=0), *corners.max(axis=0))
        idx = self.near(bounds)
        shape = (height, width)
        region = np.full(shape, -1, dtype=np.int32)
        damaged = np.zeros(shape, dtype=bool)
        undamaged = np.zeros(shape, dtype=bool)
        if len(idx):
            geoms = self.geometries[idx]
            region = rasterize(
                zip(geoms, idx.tolist(), strict=True),
                out_shape=shape,
                transform=transform,
                fill=-1,
                dtype="int32",
            )
            for cls, mask in ((DAMAGED, damaged), (UNDAMAGED, undamaged)):
                chosen = geoms[self.classes[idx] == cls]
                if len(chosen):
                    mask |= rasterize(
                        ((g, 1) for g in chosen), out_shape=shape, transform=transform, fill=0
                    ).astype(bool)
        known = damaged ^ undamaged
        return (damaged & known).astype(np.uint8), known, region


def label_regions(
    labels: LabelSet,
    *,
    footprints: VectorTable | None = None,
    snap_m: float = 5.0,
    point_radius_m: float = 3.0,
) -> LabelRegions:
    """What each label supervises (see the module doc); footprints in the labels' CRS.

    A polygon is its own region; a point the footprint that contains it, else the
    nearest within ``snap_m``, else (or without footprints) a disk of
    ``point_radius_m``. Distances are metres: converted to the CRS's units.
    """
    for name, value in (("--snap", snap_m), ("--point-radius", point_radius_m)):
        if not (math.isfinite(value) and value >= 0):
            raise InputError(f"{name} {value:g}: must be 0 or more metres")
    geoms = labels.geometries.copy()
    is_point = shapely.get_type_id(geoms) == shapely.GeometryType.POINT
    notes = []
    unit = metres_per_unit(labels.crs, labels.bounds)
    todo = np.flatnonzero(is_point)
    if footprints is not None and len(footprints) and len(todo):
        polys = footprints.geometries[
            np.isin(
                shapely.get_type_id(footprints.geometries),
                (shapely.GeometryType.POLYGON, shapely.GeometryType.MULTIPOLYGON),
            )
        ]
        tree = shapely.STRtree(polys)
        found = np.full(len(todo), -1, dtype=np.int64)
        pts, hits = tree.query(geoms[todo], predicate="intersects")
        found[pts[::-1]] = hits[::-1]  # first hit wins
        missing = np.flatnonzero(found < 0)
        if len(missing) and snap_m > 0:
            pts, hits = tree.query_nearest(
                geoms[todo[missing]], max_distance=snap_m / unit, all_matches=False
            )
            found[missing[pts]] = hits
        matched = found >= 0
        geoms[todo[matched]] = polys[found[matched]]
        notes.append(f"{int(matched.sum())} of {len(todo)} points labelled their footprint")
        todo = todo[~matched]
    if len(todo):
        geoms[todo] = shapely.buffer(geoms[todo], point_radius_m / unit)
        notes.append(f"{len(todo)} points labelled a disk of {point_radius_m:g} m")
    return LabelRegions(geoms, labels.classes, labels.values, tuple(notes))


def metres_per_unit(crs: Any, bounds: Bounds) -> float:
    """Metres in one unit of ``crs``'s x axis (degrees: at the labels' mean latitude)."""
    parsed = CRS.from_user_input(crs)
    if parsed.is_geographic:
        latitude = (bounds[1] + bounds[3]) / 2
        return 111_320.0 * max(math.cos(math.radians(latitude)), 1e-6)
    return parsed.axis_info[0].unit_conversion_factor


def probability_windows(
    path: str | os.PathLike[str], regions: LabelRegions, block: int = 512
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Windows of a probability map (``S_damage_prob.tif``) that hold labels.

    Yields (prob8, target, known, region) per ``block``-px window touching a region:
    the map's uint8 values (255 where nodata or masked) and the labels rasterised on
    its grid (``LabelRegions.rasterise``). Windows without labels are never read.
    """
    from rasterio.windows import Window

    from stmap.io.raster import open_raster

    text = os.fspath(path)
    with open_raster(text) as ds:
        if ds.count != 1 or ds.dtypes[0] != "uint8":
            raise InputError(
                f"{text}: not a probability map (one uint8 band, probability × 255, as "
                "stmap infer writes S_damage_prob.tif)"
            )
        for row in range(0, ds.height, block):
            for col in range(0, ds.width, block):
                window = Window(col, row, min(block, ds.width - col), min(block, ds.height - row))
                transform = ds.window_transform(window)
                h, w = int(window.height), int(window.width)
                corners = np.array([transform @ (c, r) for c in (0, w) for r in (0, h)])
                if not len(regions.near((*corners.min(axis=0), *corners.max(axis=0)))):
                    continue
                prob8 = ds.read(1, window=window)
                prob8[ds.read_masks(1, window=window) == 0] = 255
                yield (prob8, *regions.rasterise(transform, h, w))

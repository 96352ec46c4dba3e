"""A stranger's rasters, manifests and footprints: mapped, or refused with exit 2; never
a crash, a work file left behind or an allocation beyond the memory budget.

Rasters get random sizes (up to 10⁵ px a side, sparse), dtypes, band counts,
geotransforms (zero, NaN, infinite, tiny, huge, rotated), CRSs, nodata values, masks
and NBITS; manifests random numbers in every numeric field; footprints NaN, infinite
and 1e300 coordinates and many overlapping copies. tests/runtime/test_hostile_inputs.py
has the hand-written cases these generalise.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from hypothesis import given
from hypothesis import strategies as st
from pyogrio import raw
from rasterio.transform import Affine

from stmap.budget import BlockCost
from stmap.bundle import GSD_RANGE_M, MANIFEST, TILE_RANGE, open_bundle
from stmap.errors import BundleError, InputError, VectorError
from stmap.io.footprints import read_footprints
from stmap.runtime import buildings
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.plan import READ_BUFFERS, plan_run
from tests.conftest import make_tiny_bundle
from tests.fuzz.counting import fuzz_target
from tests.properties.profiles import examples

BUDGET = 256 << 20  # a small machine: sizes that fit it must be planned, others refused
ORIGIN = (500000.0, 4200000.0)  # EPSG:32637

odd_floats = st.sampled_from([0.0, -0.0, math.nan, math.inf, -math.inf, 1e-12, 1e12, 1e300])
steps = st.one_of(st.floats(0.05, 3), st.just(0.5), odd_floats, st.floats(-5, 5))


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@st.composite
def rasters(draw, small_only: bool = False) -> dict:
    """The recipe of a hostile GeoTIFF (written by ``_write``); at most 96 x 96 if small_only."""
    small = small_only or draw(st.booleans())
    side = st.integers(1, 96) if small else st.integers(1, 100_000)
    dtype = draw(st.sampled_from(["uint8", "uint8", "uint16", "uint16", "int16", "float32"]))
    rotated = draw(st.integers(0, 4)) == 0
    transform = Affine(
        draw(steps),
        draw(steps) if rotated else 0.0,
        draw(st.sampled_from([ORIGIN[0]] * 8 + [math.nan, 1e300])),
        draw(steps) if rotated else 0.0,
        -abs(draw(steps)),
        ORIGIN[1],
    )
    return {
        "width": draw(side),
        "height": draw(side),
        "count": draw(st.sampled_from([3, 3, 3, 4, 1, 5])),
        "dtype": dtype,
        "crs": draw(st.sampled_from(["EPSG:32637"] * 4 + [None, "EPSG:4326", "EPSG:3857"])),
        "transform": draw(st.sampled_from([transform] * 6 + [Affine.identity()])),
        "nodata": draw(st.sampled_from([None, 0, 255, 65535, -1e30, math.nan])),
        "mask": draw(st.sampled_from([None, "internal", "msk"])),
        "nbits": draw(st.sampled_from([None, 1, 8, 11, 12, 16])) if dtype == "uint16" else None,
        "fill": draw(st.integers(0, 2**16 - 1)),
    }


def _write(path: Path, recipe: dict) -> bool:
    """Write ``recipe``; False when GDAL itself will not write it (nothing to test)."""
    profile = dict(
        driver="GTiff",
        width=recipe["width"],
        height=recipe["height"],
        count=recipe["count"],
        dtype=recipe["dtype"],
        crs=recipe["crs"],
        transform=recipe["transform"],
        tiled=True,
        SPARSE_OK=True,
    )
    if recipe["nbits"]:
        profile["NBITS"] = recipe["nbits"]
    nodata = recipe["nodata"]
    if nodata is not None and np.can_cast(np.min_scalar_type(nodata), recipe["dtype"]):
        profile["nodata"] = nodata
    try:
        with (
            rasterio.Env(GDAL_TIFF_INTERNAL_MASK=recipe["mask"] == "internal"),
            rasterio.open(path, "w", **profile) as dst,
        ):
            if recipe["width"] * recipe["height"] <= 96 * 96:
                value = np.array(recipe["fill"]).astype(recipe["dtype"])
                dst.write(np.full((recipe["count"], recipe["height"], recipe["width"]), value))
                if recipe["mask"]:
                    mask = np.zeros((recipe["height"], recipe["width"]), np.uint8)
                    mask[: recipe["height"] // 2] = 255
                    dst.write_mask(mask)
    except (rasterio.errors.RasterioError, ValueError, OverflowError):
        return False
    return True


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@examples(ci=60)
@given(recipe=rasters())
@fuzz_target
def test_any_raster_is_planned_within_the_budget_or_refused(bundle, recipe):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "in.tif", Path(tmp) / "out"
        if not _write(path, recipe):
            return
        options = InferOptions(model=str(bundle), memory_budget=BUDGET)
        try:
            run = plan_run([str(path)], out, options)
        except InputError:
            assert _files(out) == [], "a refusal leaves nothing behind"
            return
        (plan, _), manifest = run.inputs[0], run.bundle.manifest
        cost = BlockCost(
            plan.block_size,
            (plan.info.height, plan.info.width),
            plan.scale,
            manifest.tile_size,
            run.overlap,
            len(plan.bands),
            np.dtype(plan.info.dtype).itemsize,
            READ_BUFFERS,
        )
        assert cost.bytes() <= BUDGET
        assert plan.gsd_m is None or all(math.isfinite(g) and g > 0 for g in plan.gsd_m)
        if plan.value_max is not None:
            assert 0 < plan.value_max < 2**32


@examples(ci=25)
@given(recipe=rasters(small_only=True))
@fuzz_target
def test_any_small_raster_is_mapped_or_refused_without_leftovers(bundle, recipe):
    with tempfile.TemporaryDirectory() as tmp:
        path, out = Path(tmp) / "in.tif", Path(tmp) / "out"
        if not _write(path, recipe):
            return
        options = InferOptions(
            model=str(bundle), memory_budget=BUDGET, allow_ungeoreferenced=True, grid_m=1e6
        )
        try:
            (summary,) = run_inference([str(path)], out, options)
        except InputError:
            assert _files(out) == [], "a refusal leaves nothing behind"
            return
        assert summary["pixels"] == recipe["width"] * recipe["height"]
        assert not [name for name in _files(out) if name.startswith(".")], "no work files"


numbers = st.one_of(
    odd_floats, st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10_000)
)


@examples(ci=100)
@given(data=st.data())
@fuzz_target
def test_any_numbers_in_a_manifest_open_a_usable_bundle_or_are_refused(bundle, data):
    manifest = json.loads((bundle / MANIFEST).read_text())
    bands = len(manifest["bands"])
    field = data.draw(st.sampled_from(["gsd_m", "tile_size", "std", "mean", "scaling"]))
    if field in ("std", "mean"):
        values = data.draw(st.lists(numbers, min_size=bands - 1, max_size=bands + 1))
        manifest["normalization"][field] = values
    elif field == "scaling":
        manifest["input_scaling"] = {
            data.draw(st.sampled_from(["uint8", "uint16"])): data.draw(numbers)
        }
    else:
        manifest[field] = data.draw(numbers)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(bundle, Path(tmp) / "b"))
        (root / MANIFEST).write_text(json.dumps(manifest))  # NaN and Infinity as JSON5 does
        try:
            opened = open_bundle(root)
        except BundleError:
            return
    m = opened.manifest
    assert GSD_RANGE_M[0] <= m.gsd_m <= GSD_RANGE_M[1]
    assert TILE_RANGE[0] <= m.tile_size <= TILE_RANGE[1]
    for dtype in m.input_scaling:
        a, b = m.preprocessing(dtype).scale_and_shift()
        assert all(math.isfinite(v) for v in [*a, *b]) and len(a) == bands


coordinates = st.one_of(
    st.floats(-200, 200).map(lambda v: v * 0.5),  # near the raster, in pixels × 0.5 m
    st.sampled_from([math.nan, math.inf, -math.inf, 1e300, -1e300, 1e15]),
)


def _polygon_wkb(ring: list[tuple[float, float]]) -> bytes:
    """WKB of a polygon, whatever its numbers (shapely will not build a ring with NaN)."""
    points = [*ring, ring[0]]
    head = struct.pack("<BII I", 1, 3, 1, len(points))
    return head + b"".join(struct.pack("<dd", x, y) for x, y in points)


@st.composite
def footprints(draw) -> list[bytes]:
    """WKB polygons near the raster, some with NaN, infinite or 1e300 corners, some
    repeated 40 times (all overlapping)."""
    shapes = []
    for _ in range(draw(st.integers(1, 6))):
        x0, y0 = draw(coordinates), draw(coordinates)
        w, h = draw(st.floats(0.1, 100)), draw(st.floats(0.1, 100))
        x1 = draw(st.one_of(st.just(x0 + w), coordinates))
        x0, x1, y0, y1 = ORIGIN[0] + x0, ORIGIN[0] + x1, ORIGIN[1] - y0, ORIGIN[1] - y0 - h
        shapes.append(_polygon_wkb([(x0, y0), (x1, y0), (x1, y1), (x0, y1)]))
    return shapes * draw(st.sampled_from([1, 1, 1, 40]))


@pytest.fixture(scope="module")
def prob(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("prob") / "prob.tif"
    values = np.random.default_rng(0).integers(0, 256, (200, 200), dtype=np.uint8)
    with rasterio.open(
        path, "w", driver="GTiff", width=200, height=200, count=1, dtype="uint8",
        crs="EPSG:32637", transform=Affine(0.5, 0, ORIGIN[0], 0, -0.5, ORIGIN[1]), nodata=255,
    ) as dst:  # fmt: skip
        dst.write(values, 1)
    return path


@examples(ci=40)
@given(shapes=footprints())
@fuzz_target
def test_any_footprints_are_tallied_in_bounded_work_or_refused(prob, shapes, monkeypatch_module):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp.gpkg"
        wkb = np.array(shapes, dtype=object)
        raw.write(str(path), wkb, [], [], driver="GPKG", geometry_type="Polygon", crs="EPSG:32637")
        bounds = (ORIGIN[0], ORIGIN[1] - 100, ORIGIN[0] + 100, ORIGIN[1])
        try:
            table = read_footprints(path, crs="EPSG:32637", bbox=bounds)
        except VectorError:
            return
    batches, reads = monkeypatch_module
    batches.clear()
    reads.clear()
    result = buildings.building_damage(prob, table, threshold=0.5, buffers_m=(0, 10), block_size=64)
    assert all(size <= buildings.LAYER_BATCH for size in batches)
    # the raster's windows, then those of the raster grown by one block and the buffer
    # (20 px) beyond its edges, at most
    assert len(reads) <= math.ceil(200 / 64) ** 2 + math.ceil((200 + 2 * (64 + 20)) / 64 + 1) ** 2
    fraction = result.attributes["unknown_fraction"]
    assert np.all((fraction >= 0) & (fraction <= 1))
    assert np.isfinite(shapely.get_coordinates(result.geometries)).all()


@pytest.fixture(scope="module")
def monkeypatch_module():
    """Spies on the colouring batches and the windows tallied by ``building_damage``."""
    batches: list[int] = []
    reads: list[object] = []
    colour, tally = buildings.overlap_layers, buildings.BuildingDamage._tally

    def spy(self, win, prob, **kwargs):
        reads.append(win)
        return tally(self, win, prob, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(buildings, "overlap_layers", lambda g: batches.append(len(g)) or colour(g))
        patch.setattr(buildings.BuildingDamage, "_tally", spy)
        yield batches, reads

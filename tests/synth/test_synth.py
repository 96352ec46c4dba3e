"""The synthetic city: determinism, georeferencing, labels, styles, tiles, streaming, CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyogrio
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rasterio.features import rasterize
from rasterio.warp import transform as warp_points
from rasterio.windows import Window

from stmap.cli import main
from stmap.errors import InputError, OutputExistsError
from stmap.synth import STYLES, generate_city, list_styles
from stmap.synth.damage import COLLAPSED, SOFT_STOREY
from stmap.synth.layout import build_layout
from stmap.synth.render import render_window

W, H = 512, 384  # tiny, not square, not a multiple of the 512 GeoTIFF tile


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def city(tmp_path_factory: pytest.TempPathFactory):
    """One small city with a tile dataset, shared by the read-only tests."""
    root = tmp_path_factory.mktemp("city")
    return generate_city(
        root / "city.tif", width=W, height=H, damage_rate=0.3, seed=7, tiles_dir=root / "tiles"
    )


def test_same_seed_same_bytes_other_seed_other_city(tmp_path: Path, city) -> None:
    again = generate_city(tmp_path / "city.tif", width=W, height=H, damage_rate=0.3, seed=7)
    for a, b in ((city.image, again.image), (city.labels, again.labels)):
        assert a.read_bytes() == b.read_bytes()
    assert city.footprints.read_bytes() == again.footprints.read_bytes()
    other = generate_city(tmp_path / "other.tif", width=W, height=H, damage_rate=0.3, seed=8)
    assert not np.array_equal(read(city.image), read(other.image))
    assert not np.array_equal(read(city.labels), read(other.labels))


def test_outputs_are_georeferenced_tiled_rgb(city) -> None:
    with rasterio.open(city.image) as src:
        assert (src.width, src.height, src.count, src.dtypes[0]) == (W, H, 3, "uint8")
        assert src.crs.to_epsg() == 32637
        assert src.transform.a == 0.5 and src.transform.e == -0.5
        assert src.transform.b == src.transform.d == 0
        assert src.block_shapes[0] == (512, 512) and src.compression.name == "deflate"
        assert [c.name for c in src.colorinterp] == ["red", "green", "blue"]
        (lon,), (lat,) = warp_points(src.crs, "EPSG:4326", [src.transform.c], [src.transform.f])
        assert 36.8 < lon < 37.0 and 37.5 < lat < 37.7  # Kahramanmaraş
        transform, crs = src.transform, src.crs
    with rasterio.open(city.labels) as lab:
        assert (lab.count, lab.dtypes[0], lab.transform, lab.crs) == (1, "uint8", transform, crs)
        assert set(np.unique(lab.read(1))) <= {0, 1}
    assert not list(city.image.parent.glob(".*partial*"))  # temporaries are gone


def test_grid_follows_gsd_and_crs(tmp_path: Path) -> None:
    out = generate_city(tmp_path / "m.tif", width=256, height=192, gsd=0.3, crs="EPSG:3857")
    with rasterio.open(out.image) as src:
        assert src.crs.to_epsg() == 3857
        assert src.res == (0.3, 0.3)
        assert src.transform.c == round(src.transform.c)  # origin on whole metres


def _footprints(city) -> tuple[np.ndarray, dict]:
    _, _, geometry, fields = pyogrio.raw.read(city.footprints)
    info = pyogrio.read_info(city.footprints)
    return geometry, dict(zip(info["fields"], fields, strict=True))


def test_labels_cover_damaged_footprints_only(city) -> None:
    geometry, fields = _footprints(city)
    assert set(fields) >= {"building_id", "damaged", "damage"}
    assert len(np.unique(fields["building_id"])) == len(geometry)
    label = read(city.labels)[0]
    with rasterio.open(city.image) as src:
        transform = src.transform
    shapes = ((g, i + 1) for i, g in enumerate(shapely.from_wkb(geometry)))
    ids = rasterize(shapes, out_shape=label.shape, transform=transform, dtype="int32")
    damaged = fields["damaged"].astype(bool)
    n = len(geometry)
    inside = np.bincount(ids.ravel(), minlength=n + 1)[1:]
    labelled = np.bincount(ids.ravel(), weights=label.ravel(), minlength=n + 1)[1:]
    seen = inside > 0
    share = labelled[seen] / inside[seen]
    assert (share[damaged[seen]] > 0.95).all()  # every damaged footprint is labelled
    assert share[~damaged[seen]].mean() < 0.02  # intact ones are not
    # debris spreads past the footprints: more label pixels than damaged footprint pixels
    assert label.sum() > inside[damaged].sum()


def test_damage_rate_is_exact_and_clustered() -> None:
    style = STYLES["citycentre"]
    for rate in (0.0, 0.15, 0.5):
        b = build_layout(1024, 1024, 0.5, style, rate, seed=3).buildings
        assert b.damaged.sum() == round(rate * len(b))
    # spatial autocorrelation: a damaged building's neighbours are damaged more often
    b = build_layout(2048, 2048, 0.5, style, 0.15, seed=3).buildings
    xy = np.stack([b.x, b.y], axis=1)
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    near = np.argsort(d, axis=1)[:, :6]
    share = b.damaged[near[b.damaged]].mean()
    assert share > 2 * 0.15


def test_collapse_removes_height_soft_storey_lowers_it() -> None:
    b = build_layout(1024, 1024, 0.5, STYLES["oldtown"], 0.4, seed=1).buildings
    collapsed, soft = b.grade == COLLAPSED, b.grade == SOFT_STOREY
    assert collapsed.any() and soft.any()
    assert (b.st_height_m[collapsed] == 0).all() and (b.heap_hu[collapsed] > 0).all()
    assert (b.st_height_m[soft] < b.height_m[soft]).all()
    intact = b.grade == 0
    assert (b.st_height_m[intact] == b.height_m[intact]).all() and (b.heap_hu[intact] == 0).all()


def test_every_style_renders_and_styles_differ() -> None:
    assert set(list_styles()) == set(STYLES) and len(STYLES) >= 4
    stats = {}
    for name, style in STYLES.items():
        assert "_" not in name  # a style name is a valid region id
        city = build_layout(512, 512, 0.5, style, 0.2, seed=2)
        rgb, label = render_window(city, 0, 0, 512, 512)
        assert len(city.buildings) > 0 and label.any()
        built = (city.buildings.hu * city.buildings.hv * 4).sum() / 512**2
        stats[name] = np.array([*rgb.reshape(-1, 3).mean(0) / 255, rgb.std() / 255, built])
    names = list(stats)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert np.abs(stats[a] - stats[b]).max() > 0.03, (a, b)


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_tiles_follow_the_release_layout(city) -> None:
    root = city.tiles_dir
    region = city.region
    images = sorted((root / region / "images").glob("*.png"))
    labels = sorted((root / region / "labels").glob("*.png"))
    assert len(images) == city.tiles == (W // 128) * (H // 128)
    assert [p.name for p in images] == [p.name for p in labels]
    meta = json.loads((root / "tiles_meta" / f"{region}.json").read_text())
    with rasterio.open(city.image) as src:
        assert rasterio.crs.CRS.from_wkt(meta["crs"]) == src.crs
        assert meta["transform"] == list(src.transform)[:6]
        entry = meta["tiles"][f"{region}_r2_c3"]
        window = Window(entry["x0"], entry["y0"], entry["w"], entry["h"])
        parent = src.read(window=window)
    with rasterio.open(city.labels) as lab:
        parent_label = lab.read(1, window=window)
    assert read(root / region / "images" / entry["file"]).tolist() == parent.tolist()
    assert read(root / region / "labels" / entry["file"])[0].tolist() == parent_label.tolist()
    info = pyogrio.read_info(root / "footprints" / f"{region}_buildings.geojson")
    assert info["crs"] == "EPSG:4326" and info["features"] == city.buildings


def test_tile_ids_parse_to_the_region(city) -> None:
    splits = pytest.importorskip("stmap.train.splits")
    stem = next(iter((city.tiles_dir / city.region / "images").glob("*.png"))).stem
    assert splits.region_of(stem) == city.region


def test_partial_edge_tiles_are_dropped(tmp_path: Path) -> None:
    out = generate_city(tmp_path / "c.tif", width=300, height=200, tiles_dir=tmp_path / "t")
    assert out.tiles == 2 * 1


def test_block_size_and_workers_do_not_change_pixels(tmp_path: Path, city) -> None:
    kwargs = dict(width=W, height=H, damage_rate=0.3, seed=7)
    small = generate_city(tmp_path / "a.tif", block_size=256, **kwargs)
    pooled = generate_city(tmp_path / "b.tif", block_size=128, workers=2, **kwargs)
    for out in (small, pooled):
        assert np.array_equal(read(out.image), read(city.image))
        assert np.array_equal(read(out.labels), read(city.labels))


# Besides the real styles: tiny districts (arterials, district edges, the slow per-pixel
# district path) and an all-rural one (fields).
VARIANTS = {
    **STYLES,
    "districts": replace(STYLES["oldtown"], district_m=60.0),
    "fields": replace(STYLES["village"], characters=((0.0, (("rural", 1.0),)),)),
}


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    row=st.integers(-40, 300),
    col=st.integers(-40, 300),
    h=st.integers(1, 90),
    w=st.integers(1, 90),
    style=st.sampled_from(sorted(VARIANTS)),
)
def test_any_window_renders_the_same_pixels(row, col, h, w, style) -> None:
    """A window is a crop of any larger window: no seams, whatever the cut."""
    city = _small_city(style)
    big, big_label = render_window(city, -48, -48, 448, 448)
    rgb, label = render_window(city, row, col, h, w)
    crop = (slice(row + 48, row + 48 + h), slice(col + 48, col + 48 + w))
    assert np.array_equal(rgb, big[crop]) and np.array_equal(label, big_label[crop])


_CITIES: dict[str, object] = {}


def _small_city(style: str):
    if style not in _CITIES:
        _CITIES[style] = build_layout(384, 384, 0.5, VARIANTS[style], 0.3, seed=5)
    return _CITIES[style]


def test_bad_input_names_the_value(tmp_path: Path) -> None:
    out = tmp_path / "x.tif"
    with pytest.raises(InputError, match="--style 'nope'"):
        generate_city(out, width=128, height=128, style="nope")
    with pytest.raises(InputError, match="--damage-rate"):
        generate_city(out, width=128, height=128, damage_rate=1.5)
    with pytest.raises(InputError, match="projected CRS in metres"):
        generate_city(out, width=128, height=128, crs="EPSG:4326")
    with pytest.raises(InputError, match="--region 'a_b'"):
        generate_city(out, width=128, height=128, region="a_b")
    generate_city(out, width=128, height=128)
    with pytest.raises(OutputExistsError, match="x.tif already exists"):
        generate_city(out, width=128, height=128)
    generate_city(out, width=128, height=128, overwrite=True)


def test_cli_exit_codes_and_json(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c.tif"
    listed = runner.invoke(main, ["synth", "--style", "list"])
    assert listed.exit_code == 0 and all(name in listed.output for name in STYLES)
    bad = runner.invoke(main, ["synth", str(out), "--size", "128", "--style", "nope"])
    assert bad.exit_code == 2 and "--style" in bad.output
    made = runner.invoke(main, ["synth", str(out), "--size", "128", "--seed", "3", "--json"])
    assert made.exit_code == 0, made.output
    report = json.loads(made.stdout)
    assert report["image"] == str(out) and report["width"] == 128 and report["seed"] == 3
    again = runner.invoke(main, ["synth", str(out), "--size", "128"])
    assert again.exit_code == 2 and "c.tif already exists" in again.output
    forced = runner.invoke(main, ["synth", str(out), "--size", "128", "--overwrite"])
    assert forced.exit_code == 0
    rate = runner.invoke(main, ["synth", str(out), "--size", "128", "--damage-rate", "2"])
    assert rate.exit_code == 2 and "--damage-rate" in rate.output

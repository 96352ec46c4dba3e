"""The HTML report: self-contained, faithful to the summary, honest about the model."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import shapely
from rasterio.transform import Affine

from stmap.bundle import default_bundle_path
from stmap.io.vectors import VectorTable, write_vector
from stmap.runtime.infer import InferOptions, run_inference
from stmap.runtime.report import (
    north_angle,
    render_report,
    scale_bar_metres,
    training_note,
)
from stmap.runtime.vectorize import apply_affine
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

WIDTH, HEIGHT, GSD = 300, 200, 0.5
VOID = {"meta", "img", "br", "input", "link", "hr", "col", "source", "wbr", "area", "base"}


class Page(HTMLParser):
    """Checks that every element is closed in order; collects attributes and texts."""

    def __init__(self, html: str):
        super().__init__()
        self.open: list[str] = []
        self.attributes: list[tuple[str, str, str]] = []  # (tag, name, value)
        self.tags: list[str] = []
        self.texts: list[str] = []
        self.feed(html)
        self.close()
        assert self.open == [], f"elements never closed: {self.open}"

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]
        if tag not in VOID:
            self.open.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attributes += [(tag, name, value or "") for name, value in attrs]

    def handle_endtag(self, tag):
        assert self.open and self.open[-1] == tag, f"</{tag}> closes <{self.open[-1:]}>"
        self.open.pop()

    def handle_data(self, data):
        if data.strip():
            self.texts.append(data.strip())


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict, str]:
    """One mapped scene with footprints: (OUTDIR, summary, report HTML)."""
    root = tmp_path_factory.mktemp("report")
    bundle = make_varied_bundle(root / "bundle")
    transform = Affine(GSD, 0, 500000.0, 0, -GSD, 4200000.0)
    scene = write_raster(root / "city.tif", smooth_image(HEIGHT, WIDTH), transform=transform)
    boxes = [shapely.box(20 * i + 5, 40, 20 * i + 15, 52) for i in range(12)]
    footprints = VectorTable(
        apply_affine(np.array(boxes, dtype=object), transform),
        {"osm_id": np.array([f"way/{i}" for i in range(12)], dtype=object)},
        crs="EPSG:32637",
    )
    write_vector(root / "buildings.gpkg", footprints)
    options = InferOptions(
        model=str(bundle),
        device="cpu",
        threshold=0.35,
        grid_m=25.0,
        footprints=str(root / "buildings.gpkg"),
    )
    summary = run_inference([str(scene)], root / "out", options)[0]
    return root / "out", summary, (root / "out" / "city_report.html").read_text()


def test_the_page_is_well_formed_and_names_no_url(run):
    _, _, html = run
    page = Page(html)
    assert html.startswith("<!DOCTYPE html>")
    links = [v for tag, name, v in page.attributes if name in ("src", "href", "xlink:href")]
    assert links and all(link.startswith("data:image/png;base64,") for link in links)
    assert not [v for _, _, v in page.attributes if "http" in v.lower() or v.startswith("//")]
    assert "link" not in page.tags  # scripts are inline (the vendored Leaflet): no src
    # Leaflet's only other url() is old Internet Explorer's VML behaviour, not a fetch
    fetched = html.count("url(") - html.count("url(#default#VML)")
    assert fetched == html.count("url(data:image/png;base64,")
    data = json.loads(re.search(r'id="stmap-viewer-data">(.*?)</script>', html).group(1))
    assert data["tiles"] == "city_map", "the tiles are loaded from beside the page"


def test_the_inline_quicklook_is_the_png_written_beside_it(run):
    out, _, html = run
    inline = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(inline) == (out / "city_quicklook.png").read_bytes()


def test_the_scale_bar_follows_the_ground_size_of_a_quicklook_pixel(run):
    _, _, html = run
    # 300 px of 0.5 m = 150 m, shown undecimated: a 20 m bar is 40 quicklook pixels,
    # drawn as two 20-px halves.
    assert ">20 m</text>" in html
    halves = re.findall(r'<rect x="[\d.]+" y="[\d.]+" width="([\d.]+)" height', html)
    assert halves.count("20.0") == 2
    assert "One map pixel is 0.5 m on the ground." in html
    assert ">N</text>" in html  # north arrow: the scene is georeferenced


def test_the_page_shows_the_summary_figures(run):
    _, summary, html = run
    texts = Page(html).texts
    buildings, grid = summary["buildings"], summary["grid"]
    assert f"{buildings['total']:,}" in texts and f"{buildings['damaged']:,}" in texts
    counts = buildings["damaged_fraction_histogram"]["counts"]
    titles = re.findall(r"<title>[^<]*: ([\d,]+) buildings</title>", html)
    assert [int(t.replace(",", "")) for t in titles] == counts
    cells = grid["worst_cells"]
    assert 0 < len(cells) <= 10
    for cell in cells:
        assert f"{cell['centre_lat']:.5f}" in texts and f"{cell['centre_lon']:.5f}" in texts
    assert f"{grid['cells_with_damage']:,} of {grid['cells']:,}" in texts
    assert summary["model"]["hash"] in texts


def test_the_same_summary_gives_the_same_page(run):
    out, summary, html = run
    viewer = json.loads(re.search(r'id="stmap-viewer-data">(.*?)</script>', html).group(1))
    assert render_report(summary, (out / "city_quicklook.png").read_bytes(), viewer) == html
    assert json.loads((out / "city_summary.json").read_text())["grid"] == summary["grid"]


def test_without_footprints_or_georeferencing_the_page_says_so(run):
    out, summary, _ = run
    plain = {**summary, "buildings": None, "inputs": [{**summary["inputs"][0], "gsd_m": None}]}
    html = render_report(plain, (out / "city_quicklook.png").read_bytes())
    assert "No building footprints were given" in html
    assert "north is unknown" in html and ">N</text>" not in html
    Page(html)


def test_the_demo_model_is_called_synthetic_only():
    demo = {"path": str(default_bundle_path()), "provenance": {}}
    assert "synthetic cities only" in training_note(demo)
    assert "not for real decisions" in training_note(demo).replace("do not use this map", "not")
    synth_regions = {"path": "/m", "provenance": {"regions": ["citycentre", "village"]}}
    assert "synthetic cities only" in training_note(synth_regions)
    real = {"path": "/m", "provenance": {"regions": ["antakya"], "trained_on": "xBD, 40 k."}}
    assert training_note(real).startswith("xBD, 40 k.") and "synthetic" not in training_note(real)
    assert "unverified" in training_note({"path": "/m", "provenance": {}})


def test_what_the_model_was_trained_on_is_read_from_its_provenance():
    """training_data decides; region names only for bundles older than it."""
    synthetic = {"training_data": "synthetic", "regions": ["citycentreb"], "trained_on": "T."}
    assert "synthetic cities only" in training_note({"path": "/m", "provenance": synthetic})
    real = {"training_data": "tiles", "regions": ["village"], "trained_on": "Field survey."}
    assert training_note({"path": "/m", "provenance": real}).startswith("Field survey.")


@pytest.mark.parametrize("width_m", [0.7, 3, 150, 999, 1000, 12_345, 4e5])
def test_the_scale_bar_is_a_round_length_near_a_fifth_of_the_map(width_m):
    length = scale_bar_metres(width_m)
    assert width_m / 10 < length <= width_m / 5
    mantissa = length / 10 ** math.floor(math.log10(length))
    assert round(mantissa, 9) in (1, 2, 5)


@pytest.mark.parametrize(
    ("transform", "degrees"),
    [
        (Affine(0.5, 0, 0, 0, -0.5, 0), 0.0),  # north-up
        # pixel columns run east-south-east: image-up is north-north-east, so north
        # lies 30° anticlockwise of it
        (Affine(0.5, 0, 0, 0, -0.5, 0) @ Affine.rotation(30), -30.0),
        (Affine(0.5, 0, 0, 0, 0.5, 0), 180.0),  # south-up
    ],
)
def test_the_north_arrow_turns_with_the_geotransform(transform, degrees):
    assert north_angle(list(transform)[:6]) % 360 == pytest.approx(degrees % 360)

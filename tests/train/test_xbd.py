"""The xBD layout: detection, labels and ignore masks, regions, fitted pixel size, bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stmap.io import xbd
from tests.train.xbd_data import UTM, make_xbd, write_xbd_image


def test_an_xbd_root_and_a_split_folder_are_both_detected(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 1})
    assert xbd.is_xbd(tmp_path)
    assert xbd.is_xbd(tmp_path / "train")
    assert not xbd.is_xbd(tmp_path / "train" / "images")


def test_the_pixel_size_is_fitted_from_the_vertices_not_taken_from_metadata_gsd(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 1}, pixel_m=0.47)
    (image,) = xbd.read_catalog(tmp_path).images
    assert image.metadata_gsd == 2.65
    assert image.fit is not None
    assert image.fit.pixel_size_m == pytest.approx(0.47, rel=2e-3)
    assert image.fit.rms_px < 0.05  # the vertices lie on a north-up grid
    assert image.fit.crs == UTM
    # the fitted georeference places the image's corner where the fixture put it
    x, y = image.fit.transform @ (0, 0)
    assert (x, y) == pytest.approx((400_000.0, 4_160_000.0), abs=0.05)


def test_labels_mark_major_and_destroyed_as_damaged_and_unclassified_as_ignored(tmp_path):
    document = write_xbd_image(tmp_path / "train", "turkey-earthquake", 0)
    (image,) = xbd.read_catalog(tmp_path).images
    labels, buildings = xbd.label_arrays(image)
    expected = {"no-damage": 0, "minor-damage": 0, "major-damage": 1, "destroyed": 1}
    for feature in document["features"]["xy"]:
        ring = feature["wkt"][len("POLYGON ((") : -2].split(", ")
        (c0, r0), (c1, r1) = (map(float, ring[0].split())), (map(float, ring[2].split()))
        inside = labels[int(r0) + 2 : int(r1) - 2, int(c0) + 2 : int(c1) - 2]
        assert buildings[int(r0) + 2 : int(r1) - 2, int(c0) + 2 : int(c1) - 2].all()
        value = expected.get(feature["properties"]["subtype"], xbd.IGNORE)
        assert (inside == value).all(), feature["properties"]["subtype"]
    assert set(np.unique(labels)) == {0, 1, xbd.IGNORE}
    assert not buildings[-4:, -4:].any()  # background is not a building


def test_regions_are_disasters_and_disaster_types_filter_events(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 2, "texas-flood": 1, "mexico-earthquake": 1})
    catalog = xbd.read_catalog(tmp_path)
    assert sorted({i.disaster for i in catalog.images}) == [
        "mexico-earthquake",
        "texas-flood",
        "turkey-earthquake",
    ]
    assert catalog.pre_disaster == 4  # skipped, counted, not refused
    quakes = xbd.read_catalog(tmp_path, disaster_types=frozenset({"earthquake"}))
    assert {i.disaster for i in quakes.images} == {"turkey-earthquake", "mexico-earthquake"}


def test_bad_files_are_named_and_skipped_with_a_count(tmp_path):
    split = tmp_path / "train"
    make_xbd(tmp_path, {"turkey-earthquake": 5})
    labels = sorted((split / "labels").glob("*_post_disaster.json"))
    labels[0].write_text("{ not json")
    document = json.loads(labels[1].read_text())
    document["features"]["xy"][0]["wkt"] = "POLYGON ((1 2, 3"
    labels[1].write_text(json.dumps(document))
    (split / "images" / f"{labels[2].stem}.png").unlink()  # a label without its image
    labels[3].unlink()  # an image without its label
    catalog = xbd.read_catalog(tmp_path)
    assert [i.stem for i in catalog.images] == [labels[4].stem]
    reasons = catalog.skip_counts()
    assert reasons == {"unreadable label": 1, "invalid WKT": 1, "no image": 1, "no label": 1}
    assert all(str(path).startswith(str(split)) for path, _ in catalog.skipped)


def test_nothing_usable_is_an_input_error_naming_the_folder_and_the_counts(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 1})
    for label in (tmp_path / "train" / "labels").glob("*_post_disaster.json"):
        label.write_text("[]")
    with pytest.raises(xbd.XbdError, match=r"no usable post-disaster xBD image.*1 unreadable"):
        xbd.read_catalog(tmp_path)


def test_a_poor_fit_is_reported_and_the_image_skipped(tmp_path):
    document = write_xbd_image(tmp_path / "train", "turkey-earthquake", 0)
    # shuffle the geographic polygons: the vertex pairs no longer describe one grid
    geo = document["features"]["lng_lat"]
    wkts = [f["wkt"] for f in geo]
    for feature, wkt in zip(geo, wkts[1:] + wkts[:1], strict=True):
        feature["wkt"] = wkt
    path = next((tmp_path / "train" / "labels").glob("*.json"))
    path.write_text(json.dumps(document))
    with pytest.raises(xbd.XbdError, match="1 poor pixel fit"):
        xbd.read_catalog(tmp_path)


def test_an_image_without_buildings_takes_its_disasters_median_pixel_size(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 2}, pixel_m=0.6)
    write_xbd_image(tmp_path / "train", "turkey-earthquake", 9, subtypes=())
    catalog = xbd.read_catalog(tmp_path)
    empty = next(i for i in catalog.images if not i.buildings)
    assert empty.fit is None
    sizes = xbd.fallback_pixel_sizes(catalog.images)
    assert sizes["turkey-earthquake"] == pytest.approx(0.6, rel=2e-3)


def test_tiles_are_cut_at_the_training_gsd_from_the_fitted_pixel_size(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 1}, size=512, pixel_m=0.25)
    catalog = xbd.read_catalog(tmp_path)
    tiles = xbd.xbd_tiles(catalog, size=128, gsd_m=0.5)
    # 512 px at 0.25 m is 256 px at 0.5 m: 2 × 2 tiles of 128
    assert tiles.images.shape == (4, 3, 128, 128)
    assert tiles.tile_ids[0] == "turkey-earthquake_r0_c0_train00000000"
    assert tiles.tile_ids[3] == "turkey-earthquake_r1_c1_train00000000"
    full_labels, _ = xbd.label_arrays(catalog.images[0])
    damaged_m2 = (full_labels == 1).sum() * 0.25**2
    assert (tiles.labels == 1).sum() * 0.5**2 == pytest.approx(damaged_m2, rel=0.05)
    assert (tiles.labels == xbd.IGNORE).any() and tiles.buildings.any()


def test_a_second_run_reads_the_cache_and_a_damaged_entry_is_rebuilt(tmp_path, monkeypatch):
    make_xbd(tmp_path / "data", {"turkey-earthquake": 2})
    catalog = xbd.read_catalog(tmp_path / "data")
    first = xbd.xbd_tiles(catalog, 128, 0.5, workers=2, cache_dir=tmp_path / "cache")
    entries = sorted((tmp_path / "cache").glob("*.npz"))
    assert len(entries) == 2

    def no_decoding(image):
        raise AssertionError("decoded although cached")

    monkeypatch.setattr(xbd, "_read_png", no_decoding)
    second = xbd.xbd_tiles(catalog, 128, 0.5, cache_dir=tmp_path / "cache")
    assert second.tile_ids == first.tile_ids
    assert np.array_equal(second.images, first.images)
    assert np.array_equal(second.labels, first.labels)
    monkeypatch.undo()
    entries[0].write_bytes(b"damaged")
    third = xbd.xbd_tiles(catalog, 128, 0.5, cache_dir=tmp_path / "cache")
    assert np.array_equal(third.images, first.images)


def test_an_undecodable_image_is_skipped_with_its_reason(tmp_path):
    make_xbd(tmp_path, {"turkey-earthquake": 2})
    broken = sorted((tmp_path / "train" / "images").glob("*_post_disaster.png"))[0]
    broken.write_bytes(b"\x89PNG not really")
    tiles = xbd.xbd_tiles(xbd.read_catalog(tmp_path), 128, 0.5)
    assert [path for path, _ in tiles.skipped] == [broken]
    assert tiles.skipped[0][1].startswith("unreadable image")
    assert len(tiles.tile_ids) == 4  # the other image's 2 × 2 tiles


def test_training_data_from_xbd_has_disasters_as_regions_and_reports_the_fit(tmp_path):
    from stmap.train.datasets import load_tile_data

    make_xbd(tmp_path, {"turkey-earthquake": 2, "texas-flood": 1}, pixel_m=0.25, size=512)
    data = load_tile_data(tmp_path, None, 128, gsd_m=0.5, disaster_types=["earthquake"])
    assert data.region_names == ["turkey-earthquake"]
    assert len(data) == 8 and data.gsd_m == 0.5
    assert data.regions_with_footprints == {"turkey-earthquake"}
    assert set(torch_unique(data.labels)) == {0, 1, xbd.IGNORE}
    assert max(data.damaged_fractions()) <= 1.0
    assert any("median 0.250 m" in note and "not used" in note for note in data.notes)
    assert any("3 pre-disaster images not read" in note for note in data.notes)
    with pytest.raises(xbd.InputError, match="no xBD images of disaster 'nepal-flooding'"):
        load_tile_data(tmp_path, ["nepal-flooding"], 128)


def torch_unique(tensor) -> list[int]:
    return [int(v) for v in tensor.unique()]


def test_a_short_lodo_run_and_evaluate_on_xbd_end_to_end(tmp_path):
    import json

    from click.testing import CliRunner

    from stmap.cli import main

    disasters = {"turkey-earthquake": 2, "mexico-earthquake": 2, "texas-flood": 1}
    make_xbd(tmp_path / "xbd", disasters, size=512, pixel_m=0.25)
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train", "--config", "lodo",
            "--set", f"data_root={tmp_path / 'xbd'}",
            "--set", f"out_dir={out}",
            "--set", "backbone=tiny",
            "--set", "decoder_channels=8",
            "--set", "epochs=1",
            "--set", "k_folds=2",
            "--set", "batch_size=4",
            "--set", "overlays=2",
            "--set", "disaster_types=[earthquake]",
            "--json",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert 0.0 <= payload["mean_over_regions"]["lodo"]["iou1"] <= 1.0
    report = (out / "report.md").read_text()
    assert "| mexico-earthquake |" in report and "| turkey-earthquake |" in report
    assert "texas-flood" not in report  # disaster_types kept the earthquakes only
    assert "pixel size fitted" in report and "not used" in report
    result = CliRunner().invoke(
        main, ["evaluate", "--model", payload["bundle"], str(tmp_path / "xbd"), "--json"]
    )
    assert result.exit_code == 0, result.output
    scored = json.loads(result.stdout)["summary"]["evaluate"]["regions"]
    assert set(scored) == set(disasters)  # evaluate scores every disaster unless filtered


def test_tiles_of_fitted_images_are_placed_on_the_map(tmp_path):
    import rasterio

    from stmap.io.tiles import write_png

    make_xbd(tmp_path, {"turkey-earthquake": 1}, size=512, pixel_m=0.25)
    tiles = xbd.xbd_tiles(xbd.read_catalog(tmp_path), 128, 0.5)
    crs, transform = tiles.georef["turkey-earthquake_r1_c1_train00000000"]
    assert crs == UTM
    # tile (1, 1) starts 128 px of 0.5 m right of and below the image's corner
    assert transform.a == pytest.approx(0.5, rel=2e-3)
    assert transform.e == pytest.approx(-0.5, rel=2e-3)
    assert (transform.c, transform.f) == pytest.approx((400_064.0, 4_159_936.0), abs=0.1)
    write_png(tmp_path / "overlay.png", tiles.images[3], (crs, transform))
    with rasterio.open(tmp_path / "overlay.png") as written:
        assert written.crs.to_epsg() == 32637
        assert written.transform.almost_equals(transform)


def test_train_on_an_xbd_folder_with_nothing_usable_exits_2_naming_it(tmp_path):
    from click.testing import CliRunner

    from stmap.cli import main

    make_xbd(tmp_path / "xbd", {"turkey-earthquake": 1})
    for label in (tmp_path / "xbd" / "train" / "labels").glob("*_post_disaster.json"):
        label.write_text('{"features": {"xy": [{"wkt": "POLYGON ((0 0, 1"}]}}')
    args = ["train", "--config", "lodo", "--set", f"data_root={tmp_path / 'xbd'}"]
    args += ["--set", "backbone=tiny"]
    result = CliRunner().invoke(main, [*args, "--set", f"out_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'xbd'}: no usable post-disaster xBD image" in result.output
    assert "1 invalid WKT" in result.output and "Traceback" not in result.output

"""Bad input: exit 2, a message naming the file or option and the fix, no partial output."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from stmap.bundle import MANIFEST, WEIGHTS
from stmap.cli import main
from tests.runtime.infer_data import make_varied_bundle, read_band, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def infer(*args: str, bundle: Path | None = None):
    model = ["--model", str(bundle)] if bundle else []
    return CliRunner().invoke(main, ["infer", *args, *model])


def assert_refused(result, *fragments: str, out: Path) -> None:
    assert result.exit_code == 2, result.output
    for fragment in fragments:
        assert fragment in result.stderr
    assert not out.exists() or list(out.iterdir()) == [], "no output may be left behind"


def test_missing_file(tmp_path, bundle):
    out = tmp_path / "out"
    result = infer(str(tmp_path / "nope.tif"), "-o", str(out), bundle=bundle)
    assert_refused(result, "nope.tif: file not found", out=out)
    assert not out.exists()


def test_not_a_raster(tmp_path, bundle):
    path = tmp_path / "notes.tif"
    path.write_text("these are not pixels")
    out = tmp_path / "out"
    assert_refused(
        infer(str(path), "-o", str(out), bundle=bundle), "notes.tif: not a readable raster", out=out
    )


def test_truncated_tiff(tmp_path, bundle):
    path = write_raster(tmp_path / "cut.tif", smooth_image(600, 600), compress="deflate")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    assert_refused(
        infer(str(path), "-o", str(out), "--block-size", "512", bundle=bundle), "cut.tif", out=out
    )


def test_a_tile_that_fails_to_decode_mid_run(tmp_path, bundle):
    path = write_raster(tmp_path / "bad.tif", smooth_image(1024, 1024), block=256)
    with rasterio.open(path) as ds:  # the last internal tile: read by the last block
        offset = int(ds.get_tag_item("BLOCK_OFFSET_3_3", "TIFF", bidx=1))
        size = int(ds.get_tag_item("BLOCK_SIZE_3_3", "TIFF", bidx=1))
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), "--block-size", "512", bundle=bundle)
    assert_refused(result, "bad.tif: cannot decode rows ", out=out)
    # the window of the last block (with its halo), not the whole file
    assert re.search(r"rows 4\d\d–1024, columns 4\d\d–1024 \(corrupted", result.stderr)


def test_no_georeferencing_unless_allowed(tmp_path, bundle):
    path = write_raster(tmp_path / "plain.tif", smooth_image(120, 140), crs=None,
                        transform=rasterio.Affine.identity())  # fmt: skip
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), bundle=bundle)
    assert_refused(result, "plain.tif: has no georeferencing", "--allow-ungeoreferenced", out=out)
    result = infer(str(path), "-o", str(out), "--allow-ungeoreferenced", "--json", bundle=bundle)
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "plain_damage_prob.tif") as ds:
        assert ds.crs is None and ds.shape == (120, 140)
    assert json.loads(result.stdout)["inputs"][0]["gsd_m"] is None


def test_fewer_bands_than_the_model_needs(tmp_path, bundle):
    path = write_raster(tmp_path / "two.tif", smooth_image(100, 100, bands=2))
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), bundle=bundle)
    assert_refused(
        result, "two.tif: has 2 image band(s), the model needs 3 (red, green, blue)", out=out
    )
    result = infer(str(path), "-o", str(out), "--bands", "1,2,3", bundle=bundle)
    assert_refused(result, "--bands 1,2,3:", "has bands 1 to 2 only", out=out)


def test_an_unsupported_dtype(tmp_path, bundle):
    path = write_raster(tmp_path / "float.tif", smooth_image(64, 64).astype(np.float32))
    out = tmp_path / "out"
    assert_refused(
        infer(str(path), "-o", str(out), bundle=bundle), "float.tif: float32 pixels", out=out
    )


def test_an_all_nodata_raster_gives_empty_outputs_and_a_warning(tmp_path, bundle):
    path = write_raster(tmp_path / "empty.tif", np.zeros((3, 300, 300), np.uint8), nodata=0)
    out = tmp_path / "out"
    result = infer(str(path), "-o", str(out), "--json", bundle=bundle)
    assert result.exit_code == 0, result.output
    assert "no valid pixel" in result.stderr
    summary = json.loads(result.stdout)
    assert summary["valid_pixels"] == 0 and summary["skipped_pixels"] == 300 * 300
    assert summary["damaged_polygons"] == 0
    assert np.all(read_band(out / "empty_damage_prob.tif") == 255)
    assert np.all(read_band(out / "empty_damage.tif") == 255)


@pytest.mark.parametrize("damage", ["missing", "corrupted", "incompatible"])
def test_bad_bundles(tmp_path, damage):
    bundle = make_varied_bundle(tmp_path / "bundle")
    if damage == "missing":
        bundle = tmp_path / "no-such-bundle"
        expected = "model bundle not found"
    elif damage == "corrupted":
        weights = bundle / WEIGHTS
        weights.write_bytes(weights.read_bytes()[:-100])
        expected = "does not match its SHA-256"
    else:
        manifest = json.loads((bundle / MANIFEST).read_text())
        manifest["format_version"] = 99
        (bundle / MANIFEST).write_text(json.dumps(manifest))
        expected = "bundle format version 99 is not supported"
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    assert_refused(infer(str(scene), "-o", str(out), bundle=bundle), expected, out=out)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_cuda(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), "--device", "cuda", bundle=bundle)
    assert_refused(result, "--device cuda: CUDA is not available", out=out)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--block-size", "700"], "--block-size 700: must be a positive multiple of 512"),
        (["--overlap", "128"], "--overlap 128: must be at least 0 and below the tile size 128"),
        (["--threshold", "1.5"], "--threshold 1.5: must lie strictly between 0 and 1"),
        (["--batch-size", "zero"], "'zero' is neither auto nor a positive integer"),
        (["--bands", "1,2"], "--bands 1,2: the model needs 3 bands"),
    ],
)
def test_bad_options(tmp_path, bundle, args, message):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    assert_refused(infer(str(scene), "-o", str(out), *args, bundle=bundle), message, out=out)


def test_two_inputs_with_one_stem(tmp_path, bundle):
    (tmp_path / "a").mkdir()
    one = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    two = write_raster(tmp_path / "a" / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    assert_refused(
        infer(str(one), str(two), "-o", str(out), bundle=bundle),
        "two inputs are named 'city'",
        out=out,
    )

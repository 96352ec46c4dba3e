"""The model bundle: write, read, verify; corrupt bundles are refused with a message."""

from __future__ import annotations

import gc
import json
import shutil
import tempfile
import zipfile

import pytest
import torch
from pydantic import ValidationError

from stmap.bundle import (
    ANY_TILE_INFER,
    MANIFEST,
    WEIGHTS,
    Manifest,
    Normalization,
    Tiling,
    add_files,
    default_bundle_path,
    default_tiling,
    open_bundle,
    sha256_of,
    write_bundle,
    write_retiled,
    write_with_backbone,
)
from stmap.errors import BundleError, OutputExistsError
from tests.conftest import make_tiny_bundle


def test_round_trip_gives_the_same_model(tmp_path):
    path = make_tiny_bundle(tmp_path / "b", seed=3, threshold=0.4, gsd_m=0.3)
    bundle = open_bundle(path)
    m = bundle.manifest
    assert (m.format_version, m.backbone, m.tile_size, m.threshold, m.gsd_m) == (
        1,
        "tiny",
        128,
        0.4,
        0.3,
    )
    assert m.bands == ("red", "green", "blue")
    assert m.files[WEIGHTS] == sha256_of(path / WEIGHTS)
    torch.manual_seed(3)
    from stmap.model import DamageSegmenter

    expected = DamageSegmenter(m.segmenter_config()).eval()
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(bundle.load_segmenter()(x), expected(x))


def test_preprocessing_follows_the_manifest(tiny_bundle):
    m = open_bundle(tiny_bundle).manifest
    assert m.preprocessing("uint8").value_max == 255.0
    assert m.preprocessing("uint16").value_max == 4095.0
    with pytest.raises(BundleError, match="no scaling for float32"):
        m.preprocessing("float32")


def test_existing_bundle_is_not_overwritten(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    with pytest.raises(OutputExistsError, match="exists"):
        make_tiny_bundle(path)


def test_missing_bundle(tmp_path):
    with pytest.raises(BundleError, match="nope: model bundle not found"):
        open_bundle(tmp_path / "nope")


def test_directory_without_manifest(tmp_path):
    with pytest.raises(BundleError, match="not a model bundle"):
        open_bundle(tmp_path)


def test_truncated_weights_fail_the_hash_check(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    data = (path / WEIGHTS).read_bytes()
    (path / WEIGHTS).write_bytes(data[: len(data) // 2])
    with pytest.raises(BundleError, match="weights.safetensors does not match its SHA-256"):
        open_bundle(path)


def test_truncated_manifest(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    text = (path / MANIFEST).read_text()
    (path / MANIFEST).write_text(text[: len(text) // 2])
    with pytest.raises(BundleError, match="manifest.json is corrupted or truncated"):
        open_bundle(path)


def test_unknown_manifest_key_and_newer_format(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    raw = json.loads((path / MANIFEST).read_text())
    (path / MANIFEST).write_text(json.dumps({**raw, "surprise": 1}))
    with pytest.raises(BundleError, match="invalid manifest field 'surprise'"):
        open_bundle(path)
    (path / MANIFEST).write_text(json.dumps({**raw, "format_version": 9}))
    with pytest.raises(BundleError, match="format version 9 is not supported"):
        open_bundle(path)


def test_manifest_file_names_cannot_escape_the_bundle(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    raw = json.loads((path / MANIFEST).read_text())
    raw["files"]["../../etc/passwd"] = "0" * 64
    (path / MANIFEST).write_text(json.dumps(raw))
    with pytest.raises(BundleError, match="must be a plain name"):
        open_bundle(path)


def test_zipped_bundle_opens(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    archive = shutil.make_archive(str(tmp_path / "bundle"), "zip", root_dir=tmp_path, base_dir="b")
    bundle = open_bundle(archive)
    assert bundle.manifest.name == "tiny-test"
    assert bundle.hash() == open_bundle(path).hash()


def test_a_zipped_bundle_leaves_no_unpacked_copy_behind(tmp_path, monkeypatch):
    make_tiny_bundle(tmp_path / "b")
    archive = shutil.make_archive(str(tmp_path / "bundle"), "zip", root_dir=tmp_path, base_dir="b")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    bundle = open_bundle(archive)
    assert bundle.load_segmenter() is not None and any(scratch.iterdir())
    del bundle
    gc.collect()
    assert not any(scratch.iterdir()), "the unpacked copy outlived its bundle"
    # A zip whose bundle fails verification is removed at once too.
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(broken, "w") as zf:
        zf.writestr("b/manifest.json", "{not json")
    with pytest.raises(BundleError):
        open_bundle(broken)
    assert not any(scratch.iterdir())


@pytest.mark.parametrize("member", ["../evil.txt", "/abs.txt"])
def test_zip_with_unsafe_paths_is_refused(tmp_path, member):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(member, "x")
    with pytest.raises(BundleError, match="unsafe path"):
        open_bundle(archive)


def test_not_a_zip(tmp_path):
    path = tmp_path / "fake.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(BundleError, match="neither a bundle directory nor a valid zip"):
        open_bundle(path)


def test_add_files_records_hashes_and_exports(tmp_path):
    path = make_tiny_bundle(tmp_path / "b")
    bundle = open_bundle(path)
    extra = tmp_path / "model.onnx.tmp"
    extra.write_bytes(b"onnx bytes")
    add_files(bundle, {"model.onnx": extra}, {"onnx": {"max_abs_diff": 1e-5}})
    reopened = open_bundle(path)
    assert reopened.manifest.files["model.onnx"] == sha256_of(path / "model.onnx")
    assert reopened.manifest.exports["onnx"]["max_abs_diff"] == 1e-5


def test_write_is_atomic_on_failure(tmp_path, monkeypatch):
    import stmap.bundle as bundle_module

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(bundle_module, "_finish_manifest", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        make_tiny_bundle(tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_default_bundle_path_is_inside_the_package():
    assert default_bundle_path().parts[-3:] == ("stmap", "data", "demo_bundle")


def test_write_bundle_refuses_a_file_path(tmp_path):
    target = tmp_path / "taken"
    target.write_text("user data")
    from stmap.model import DamageSegmenter, SegmenterConfig

    with pytest.raises(OutputExistsError):
        write_bundle(target, DamageSegmenter(SegmenterConfig(backbone="tiny")), None)
    assert target.read_text() == "user data"


def _manifest(**fields):
    return Manifest(
        name="t",
        backbone=fields.pop("backbone", "tiny"),
        backbone_weights="random (tests)",
        normalization=Normalization(mean=(0.5,) * 3, std=(0.2,) * 3),
        **fields,
    )


def test_tiling_sets_the_tile_stmap_infer_cuts_and_is_left_out_when_absent():
    """A CNN bundle maps in its ``tiling`` tiles (#20); a manifest without one is written
    exactly as before, and the model's hash tells the two apart (a journal must not
    resume one run with the other's tiles)."""
    plain = _manifest()
    tiled = _manifest(tiling=Tiling(tile_size=512, overlap=64))
    assert (plain.infer_tile, plain.infer_overlap) == (128, None)
    assert (tiled.infer_tile, tiled.infer_overlap) == (512, 64)
    assert "tiling" not in plain.model_dump(mode="json")
    assert Manifest(**tiled.model_dump(mode="json")) == tiled
    assert "margin" not in tiled.model_dump(mode="json")["tiling"]  # written as before
    margined = _manifest(tiling=Tiling(tile_size=1024, overlap=128, margin=48))
    assert margined.model_dump(mode="json")["tiling"]["margin"] == 48
    assert Manifest(**margined.model_dump(mode="json")) == margined


def test_quincunx_is_carried_for_the_tiny_family_and_left_out_when_off():
    """The two-phase last stage (#20) is part of the architecture: written only when on
    (older manifests and hashes stay as they were), refused where there are no stages."""
    plain, paired = _manifest(), _manifest(architecture={"quincunx": True})
    assert "quincunx" not in plain.model_dump(mode="json")["architecture"]
    assert paired.model_dump(mode="json")["architecture"]["quincunx"] is True
    assert paired.segmenter_config().quincunx and not plain.segmenter_config().quincunx
    with pytest.raises(ValidationError, match="no stages to run at two phases"):
        _manifest(backbone="vit_small_patch16_dinov3.lvd1689m", architecture={"quincunx": True})


def test_four_last_stage_phases_are_carried_with_the_quincunx_and_left_out_at_two():
    """``last_stage_phases`` (#20): written only when it is not the quincunx's 2, so the
    two-phase manifests and their hashes stay as they were; refused without the quincunx
    and at a count the model does not average."""
    two = _manifest(architecture={"quincunx": True, "last_stage_phases": 2})
    four = _manifest(architecture={"quincunx": True, "last_stage_phases": 4})
    assert two.model_dump(mode="json") == _manifest(architecture={"quincunx": True}).model_dump(
        mode="json"
    )
    assert four.model_dump(mode="json")["architecture"]["last_stage_phases"] == 4
    assert four.segmenter_config().last_stage_phases == 4
    with pytest.raises(ValidationError, match="only with quincunx true"):
        _manifest(architecture={"last_stage_phases": 4})
    with pytest.raises(ValidationError, match="last_stage_phases"):
        _manifest(architecture={"quincunx": True, "last_stage_phases": 3})


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"backbone": "vit_small_patch16_dinov3.lvd1689m"}, "maps only the tile it was built for"),
        (
            {"tiling": {"tile_size": 520, "overlap": 64}},
            "not a multiple of tiny's output stride 16",
        ),
        ({"tiling": {"tile_size": 512, "overlap": 512}}, "must be below the tile"),
        ({"tiling": {"tile_size": 8192, "overlap": 64}}, "must lie between"),
        ({"tiling": {"tile_size": 512, "overlap": 64, "margin": 32}}, "twice it must lie below"),
        ({"tiling": {"tile_size": 512, "overlap": 64, "margin": -1}}, "greater than or equal"),
    ],
)
def test_tiling_a_model_cannot_map_is_refused(fields, message):
    fields = {"tiling": {"tile_size": 512, "overlap": 64}, **fields}
    with pytest.raises(ValidationError, match=message):
        _manifest(**fields)


def test_new_cnn_bundles_get_large_tiles_and_vits_keep_theirs():
    assert default_tiling("tiny-aa", 128) == ANY_TILE_INFER
    assert default_tiling("vit_small_patch16_dinov3.lvd1689m", 128) is None
    assert default_tiling("tiny", 1024) is None  # trained on tiles as large: nothing to change


def test_a_bundle_moves_to_a_backbone_with_the_same_tensors_and_maps_otherwise(tmp_path):
    """#20: the shipped tiny-aa5n weights run behind tiny-aa7n's 7-tap blur, untrained."""
    five = open_bundle(make_tiny_bundle(tmp_path / "five", backbone="tiny-aa5n"))
    seven = open_bundle(write_with_backbone(five, tmp_path / "seven", "tiny-aa7n"))
    assert seven.manifest.backbone == "tiny-aa7n"
    assert "its tiny-aa5n weights in tiny-aa7n" in seven.manifest.backbone_weights
    assert seven.hash() != five.hash()
    theirs, ours = five.load_segmenter(), seven.load_segmenter()
    for key, tensor in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], tensor), key
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        # the blur is not the 5-tap one (a random decoder maps a constant, so the features)
        assert not torch.allclose(ours.features(x), theirs.features(x))


def test_a_bundle_does_not_move_to_a_backbone_of_other_tensors(tmp_path):
    plain = open_bundle(make_tiny_bundle(tmp_path / "plain"))
    with pytest.raises(BundleError, match="tiny weights do not fit tiny-aa"):
        write_with_backbone(plain, tmp_path / "aa", "tiny-aa")  # same shapes, other names
    assert not (tmp_path / "aa").exists()


def test_the_tiling_is_part_of_the_model_hash(tmp_path):
    plain = open_bundle(make_tiny_bundle(tmp_path / "plain"))
    tiled = open_bundle(write_retiled(plain, tmp_path / "tiled", ANY_TILE_INFER))
    assert tiled.manifest.tiling == ANY_TILE_INFER
    assert tiled.manifest.files == plain.manifest.files  # the same weights
    assert tiled.hash() != plain.hash()

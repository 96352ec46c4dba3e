"""ONNX export: one checked graph, uint8 in, float32 out, any batch size; safe external data."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from stmap.bundle import Normalization, add_files, manifest_for, open_bundle, write_bundle
from stmap.errors import BundleError, InputError
from stmap.export import export_bundle
from stmap.export.onnx_export import check_opset, export_onnx
from stmap.model import DamageSegmenter, InferenceModel, SegmenterConfig
from stmap.model.backbones import IMAGENET_MEAN, IMAGENET_STD
from stmap.onnx_files import checked_onnx_path
from stmap.stage_contract import INPUT_NAME, OUTPUT_NAME
from tests.export.conftest import liven


def _model(bundle_path: Path) -> InferenceModel:
    bundle = open_bundle(bundle_path)
    return InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing()).eval()


def test_exported_graph_is_checked_and_takes_any_batch(exported_source):
    path = exported_source / "model.onnx"
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    (pixels,), (probability,) = proto.graph.input, proto.graph.output
    assert (pixels.name, probability.name) == (INPUT_NAME, OUTPUT_NAME)
    assert pixels.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert probability.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 128, 128]
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert metadata["stmap.bundle_hash"] == open_bundle(exported_source).hash()

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model = _model(exported_source)
    rng = np.random.default_rng(1)
    for batch in (1, 5):
        tiles = rng.integers(0, 256, (batch, 3, 128, 128), dtype=np.uint8)
        (out,) = session.run([OUTPUT_NAME], {INPUT_NAME: tiles})
        assert out.shape == (batch, 1, 128, 128) and out.dtype == np.float32
        with torch.no_grad():
            expected = model(torch.from_numpy(tiles)).numpy()
        assert np.abs(out - expected).max() <= 1e-3


def test_fp16_variant_keeps_uint8_in_and_float32_out(exported_source):
    proto = onnx.load(str(exported_source / "model_fp16.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    kernels = [i for i in proto.graph.initializer if len(i.dims) == 4 and i.dims[0] > 1]
    assert kernels and all(k.data_type == onnx.TensorProto.FLOAT16 for k in kernels)
    first_ops = [node.op_type for node in proto.graph.node[:4]]
    assert first_ops == ["Cast", "Mul", "Add", "Cast"], "normalise in fp32, then cast to fp16"


@pytest.mark.parametrize("opset", [11, 16, 21])
def test_unsupported_opset_is_refused_with_the_range(opset):
    with pytest.raises(InputError, match=rf"--opset {opset} is not supported.*17\.\.20"):
        check_opset(opset)


def test_large_models_go_to_one_external_data_file(lively_bundle, tmp_path):
    work = tmp_path / "work"
    result = export_onnx(
        _model(lively_bundle), work / "model.onnx", tile_size=128, channels=3, external_data_bytes=0
    )
    assert sorted(p.name for p in work.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert result.record["external_data"] == "model.onnx.data"
    bundle = open_bundle(lively_bundle)
    add_files(bundle, result.files, {"onnx": result.record})
    path = checked_onnx_path(open_bundle(lively_bundle), "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    tiles = np.zeros((2, 3, 128, 128), np.uint8)
    assert session.run(None, {INPUT_NAME: tiles})[0].shape == (2, 1, 128, 128)


@pytest.mark.parametrize(
    ("location", "message"),
    [
        ("../outside.data", "outside the bundle"),
        ("/etc/passwd", "outside the bundle"),
        ("unlisted.data", "does not list"),
    ],
)
def test_external_data_outside_the_bundle_is_refused(lively_bundle, tmp_path, location, message):
    work = tmp_path / "work"
    result = export_onnx(
        _model(lively_bundle), work / "model.onnx", tile_size=128, channels=3, external_data_bytes=0
    )
    proto = onnx.load(str(result.path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, str(result.path))
    bundle = open_bundle(lively_bundle)
    add_files(bundle, result.files, {})
    with pytest.raises(BundleError, match=message):
        checked_onnx_path(open_bundle(lively_bundle), "model.onnx")


def test_dinov3_vit_small_exports_with_parity(tmp_path):
    """The RoPE ViT goes through the same exporter; random weights at 128 px."""
    torch.manual_seed(0)
    config = SegmenterConfig(
        backbone="vit_small_patch16_dinov3.lvd1689m", tile_size=128, decoder_channels=8
    )
    manifest = manifest_for(
        config,
        name="vits-test",
        backbone_weights="random (tests)",
        normalization=Normalization(mean=IMAGENET_MEAN, std=IMAGENET_STD),
    )
    model = DamageSegmenter(config).eval()
    path = liven(write_bundle(tmp_path / "vits", model, manifest), samples=8)
    start = time.perf_counter()
    export_bundle(path, formats=["onnx"], samples=6)
    seconds = time.perf_counter() - start
    parity = open_bundle(path).manifest.exports["onnx"]["parity"]
    assert parity["max_abs_diff"] <= 1e-3 and parity["samples"] == 6
    session = ort.InferenceSession(str(path / "model.onnx"), providers=["CPUExecutionProvider"])
    tiles = np.random.default_rng(0).integers(0, 256, (3, 3, 128, 128), dtype=np.uint8)
    assert np.ptp(session.run(None, {INPUT_NAME: tiles})[0]) > 0.1, "a flat model proves little"
    assert seconds < 60, f"the ViT-S export took {seconds:.0f} s"


@pytest.mark.parametrize(
    "backbone, quincunx, phases",
    [
        ("tiny-aa", False, 2),
        ("tiny-blur", False, 2),
        ("tiny-aalite5", True, 2),
        ("tiny-aa7n", True, 4),
    ],
)
def test_antialiased_bilinear_models_export_with_parity(
    tmp_path: Path, backbone: str, quincunx: bool, phases: int
):
    """Blur-pool (reflect padding, depthwise), bilinear upsampling and the quincunx's two
    or four phases (edge padding, strided slices) survive the export (#20)."""
    from stmap.model.backbones import SAT_MEAN, SAT_STD

    torch.manual_seed(0)
    config = SegmenterConfig(
        backbone,
        128,
        8,
        decoder_upsample="bilinear",
        quincunx=quincunx,
        last_stage_phases=phases,
    )
    manifest = manifest_for(
        config,
        name="aa",
        backbone_weights="random (tests)",
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
    )
    path = liven(write_bundle(tmp_path / "b", DamageSegmenter(config), manifest))
    model = _model(path)
    export_onnx(model, tmp_path / "m.onnx", tile_size=128, channels=3)
    session = ort.InferenceSession(str(tmp_path / "m.onnx"))
    x = torch.randint(0, 256, (2, 3, 128, 128), dtype=torch.uint8)
    ours = model(x).detach().numpy()
    theirs = session.run(None, {INPUT_NAME: x.numpy()})[0]
    assert float(ours.std()) > 0.01  # the map varies, so parity means something
    assert np.abs(theirs - ours).max() < 1e-4


def test_a_tiled_cnn_bundle_exports_at_its_inference_tile(tmp_path: Path):
    """A bundle whose manifest cuts larger tiles (``tiling``) is exported at that size, so
    ONNX Runtime maps with the tiles `stmap infer`'s torch path uses (#20)."""
    from stmap.bundle import ANY_TILE_INFER
    from stmap.model.backbones import SAT_MEAN, SAT_STD

    torch.manual_seed(0)
    config = SegmenterConfig("tiny", 128, 8)
    manifest = manifest_for(
        config,
        name="tiled",
        backbone_weights="random (tests)",
        normalization=Normalization(mean=SAT_MEAN, std=SAT_STD),
        tiling=ANY_TILE_INFER,
    )
    path = liven(write_bundle(tmp_path / "b", DamageSegmenter(config), manifest))
    export_bundle(path, formats=["onnx"], samples=6)
    graph = onnx.load(str(path / "model.onnx"))
    dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, ANY_TILE_INFER.tile_size, ANY_TILE_INFER.tile_size]

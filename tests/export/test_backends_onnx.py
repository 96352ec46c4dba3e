"""The onnxruntime backend behind the runtime's one interface, against the torch backend."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import onnx
import pytest
import rasterio
import torch

from stmap.bundle import Bundle, add_files, open_bundle, read_manifest
from stmap.errors import BundleError, DeviceError, MissingDependencyError
from stmap.parity_tiles import parity_batches
from stmap.runtime.backends.base import Backend, Batcher, create_backend

CPU = torch.device("cpu")


def _tiles() -> torch.Tensor:
    """(N, 3, 128, 128) uint8: random and synthetic-city tiles, 13 in all (an odd batch)."""
    return torch.cat([batch for _, batch in parity_batches(128, 3, samples=13, seed=3)])


@pytest.mark.parametrize(
    ("precision", "tolerance", "levels"),
    [("fp32", 2 / 255, 2), ("fp16", 1e-2, 3)],  # fp16: the export's parity tolerance
)
def test_onnxruntime_agrees_with_torch(exported_source, precision, tolerance, levels):
    bundle = open_bundle(exported_source)
    reference = create_backend("torch", bundle, CPU, "fp32", "uint8")
    backend = create_backend("onnxruntime", bundle, CPU, precision, "uint8")
    assert isinstance(backend, Backend) and backend.name == "onnxruntime"
    assert backend.precision == precision and backend.device == CPU
    tiles = _tiles()
    expected = reference.infer(tiles)
    probs = Batcher(backend, 5)(tiles)  # batches of 5, 5 and 3: the dynamic batch axis
    assert probs.shape == (13, 1, 128, 128) and probs.dtype == torch.float32
    assert (probs - expected).abs().max() <= tolerance
    as_bytes = [np.rint(p.numpy() * 255).astype(np.int16) for p in (probs, expected)]
    assert np.abs(as_bytes[0] - as_bytes[1]).max() <= levels  # as the uint8 raster stores it


def test_auto_prefers_onnxruntime_on_the_cpu_when_the_bundle_has_it(exported_source, lively_source):
    exported = create_backend("auto", open_bundle(exported_source), CPU, "fp32", "uint8")
    assert exported.name == "onnxruntime"
    plain = create_backend("auto", open_bundle(lively_source), CPU, "fp32", "uint8")
    assert plain.name == "torch"


def test_a_bundle_without_onnx_names_the_export_command(lively_source):
    with pytest.raises(DeviceError, match=r"no model\.onnx; add it with: stmap export"):
        create_backend("onnxruntime", open_bundle(lively_source), CPU, "fp32", "uint8")


@pytest.mark.parametrize(
    ("precision", "dtype", "message"),
    [("bf16", "uint8", "no bf16 ONNX model"), ("fp32", "uint16", "input is uint16")],
)
def test_what_the_exports_cannot_run_is_refused(exported_source, precision, dtype, message):
    with pytest.raises(DeviceError, match=message):
        create_backend("onnxruntime", open_bundle(exported_source), CPU, precision, dtype)


def test_without_onnxruntime_auto_falls_back_to_torch(exported_source, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    bundle = open_bundle(exported_source)
    with pytest.raises(MissingDependencyError, match=r"pip install 'stmap\[onnx\]'"):
        create_backend("onnxruntime", bundle, CPU, "fp32", "uint8")
    assert create_backend("auto", bundle, CPU, "fp32", "uint8").name == "torch"


def test_external_data_outside_the_bundle_is_refused_on_load(exported_source, tmp_path):
    path = shutil.copytree(exported_source, tmp_path / "b")
    proto = onnx.load(str(path / "model.onnx"))
    onnx.save_model(
        proto,
        str(path / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    proto = onnx.load(str(path / "model.onnx"), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = str(tmp_path / "elsewhere.bin")
    onnx.save_model(proto, str(path / "model.onnx"))
    add_files(Bundle(path, read_manifest(path), path), {}, {})  # re-hash: hashes all verify
    with pytest.raises(BundleError, match="outside the bundle; refused"):
        create_backend("onnxruntime", open_bundle(path), CPU, "fp32", "uint8")


@pytest.mark.gpu
@pytest.mark.parametrize(("precision", "tolerance"), [("fp32", 2 / 255), ("fp16", 1e-2)])
def test_cuda_io_binding_agrees_with_torch(exported_source, precision, tolerance):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is not installed (pip install 'stmap[gpu]')")
    bundle = open_bundle(exported_source)
    device = torch.device("cuda")
    backend = create_backend("onnxruntime", bundle, device, precision, "uint8")
    reference = create_backend("torch", bundle, CPU, "fp32", "uint8")
    tiles = _tiles()
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # as the pipeline runs: on its own stream
        probs = backend.infer(tiles.to(device))
        assert probs.device.type == "cuda"
        probs = probs.cpu()
    assert (probs - reference.infer(tiles)).abs().max() <= tolerance


def test_infer_end_to_end_agrees_between_torch_and_onnxruntime(exported_source, tmp_path):
    """`stmap infer --backend onnxruntime` maps a raster as torch does, within 2/255."""
    from click.testing import CliRunner

    from stmap.cli import main
    from tests.conftest import write_rgb_raster

    scene = write_rgb_raster(tmp_path / "scene.tif", 300, 200)
    maps = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / backend
        args = ["infer", str(scene), "-o", str(out), "--model", str(exported_source)]
        result = CliRunner().invoke(main, [*args, "--backend", backend, "--quiet", "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["backend"] == backend
        with rasterio.open(out / "scene_damage_prob.tif") as src:
            maps[backend] = src.read(1).astype(np.int16)
    assert maps["torch"].shape == (200, 300)
    assert np.unique(maps["torch"]).size > 50, "the map must not be flat for this to mean much"
    assert np.abs(maps["torch"] - maps["onnxruntime"]).max() <= 2

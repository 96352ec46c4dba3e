"""TensorRT engines: naming, profiles and compatibility (pure); the paths without TensorRT."""

from __future__ import annotations

import sys

import pytest
import torch

from stmap.errors import DeviceError, InputError, MissingDependencyError
from stmap.export import export_bundle
from stmap.export.tensorrt_engine import require_tensorrt
from stmap.stage_contract import (
    BatchProfile,
    GpuTarget,
    engine_name,
    engine_record,
    gpu_slug,
    select_engine,
    timing_cache_name,
)
from tests.export.conftest import snapshot

H100 = GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), "10.13.3.9")


@pytest.fixture
def no_tensorrt(monkeypatch):
    """Make ``import tensorrt`` fail, whether or not it is installed here."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


@pytest.mark.parametrize(
    ("name", "slug"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-80gb-hbm3"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
        ("Tesla T4", "t4"),
        ("NVIDIA A100-SXM4-40GB", "a100-sxm4-40gb"),
        ("NVIDIA", "gpu"),
    ],
)
def test_gpu_names_become_file_name_slugs(name, slug):
    assert gpu_slug(name) == slug


def test_engines_and_timing_caches_are_named_by_gpu_and_tensorrt_version():
    assert engine_name(H100, "fp16") == "engine_h100-80gb-hbm3_sm90_trt10.13.3.9_fp16.plan"
    assert timing_cache_name(H100) == "timing_h100-80gb-hbm3_sm90_trt10.13.3.9.cache"


def test_batch_profile_arithmetic():
    profile = BatchProfile.from_options(max_batch=64)
    assert (profile.min, profile.opt, profile.max) == (1, 64, 64)
    assert profile.shapes(3, 128) == ((1, 3, 128, 128), (64, 3, 128, 128), (64, 3, 128, 128))
    assert profile.chunks(130) == [(0, 64), (64, 128), (128, 130)]
    assert profile.chunks(64) == [(0, 64)] and profile.chunks(0) == []
    assert BatchProfile.from_options(128, 32, 4).record() == {"min": 4, "opt": 32, "max": 128}


@pytest.mark.parametrize(("low", "opt", "high"), [(0, 1, 1), (2, 1, 4), (1, 8, 4)])
def test_invalid_batch_profiles_are_refused(low, opt, high):
    with pytest.raises(InputError, match="1 <= --min-batch <= --opt-batch <= --max-batch"):
        BatchProfile(low, opt, high)


def _engines(*targets_and_precisions):
    return {
        engine_name(t, p): engine_record(t, p, BatchProfile()) for t, p in targets_and_precisions
    }


def test_select_engine_prefers_this_gpu_model_and_accepts_its_architecture():
    h100_pcie = GpuTarget("NVIDIA H100 PCIe", (9, 0), H100.tensorrt)
    engines = _engines((h100_pcie, "fp16"), (H100, "fp16"), (H100, "fp32"))
    assert select_engine(engines, H100, "fp16") == engine_name(H100, "fp16")
    assert select_engine(engines, H100, "fp32") == engine_name(H100, "fp32")
    only_pcie = _engines((h100_pcie, "fp16"))
    assert select_engine(only_pcie, H100, "fp16") == engine_name(h100_pcie, "fp16")


@pytest.mark.parametrize(
    "other",
    [
        GpuTarget("NVIDIA H100 80GB HBM3", (9, 0), "10.12.0.36"),  # another TensorRT
        GpuTarget("NVIDIA L4", (8, 9), "10.13.3.9"),  # another architecture
    ],
)
def test_engines_for_another_gpu_or_tensorrt_are_refused_with_the_rebuild_command(other):
    engines = _engines((other, "fp16"))
    with pytest.raises(DeviceError, match=r"no fp16 TensorRT engine for NVIDIA H100.*sm90") as err:
        select_engine(engines, H100, "fp16")
    assert "stmap export BUNDLE --format tensorrt" in str(err.value)
    assert other.tensorrt in str(err.value)
    with pytest.raises(DeviceError, match="no fp32 TensorRT engine"):
        select_engine(_engines((H100, "fp16")), H100, "fp32")


def test_without_tensorrt_the_error_names_the_extra(no_tensorrt):
    with pytest.raises(MissingDependencyError, match=r"pip install 'stmap\[tensorrt\]'"):
        require_tensorrt()


def test_tensorrt_export_without_tensorrt_writes_nothing(lively_bundle, no_tensorrt):
    before = snapshot(lively_bundle)
    with pytest.raises(MissingDependencyError, match="tensorrt"):
        export_bundle(lively_bundle, formats=["onnx", "tensorrt"], fp16=True)
    assert snapshot(lively_bundle) == before


def test_tensorrt_backend_refuses_the_cpu(exported_source):
    from stmap.bundle import open_bundle
    from stmap.runtime.backends.base import create_backend

    with pytest.raises(DeviceError, match="CUDA GPUs only"):
        create_backend(
            "tensorrt", open_bundle(exported_source), torch.device("cpu"), "fp32", "uint8"
        )


@pytest.mark.gpu
def test_engine_builds_matches_pytorch_and_runs_as_a_backend(lively_bundle):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed")
    from stmap.bundle import open_bundle
    from stmap.model import InferenceModel
    from stmap.runtime.backends.base import create_backend

    result = export_bundle(lively_bundle, formats=["tensorrt"], fp16=True, max_batch=8)
    bundle = open_bundle(lively_bundle)
    (plan,) = [f for f in result["files"] if f.endswith(".plan")]
    record = bundle.manifest.exports["tensorrt"]["engines"][plan]
    assert record["parity"]["max_abs_diff"] <= 1e-2
    assert record["timing_cache"] in bundle.manifest.files
    device = torch.device("cuda")
    backend = create_backend("tensorrt", bundle, device, "fp16", "uint8")
    tiles = torch.randint(0, 256, (11, 3, 128, 128), dtype=torch.uint8, device=device)
    model = InferenceModel(bundle.load_segmenter(), bundle.manifest.preprocessing()).eval()
    with torch.no_grad():
        expected = model(tiles.cpu())
    assert (backend.infer(tiles).cpu() - expected).abs().max() <= 1e-2

"""Parity with eager PyTorch: measured, recorded in the manifest, enforced."""

from __future__ import annotations

import math

import onnxruntime as ort
import pytest
import torch

from stmap.bundle import MANIFEST, open_bundle
from stmap.export import export_bundle
from stmap.export.parity import TOLERANCES, ParityError, compare
from stmap.parity_tiles import parity_batches
from tests.export.conftest import snapshot


def test_parity_is_recorded_in_the_manifest_and_hashes_verify(exported_source):
    bundle = open_bundle(exported_source)  # verifies every listed file's SHA-256
    assert {"model.onnx", "model_fp16.onnx"} <= set(bundle.manifest.files)
    for key, tolerance in (("onnx", 1e-3), ("onnx_fp16", 1e-2)):
        parity = bundle.manifest.exports[key]["parity"]
        assert 0 <= parity["max_abs_diff"] <= tolerance == parity["tolerance"]
        assert parity["samples"] == 16
        assert set(parity["per_input"]) == {"random", "synthetic-city"}
        assert parity["onnxruntime"] == ort.__version__
        assert parity["provider"] == "CPUExecutionProvider"
    assert bundle.manifest.exports["onnx"]["opset"] == 18


def test_a_parity_failure_exits_with_nothing_written(lively_bundle, monkeypatch):
    before = snapshot(lively_bundle)
    monkeypatch.setitem(TOLERANCES, "fp32", 0.0)
    with pytest.raises(ParityError, match=r"model\.onnx .* differs from PyTorch by .*tolerance 0"):
        export_bundle(lively_bundle, formats=["onnx"])
    assert snapshot(lively_bundle) == before


def test_a_perturbed_weight_is_caught(lively_bundle, monkeypatch):
    """An ONNX graph that no longer matches the weights (one bias moved) fails parity."""
    from stmap.export import parity

    def perturbed(model, onnx_path, **kwargs):
        with torch.no_grad():  # after export: the graph keeps the old bias
            model.segmenter.decoder.classifier.bias.add_(0.5)
        return parity.onnx_parity(model, onnx_path, **kwargs)

    monkeypatch.setattr("stmap.export.onnx_parity", perturbed)
    with pytest.raises(ParityError, match="differs from PyTorch"):
        export_bundle(lively_bundle, formats=["onnx"], output=lively_bundle.parent / "copy")
    assert not (lively_bundle.parent / "copy").exists()
    assert [p.name for p in lively_bundle.parent.iterdir()] == ["bundle"]
    assert MANIFEST in {p.name for p in lively_bundle.iterdir()}


def test_parity_batches_cover_one_tile_extremes_and_city_tiles():
    batches = parity_batches(64, 3, samples=10)
    assert [(label, len(b)) for label, b in batches] == [
        ("random", 1),
        ("random", 4),
        ("synthetic-city", 5),
    ]
    assert all(b.dtype == torch.uint8 and b.shape[1:] == (3, 64, 64) for _, b in batches)
    extremes = batches[1][1]
    assert extremes[0].max() == 0 and extremes[1].min() == 255
    city = batches[2][1].float()
    assert city.std() > 20, "city tiles must have texture"
    again = parity_batches(64, 3, samples=10)
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(batches, again, strict=True))


def test_compare_refuses_wrong_shapes_and_nan():
    batches = parity_batches(32, 3, samples=6)

    def reference(batch):
        return torch.full((len(batch), 1, 32, 32), 0.5)

    with pytest.raises(ParityError, match="returns shape"):
        compare(
            reference, lambda b: torch.zeros(len(b), 2, 32, 32), batches, precision="fp32", what="x"
        )
    with pytest.raises(ParityError, match="by nan|by inf"):
        compare(reference, lambda b: reference(b) * math.nan, batches, precision="fp32", what="x")
    report = compare(reference, reference, batches, precision="fp16", what="x")
    assert report.max_abs_diff == 0 and report.samples == 6 and report.tolerance == 1e-2

"""The CPU precision ladder: parity gate, int8 quantisation, tuned choice and its cache."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from stmap.bundle import open_bundle
from stmap.cache import CACHE_ENV
from stmap.cli import main
from stmap.errors import DeviceError
from stmap.model import InferenceModel
from stmap.model.preprocess import Preprocessing
from stmap.runtime import precision as ladder
from stmap.runtime.backends import PRECISIONS
from stmap.runtime.backends.base import create_backend
from stmap.runtime.backends.torch_backend import _quantised
from tests.conftest import write_rgb_raster

CPU = torch.device("cpu")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """A fresh cache folder per test, tuning switched on."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(ladder.AUTOTUNE_ENV, "on")
    return tmp_path / "cache"


def test_cli_precision_choices_come_from_the_registry() -> None:
    for name in ("infer", "bench"):
        command = main.get_command(click.Context(main), name)
        (option,) = [p for p in command.params if p.name == "precision"]
        assert list(option.type.choices) == ["auto", *PRECISIONS]
    assert "int8" in PRECISIONS and "bf16" in PRECISIONS


def test_a_precision_past_the_tolerance_is_refused_with_its_figure(
    tiny_bundle, cache, monkeypatch
) -> None:
    monkeypatch.setattr(ladder, "TOLERANCE", -1.0)  # nothing can hold: the refusal path
    with pytest.raises(ladder.ParityRefused, match=r"differs from fp32 by \d\.\d{4} .*refused"):
        create_backend("torch", open_bundle(tiny_bundle), CPU, "bf16", "uint8")
    (file,) = (cache / "cpu-ladder").glob("*.json")  # the figure is kept: no re-measuring
    record = json.loads(file.read_text())["parity"]["torch/bf16"]
    assert record["ok"] is False and record["max_abs_diff"] >= 0


def test_the_cli_refuses_it_with_exit_2_and_one_line(
    tiny_bundle, cache, monkeypatch, tmp_path
) -> None:
    monkeypatch.setattr(ladder, "TOLERANCE", -1.0)
    scene = write_rgb_raster(tmp_path / "scene.tif", 130, 130)
    args = ["infer", str(scene), "-o", str(tmp_path / "out"), "--model", str(tiny_bundle)]
    args += ["--device", "cpu", "--precision", "bf16", "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "--precision bf16" in result.output and "tolerance 2/255" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("scene*")), "nothing half-written"


def test_parity_within_the_tolerance_runs_and_is_measured_once(
    tiny_bundle, cache, monkeypatch
) -> None:
    bundle = open_bundle(tiny_bundle)
    monkeypatch.setattr(ladder, "TOLERANCE", 1.0)  # everything holds
    assert create_backend("torch", bundle, CPU, "bf16", "uint8").precision == "bf16"
    monkeypatch.setattr(ladder, "measure_parity", _never)
    assert create_backend("torch", bundle, CPU, "bf16", "uint8").precision == "bf16"


class _Tokens(nn.Module):
    """A ViT's shape in miniature: 16-px patches, then a linear layer over channels."""

    def __init__(self):
        super().__init__()
        self.patch, self.mix = nn.Conv2d(3, 8, 16, stride=16), nn.Linear(8, 8)

    def forward(self, x):
        return self.mix(self.patch(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _Head(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        return self.conv(nn.functional.interpolate(x, scale_factor=16)), x

    def logits(self, x):  # the Decoder's inference entry
        return self.forward(x)[0]


class _Segmenter(nn.Module):
    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone, self.decoder = backbone, _Head()

    def forward(self, x):
        return self.decoder(self.backbone(x))[0]


def _model(backbone: nn.Module) -> InferenceModel:
    torch.manual_seed(0)
    return InferenceModel(_Segmenter(backbone), Preprocessing(mean=(0.5,) * 3, std=(0.2,) * 3))


def test_int8_quantises_the_backbones_linear_layers_only_on_the_cpu() -> None:
    model = _model(_Tokens()).eval()
    quantised = _quantised(model, CPU)
    assert not any(type(m) is nn.Linear for m in quantised.modules())
    pixels = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.inference_mode():
        assert (quantised(pixels) - model(pixels)).abs().max() < 0.05
    with pytest.raises(DeviceError, match="CPU only"):
        _quantised(model, torch.device("cuda"))
    with pytest.raises(DeviceError, match="no linear layers"):
        _quantised(_model(nn.Conv2d(3, 8, 16, stride=16)), CPU)


def test_auto_on_the_cpu_is_tuned_once_then_read_from_the_cache(tiny_bundle, cache, monkeypatch):
    bundle = open_bundle(tiny_bundle)
    first = create_backend("auto", bundle, CPU, "auto", "uint8")
    (file,) = (cache / "cpu-ladder").glob("*.json")
    choice = json.loads(file.read_text())["choice"]["uint8"]
    assert (first.name, first.precision) == (choice["backend"], choice["precision"])
    rows = {(r["backend"], r["precision"]): r for r in choice["candidates"]}
    assert rows[("torch", "fp32")]["tiles_per_s"] > 0  # the reference always runs
    assert "no linear layers" in rows[("torch", "int8")]["refused"]  # a CNN
    assert all("tiles_per_s" in r or "refused" in r for r in rows.values())
    monkeypatch.setattr(ladder, "time_backends", _never)
    monkeypatch.setattr(ladder, "measure_parity", _never)
    again = create_backend("auto", bundle, CPU, "auto", "uint8")
    assert (again.name, again.precision) == (first.name, first.precision)


@pytest.mark.parametrize(
    "garbage",
    ["{not json", "[]", '{"version": 1}', None],  # None: a choice naming no candidate
)
def test_a_corrupt_cache_is_ignored_and_rebuilt(tiny_bundle, cache, monkeypatch, garbage):
    bundle = open_bundle(tiny_bundle)
    create_backend("auto", bundle, CPU, "auto", "uint8")
    (file,) = (cache / "cpu-ladder").glob("*.json")
    if garbage is None:
        data = json.loads(file.read_text())
        data["choice"]["uint8"]["backend"] = "rm -rf"
        garbage = json.dumps(data)
    file.write_text(garbage)
    timed = []
    real = ladder.time_backends
    monkeypatch.setattr(ladder, "time_backends", lambda *a: timed.append(1) or real(*a))
    backend = create_backend("auto", bundle, CPU, "auto", "uint8")
    assert timed == [1]  # measured again, not trusted
    rebuilt = json.loads(file.read_text())["choice"]["uint8"]
    assert (backend.name, backend.precision) == (rebuilt["backend"], rebuilt["precision"])


def test_tuning_off_keeps_the_fixed_order(tiny_bundle, cache, monkeypatch) -> None:
    monkeypatch.setenv(ladder.AUTOTUNE_ENV, "off")
    monkeypatch.setattr(ladder, "time_backends", _never)
    backend = create_backend("auto", open_bundle(tiny_bundle), CPU, "auto", "uint8")
    assert (backend.name, backend.precision) == ("torch", "fp32")


def _never(*args, **kwargs):
    raise AssertionError("measured again")


def test_parity_for_uint16_rasters_uses_their_scaling(tmp_path, cache) -> None:
    """fp32 against itself is exact only when the reference scales as the backend does."""
    from stmap.runtime.backends.torch_backend import TorchBackend
    from tests.runtime.infer_data import make_varied_bundle

    bundle = open_bundle(make_varied_bundle(tmp_path / "varied"))  # input-sensitive
    backend = TorchBackend(bundle, CPU, "fp32", "uint16")
    assert ladder.measure_parity(backend, bundle, input_dtype="uint16")["max_abs_diff"] < 1e-5
    assert ladder.measure_parity(backend, bundle)["max_abs_diff"] > 1e-3  # uint8's scaling

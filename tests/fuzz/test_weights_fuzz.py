"""Weights load only from safetensors; ONNX external data must be a listed file in the bundle.

tests/core/test_weights.py refuses a pickled checkpoint read directly and
tests/export/ three external-data locations; here a bundle smuggles a pickle under
the safetensors name or lists a ``.pth`` only, and ONNX locations are any text.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stmap.bundle import MANIFEST, WEIGHTS, Bundle, open_bundle, read_manifest, sha256_of
from stmap.errors import BundleError
from tests.conftest import make_tiny_bundle
from tests.fuzz.counting import fuzz_target

onnx = pytest.importorskip(
    "onnx", reason="the onnx extra is not installed (pip install 'stmap[onnx]')"
)
from stmap.onnx_files import checked_onnx_path  # noqa: E402  (needs onnx)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("template") / "bundle")


class _Payload:
    """Unpickling this runs ``os.mkdir(path)``: proof that code ran."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def _relist(root: Path, files: list[str]) -> None:
    """Rewrite the manifest to list ``files`` with their true hashes (so only content decides)."""
    raw = json.loads((root / MANIFEST).read_text())
    raw["files"] = {name: sha256_of(root / name) for name in files}
    (root / MANIFEST).write_text(json.dumps(raw))


def test_a_pickle_under_the_safetensors_name_is_refused_and_never_run(template, tmp_path):
    root = Path(shutil.copytree(template, tmp_path / "bundle"))
    proof = tmp_path / "code-ran"
    torch.save({"w": _Payload(proof)}, root / WEIGHTS)
    _relist(root, [WEIGHTS])
    with pytest.raises(BundleError, match=f"cannot read {WEIGHTS}"):
        open_bundle(root).load_segmenter()
    assert not proof.exists()


def test_a_bundle_with_pth_weights_only_is_refused(template, tmp_path):
    root = Path(shutil.copytree(template, tmp_path / "bundle"))
    torch.save(open_bundle(template).load_segmenter().state_dict(), root / "weights.pth")
    (root / WEIGHTS).unlink()
    _relist(root, ["weights.pth"])
    with pytest.raises(BundleError, match=f"lists no {WEIGHTS}"):
        open_bundle(root)


def _onnx_with_external_data(path: Path, location: str) -> None:
    """A one-node ONNX model whose only initialiser claims to live in ``location``."""
    helper = onnx.helper
    weight = onnx.TensorProto(name="w", data_type=onnx.TensorProto.FLOAT, dims=[1])
    weight.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "4")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        [weight],
    )
    onnx.save_model(helper.make_model(graph), str(path))


locations = st.one_of(
    st.sampled_from(
        [
            "../secret.bin",
            "/etc/passwd",
            "a/../../secret.bin",
            "..",
            ".",
            "",
            "data.bin",
            "model.onnx.data",
            WEIGHTS,
            "sub/data.bin",
            "~/secret.bin",
            "data.bin\x00.txt",
        ]
    ),
    st.text(max_size=30),
)


@given(locations)
@fuzz_target
def test_onnx_external_data_is_accepted_only_as_a_listed_file_of_the_bundle(template, location):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(shutil.copytree(template, Path(tmp) / "bundle"))
        (root / "data.bin").write_bytes(b"\0" * 4)
        _onnx_with_external_data(root / "model.onnx", location)
        _relist(root, [WEIGHTS, "model.onnx", "data.bin"])
        bundle = Bundle(root, read_manifest(root), root)
        try:
            path = checked_onnx_path(bundle, "model.onnx")
        except BundleError:
            assert location not in ("data.bin", WEIGHTS)
        else:
            assert path == root / "model.onnx"
            assert location in ("data.bin", WEIGHTS), f"accepted {location!r}"

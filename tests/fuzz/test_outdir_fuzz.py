"""Names, STAC ids and journals from a stranger: outputs stay in OUTDIR, inputs and
existing outputs stay as they were, and the outcome is a map or exit 2.

Hand-written cases: tests/runtime/test_outdir.py. Every run here is a real
``stmap infer`` (in process) on a 64 × 64 scene with a tiny model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given

from stmap.cli import main
from stmap.errors import InputError
from stmap.io.outdir import check_name, name_problem, safe_name
from tests.fuzz.counting import fuzz_target
from tests.fuzz.strategies import hostile_names, json_documents
from tests.properties.profiles import examples
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster

# Every name a run gives a file in OUTDIR, from an output name S.
PATTERNS = (
    "{}_damage_prob.tif",
    "{}_summary.json",
    ".{}.journal.json",
    ".{}_damage.partial.tif",
    ".{}.staging",
    ".{}.mosaic",
)
JOURNAL = {
    "version": 1,
    "key": "0" * 64,
    "identity": {"input": {"path": "city.tif"}, "model": "0" * 64},
    "block_size": 512,
    "blocks": {"0": [4096, 12]},
}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def mapped(tmp_path_factory, bundle) -> Path:
    """A folder holding city.tif and out/, its finished outputs."""
    root = tmp_path_factory.mktemp("mapped")
    scene = write_raster(root / "city.tif", smooth_image(64, 64))
    assert infer(str(scene), "-o", str(root / "out"), bundle=bundle).exit_code == 0
    return root


def _can_name_a_file(name: str) -> bool:
    """Whether a POSIX file system takes ``name``: no / or NUL, 255 bytes at most."""
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:  # a lone surrogate no file name decodes to
        return False
    return b"/" not in raw and b"\0" not in raw and 0 < len(raw) <= 255


def infer(*args: str, bundle: Path):
    return CliRunner().invoke(main, ["infer", *args, "--model", str(bundle)])


def files(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextmanager
def workspace(source: Path | None = None) -> Iterator[Path]:
    """A fresh folder (a copy of ``source``), nested so that ``../..`` stays inside the
    temporary directory: whatever a run writes outside OUTDIR is seen."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "a" / "b" / "c"
        if source is None:
            root.mkdir(parents=True)
        else:
            shutil.copytree(source, root)
        yield root


def assert_only_outdir_changed(top: Path, out: Path, before: dict[str, str], result) -> None:
    assert result.exit_code in (0, 2), result.output
    after = files(top)
    outside = {k: v for k, v in after.items() if not (top / k).is_relative_to(out)}
    assert outside == {k: v for k, v in before.items() if not (top / k).is_relative_to(out)}


@given(hostile_names)
@example("./../../escape")
@example("\udcff\udcfe")
@fuzz_target
def test_any_name_is_refused_or_names_files_directly_in_outdir(name):
    outdir = Path("/srv/out")
    try:
        candidates = [check_name(name, "x"), safe_name(name)]
    except InputError:
        candidates = [safe_name(name)]
    assert name_problem(candidates[-1]) is None, "a made-safe name is safe"
    for safe in candidates:
        for pattern in PATTERNS:
            path = outdir / pattern.format(safe)
            assert path.parent == outdir and len(path.name.encode("utf-8", "surrogatepass")) < 256


@examples(ci=15)
@given(hostile_names)
@example("./../../escape")
@example("/etc/passwd")
@fuzz_target
def test_any_stac_item_id_maps_inside_outdir_or_is_refused(bundle, name):
    with workspace() as root:
        scene = write_raster(root / "city.tif", smooth_image(64, 64))
        item = {
            "type": "Feature",
            "id": name,
            "properties": {"datetime": "2023-02-07T08:15:00Z"},
            "assets": {"visual": {"href": "city.tif"}},
        }
        (root / "item.json").write_text(json.dumps(item))
        top, out = root.parents[1], root / "out"
        before = files(top)
        result = infer(str(root / "item.json"), "-o", str(out), bundle=bundle)
        assert_only_outdir_changed(top, out, before, result)
        assert result.exit_code == 0, "a STAC id is made safe, never refused"
        assert scene.exists()


@examples(ci=10)
@given(hostile_names)
@example("../up")
@example("-x")
@fuzz_target
def test_any_mosaic_name_maps_inside_outdir_or_is_refused(bundle, name):
    with workspace() as root:
        scene = write_raster(root / "city.tif", smooth_image(64, 64))
        top, out = root.parents[1], root / "out"
        before = files(top)
        result = infer(str(scene), "-o", str(out), "--mosaic", name, bundle=bundle)
        assert_only_outdir_changed(top, out, before, result)
        assert (result.exit_code == 0) == (name_problem(name) is None), result.output


@examples(ci=10)
@given(hostile_names.filter(lambda stem: _can_name_a_file(f"{stem}.tif")))
@example("-city")
@fuzz_target
def test_any_file_name_maps_inside_outdir_or_is_refused(bundle, stem):
    with workspace() as root:
        scene = root / f"{stem}.tif"  # GDAL cannot create a name that is not UTF-8
        write_raster(root / "city.tif", smooth_image(64, 64)).rename(scene)
        top, out = root.parents[1], root / "out"
        before = files(top)
        result = infer(str(scene), "-o", str(out), bundle=bundle)
        assert_only_outdir_changed(top, out, before, result)


@examples(ci=25)
@given(json_documents(JOURNAL))
@example(b"{}")
@example(json.dumps(JOURNAL).encode())
@fuzz_target
def test_any_journal_beside_existing_outputs_never_licenses_overwriting(mapped, bundle, journal):
    with workspace(mapped) as root:
        out = root / "out"
        (out / ".city.journal.json").write_bytes(journal)
        before = files(root)
        result = infer(str(root / "city.tif"), "-o", str(out), bundle=bundle)
        assert result.exit_code == 2, result.output
        assert "--restart" in result.stderr
        assert files(root) == before

"""A stranger's model bundle: any manifest.json and any zip is opened or refused (exit 2).

Directories get random JSON, mutated valid manifests and random bytes as their
manifest; zips get traversal names, absolute paths, symlink members, duplicate names,
lying declared sizes, bombs and truncation. Every outcome is a bundle or a
BundleError, and nothing is written outside the private extraction directory.
tests/core/test_bundle.py has the hand-written cases these generalise.
"""

from __future__ import annotations

import json
import shutil
import stat
import struct
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from stmap.bundle import MANIFEST, WEIGHTS, open_bundle
from stmap.cli import main
from stmap.errors import BundleError, InputError
from tests.conftest import make_tiny_bundle
from tests.fuzz.counting import fuzz_target
from tests.fuzz.strategies import DEEP_NESTING, json_documents
from tests.properties.profiles import examples


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("template") / "bundle")


def _use(bundle) -> None:
    """What ``stmap infer`` does with an opened bundle before the first tile."""
    bundle.hash()
    bundle.manifest.preprocessing("uint8")
    bundle.load_segmenter()


def _with_manifest(template: Path, tmp: str, manifest: bytes) -> Path:
    root = Path(shutil.copytree(template, Path(tmp) / "bundle"))
    (root / MANIFEST).write_bytes(manifest)
    return root


@examples(ci=60)
@given(data=st.data())
@fuzz_target
def test_any_manifest_is_opened_or_refused_with_a_bundle_error(template, data):
    manifest = data.draw(json_documents(json.loads((template / MANIFEST).read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        root = _with_manifest(template, tmp, manifest)
        before = sorted(p.name for p in root.iterdir())
        with suppress(InputError):  # an unknown backbone is an InputError too
            _use(open_bundle(root))
        assert sorted(p.name for p in root.iterdir()) == before


@pytest.mark.parametrize(
    "manifest",
    [DEEP_NESTING, b'{"format_version": 1, "files": []}'],
    ids=["nested-beyond-the-recursion-limit", "files-as-a-list"],
)
def test_manifests_found_by_fuzzing_are_refused(template, tmp_path, manifest):
    with pytest.raises(BundleError):
        open_bundle(_with_manifest(template, str(tmp_path), manifest))


@examples(ci=15)
@given(data=st.data())
@fuzz_target
def test_stmap_info_on_any_manifest_exits_0_or_2_without_a_traceback(template, data):
    manifest = data.draw(json_documents(json.loads((template / MANIFEST).read_text())))
    with tempfile.TemporaryDirectory() as tmp:
        root = _with_manifest(template, tmp, manifest)
        result = CliRunner().invoke(main, ["info", str(root), "--json"])
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output


# ---- zipped bundles --------------------------------------------------------------------

SAFE_NAMES = st.sampled_from([MANIFEST, WEIGHTS, f"b/{MANIFEST}", f"b/{WEIGHTS}", "README", "b/"])
HOSTILE_NAMES = st.sampled_from(
    [
        "../x",
        "../../x",
        "b/../../x",
        "/x",
        "/tmp/x",
        "\\x",
        "..\\x",
        "C:/x",
        "C:\\x",
        "./../x",
        "b/./../../x",
        "",
        ".",
        "..",
        "b//../../x",
    ]
)
names = SAFE_NAMES | HOSTILE_NAMES | st.text(min_size=1, max_size=20)


def members(files: dict[str, bytes]) -> st.SearchStrategy[tuple[str, bytes, bool]]:
    """(name, content, is_symlink): real bundle files under odd names, or random bytes."""
    contents = st.sampled_from(sorted(files)).map(files.__getitem__) | st.binary(max_size=64)
    return st.tuples(names, contents, st.booleans())


def _zip(path: Path, entries: list[tuple[str, bytes, bool]]) -> None:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content, symlink in entries:
            info = zipfile.ZipInfo(name or "_")
            info.filename = name  # ZipInfo normalises; keep the hostile name as written
            if symlink:
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, content)


def _declare_sizes(data: bytes, sizes: list[int]) -> bytes:
    """The zip with the central directory's uncompressed sizes replaced by ``sizes``."""
    out = bytearray(data)
    start = 0
    for size in sizes:
        at = out.find(b"PK\x01\x02", start)
        if at < 0:
            break
        out[at + 24 : at + 28] = struct.pack("<I", size)
        start = at + 4
    return bytes(out)


@contextmanager
def _private_tempdir(root: Path) -> Iterator[Path]:
    """Make tempfile create its directories (the zip's extraction) under ``root``."""
    saved = tempfile.tempdir
    tempfile.tempdir = str(root)
    try:
        yield root
    finally:
        tempfile.tempdir = saved


def _stray_files(top: Path, allowed: list[Path]) -> list[Path]:
    """Files and links under ``top`` that are neither in nor under ``allowed``."""
    return [
        p
        for p in top.rglob("*")
        if (p.is_file() or p.is_symlink()) and not any(p == a or a in p.parents for a in allowed)
    ]


@st.composite
def zip_cases(draw, files: dict[str, bytes]) -> dict[str, Any]:
    """Members, optionally lying declared sizes and a cut: the zip as a stranger sends it."""
    entries = draw(st.lists(members(files), max_size=6))
    if draw(st.booleans()):  # a real bundle beside whatever else
        entries += [(MANIFEST, files[MANIFEST], False), (WEIGHTS, files[WEIGHTS], False)]
    entries = draw(st.permutations(entries))
    sizes = draw(st.none() | st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6))
    cut = draw(st.none() | st.integers(0, 4000))
    return {"entries": entries, "sizes": sizes, "cut": cut}


@examples(ci=80)
@given(data=st.data())
@fuzz_target
def test_any_zip_is_opened_or_refused_and_nothing_lands_outside_its_directory(template, data):
    case = data.draw(
        zip_cases({name: (template / name).read_bytes() for name in (MANIFEST, WEIGHTS)})
    )
    with tempfile.TemporaryDirectory() as tmp:
        top = Path(tmp)
        extract_root = top / "a" / "b" / "c" / "extract"  # ../../../x would still be under top
        extract_root.mkdir(parents=True)
        archive = top / "bundle.zip"
        _zip(archive, case["entries"])
        data = archive.read_bytes()
        if case["sizes"] is not None:
            data = _declare_sizes(data, case["sizes"])
        if case["cut"] is not None:
            data = data[: case["cut"]]
        archive.write_bytes(data)
        with _private_tempdir(extract_root), suppress(InputError):
            _use(open_bundle(archive))
        assert _stray_files(top, [archive, *extract_root.glob("stmap-bundle-*")]) == []


def test_a_zip_bomb_is_refused_before_anything_is_extracted(tmp_path):
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(MANIFEST, "{}")
        z.writestr(WEIGHTS, bytes(64 << 20))  # 64 MiB of zeros in ~64 KiB
    with _private_tempdir(tmp_path / "extract") as root:
        root.mkdir()
        with pytest.raises(BundleError, match="compression ratio"):
            open_bundle(archive)
        assert list(root.iterdir()) == []


def test_declared_sizes_beyond_the_limit_are_refused(tmp_path):
    archive = tmp_path / "huge.zip"
    _zip(archive, [(f"{i}.bin", b"x", False) for i in range(3)])
    archive.write_bytes(_declare_sizes(archive.read_bytes(), [2**32 - 1] * 3))
    with pytest.raises(BundleError, match="compression ratio|expands beyond 8 GiB"):
        open_bundle(archive)


def test_a_member_without_a_name_is_refused(tmp_path):
    """Found by fuzzing: zipfile's extraction fails on an empty name with an IndexError."""
    archive = tmp_path / "nameless.zip"
    _zip(archive, [(MANIFEST, b"{}", False), ("", b"x", False)])
    with pytest.raises(BundleError, match="unsafe path ''"):
        open_bundle(archive)


def test_a_symlink_member_is_refused(tmp_path):
    archive = tmp_path / "link.zip"
    _zip(archive, [(MANIFEST, b"/etc/passwd", True)])
    with pytest.raises(BundleError, match="symbolic link"):
        open_bundle(archive)


def test_a_symlinked_file_in_a_bundle_directory_is_refused(template, tmp_path):
    root = Path(shutil.copytree(template, tmp_path / "bundle"))
    secret = tmp_path / "secret.bin"
    secret.write_bytes((root / WEIGHTS).read_bytes())
    (root / WEIGHTS).unlink()
    (root / WEIGHTS).symlink_to(secret)
    with pytest.raises(BundleError, match=f"{WEIGHTS} is missing from the bundle"):
        open_bundle(root)

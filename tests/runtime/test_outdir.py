"""OUTDIR's guards (issue 21): outputs stay inside OUTDIR, never overwrite an input, are
named so every writer takes the name, and one run at a time writes there."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from stmap.cli import main
from stmap.errors import InputError
from stmap.io.outdir import LOCK_FILE, check_name, name_problem, output_name, safe_name
from tests.runtime.infer_data import make_varied_bundle, smooth_image, write_raster


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_varied_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def infer(*args: str, bundle: Path):
    return CliRunner().invoke(main, ["infer", *args, "--model", str(bundle)])


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path → SHA-256): what a refused run must not touch."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def stac_item(tmp_path: Path, item_id: str, scene: Path) -> Path:
    doc = {
        "type": "Feature",
        "id": item_id,
        "properties": {"datetime": "2023-02-07T08:15:00Z"},
        "assets": {"visual": {"href": str(scene)}},
    }
    path = tmp_path / "item.json"
    path.write_text(json.dumps(doc))
    return path


def test_a_stac_id_cannot_place_outputs_outside_outdir(tmp_path, bundle):
    root = tmp_path / "a" / "b" / "c"
    root.mkdir(parents=True)
    scene = write_raster(root / "city.tif", smooth_image(64, 64))
    item = stac_item(root, "./../../escape", scene)
    out = root / "out"
    before = snapshot(tmp_path)
    result = infer(str(item), "-o", str(out), bundle=bundle)
    assert result.exit_code == 0, result.output
    after = snapshot(tmp_path)
    written = sorted(set(after) - set(before))
    assert written and all(name.startswith("a/b/c/out/_._.._.._escape_") for name in written)


@pytest.mark.parametrize("restart", [False, True])
def test_an_output_never_overwrites_an_input(tmp_path, bundle, restart):
    """`stmap infer d/a.tif d/a_damage.tif -o d --restart` overwrote the second input."""
    data = tmp_path / "d"
    data.mkdir()
    a = write_raster(data / "a.tif", smooth_image(64, 64))
    a_damage = write_raster(data / "a_damage.tif", smooth_image(64, 64, seed=1))
    before = snapshot(data)
    flags = ["--restart"] if restart else []
    result = infer(str(a), str(a_damage), "-o", str(data), *flags, bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{a_damage}: an input of this run would be overwritten" in result.stderr
    assert snapshot(data) == before


def test_a_mosaic_never_overwrites_one_of_its_members(tmp_path, bundle):
    data = tmp_path / "d"
    data.mkdir()
    member = write_raster(data / "a_damage.tif", smooth_image(64, 64))
    other = write_raster(data / "b.tif", smooth_image(64, 64, seed=1))
    before = snapshot(data)
    args = ["-o", str(data), "--mosaic", "a", "--restart"]
    result = infer(str(member), str(other), *args, bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{member}: an input of this run would be overwritten" in result.stderr
    assert snapshot(data) == before


def test_footprints_and_hard_links_to_inputs_are_inputs_too(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    footprints = out / "city_buildings.gpkg"
    footprints.write_bytes(b"stands in for footprints: refused before it is read")
    result = infer(str(scene), "-o", str(out), "--footprints", str(footprints), bundle=bundle)
    assert result.exit_code == 2 and "would be overwritten" in result.stderr, result.output
    footprints.unlink()
    os.link(scene, out / "city_damage.tif")  # the same file under an output's name
    before = snapshot(tmp_path)
    result = infer(str(scene), "-o", str(out), "--restart", bundle=bundle)
    assert result.exit_code == 2 and "would be overwritten" in result.stderr, result.output
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("stem", "problem"),
    [("-city", "it starts with '-'"), ("city!", "it holds '!'"), (".city", "it starts with '.'")],
)
def test_a_stem_no_writer_takes_is_refused_at_the_start(tmp_path, bundle, stem, problem):
    scene = write_raster(tmp_path / f"{stem}.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{scene}: its name {stem!r} cannot name the outputs ({problem})" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("name", ["../up", "/abs", "-x", "a\x00b", "", "x" * 300])
def test_a_mosaic_name_that_is_not_a_safe_name_is_refused(tmp_path, bundle, name):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    result = infer(str(scene), "-o", str(out), "--mosaic", name, bundle=bundle)
    assert result.exit_code == 2, result.output
    assert "--mosaic: its name" in result.stderr
    assert not out.exists()


def test_missing_footprints_are_refused_before_the_run(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    gone = tmp_path / "gone.gpkg"
    result = infer(str(scene), "-o", str(out), "--footprints", str(gone), bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"--footprints {gone}: file not found" in result.stderr
    assert not out.exists()


def test_footprints_a_stac_document_names_are_checked_before_the_run(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    doc = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "id": "osm",
        "properties": {"datetime": "2023-02-07T08:15:00Z"},
        "assets": {"footprints": {"href": "gone.gpkg", "roles": ["footprints"]}},
    }
    (tmp_path / "footprints.json").write_text(json.dumps(doc))
    args = ["-o", str(out), "--footprints", str(tmp_path / "footprints.json")]
    result = infer(str(scene), *args, bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"--footprints {tmp_path / 'gone.gpkg'}: file not found" in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("journal", [b"{}", b"", b"\xff\xfe", b'{"version": 1}'])
def test_a_forged_journal_never_licenses_overwriting(tmp_path, bundle, journal):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    assert infer(str(scene), "-o", str(out), bundle=bundle).exit_code == 0
    (out / ".city.journal.json").write_bytes(journal)
    before = snapshot(out)
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{out / '.city.journal.json'}: not the journal of a run that can be resumed" in (
        result.stderr
    )
    assert snapshot(out) == before
    assert infer(str(scene), "-o", str(out), "--restart", bundle=bundle).exit_code == 0
    assert not (out / ".city.journal.json").exists()


HOLD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from stmap.io.outdir import outdir_lock
    with outdir_lock(Path(sys.argv[1])):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_a_second_run_into_a_busy_outdir_is_refused_and_a_dead_ones_lock_is_not(tmp_path, bundle):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert holder.stdout.readline() == b"locked\n"
        result = infer(str(scene), "-o", str(out), bundle=bundle)
        assert result.exit_code == 2, result.output
        assert f"-o {out}: OUTDIR is in use by PID {holder.pid} (started " in result.stderr
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays behind
        holder.wait()
    assert (out / LOCK_FILE).exists()
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert result.exit_code == 0, result.output
    assert not (out / LOCK_FILE).exists()


def test_names_are_checked_or_made_safe():
    for good in ("city", "Kahramanmaraş 2023-02-07", "_x", "S2A_MSIL2A.v1"):
        assert name_problem(good) is None and check_name(good, "x") == good
        assert safe_name(good) == good
    for bad in ("../x", "a/b", "-x", ".x", "x!", "x;y", "a\tb", "\udcff", "x ", "", "é" * 101):
        assert name_problem(bad) is not None
        assert name_problem(safe_name(bad)) is None


@pytest.mark.parametrize("planted", ["city_damage.tif", ".city.journal.json", ".city.staging"])
def test_a_link_planted_in_outdir_cannot_redirect_a_write(tmp_path, bundle, planted):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / planted).symlink_to(victim)
    result = infer(str(scene), "-o", str(out), "--restart", bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{out / planted}: an output path outside -o {out}" in result.stderr
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("link", ["symbolic", "hard"])
def test_a_link_planted_as_the_lock_file_is_refused_and_its_target_kept(tmp_path, bundle, link):
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / LOCK_FILE).symlink_to(victim) if link == "symbolic" else os.link(victim, out / LOCK_FILE)
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert result.exit_code == 2, result.output
    assert f"{out / LOCK_FILE}: " in result.stderr and "remove it" in result.stderr
    assert victim.read_text() == "precious"


def test_a_link_planted_under_a_temporary_name_is_not_written_through(tmp_path, bundle):
    """The journal is replaced atomically through ``..city.journal.json.tmp`` in OUTDIR."""
    scene = write_raster(tmp_path / "city.tif", smooth_image(64, 64))
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (out / "..city.journal.json.tmp").symlink_to(victim)
    result = infer(str(scene), "-o", str(out), bundle=bundle)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "precious"


def test_a_remote_files_name_is_made_safe_a_local_ones_is_checked():
    """A URL's file cannot be renamed by the user: its name is made safe, not refused."""
    assert output_name("a%20b", "/vsicurl/https://example.org/a%20b.tif") == "a_20b"
    with pytest.raises(InputError, match=r"a%20b.tif: its name 'a%20b' cannot name"):
        output_name("a%20b", "/data/a%20b.tif")

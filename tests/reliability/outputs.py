"""What "the same outputs" means for `stmap infer`, and the test data the reliability tests share.

The outputs are those of an uninterrupted reference run of the same command.
Rasters: the same pixels, georeferencing, nodata and bytes. Vectors: the same set
of geometries (GeoPackages carry timestamps, so their bytes differ between runs).
The summary: the same fields and counts; the report: complete (both hold timings).
The viewer's tile folder: the same files with the same bytes. Anything else (the
quicklook): the same bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import shapely

from stmap.io.vectors import read_vector
from stmap.runtime.journal import Journal
from tests.reliability.killpoints import run_stmap

STEM = "city"
# --workers 1 fixes the order of calls, so that a kill point means the same moment in every run.
RUN_OPTIONS = ("--block-size", "512", "--batch-size", "8", "--workers", "1", "--device", "cpu")


def infer_args(scene: Path, out: Path, bundle: Path, *extra: str) -> list[str]:
    """`stmap infer` of ``scene`` into ``out`` as every reliability test runs it."""
    return ["infer", str(scene), "-o", str(out), "--model", str(bundle), *RUN_OPTIONS, *extra]


def geometry_set(path: Path) -> list[bytes]:
    """The geometries of a vector file, normalised and sorted: comparable as a set."""
    geometries = shapely.normalize(read_vector(path).geometries)
    return sorted(shapely.to_wkb(geometries))


def assert_same_raster(path: Path, reference: Path) -> None:
    """Same pixels, shape, dtype, nodata, CRS and transform, and the same bytes."""
    with rasterio.open(path) as got, rasterio.open(reference) as want:
        assert (got.shape, got.dtypes, got.nodata) == (want.shape, want.dtypes, want.nodata)
        assert (got.crs, got.transform) == (want.crs, want.transform), f"{path}: georeferencing"
        assert np.array_equal(got.read(), want.read()), f"{path}: pixels differ"
    assert path.read_bytes() == reference.read_bytes(), f"{path}: same pixels, other bytes"


def assert_same_output(path: Path, reference: Path) -> None:
    """``path`` is a complete copy of the reference run's output of the same name."""
    if reference.is_dir():  # the viewer's tile pyramid: the same files, the same bytes
        files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
        assert sorted(p.relative_to(path) for p in path.rglob("*") if p.is_file()) == files
        for name in files:
            assert (path / name).read_bytes() == (reference / name).read_bytes(), path / name
    elif path.suffix == ".tif":
        assert_same_raster(path, reference)
    elif path.suffix == ".gpkg":
        assert geometry_set(path) == geometry_set(reference), f"{path}: geometries differ"
    elif path.suffix == ".html":
        assert path.read_text().rstrip().endswith("</html>"), f"{path}: incomplete"
    elif path.suffix == ".json":
        got, want = json.loads(path.read_text()), json.loads(reference.read_text())
        assert got.keys() == want.keys(), f"{path}: fields differ"
        for key in ("pixels", "valid_pixels", "damaged_pixels", "damaged_polygons", "blocks"):
            assert got[key] == want[key], f"{path}: {key} differs"
    else:
        assert path.read_bytes() == reference.read_bytes(), f"{path}: bytes differ"


def assert_outputs_complete(out: Path, reference: Path) -> None:
    """Every output is there and equals the reference; no work file is left behind."""
    names = sorted(p.name for p in reference.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names
    for name in names:
        assert_same_output(out / name, reference / name)


def assert_nothing_half_written(out: Path, reference: Path) -> None:
    """Whatever carries a final name is complete; everything else is a hidden work file."""
    if not out.exists():
        return
    for path in out.iterdir():
        if (reference / path.name).exists():
            assert_same_output(path, reference / path.name)
        else:
            assert path.name.startswith("."), f"{path}: neither an output nor a hidden work file"


def journalled_blocks(out: Path) -> int:
    """Blocks the journal in ``out`` holds as finished (0 without a journal)."""
    journal = Journal.load(out / f".{STEM}.journal.json")
    return len(journal.blocks) if journal else 0


def assert_resumes(out: Path, args: list[str], reference: Path, log: Path) -> None:
    """The same command finishes the job, from the blocks the journal kept."""
    kept = journalled_blocks(out)
    code = run_stmap([*args, "--json"], log)
    assert code == 0, log.read_text()
    assert_outputs_complete(out, reference)
    summary = json.loads((out / f"{STEM}_summary.json").read_text())
    assert summary["resumed_blocks"] == kept, "journalled blocks must not be computed again"

"""What counts as a URL, a GDAL virtual path, a remote path; and which names outputs take."""

from __future__ import annotations

import pytest

from stmap.errors import InputError
from stmap.io.outdir import check_name, name_problem, output_name, read_paths, safe_name
from stmap.io.paths import check_input_path, is_gdal_virtual, is_remote, is_url, is_virtual

# path → (is_url, is_gdal_virtual, is_virtual, is_remote)
PATHS = {
    "/vsicurl/https://h/a.tif": (False, True, True, True),
    "/vsicurl?url=https%3A%2F%2Fh%2Fa.tif": (False, True, True, True),
    "/vsicurl_streaming/https://h/a.tif": (False, True, True, True),
    "/vsis3/bucket/a.tif": (False, True, True, True),
    "/vsiaz/container/a.tif": (False, True, True, True),
    "/vsizip//vsicurl/https://h/a.zip/a.tif": (False, True, True, True),
    "/vsizip/vsis3/bucket/a.zip/a.tif": (False, True, True, True),
    "/vsizip/local.zip/a.tif": (False, True, True, False),
    "/vsizip/data/vsis3stuff.zip/a.tif": (False, True, True, False),
    "/vsimem/a.tif": (False, True, True, False),
    "s3://bucket/key.tif": (True, False, True, True),
    "https://h/y.tif?token=1": (True, False, True, True),
    "ftp://h/a.tif": (True, False, True, True),
    "C:\\x.tif": (False, False, False, False),
    "C://x.tif": (False, False, False, False),
    "./a://b": (False, False, False, False),
    "data/city.tif": (False, False, False, False),
    "/data/vsis3/a.tif": (False, False, False, False),
}


@pytest.mark.parametrize(("path", "expected"), PATHS.items())
def test_each_kind_of_path_is_told_apart(path: str, expected: tuple[bool, ...]) -> None:
    assert (is_url(path), is_gdal_virtual(path), is_virtual(path), is_remote(path)) == expected


def test_a_local_path_holding_colon_slashes_is_checked_like_any_local_file(tmp_path) -> None:
    """It was taken for a URL: never stat-ed, hashed or listed as an input."""
    (tmp_path / "a:").mkdir()
    present, missing = tmp_path / "a:" / "b.tif", f"{tmp_path}/a://missing.tif"
    present.write_bytes(b"x")
    with pytest.raises(InputError, match="file not found"):
        check_input_path(missing)
    assert present in read_paths([f"{tmp_path}/a://b.tif"])  # never written over


def test_a_remote_name_the_user_cannot_change_is_made_safe_not_refused() -> None:
    assert output_name("a!b", "ftp://h/a!b.tif") == safe_name("a!b") == "a_b"
    assert output_name("a!b", "/vsis3/bucket/a!b.tif") == "a_b"
    with pytest.raises(InputError, match="cannot name the outputs"):
        output_name("a!b", "/data/a!b.tif")


def test_a_name_that_is_not_utf8_is_refused_saying_so() -> None:
    """A file name of Latin-1 bytes (``\\udce9``) was refused as "it holds '\\udce9'"."""
    assert name_problem("caf\udce9") == "it is not valid UTF-8"
    with pytest.raises(InputError, match="not valid UTF-8"):
        check_name("caf\udce9", "/data/caf\udce9.tif")

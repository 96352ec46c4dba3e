"""What an input path may be before anything opens it: a regular file, a GDAL virtual
path (``/vsi...``) or a URL, named in UTF-8.

Opening a FIFO blocks until a writer appears, a device never ends and a directory or
socket makes GDAL and OGR fail in ways that do not name the problem, so every input
is ``os.stat``-ed first. Names that are not valid UTF-8 cannot be written into the
outputs (GeoPackage layers, JSON summaries), so they are refused up front too.
"""

from __future__ import annotations

import os
import re
import stat

from stmap.errors import InputError

_KINDS = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)
# GDAL's network file systems (https://gdal.org/user/virtual_file_systems.html), as a
# path's first or a chained component: /vsicurl/..., /vsizip//vsis3/..., /vsicurl?url=
NETWORK_FILE_SYSTEMS = ("curl", "s3", "gs", "az", "adls", "oss", "swift", "hdfs", "webhdfs")
_NETWORK = re.compile(rf"/vsi(?:{'|'.join(NETWORK_FILE_SYSTEMS)})(?:_streaming)?(?:[/?]|$)")
# A URL's scheme (RFC 3986) and "://" at the start; one letter is a Windows drive (C://x).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")


def printable(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be printed or written (undecodable bytes escaped)."""
    try:
        return os.fsencode(path).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that no file system byte stands for
        return os.fspath(path).encode("utf-8", "backslashreplace").decode("utf-8")


def is_url(text: str) -> bool:
    """``text`` starts with a URL scheme and ``://`` (``https://h/a.tif``, ``s3://b/k``).

    Only at the start: ``./a://b`` is a local path, ``/vsicurl/https://...`` a GDAL one.
    """
    return _URL.match(text) is not None


def is_gdal_virtual(text: str) -> bool:
    """A GDAL virtual file system path (``/vsi...``): local archives (``/vsizip/``,
    ``/vsitar/``), memory (``/vsimem/``) and network ones alike."""
    return text.startswith("/vsi")


def is_virtual(text: str) -> bool:
    """A GDAL virtual path or a URL: nothing on the local file system to ``os.stat``,
    hash or make absolute (a ``/vsizip/`` archive's member included)."""
    return is_gdal_virtual(text) or is_url(text)


def is_remote(text: str) -> bool:
    """Read over the network: a URL, or a GDAL path through a network file system, first
    or chained (``/vsicurl/``, ``/vsis3/``, ``/vsizip//vsicurl/...``). Such a path's
    folder must not be listed (a request each); ``/vsizip/local.zip/a.tif`` is not remote.
    """
    return is_url(text) or (is_gdal_virtual(text) and _NETWORK.search(text) is not None)


def is_utf8(text: str) -> bool:
    """``text`` encodes as UTF-8: no lone surrogate, which is how Python holds the bytes
    of a file name that are not UTF-8. The outputs record only such text."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_utf8(
    path: str | os.PathLike[str], error: type[InputError] = InputError, *, what: str = ""
) -> str:
    """``path`` as text when its name is valid UTF-8 (GeoPackage layers, JSON summaries
    and HTML reports carry it); else ``error`` naming it. Any other character is
    allowed: a path names an input or OUTDIR, not an output (``outdir.check_name``)."""
    text = os.fspath(path)
    if not is_utf8(text):
        raise error(
            f"{what}{printable(text)}: the name is not valid UTF-8, so the outputs could not "
            "record it; rename it"
        ) from None
    return text


def check_input_path(
    path: str | os.PathLike[str],
    error: type[InputError] = InputError,
    *,
    what: str = "",
    directory: bool = False,
) -> str:
    """``path`` as text when it may be opened; else ``error`` naming it and the problem.

    what: prefixed to the message (e.g. ``"--footprints "``).
    directory: a directory is what is expected (a bundle folder), not a refusal.
    """
    text = check_utf8(path, error, what=what)
    name = f"{what}{printable(text)}"
    if is_virtual(text):
        return text
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        raise error(f"{name}: file not found") from None
    except OSError as exc:
        raise error(f"{name}: cannot be read ({exc.strerror})") from None
    if stat.S_ISREG(mode) or (directory and stat.S_ISDIR(mode)):
        return text
    if stat.S_ISDIR(mode):
        raise error(f"{name}: is a directory, a file is expected here")
    kind = next((label for test, label in _KINDS if test(mode)), "not a regular file")
    raise error(f"{name}: is {kind}, not a regular file; give a file, a /vsi path or a URL")

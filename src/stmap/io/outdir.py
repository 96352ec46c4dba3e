"""OUTDIR's guards: safe output names, writes only inside OUTDIR and never over an
input, and one run at a time.

Output names come from inputs (file stems, STAC item ids, ``--mosaic NAME``) and
name files and GeoPackage layers, so they are held to a set every consumer takes:
letters, digits, ``_``, ``-``, ``.`` and inner spaces, starting with a letter, a
digit or ``_`` (GeoPackage refuses a layer starting with ``-`` and other signs; a
leading ``.`` would hide outputs among the work files; GDAL reads meaning into
``!``, ``;`` and others). A name the user chose (a file's stem, ``--mosaic``) that
breaks the rule is refused, naming the fix; a STAC item id or the name of a remote
file, which the user did not write and cannot change, is made safe instead (unsafe
characters become ``_``).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import stat
import time
from collections.abc import Collection, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from stmap.errors import InputError
from stmap.io.paths import is_utf8, is_virtual
from stmap.io.sources import dataset_files
from stmap.io.writers import prepare_output_dir, remove

NAME_BYTES = 200  # with the longest suffix (".S_damage_prob.partial.tif") under NAME_MAX (255)
LOCK_FILE = ".stmap.lock"
_SAFE = re.compile(r"[^\W_]|[_\-. ]")  # one allowed character: a letter, a digit, _ - . or space
_held: dict[Path, int] = {}  # OUTDIRs this process has locked → how many times


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name outputs, or None when it can: a stricter rule than a
    path's (``paths.check_utf8``), which it builds on."""
    if not name:
        return "it is empty"
    if not is_utf8(name):
        return "it is not valid UTF-8"
    if len(name.encode("utf-8", "surrogatepass")) > NAME_BYTES:
        return f"it is longer than {NAME_BYTES} bytes"
    bad = sorted({c for c in name if not _safe(c)})
    if bad:
        return f"it holds {', '.join(map(repr, bad))}"
    if not (name[0].isalnum() or name[0] == "_"):
        return f"it starts with {name[0]!r}"
    if name != name.strip():
        return "it ends with a space"
    return None


def check_name(name: str, what: str) -> str:
    """``name`` when it can name outputs; else an InputError naming ``what`` and the fix."""
    problem = name_problem(name)
    if problem is not None:
        raise InputError(
            f"{what}: its name {show_name(name)} cannot name the outputs ({problem}); use letters, "
            "digits, _ - . and inner spaces, starting with a letter, a digit or _"
        )
    return name


def show_name(name: str) -> str:
    """A name for a message: escaped, and cut when long (it may be megabytes)."""
    return repr(name) if len(name) <= 80 else repr(name[:80]) + "…"


def output_name(name: str, href: str) -> str:
    """The output name of a scene read from ``href``: ``name`` checked where the user can
    rename the file (a local path), made safe where they cannot (a URL, a /vsi path)."""
    return safe_name(name) if is_virtual(href) else check_name(name, href)


def safe_name(name: str) -> str:
    """``name`` made safe to name outputs: unsafe runs become ``_``, long names are cut
    (with a digest of the whole, so that two long names stay apart)."""
    safe = "".join(c if _safe(c) else "_" for c in name).strip()
    if safe and not (safe[0].isalnum() or safe[0] == "_"):
        safe = "_" + safe
    if len(safe.encode("utf-8", "surrogatepass")) > NAME_BYTES:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
        cut = safe.encode("utf-8", "surrogatepass")[: NAME_BYTES - 9].decode("utf-8", "ignore")
        safe = f"{cut.rstrip()}-{digest}"
    return safe or "_"


def read_paths(hrefs: Iterable[str | None]) -> list[Path]:
    """The local files behind ``hrefs``: each path, and for a raster every file GDAL reads
    with it (sidecars, a VRT's sources). Remote and virtual paths have none."""
    paths: list[Path] = []
    for href in hrefs:
        if not href or is_virtual(href) or "\x00" in href:
            continue
        paths.append(Path(href))
        if os.path.isfile(href):
            paths += dataset_files(href)
    return paths


def _safe(char: str) -> bool:
    return _SAFE.fullmatch(char) is not None and char.isprintable()


def check_writes(outdir: Path, writes: Iterable[Path], reads: Collection[Path]) -> None:
    """Refuse, before anything is written, a path outside ``outdir``, one written twice,
    or one the run reads (the same path, a link to it, or the same file)."""
    root = outdir.resolve()
    read_targets = {path.resolve() for path in reads}
    read_files = {_inode(path) for path in reads} - {None}
    seen: set[Path] = set()
    for path in writes:
        target = path.resolve()
        if not target.is_relative_to(root) or target == root:
            raise InputError(
                f"{path}: an output path outside -o {outdir} (it resolves to {target}); "
                "remove what lies there, or rename the input it comes from"
            )
        if target in seen:
            raise InputError(
                f"{path}: two outputs of this run would have this path; rename one of the "
                "inputs, or map them separately"
            )
        seen.add(target)
        if target in read_targets or _inode(target) in read_files:
            raise InputError(
                f"{path}: an input of this run would be overwritten by an output; "
                "choose another -o, or move the input"
            )


def _inode(path: Path) -> tuple[int, int] | None:
    """(device, inode) of an existing file: a hard link is the same file by another name."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


@contextmanager
def outdir_lock(outdir: Path) -> Iterator[Path]:
    """Hold OUTDIR for the run's life: a second run into it is refused, naming this one.

    An advisory lock (flock) on ``OUTDIR/.stmap.lock``: the kernel drops it when the
    process ends, however it ends, so a lock file left by a killed run never blocks.
    Creates OUTDIR when missing (and removes it again if the run leaves it empty);
    re-entrant within one process.
    """
    root = outdir.resolve()
    if root in _held:
        _held[root] += 1
        try:
            yield outdir
        finally:
            _held[root] -= 1
        return
    created = not outdir.exists()
    prepare_output_dir(outdir)
    path = outdir / LOCK_FILE
    try:
        fd = _acquire(path, outdir)
    except BaseException:
        if created:
            _remove_if_empty(outdir)
        raise
    _held[root] = 1
    try:
        yield outdir
    finally:
        del _held[root]
        remove(path)  # while still locked: the next run creates a fresh file
        os.close(fd)
        if created:
            _remove_if_empty(outdir)


def _acquire(path: Path, outdir: Path) -> int:
    """The locked file descriptor of ``path``; InputError when another process holds it,
    or when something else lies under its name (a link planted there must not make
    stmap truncate the file it points to)."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            raise InputError(
                f"{path}: cannot open OUTDIR's lock file ({exc.strerror or exc}); remove it, "
                "or choose another -o"
            ) from exc
        try:
            _check_lock_file(fd, path)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise InputError(
                f"-o {outdir}: OUTDIR is in use by {holder}; wait for that run to end, "
                "or choose another -o"
            ) from None
        except FileNotFoundError:
            same = False  # its holder removed it as we opened it: lock the new one
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):  # a file system without locks
                raise InputError(
                    f"{path}: cannot lock OUTDIR ({exc.strerror or exc}); choose another -o"
                ) from exc
            raise
        if same:
            os.ftruncate(fd, 0)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            os.pwrite(fd, f"{os.getpid()} {stamp}\n".encode(), 0)
            return fd
        os.close(fd)


def _check_lock_file(fd: int, path: Path) -> None:
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode) or status.st_nlink != 1:
        raise InputError(
            f"{path}: not a lock file of stmap's (not a plain file, or a link to another "
            "file); remove it, or choose another -o"
        )


def _holder(fd: int) -> str:
    """ "PID n (started t)" from a lock file, whatever bytes it holds."""
    words = os.pread(fd, 200, 0).decode("ascii", "replace").split()
    pid = words[0] if words and words[0].isdigit() else "?"
    started = words[1] if len(words) > 1 and re.fullmatch(r"[\w:+-]{1,40}", words[1]) else "?"
    return f"PID {pid} (started {started})"


def _remove_if_empty(folder: Path) -> None:
    with suppress(OSError):  # not empty: something was made in it
        folder.rmdir()

"""stmap.memory: a process keeps large freed buffers for reuse instead of handing
them back and faulting them in again for the next model forward."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from stmap.memory import ENVIRONMENT, MMAP_THRESHOLD

# In a fresh process: allocate and free a 40 MB buffer (a CPU forward's activations
# are this size), then report how many bytes glibc holds in mmapped blocks after a
# second allocation of the same size. Tuned, the buffer comes from the heap (0).
PROBE = """
import ctypes, sys
from stmap.memory import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
libc = ctypes.CDLL(None)
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
        "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 40 << 20
libc.free(libc.malloc(size))
block = libc.malloc(size)
print(libc.mallinfo2().hblkhd)
libc.free(block)
"""


def _glibc_with_mallinfo2() -> bool:
    try:
        ctypes.CDLL(None).mallinfo2  # noqa: B018 - glibc 2.33 and later
    except (OSError, AttributeError):
        return False
    return True


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="needs glibc 2.33+ (mallinfo2)")
@pytest.mark.parametrize(("mode", "mmapped"), [("default", True), ("tuned", False)])
def test_a_large_buffer_is_kept_for_reuse_once_tuned(mode: str, mmapped: bool):
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env, check=True
    )
    held_in_mmaps = int(out.stdout)
    assert (held_in_mmaps >= 40 << 20) is mmapped, out.stdout
    assert MMAP_THRESHOLD > 40 << 20  # the probe's buffer is one the settings keep

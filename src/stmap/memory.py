"""The C allocator's settings for a process that maps cities on the CPU.

glibc hands large freed blocks back to the system at once: a block above its
mmap threshold (which it adapts, but never past 32 MB) is unmapped when freed,
and the heap's top is trimmed past 128 KB. A model forward on the CPU allocates
activations of tens of MB (the demo model: 32 tiles × 16 channels × 128² floats,
34 MB) and frees them, so every forward faulted fresh zeroed pages in: on a
2-core VM the demo model ran at 870 tiles/s where the same process, once those
blocks were kept, ran at 2200 (a 4096² city: 2.2 → 1.5 s end to end). Keeping
blocks up to 64 MB in the heap and trimming only past 128 MB free removes that
cost; at most two arenas keep a long run's memory from creeping up with every
thread that ever allocated (benchmarks/results/cpu_soak.md).

The settings are the environment variables glibc reads at start
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``MALLOC_ARENA_MAX``),
which the container image and Ray workers set; ``tune_allocator`` applies the
same at run time for a process started without them, leaving alone any the user
has set.
"""

from __future__ import annotations

import ctypes
import os

MMAP_THRESHOLD = 64 << 20  # blocks up to this size come from the heap and are reused
TRIM_THRESHOLD = 128 << 20  # free heap kept before any is handed back
ARENA_MAX = 2
# glibc's mallopt() parameters, and the environment variables that set them at start.
_SETTINGS = (
    (-3, MMAP_THRESHOLD, "MALLOC_MMAP_THRESHOLD_"),  # M_MMAP_THRESHOLD
    (-1, TRIM_THRESHOLD, "MALLOC_TRIM_THRESHOLD_"),  # M_TRIM_THRESHOLD
    (-8, ARENA_MAX, "MALLOC_ARENA_MAX"),  # M_ARENA_MAX
)
ENVIRONMENT = {name: str(value) for _, value, name in _SETTINGS}


def tune_allocator() -> bool:
    """Apply the settings to this process; False where the C library is not glibc.

    A setting whose environment variable is set is left as the user chose it.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(parameter, value) == 1
        for parameter, value, name in _SETTINGS
        if name not in os.environ
    )

"""Position-hashed noise: every value is a pure function of (seed, global pixel position).

This is what makes a synthetic city independent of how it is cut into render blocks:
no random stream is ever consumed in block order. Lattices are evaluated on whole
integer coordinates and interpolated with separable weights, so a pixel gets bit-for-bit
the same value whichever window it is computed in.
"""

from __future__ import annotations

import numpy as np

_M1 = np.uint32(0x7FEB352D)
_M2 = np.uint32(0x846CA68B)
_GOLD = np.uint32(0x9E3779B1)


def mix32(x: np.ndarray) -> np.ndarray:
    """Avalanche hash of uint32 values (Wellons' lowbias32); wraps, never warns."""
    with np.errstate(over="ignore"):  # 0-d inputs become scalars, which warn on wrap
        x = x ^ (x >> np.uint32(16))
        x = x * _M1
        x = x ^ (x >> np.uint32(15))
        x = x * _M2
        return x ^ (x >> np.uint32(16))


def key(seed: int, stream: int) -> np.uint32:
    """One uint32 key per (seed, stream), so that streams never share values."""
    return mix32(np.array([(seed * 0x9E3779B1 + stream * 0x85EBCA77) & 0xFFFFFFFF], np.uint32))[0]


def hash2(ix: np.ndarray, iy: np.ndarray, k: np.uint32) -> np.ndarray:
    """uint32 hash of integer lattice points; ix and iy broadcast (e.g. (1, W) and (H, 1))."""
    hy = mix32(np.asarray(iy).astype(np.int64).astype(np.uint32) ^ k)
    with np.errstate(over="ignore"):
        gx = np.asarray(ix).astype(np.int64).astype(np.uint32) * _GOLD
    return mix32(hy ^ gx)


def unit(h: np.ndarray, byte: int = 0) -> np.ndarray:
    """One byte of a hash as float32 in [0, 1): four independent uniforms per hash."""
    return ((h >> np.uint32(8 * byte)) & np.uint32(0xFF)).astype(np.float32) * np.float32(1 / 256)


def unit24(h: np.ndarray) -> np.ndarray:
    """The top 24 bits of a hash as float64 in [0, 1) (for layout decisions)."""
    return (h >> np.uint32(8)).astype(np.float64) * (1.0 / (1 << 24))


def _axis(lo: int, n: int, scale: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Lattice cell index (relative to the first cell) and smoothstep weight per pixel."""
    g = np.arange(lo, lo + n, dtype=np.int64)
    cell = np.floor_divide(g, scale)
    t = ((g - cell * scale).astype(np.float32) + np.float32(0.5)) / np.float32(scale)
    w = t * t * (np.float32(3) - np.float32(2) * t)
    first = int(cell[0])
    return (cell - first).astype(np.intp), w, first


def value_noise(row0: int, col0: int, h: int, w: int, scale: int, k: np.uint32) -> np.ndarray:
    """Smooth value noise in [0, 1) with feature size `scale` px over a window, (h, w) float32.

    Lattice values sit on multiples of `scale` in global pixel coordinates; the separable
    interpolation evaluates the same operands in the same order for a pixel in any window.
    """
    cy, wy, fy = _axis(row0, h, scale)
    cx, wx, fx = _axis(col0, w, scale)
    ly = np.arange(fy, fy + int(cy[-1]) + 2, dtype=np.int64)[:, None]
    lx = np.arange(fx, fx + int(cx[-1]) + 2, dtype=np.int64)[None, :]
    lattice = unit24(hash2(lx, ly, k)).astype(np.float32)
    along_x = lattice[:, cx] * (np.float32(1) - wx) + lattice[:, cx + 1] * wx
    return along_x[cy] * (np.float32(1) - wy)[:, None] + along_x[cy + 1] * wy[:, None]


def fbm(
    row0: int, col0: int, h: int, w: int, scale: int, k: np.uint32, octaves: int = 3
) -> np.ndarray:
    """Fractal sum of value noise (octaves halve the scale), normalised to [0, 1), float32."""
    total = np.zeros((h, w), np.float32)
    amp, norm = 1.0, 0.0
    for o in range(octaves):
        s = max(1, scale >> o)
        total += np.float32(amp) * value_noise(row0, col0, h, w, s, mix32(k + np.uint32(o)))
        norm += amp
        amp *= 0.5
    return total * np.float32(1 / norm)


def white(row0: int, col0: int, h: int, w: int, k: np.uint32) -> np.ndarray:
    """One uint32 hash per pixel of the window, (h, w) uint32 (slice it with `unit`)."""
    iy = np.arange(row0, row0 + h, dtype=np.int64)[:, None]
    ix = np.arange(col0, col0 + w, dtype=np.int64)[None, :]
    return hash2(ix, iy, k)


def point_noise(x: np.ndarray, y: np.ndarray, scale: float, k: np.uint32) -> np.ndarray:
    """Smooth value noise sampled at arbitrary float points (layout use), float64 in [0, 1)."""
    gx, gy = np.asarray(x, np.float64) / scale, np.asarray(y, np.float64) / scale
    ix, iy = np.floor(gx), np.floor(gy)
    tx, ty = gx - ix, gy - iy
    tx, ty = tx * tx * (3 - 2 * tx), ty * ty * (3 - 2 * ty)
    ix, iy = ix.astype(np.int64), iy.astype(np.int64)

    def lat(dx: int, dy: int) -> np.ndarray:
        return unit24(hash2(ix + dx, iy + dy, k))

    top = lat(0, 0) * (1 - tx) + lat(1, 0) * tx
    bottom = lat(0, 1) * (1 - tx) + lat(1, 1) * tx
    return top * (1 - ty) + bottom * ty

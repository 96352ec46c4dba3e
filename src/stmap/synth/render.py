"""Render one window of a laid-out city to RGB and damage labels.

`render_window` is a pure function of the layout and the window: every pixel is computed
from its global position, the features whose boxes reach it (in id order, which is
painter's order) and position-hashed noise. A window therefore renders bit-for-bit the
same pixels as any other window covering them, which is what lets the city stream in
blocks of any size with no seams. Blur and JPEG need neighbours, so each window is
rendered with a margin (aligned to the 8-pixel JPEG grid) and cropped.

Painter's order: ground and streets -> ground props (cars, tents, piles, pitches) ->
debris heaps and slabs -> one shadow pass (buildings, trees, minarets, props; shadows
never darken twice) -> trees -> facades and roofs -> roof clutter -> dust -> sensor
(haze, colour balance, blur, noise, JPEG).

Labels: 1 on the intact footprint of every damaged building (soft-storey, partial and
collapsed alike) and on its debris heap where the heap lies outside the footprint and
is still visible (not under a standing roof); 0 elsewhere, including cleared debris
piles along roads, which are not buildings.
"""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft
from scipy.ndimage import gaussian_filter1d

from stmap.synth import layout as lay
from stmap.synth import noise
from stmap.synth.geometry import rect_extent

PAD = 16  # render margin, px: covers the blur kernel and whole 8x8 JPEG blocks
_F = np.float32


# Named noise fields: (stream id, maker(row0, col0, h, w, key) -> (h, w) array).
_FIELDS = {
    "hash": (1000, noise.white),  # one uint32 per pixel: four grains
    "fine": (1001, lambda r, c, h, w, k: noise.value_noise(r, c, h, w, 2, k)),
    "clump": (1002, lambda r, c, h, w, k: noise.value_noise(r, c, h, w, 3, k)),
    "mid": (1003, lambda r, c, h, w, k: noise.fbm(r, c, h, w, 12, k, 2)),
    "low": (1004, lambda r, c, h, w, k: noise.fbm(r, c, h, w, 96, k, 2)),
    "haze": (1005, lambda r, c, h, w, k: noise.value_noise(r, c, h, w, 384, k)),
}


class _Canvas:
    """A padded window: image, label, shadow mask and noise fields in global coordinates."""

    def __init__(self, row0: int, col0: int, h: int, w: int, seed: int) -> None:
        self.row0, self.col0, self.h, self.w, self.seed = row0, col0, h, w, seed
        self.img = np.zeros((h, w, 3), _F)
        self.label = np.zeros((h, w), np.uint8)
        self.shadow = np.zeros((h, w), bool)
        self.xs = col0 + np.arange(w, dtype=np.float64) + 0.5
        self.ys = row0 + np.arange(h, dtype=np.float64) + 0.5
        self._cache: dict[str, np.ndarray] = {}

    def field(self, name: str) -> np.ndarray:
        """A named noise field over the canvas (see _FIELDS), computed once."""
        if name not in self._cache:
            stream, make = _FIELDS[name]
            key = noise.key(self.seed, stream)
            self._cache[name] = make(self.row0, self.col0, self.h, self.w, key)
        return self._cache[name]

    def grain(self, byte: int) -> np.ndarray:
        """Per-pixel uniform in [0, 1), four independent ones per hash."""
        return noise.unit(self.field("hash"), byte)

    def box(self, x0: float, y0: float, x1: float, y1: float):
        """Slices and pixel-centre coordinates of a box clipped to the canvas, or None."""
        c0 = max(int(np.floor(x0)) - self.col0, 0)
        c1 = min(int(np.ceil(x1)) - self.col0, self.w)
        r0 = max(int(np.floor(y0)) - self.row0, 0)
        r1 = min(int(np.ceil(y1)) - self.row0, self.h)
        if c1 <= c0 or r1 <= r0:
            return None
        return (slice(r0, r1), slice(c0, c1)), self.xs[None, c0:c1], self.ys[r0:r1, None]


def render_window(
    city: lay.CityLayout, row0: int, col0: int, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:
    """RGB (h, w, 3) uint8 and labels (h, w) uint8 of the window at (row0, col0)."""
    r0 = (row0 - PAD) // 8 * 8
    c0 = (col0 - PAD) // 8 * 8
    r1 = -(-(row0 + h + PAD) // 8) * 8
    c1 = -(-(col0 + w + PAD) // 8) * 8
    cv = _Canvas(r0, c0, r1 - r0, c1 - c0, city.seed)
    win = (r0, c0, r1, c1)
    ids = {k: idx.query(*win) for k, idx in city.index.items()}
    style = city.style

    _ground(cv, city)
    props = ids["props"]
    layer = lay.PROP_LAYER[city.props.kind[props]]
    _props(cv, city, props[layer == 0])
    _debris(cv, city, ids["buildings"])
    _props(cv, city, props[layer == 1])
    _cast_shadows(cv, city, ids)
    cv.img *= np.where(cv.shadow[..., None], np.array(style.shadow_rgb, _F), _F(1))
    _trees(cv, city, ids["trees"])
    _standing(cv, city, ids["buildings"])
    _props(cv, city, props[layer == 2])
    _footprints(cv, city, ids["buildings"])
    _dust(cv, city, ids["buildings"])
    rgb = _sensor(cv, city)
    crop = (slice(row0 - r0, row0 - r0 + h), slice(col0 - c0, col0 - c0 + w))
    return rgb[crop], cv.label[crop]


# --------------------------------------------------------------------------- ground


# pixel classes of the ground pass
_BLOCK, _STREET, _TRACK, _WALK, _ARTERIAL = 0, 1, 2, 3, 4


def _ground(cv: _Canvas, city: lay.CityLayout) -> None:
    """Blocks, streets, sidewalks and arterials: a pure per-pixel function of position."""
    st, dist, gsd = city.style, city.districts, city.gsd
    h, w = cv.h, cv.w
    did, edge, present = _district_map(cv, dist, gsd)
    cls = np.empty((h, w), np.uint8)
    block = np.empty((h, w), np.int64)
    lu = np.zeros((h, w), _F)
    lv = np.zeros((h, w), _F)
    marking = np.zeros((h, w), bool)
    xs, ys = cv.xs.astype(_F), cv.ys.astype(_F)
    for d in present:
        # float32 is plenty for positions (< 0.01 px error) and halves memory traffic
        sel = None if did.ndim == 0 else np.flatnonzero(did.reshape(-1) == d)
        x, y = (xs[None, :], ys[:, None]) if sel is None else (xs[sel % w], ys[sel // w])
        c, s = _F(np.cos(dist.angle[d])), _F(np.sin(dist.angle[d]))
        u, v = x * c + y * s, y * c - x * s
        up, vp = slice(dist.u_ptr[d], dist.u_ptr[d + 1]), slice(dist.v_ptr[d], dist.v_ptr[d + 1])
        upos, uhw = dist.u_pos[up].astype(_F), dist.u_hw[up].astype(_F)
        vpos, vhw = dist.v_pos[vp].astype(_F), dist.v_hw[vp].astype(_F)
        i, du = _between(u, upos, uhw)
        j, dv = _between(v, vpos, vhw)
        street = (du < 0) | (dv < 0)
        walk = ~street & (np.minimum(du, dv) < dist.sidewalk[d])
        rural = dist.character[d] == lay.RURAL
        code = np.where(street, _TRACK if rural else _STREET, np.where(walk, _WALK, _BLOCK))
        _put(cls, sel, code)
        _put(block, sel, np.where(street | walk, -1, dist.block_ptr[d] + i * (len(vpos) - 1) + j))
        if rural:  # fields need the position inside their block
            _put(lu, sel, u - upos[i] - uhw[i])
            _put(lv, sel, v - vpos[j] - vhw[j])
        else:
            k = np.flatnonzero(street)
            on_street = [a.reshape(-1)[k] if sel is None else a[k] for a in (u, v, i, j, du, dv)]
            mark = _markings(*on_street, dist, up, vp, gsd)
            marking.reshape(-1)[k if sel is None else sel[k]] = mark
    if edge is not None:
        hw = dist.arterial_hw
        art = edge < hw
        walkway = ~art & (edge < hw + 3 / gsd)
        cls[art] = _ARTERIAL
        cls[walkway | (edge < 1.0 / gsd)] = _WALK  # sidewalks and the median
        block[art | walkway] = -1
        marking = (marking & ~(edge < hw + 3 / gsd)) | (art & (np.abs(edge - hw / 2) < 0.25 / gsd))
    rgb = np.array(
        [
            (0, 0, 0),
            st.asphalt,
            tuple(c * 1.12 for c in st.soil),
            st.sidewalk,
            tuple(c * 0.9 for c in st.asphalt),
        ],
        _F,
    )
    var = np.array([0, 0.2, 0.2, 0.1, 0.16], _F).take(cls)
    shade = _F(1) - var / _F(2) + var * np.where(cls == _WALK, cv.field("mid"), cv.field("low"))
    for ch in range(3):  # per-channel take: several times faster than rgb[cls]
        cv.img[..., ch] = rgb[:, ch].take(cls) * shade
    _blocks_ground(cv, city, block, lu, lv)
    cv.img[marking] = cv.img[marking] * _F(0.4) + _F(0.55)
    cv.img *= (_F(0.95) + _F(0.1) * cv.grain(0))[..., None]


def _put(arr: np.ndarray, sel, values) -> None:
    """Write values to the whole array (sel None) or to flat indices `sel`."""
    if sel is None:
        arr[:] = values
    else:
        arr.reshape(-1)[sel] = values


def _markings(u, v, i, j, du, dv, dist: lay.Districts, up, vp, gsd):
    """Street pixels that carry paint: dashed centre lines on main streets, zebra
    crossings where a street meets a junction. Cheap tests first, modulo on the few."""
    upos, vpos = dist.u_pos[up], dist.v_pos[vp]
    mark = np.zeros(len(u), bool)
    half = 0.3 / gsd
    for q, k, gap, ogap, pos, main, along in (
        (u, i, du, dv, upos, dist.u_main[up], v),
        (v, j, dv, du, vpos, dist.v_main[vp], u),
    ):
        near = (np.abs(q - pos[k]) < half) | (np.abs(q - pos[k + 1]) < half)
        near &= ogap > 0
        c = np.flatnonzero(near)
        line = k[c] + (np.abs(q[c] - pos[k[c] + 1]) < half)
        mark[c] |= main[line] & ((along[c] * gsd) % 6 < 3)
        c = np.flatnonzero((gap < 0) & (ogap > 0) & (ogap < 3 / gsd))
        mark[c] |= (q[c] * gsd) % 1.0 < 0.5
    return mark


def _district_map(cv: _Canvas, dist: lay.Districts, gsd: float):
    """District id per pixel (a scalar when one district covers the window), the
    distance to the district edge where an arterial may be drawn (None: nowhere), and
    the districts present.

    Districts are convex and the distance to a district's edge is concave inside it, so
    a square whose corners share a district and lie farther from its edge than an
    arterial reaches holds no edge pixel: the window, then each 16-pixel cell, is
    tested that way, and only pixels of mixed cells are located one by one.
    """
    reach = dist.arterial_hw + 3 / gsd + 2
    x0, y0 = cv.col0, cv.row0
    x1, y1 = x0 + cv.w, y0 + cv.h
    ids, edge = dist.locate(np.array([x0, x1, x0, x1]), np.array([y0, y0, y1, y1]), reach=2)
    if (ids == ids[0]).all() and edge.min() > reach:
        return np.int64(ids[0]), None, [int(ids[0])]
    S = 16
    gx = np.arange(x0 // S * S, x1 + S, S, dtype=np.float64)
    gy = np.arange(y0 // S * S, y1 + S, S, dtype=np.float64)
    ids, edge = dist.locate(gx[None, :], gy[:, None], reach=2)
    far = edge > reach
    first = ids[:-1, :-1]
    same = (
        (first == ids[1:, :-1])
        & (first == ids[:-1, 1:])
        & (first == ids[1:, 1:])
        & far[:-1, :-1]
        & far[1:, :-1]
        & far[:-1, 1:]
        & far[1:, 1:]
    )
    ci = ((cv.xs - gx[0]) // S).astype(np.intp)[None, :]
    cj = ((cv.ys - gy[0]) // S).astype(np.intp)[:, None]
    did = first[cj, ci]
    pixel_edge = np.full(did.shape, np.inf, _F)
    rr, cc = np.nonzero(~same[cj, ci])
    did[rr, cc], pixel_edge[rr, cc] = dist.locate(cv.xs[cc], cv.ys[rr])
    present = np.union1d(np.unique(ids), np.unique(did[rr, cc]))
    return did, pixel_edge, [int(d) for d in present if (did == d).any()]


def _between(q, pos, hw):
    """Index of the street line at or below q, and the signed gap to the nearest street
    edge (negative inside a street).

    Lines are more than a pixel apart, so a table over whole pixels plus one comparison
    finds the line (a searchsorted on every pixel is several times slower).
    """
    lo = int(np.floor(q.min()))
    table = np.searchsorted(pos, np.arange(lo, int(np.floor(q.max())) + 2), side="right") - 1
    table = np.clip(table, 0, len(pos) - 2)
    idx = table[(q - _F(lo)).astype(np.intp)]
    idx += (pos[idx + 1] <= q) & (idx < len(pos) - 2)
    far_edge, near_edge = pos + hw, pos - hw  # the far kerb of line k, the near kerb of k + 1
    return idx, np.minimum(q - far_edge[idx], near_edge[1:][idx] - q)


def _blocks_ground(cv, city, block, lu, lv) -> None:
    """Courtyards, gardens, lots and fields: two colours mixed by patchy noise."""
    inside = block >= 0
    if not inside.any():
        return
    blocks, st, gsd = city.blocks, city.style, city.gsd
    lo, hi = int(block[inside].min()), int(block.max()) + 1
    b = np.where(inside, block - lo, 0)  # index small per-window tables: fewer cache misses
    patch = cv.field("mid") + _F(0.35) * (cv.field("clump") - _F(0.5))
    t = np.clip((patch - (_F(1) - blocks.mix[lo:hi].take(b))) * _F(4) + _F(0.5), 0, 1)
    shade = _F(0.93) + _F(0.14) * cv.field("low")
    ga, gb = blocks.ground_a[lo:hi], blocks.ground_b[lo:hi]
    for ch in range(3):
        col = (ga[:, ch].take(b) * (_F(1) - t) + gb[:, ch].take(b) * t) * shade
        np.copyto(cv.img[..., ch], col, where=inside)
    fields = inside & (blocks.kind[lo:hi].take(b) == lay.FIELDS)
    if fields.any():
        fb = block[fields]
        width = blocks.parcel[fb]
        pu, pv = lu[fields], lv[fields]
        parcel = np.floor(pv / width).astype(np.int64)
        h = noise.hash2(parcel, fb, noise.key(city.seed, 60))
        crops = np.array(st.crops, _F)
        crop = crops[(noise.unit24(h) * len(crops)).astype(int)]
        along = np.where(noise.unit24(noise.mix32(h)) < 0.5, pu, pv)
        rows = _F(0.93) + _F(0.07) * np.sin(along * _F(2 * np.pi * gsd / 3.0))
        border = (pv - parcel * width) < 1.0
        cv.img[fields] = crop * (rows * np.where(border, _F(0.85), _F(1)))[:, None]


# --------------------------------------------------------------------------- shapes


def _local(X, Y, cx, cy, c, s):
    """Coordinates of pixel centres in a rotated frame centred on (cx, cy)."""
    dx, dy = X - cx, Y - cy
    return dx * c + dy * s, dy * c - dx * s


def _sweep(u, v, a, b, su, sv):
    """Rectangle [-a, a] x [-b, b] swept along (su, sv): mask and the highest t in [0, 1]
    at which the moving rectangle still covers the pixel (1 = its end position).
    Works on scalars or on per-pixel arrays alike."""
    lo = np.zeros(np.shape(u))
    hi = np.ones(np.shape(u))
    for q, half, d in ((u, a, su), (v, b, sv)):
        d = np.where(np.abs(d) < 1e-9, 1e-9, d)  # no motion along this axis
        t1, t2 = (q - half) / d, (q + half) / d
        lo = np.maximum(lo, np.minimum(t1, t2))
        hi = np.minimum(hi, np.maximum(t1, t2))
    return lo <= hi, hi


def _sweep_box(x, y, ex, ey, dx, dy):
    """Bounding box of a box of half extents (ex, ey) swept along (dx, dy)."""
    return (
        x - ex + np.minimum(dx, 0),
        y - ey + np.minimum(dy, 0),
        x + ex + np.maximum(dx, 0),
        y + ey + np.maximum(dy, 0),
    )


def _capsule(X, Y, x, y, dx, dy, r):
    """Disc of radius r swept from (x, y) along (dx, dy); scalars or per-pixel arrays."""
    px, py = X - x, Y - y
    ll = np.maximum(dx * dx + dy * dy, 1e-12)
    t = np.clip((px * dx + py * dy) / ll, 0, 1)
    return (px - t * dx) ** 2 + (py - t * dy) ** 2 <= r * r


def _batches(cv: _Canvas, x0, y0, x1, y1, max_pairs: int = 1 << 18):
    """Every canvas pixel of many small boxes, for vectorised drawing, in batches.

    Yields, batch after batch (so painter's order holds across them): the boxes of the
    batch (indices into the inputs) and, one entry per (box, pixel) pair, the box's
    position in the batch, the flat canvas index and the pixel centre. Drawing this way
    replaces a Python loop of a dozen numpy calls per car or tree by a few per batch;
    batches of at most about `max_pairs` pairs bound the memory it takes.
    """
    c0 = np.clip(np.floor(x0).astype(np.int64) - cv.col0, 0, cv.w)
    c1 = np.clip(np.ceil(x1).astype(np.int64) - cv.col0, 0, cv.w)
    r0 = np.clip(np.floor(y0).astype(np.int64) - cv.row0, 0, cv.h)
    r1 = np.clip(np.ceil(y1).astype(np.int64) - cv.row0, 0, cv.h)
    bw, bh = np.maximum(c1 - c0, 0), np.maximum(r1 - r0, 0)
    area = bw * bh
    ends = np.cumsum(area)
    start = 0
    while start < len(area):
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + max_pairs, side="right")))
        n = area[start:stop]
        f = np.repeat(np.arange(len(n)), n)
        k = np.arange(len(f)) - np.repeat(np.cumsum(n) - n, n)
        rr = r0[start:stop][f] + k // bw[start:stop][f]
        cc = c0[start:stop][f] + k % bw[start:stop][f]
        yield np.arange(start, stop), f, rr * cv.w + cc, cv.xs[cc], cv.ys[rr]
        start = stop


def _paint(cv: _Canvas, f, flat, draw, col) -> None:
    """Paint pairs where `draw`; where features overlap, the highest index wins, which is
    painter's order whatever the order of the pairs."""
    owner = np.full(cv.h * cv.w, -1, np.int64)
    np.maximum.at(owner, flat[draw], f[draw])
    win = draw & (owner[flat] == f)
    cv.img.reshape(-1, 3)[flat[win]] = col[win[draw]]


# --------------------------------------------------------------------------- features


def _sun(city):
    """Horizontal unit vector towards the sun (image x, y) and its elevation sine."""
    az, el = np.deg2rad(city.style.sun_azimuth_deg), np.deg2rad(city.style.sun_elevation_deg)
    return np.sin(az), -np.cos(az), np.sin(el)


def _rows(table, ids, *names):
    return [getattr(table, n)[ids].tolist() for n in names]


def _debris(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Collapsed parts: granular, high-contrast heaps spreading past the footprint."""
    b = city.buildings
    ids = ids[b.heap_hu[ids] > 0]
    if not len(ids):
        return
    grain, grain2 = cv.grain(1), cv.grain(2)
    clump, mid, frag = cv.field("clump"), cv.field("mid"), cv.field("fine")
    rows = zip(
        *_rows(b, ids, "heap_x", "heap_y", "heap_hu", "heap_hv", "cos", "sin", "spread"),
        *_rows(b, ids, "bias_x", "bias_y"),
        b.roof_rgb[ids],
        strict=True,
    )
    for x, y, a, hb, c, s, spread, bx, by, roof in rows:
        # the heap: the collapsed outline stretched towards the bias, dilated irregularly
        bu, bv = bx * c + by * s, by * c - bx * s
        ea, eb = a + abs(bu) / 2, hb + abs(bv) / 2
        ex, ey = rect_extent(ea + spread, eb + spread, abs(c), abs(s))
        cx, cy = x + bx / 2, y + by / 2
        box = cv.box(cx - ex - 1, cy - ey - 1, cx + ex + 1, cy + ey + 1)
        if box is None:
            continue
        sl, X, Y = box
        u, v = _local(X, Y, cx, cy, c, s)
        out_u, out_v = np.abs(u) - ea, np.abs(v) - eb
        sdf = np.hypot(np.maximum(out_u, 0), np.maximum(out_v, 0)) + np.minimum(
            np.maximum(out_u, out_v), 0
        )
        reach = spread * (0.35 + 0.65 * mid[sl]) + 0.5
        alpha = np.clip(1 - sdf / reach, 0, 1)
        drawn = grain2[sl] < alpha**0.6
        if not drawn.any():
            continue
        g = grain[sl][drawn]
        col = np.empty((len(g), 3), _F)
        col[:] = (_F(0.40) + _F(0.52) * g)[:, None] * np.array([1.0, 0.98, 0.94], _F)
        gap = clump[sl][drawn] < 0.3
        col[gap] *= _F(0.3)
        roof_bits = frag[sl][drawn] > 0.72
        col[roof_bits] = np.asarray(roof, _F) * (_F(0.7) + _F(0.5) * g[roof_bits])[:, None]
        col *= (_F(0.8) + _F(0.35) * mid[sl][drawn])[:, None]
        cv.img[sl][drawn] = col
        cv.label[sl][alpha > 0.35] = 1  # the heap's body; its sparse fringe is left out


def _cast_shadows(cv: _Canvas, city: lay.CityLayout, ids: dict[str, np.ndarray]) -> None:
    """Mark every pixel in a shadow: standing buildings, trees, minarets, ground props."""
    shx, shy = city.shadow_per_m
    b = city.buildings
    bid = ids["buildings"][b.st_hu[ids["buildings"]] > 0]
    for x, y, a, hb, c, s, h in zip(
        *_rows(b, bid, "st_x", "st_y", "st_hu", "st_hv", "cos", "sin", "st_height_m"), strict=True
    ):
        dx, dy = h * shx, h * shy
        ex, ey = rect_extent(a, hb, abs(c), abs(s))
        box = cv.box(*_sweep_box(x, y, ex, ey, dx, dy))
        if box is None:
            continue
        sl, X, Y = box
        u, v = _local(X, Y, x, y, c, s)
        inside, _ = _sweep(u, v, a, hb, dx * c + dy * s, dy * c - dx * s)
        cv.shadow[sl] |= inside
    mask = cv.shadow.reshape(-1)
    sparse = cv.grain(3).reshape(-1)
    for table, key in ((city.trees, "trees"), (city.towers, "towers")):
        t = ids[key]
        x, y, r, h = table.x[t], table.y[t], table.r[t], table.height_m[t]
        dx, dy = h * shx, h * shy
        for k, f, flat, X, Y in _batches(cv, *_sweep_box(x, y, r + 1, r + 1, dx, dy)):
            g = k[f]  # the feature of each pair
            ox, oy = x[g] + dx[g] * 0.15, y[g] + dy[g] * 0.15
            cast = _capsule(X, Y, ox, oy, dx[g] * 0.85, dy[g] * 0.85, r[g])
            mask[flat[cast & (sparse[flat] < 0.92)]] = True
    p = city.props
    t = ids["props"]
    t = t[(lay.PROP_LAYER[p.kind[t]] == 0) & (lay.PROP_HEIGHT_M[p.kind[t]] > 0)]
    x, y, a, hb, c, s = p.x[t], p.y[t], p.hu[t], p.hv[t], p.cos[t], p.sin[t]
    h = lay.PROP_HEIGHT_M[p.kind[t]].astype(np.float64)
    dx, dy = h * shx, h * shy
    ex, ey = rect_extent(a, hb, np.abs(c), np.abs(s))
    for k, f, flat, X, Y in _batches(cv, *_sweep_box(x, y, ex, ey, dx, dy)):
        g = k[f]
        u, v = _local(X, Y, x[g], y[g], c[g], s[g])
        su, sv = dx[g] * c[g] + dy[g] * s[g], dy[g] * c[g] - dx[g] * s[g]
        cast, _ = _sweep(u, v, a[g], hb[g], su, sv)
        cast &= (np.abs(u) > a[g]) | (np.abs(v) > hb[g])  # not under the prop itself
        mask[flat[cast]] = True


def _trees(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Crowns lit from the sun side, clumpy; leafless trees are a sparse twig tangle."""
    t, st = city.trees, city.style
    sx, sy, sz = _sun(city)
    fine, clump = cv.field("fine").reshape(-1), cv.field("clump").reshape(-1)
    shadow = cv.shadow.reshape(-1)
    foliage = np.array(st.foliage, _F)
    twigs = np.array([0.42, 0.38, 0.33], _F)
    x, y, r = t.x[ids], t.y[ids], t.r[ids]
    for k, f, flat, X, Y in _batches(cv, x - r - 1, y - r - 1, x + r + 1, y + r + 1):
        g = k[f]
        dx, dy = (X - x[g]) / r[g], (Y - y[g]) / r[g]
        d2 = dx * dx + dy * dy
        grain = fine[flat]
        kind = t.kind[ids[g]]
        crown = d2 <= (0.8 + 0.35 * clump[flat]) ** 2
        crown &= (kind != lay.BARE) | (grain > 0.42) | (d2 < 0.04)
        d2, dx, dy, grain, kind = d2[crown], dx[crown], dy[crown], grain[crown], kind[crown]
        lam = np.clip(dx * sx + dy * sy + np.sqrt(np.clip(1 - d2, 0, 1)) * sz, 0, 1).astype(_F)
        tone = t.tone[ids[g[crown]]] * np.where(kind == lay.EVERGREEN, _F(0.7), _F(1))
        leafy = (
            foliage * (tone * (_F(0.45) + _F(0.75) * lam) * (_F(0.7) + _F(0.6) * grain))[:, None]
        )
        bare = twigs * (_F(0.7) + _F(0.4) * lam)[:, None]
        col = np.where((kind == lay.BARE)[:, None], bare, leafy)
        col = np.where(shadow[flat[crown]][:, None], col * np.array(st.shadow_rgb, _F), col)
        _paint(cv, f, flat, crown, col)


def _standing(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Facades (seen off nadir) and roofs of whatever still stands."""
    b = city.buildings
    ids = ids[b.st_hu[ids] > 0]
    if not len(ids):
        return
    sun = _sun(city)
    mid, fine, low = cv.field("mid"), cv.grain(0), cv.field("low")
    rows = zip(
        *_rows(b, ids, "st_x", "st_y", "st_hu", "st_hv", "cos", "sin", "roof_dx", "roof_dy"),
        *_rows(b, ids, "roof_cos", "roof_sin", "roof", "storeys", "roof_shade"),
        b.roof_rgb[ids],
        b.facade_rgb[ids],
        strict=True,
    )
    for x, y, a, hb, c, s, rdx, rdy, rc, rs, roof, storeys, shade, roof_rgb, facade_rgb in rows:
        ex, ey = np.maximum(
            rect_extent(a, hb, abs(c), abs(s)), rect_extent(a, hb, abs(rc), abs(rs))
        )
        box = cv.box(*_sweep_box(x, y, ex + 1, ey + 1, rdx, rdy))
        if box is None:
            continue
        sl, X, Y = box
        if abs(rdx) + abs(rdy) > 0.3:
            u, v = _local(X, Y, x, y, c, s)
            wall, t = _sweep(u, v, a, hb, rdx * c + rdy * s, rdy * c - rdx * s)
            if wall.any():
                # storey bands of windows; the lit side is brighter
                lit = 0.55 + 0.35 * max(0.0, -(rdx * sun[0] + rdy * sun[1]) / np.hypot(rdx, rdy))
                band = (t[wall] * storeys) % 1.0
                f = np.where((band > 0.35) & (band < 0.8), _F(0.55), _F(1.0)) * _F(lit)
                cv.img[sl][wall] = np.asarray(facade_rgb, _F) * f[:, None]
                cv.label[sl][wall] = 0  # debris under a standing building is not seen
        u, v = _local(X, Y, x + rdx, y + rdy, rc, rs)
        top = (np.abs(u) <= a) & (np.abs(v) <= hb)
        if not top.any():
            continue
        uu, vv = u[top], v[top]
        f = _roof_shading(roof, uu, vv, a, hb, rc, rs, sun).astype(_F) * _F(shade)
        f *= _F(0.94) + _F(0.12) * mid[sl][top] + _F(0.06) * (fine[sl][top] - _F(0.5))
        if roof == lay.FLAT:
            f *= _F(0.92) + _F(0.12) * low[sl][top]
        cv.img[sl][top] = np.asarray(roof_rgb, _F) * f[:, None]
        cv.label[sl][top] = 0


def _roof_shading(roof, u, v, a, b, c, s, sun):
    """Brightness of roof pixels from the face they lie on and the sun direction."""
    sx, sy, sz = sun
    du, dv = a - np.abs(u), b - np.abs(v)
    if roof == lay.FLAT:
        # parapet: a rim, bright on the sun side, dark away from it
        edge = np.minimum(du, dv) < 1.0
        nu = np.where(du < dv, np.sign(u), 0.0)
        nv = np.where(du < dv, 0.0, np.sign(v))
        facing = (nu * c - nv * s) * sx + (nu * s + nv * c) * sy
        return np.where(edge, 1.0 + 0.18 * facing, 1.0)
    if roof == lay.DOME:
        rr = np.hypot(u, v) / min(a, b)
        nz = np.sqrt(np.clip(1 - rr * rr, 0, 1))
        nx, ny = u / min(a, b), v / min(a, b)
        lam = (nx * c - ny * s) * sx * 0.9 + (nx * s + ny * c) * sy * 0.9 + nz * sz
        return np.where(rr <= 1, 0.55 + 0.6 * np.clip(lam, 0, 1), 0.9)
    if roof == lay.HIP:
        end = du < dv  # the hipped ends slope along u, the long sides along v
        nu, nv = np.where(end, np.sign(u), 0.0), np.where(end, 0.0, np.sign(v))
        ridge = np.abs(du - dv) < 0.7
    else:  # gabled and metal: two faces sloping along v
        nu, nv = 0.0 * u, np.sign(v)
        ridge = np.abs(v) < 0.6
    facing = (nu * c - nv * s) * sx + (nu * s + nv * c) * sy
    f = 0.86 + 0.3 * facing + 0.12 * ridge
    if roof == lay.METAL:
        f = f * np.where((u % 2.0) < 1.0, 1.0, 0.93)  # corrugation
        f = np.where(((u % 24.0) < 3.0) & (np.abs(v) < 0.6 * b), 1.15, f)  # skylights
    return f


def _props(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Cars, tents, tarps, piles, pitches, debris slabs and roof clutter, in batches."""
    p = city.props
    fine, grain = cv.field("fine").reshape(-1), cv.grain(1).reshape(-1)
    shx, shy = city.shadow_per_m
    roof_shadow = (_F(1) + np.array(city.style.shadow_rgb, _F)) / _F(2)
    img = cv.img.reshape(-1, 3)
    x, y, a, hb, c, s = p.x[ids], p.y[ids], p.hu[ids], p.hv[ids], p.cos[ids], p.sin[ids]
    kind = p.kind[ids]
    on_roof = lay.PROP_LAYER[kind] == 2
    h = np.where(on_roof, lay.PROP_HEIGHT_M[kind], 0).astype(np.float64)
    dx, dy = h * shx, h * shy
    ex, ey = rect_extent(a, hb, np.abs(c), np.abs(s))
    for k, f, flat, X, Y in _batches(cv, *_sweep_box(x, y, ex + 1, ey + 1, dx, dy)):
        g = k[f]
        A, B, K = a[g], hb[g], kind[g]
        u, v = _local(X, Y, x[g], y[g], c[g], s[g])
        body = np.where(
            K == lay.TANK,
            u * u + v * v <= A * A,
            np.where(
                K == lay.PILE,
                (u / A) ** 2 + (v / B) ** 2 <= 0.7 + 0.5 * fine[flat],
                (np.abs(u) <= A) & (np.abs(v) <= B),
            ),
        )
        if on_roof.any():  # clutter shades the roof next to it
            su, sv = dx[g] * c[g] + dy[g] * s[g], dy[g] * c[g] - dx[g] * s[g]
            cast, _ = _sweep(u, v, A, B, su, sv)
            dark = np.zeros(cv.h * cv.w, bool)
            dark[flat[cast & ~body & on_roof[g]]] = True
            img[dark] *= roof_shadow
        uu, vv, A, B, K = u[body], v[body], A[body], B[body], K[body]
        gr, n = grain[flat[body]], fine[flat[body]]
        glass = ((uu > 0.2 * A) & (uu < 0.5 * A)) | ((uu < -0.55 * A) & (uu > -0.8 * A))
        line = (np.minimum(A - np.abs(uu), B - np.abs(vv)) < 1.2) | (np.abs(uu) < 0.5)
        line |= np.abs(np.hypot(uu, vv) - 0.25 * B) < 0.5
        factor = (
            np.select(
                [
                    K == lay.CAR,
                    K == lay.TRUCK,
                    K == lay.TENT,
                    K == lay.PILE,
                    K == lay.TANK,
                    np.isin(K, (lay.SLAB, lay.TARP, lay.PITCH, lay.HEATER)),
                ],
                [
                    np.where(glass, 0.25, 1.0 + 0.08 * (np.abs(uu) < 0.2 * A)),
                    np.where(uu > 0.6 * A, 0.85, 1.0),
                    np.where(vv > 0, 1.0, 0.82),
                    0.6 + 0.6 * gr,
                    0.85 + 0.3 * (-vv / A > 0.3),
                    0.9 + 0.2 * n,
                ],
                1.0,
            ).astype(_F)
            * p.shade[ids[g[body]]]
        )
        col = p.rgb[ids[g[body]]] * factor[:, None]
        white = ((K == lay.PITCH) & line) | ((K == lay.HEATER) & (uu > 0.45 * A))
        col[white] = _F(0.88)
        _paint(cv, f, flat, body, col)


def _footprints(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Label the intact outline of every damaged building."""
    b = city.buildings
    ids = ids[b.grade[ids] > 0]
    for x, y, a, hb, c, s in zip(*_rows(b, ids, "x", "y", "hu", "hv", "cos", "sin"), strict=True):
        ex, ey = rect_extent(a, hb, abs(c), abs(s))
        box = cv.box(x - ex, y - ey, x + ex, y + ey)
        if box is None:
            continue
        sl, X, Y = box
        u, v = _local(X, Y, x, y, c, s)
        cv.label[sl][(np.abs(u) <= a) & (np.abs(v) <= hb)] = 1


def _dust(cv: _Canvas, city: lay.CityLayout, ids: np.ndarray) -> None:
    """Pale dust haze around fresh collapses."""
    b = city.buildings
    ids = ids[b.dust_r[ids] > 0]
    if not len(ids):
        return
    low = cv.field("low")
    dust_rgb = np.array([0.74, 0.71, 0.66], _F)
    for x, y, r, k in zip(*_rows(b, ids, "x", "y", "dust_r", "dust"), strict=True):
        box = cv.box(x - r, y - r, x + r, y + r)
        if box is None:
            continue
        sl, X, Y = box
        w = (0.6 * k * np.exp(-4.0 * ((X - x) ** 2 + (Y - y) ** 2) / (r * r))).astype(_F)
        w = (w * (_F(0.3) + low[sl]))[..., None]
        cv.img[sl] = cv.img[sl] * (_F(1) - w) + dust_rgb * w


# --------------------------------------------------------------------------- sensor


def _sensor(cv: _Canvas, city: lay.CityLayout) -> np.ndarray:
    """Atmosphere, colour balance, optics, noise and compression: float -> uint8."""
    st = city.style
    img = cv.img
    haze = (_F(st.haze) * (_F(0.7) + _F(0.6) * cv.field("haze")))[..., None]
    img = img * (_F(1) - haze) + np.array(st.airlight, _F) * haze
    img *= np.array(st.gain, _F)
    if st.gamma != 1.0:
        img = np.clip(img, 0, None) ** _F(st.gamma)
    if st.blur_px > 0:
        img = gaussian_filter1d(img, st.blur_px, axis=0, truncate=3.0, mode="nearest")
        img = gaussian_filter1d(img, st.blur_px, axis=1, truncate=3.0, mode="nearest")
    h = noise.white(cv.row0, cv.col0, cv.h, cv.w, noise.key(cv.seed, 2000))
    for ch in range(3):
        img[..., ch] += _F(st.noise * 3.46) * (noise.unit(h, ch) - _F(0.5))
    if st.jpeg_quality:
        img = _jpeg(img, st.jpeg_quality)
    return np.clip(img * _F(255) + _F(0.5), 0, 255).astype(np.uint8)


_Q_LUMA = np.array(
    [
        16,
        11,
        10,
        16,
        24,
        40,
        51,
        61,
        12,
        12,
        14,
        19,
        26,
        58,
        60,
        55,
        14,
        13,
        16,
        24,
        40,
        57,
        69,
        56,
        14,
        17,
        22,
        29,
        51,
        87,
        80,
        62,
        18,
        22,
        37,
        56,
        68,
        109,
        103,
        77,
        24,
        35,
        55,
        64,
        81,
        104,
        113,
        92,
        49,
        64,
        78,
        87,
        103,
        121,
        120,
        101,
        72,
        92,
        95,
        98,
        112,
        100,
        103,
        99,
    ],
    np.float32,
).reshape(8, 8)
_Q_CHROMA = np.full((8, 8), 99.0, np.float32)
_Q_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def _jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """Baseline-JPEG-like loss: 8x8 DCT quantisation of Y, Cb, Cr on the global 8-grid."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    h, w, _ = img.shape
    m = np.array(
        [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], _F
    )
    ycc = img @ m.T * _F(255)
    blocks = ycc.reshape(h // 8, 8, w // 8, 8, 3)
    coef = sfft.dctn(blocks, type=2, axes=(1, 3), norm="ortho")
    for ch, table in ((0, _Q_LUMA), (1, _Q_CHROMA), (2, _Q_CHROMA)):
        q = np.clip(np.floor((table * scale + 50) / 100), 1, 255)[None, :, None, :]
        coef[..., ch] = np.round(coef[..., ch] / q) * q
    ycc = sfft.idctn(coef, type=2, axes=(1, 3), norm="ortho").reshape(h, w, 3)
    return (ycc @ np.linalg.inv(m).T.astype(_F)) / _F(255)

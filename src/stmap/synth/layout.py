"""The vector layout of a synthetic city: districts, street grids, blocks and features.

The layout is drawn once for the whole city before anything is rendered, so what is
where never depends on how the raster is later cut into blocks. It lives in compact
numpy tables (one row per building, tree, car, prop), not in Python objects: a
16 km city has hundreds of thousands of buildings.

Structure, from large to small:
  * districts: Voronoi cells of a jittered grid of seeds (`district_m`); each has a
    character (core, oldtown, estate, lowrise, industrial, rural) and its own rotated
    street grid; arterials run along the cell edges;
  * a district's grid: sorted street lines across u and v with their half widths;
    the rectangles between them are blocks, each with a fabric and an open-space kind;
  * block contents, drawn in metres in the block's frame from the block's own
    generator (``default_rng((seed, stream, block_id))``): buildings, trees, cars,
    pitches; then damage, and what damage brings (debris slabs, rescue vehicles,
    cleared piles, tents and tarps).

All coordinates are output-raster pixels (see `stmap.synth.geometry`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from stmap.synth import damage, noise
from stmap.synth.geometry import SpanIndex, rect_extent
from stmap.synth.styles import CHARACTERS, Style

# roof kinds
FLAT, HIP, GABLE, METAL, DOME = 0, 1, 2, 3, 4
ROOF_NAMES = ("flat", "hipped", "gabled", "metal", "dome")
# block kinds (what a block is used for)
BUILT, PARK, SQUARE, LOT, SPORTS, MOSQUE, FIELDS = 0, 1, 2, 3, 4, 5, 6
# tree kinds
EVERGREEN, LEAFY, BARE = 0, 1, 2
# prop kinds and the layer they are drawn in (0 ground, 1 on debris, 2 on roofs)
CAR, TRUCK, EXCAVATOR, TENT, TARP, PILE, PITCH, SLAB, TANK, HEATER, STAIRS = range(11)
PROP_LAYER = np.array([0, 0, 0, 0, 0, 0, 0, 1, 2, 2, 2], np.int8)
PROP_HEIGHT_M = np.array([1.5, 3.0, 3.0, 2.2, 0.3, 1.5, 0.0, 0.0, 1.3, 1.2, 2.6], np.float32)

# stream ids of the seeded generators, one per purpose
_S_GRID, _S_BLOCK, _S_DAMAGE, _S_EXTRA, _S_URBAN, _S_DISTRICT = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class Fabric:
    """Street-grid geometry of a district character, in metres (scaled by the style)."""

    block_m: tuple[float, float]  # block length along u
    depth_m: tuple[float, float]  # block depth along v
    street_m: tuple[float, float]  # ordinary street width
    main_m: float  # main street width (with a median when wide)
    main_every: int  # every n-th line is a main street
    sidewalk_m: float


FABRICS: dict[str, Fabric] = {
    "core": Fabric((70, 130), (50, 85), (10, 16), 24, 4, 3.0),
    "oldtown": Fabric((40, 75), (30, 55), (4, 7), 12, 5, 1.0),
    "estate": Fabric((110, 190), (90, 150), (12, 18), 28, 3, 3.5),
    "lowrise": Fabric((70, 120), (45, 70), (7, 10), 14, 5, 1.5),
    "industrial": Fabric((120, 240), (90, 170), (12, 18), 24, 3, 2.0),
    "rural": Fabric((150, 350), (110, 260), (4, 6), 8, 4, 0.0),
}
RURAL = CHARACTERS.index("rural")
MARGIN_PX = 256  # features are laid out this far past the raster edge


@dataclass(frozen=True)
class Districts:
    """Voronoi districts over a jittered seed grid, each with its own street grid.

    Seeds sit in the middle half of their grid cell, so every point is within 1.06
    cells of its own cell's seed: a point's nearest seed is always among the 3x3 cells
    around it, and no point of a district is farther than 1.06 cells from its seed.
    """

    cell: float  # grid cell size, px
    i0: int  # grid index of the first table column / row
    j0: int
    sx: np.ndarray  # (ni, nj) seed positions, px
    sy: np.ndarray
    angle: np.ndarray  # (ni * nj,) street-grid angle, radians
    character: np.ndarray  # (ni * nj,) int8 index into CHARACTERS
    sidewalk: np.ndarray  # (ni * nj,) sidewalk width, px
    arterial_hw: float  # half width of the edge arterials, px
    u_ptr: np.ndarray  # (ni * nj + 1,) CSR into the u-line arrays
    u_pos: np.ndarray  # street centre lines at constant u, sorted within a district
    u_hw: np.ndarray  # their half widths, px
    u_main: np.ndarray  # bool
    v_ptr: np.ndarray
    v_pos: np.ndarray
    v_hw: np.ndarray
    v_main: np.ndarray
    block_ptr: np.ndarray  # (ni * nj + 1,) first block id of each district

    @property
    def nj(self) -> int:
        return self.sx.shape[1]

    def locate(self, x: np.ndarray, y: np.ndarray, reach: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """District id and distance (px) to the district's edge at points x, y (broadcast).

        With reach 1 the edge distance is exact wherever it is small (within a fifth of
        a cell) and an upper bound elsewhere; reach 2 makes it exact everywhere.
        """
        x, y = np.broadcast_arrays(np.asarray(x, np.float64), np.asarray(y, np.float64))
        cx = np.floor(x / self.cell).astype(np.int64) - self.i0
        cy = np.floor(y / self.cell).astype(np.int64) - self.j0
        sx, sy = self.sx.ravel(), self.sy.ravel()
        span = range(-reach, reach + 1)
        cand = [(cx + di) * self.nj + (cy + dj) for di in span for dj in span]
        d2 = [(x - sx.take(k)) ** 2 + (y - sy.take(k)) ** 2 for k in cand]
        best_d2, best = d2[0], cand[0]
        for k, dk in zip(cand[1:], d2[1:], strict=True):
            closer = dk < best_d2
            best_d2 = np.where(closer, dk, best_d2)
            best = np.where(closer, k, best)
        bx, by = sx.take(best), sy.take(best)
        edge = np.full(x.shape, np.inf)
        for k, dk in zip(cand, d2, strict=True):
            sep = np.hypot(sx.take(k) - bx, sy.take(k) - by)
            with np.errstate(divide="ignore", invalid="ignore"):
                edge = np.minimum(edge, np.where(sep > 0, (dk - best_d2) / (2 * sep), np.inf))
        return best, edge


@dataclass(frozen=True)
class Blocks:
    """Per block (indexed by id): fabric, kind and ground palette."""

    fabric: np.ndarray  # (B,) int8 index into CHARACTERS
    kind: np.ndarray  # (B,) int8 BUILT, PARK, ...
    ground_a: np.ndarray  # (B, 3) float32
    ground_b: np.ndarray  # (B, 3) float32
    mix: np.ndarray  # (B,) float32 share of ground_b
    parcel: np.ndarray  # (B,) float32 field parcel width, px (fields only)


@dataclass(frozen=True)
class Buildings:
    """One row per building. Footprint = the intact, pre-event outline (as footprint
    datasets give it); standing = what still stands (empty when collapsed), drawn with
    its roof moved by the off-nadir lean and any soft-storey shift; heap = the part that
    collapsed into debris (empty when intact)."""

    x: np.ndarray  # footprint centre, px
    y: np.ndarray
    hu: np.ndarray  # half length along the building axis, px
    hv: np.ndarray  # half width across it, px
    cos: np.ndarray
    sin: np.ndarray
    height_m: np.ndarray  # intact height
    storeys: np.ndarray
    roof: np.ndarray  # int8 FLAT, HIP, ...
    roof_rgb: np.ndarray  # (N, 3) float32
    facade_rgb: np.ndarray  # (N, 3) float32
    fabric: np.ndarray  # int8 index into CHARACTERS
    grade: np.ndarray  # int8 damage grade (stmap.synth.damage)
    st_x: np.ndarray  # standing part: base centre, half sizes (0 = none)
    st_y: np.ndarray
    st_hu: np.ndarray
    st_hv: np.ndarray
    st_height_m: np.ndarray
    roof_dx: np.ndarray  # roof offset from the standing base (lean + shift), px
    roof_dy: np.ndarray
    roof_cos: np.ndarray  # roof orientation (a soft-storey collapse twists it)
    roof_sin: np.ndarray
    roof_shade: np.ndarray  # brightness factor of a tilted roof
    heap_x: np.ndarray  # collapsed part (0 = none)
    heap_y: np.ndarray
    heap_hu: np.ndarray
    heap_hv: np.ndarray
    spread: np.ndarray  # how far debris spreads past the heap's outline, px
    bias_x: np.ndarray  # debris pushed this way (into the street), px
    bias_y: np.ndarray
    dust_r: np.ndarray  # dust haze radius, px (0 = none)
    dust: np.ndarray  # dust strength
    bbox: np.ndarray  # (N, 4) x0, y0, x1, y1 of everything drawn for the building

    def __len__(self) -> int:
        return len(self.x)

    @property
    def damaged(self) -> np.ndarray:
        return self.grade > 0


@dataclass(frozen=True)
class Trees:
    x: np.ndarray
    y: np.ndarray
    r: np.ndarray  # crown radius, px
    height_m: np.ndarray
    kind: np.ndarray  # int8 EVERGREEN, LEAFY, BARE
    tone: np.ndarray  # float32 brightness factor


@dataclass(frozen=True)
class Props:
    """Small rectangles: cars, tents, piles, pitches, debris slabs, roof clutter."""

    x: np.ndarray
    y: np.ndarray
    hu: np.ndarray
    hv: np.ndarray
    cos: np.ndarray
    sin: np.ndarray
    kind: np.ndarray  # int8
    rgb: np.ndarray  # (N, 3) float32
    shade: np.ndarray  # float32


@dataclass(frozen=True)
class Towers:
    """Minarets: thin, tall and round; their long thin shadow is a strong cue."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    height_m: np.ndarray


@dataclass(frozen=True)
class CityLayout:
    width: int
    height: int
    gsd: float
    seed: int
    style: Style
    shadow_per_m: tuple[float, float]  # ground shadow of 1 m of height, px (x, y)
    lean_per_m: tuple[float, float]  # roof displacement of 1 m of height, px
    districts: Districts
    blocks: Blocks
    buildings: Buildings
    trees: Trees
    props: Props
    towers: Towers
    index: dict[str, SpanIndex]


# --------------------------------------------------------------------------- districts


def _urbanity(x, y, width: int, height: int, gsd: float, style: Style, seed: int) -> np.ndarray:
    """1 at a town centre, falling off over `urban_radius_m`, with low-frequency noise."""
    rng = np.random.default_rng((seed, _S_URBAN))
    radius = style.urban_radius_m / gsd
    centres = [(width * rng.uniform(0.4, 0.6), height * rng.uniform(0.4, 0.6), 1.0)]
    area_km2 = width * height * (gsd / 1000) ** 2
    for _ in range(int(area_km2 // 30)):
        centres.append((rng.uniform(0, width), rng.uniform(0, height), rng.uniform(0.5, 0.9)))
    core = np.zeros(np.shape(x))
    for cx, cy, w in centres:
        core = np.maximum(core, w * np.exp(-(((x - cx) ** 2 + (y - cy) ** 2) / radius**2)))
    wobble = noise.point_noise(x, y, radius, noise.key(seed, _S_URBAN)) - 0.5
    return np.clip(core + 0.3 * wobble, 0.0, 1.0)


def _lines(rng: np.random.Generator, lo: float, hi: float, pitch_m, width_m, fab, gsd: float):
    """Street centre lines covering [lo, hi] px: positions, half widths (px), main flags."""
    mean_pitch = (np.mean(pitch_m) + np.mean(width_m)) / gsd
    n = int((hi - lo) / mean_pitch * 1.5) + 4
    main = (np.arange(n) + rng.integers(fab.main_every)) % fab.main_every == 0
    width = np.where(main, fab.main_m, rng.uniform(*width_m, n)) / gsd
    length = rng.uniform(*pitch_m, n) / gsd
    step = width / 2 + length + np.roll(width, -1) / 2
    pos = lo - rng.uniform(0, step[0]) + np.concatenate([[0.0], np.cumsum(step[:-1])])
    keep = np.searchsorted(pos, hi) + 2
    return pos[:keep], width[:keep] / 2, main[:keep]


def _districts(width: int, height: int, gsd: float, style: Style, seed: int) -> Districts:
    cell = style.district_m / gsd
    i0, i1 = int(np.floor(-MARGIN_PX / cell)) - 3, int(np.floor((width + MARGIN_PX) / cell)) + 3
    j0, j1 = int(np.floor(-MARGIN_PX / cell)) - 3, int(np.floor((height + MARGIN_PX) / cell)) + 3
    ii, jj = np.meshgrid(np.arange(i0, i1 + 1), np.arange(j0, j1 + 1), indexing="ij")
    h = noise.hash2(ii, jj, noise.key(seed, _S_DISTRICT))
    sx = (ii + 0.25 + 0.5 * noise.unit24(h)) * cell
    sy = (jj + 0.25 + 0.5 * noise.unit24(noise.mix32(h))) * cell
    n = sx.size
    angle = np.deg2rad(
        style.grid_angle_deg
        + style.grid_angle_jitter_deg * (2 * noise.unit24(noise.mix32(h + np.uint32(1))) - 1)
    ).ravel()
    urban = _urbanity(sx.ravel(), sy.ravel(), width, height, gsd, style, seed)
    pick = noise.unit24(noise.mix32(h + np.uint32(2))).ravel()
    character = np.full(n, RURAL, np.int8)
    for d in range(n):
        for level, choices in style.characters:
            if urban[d] >= level:
                names, weights = zip(*choices, strict=True)
                cum = np.cumsum(weights) / np.sum(weights)
                character[d] = CHARACTERS.index(names[int(np.searchsorted(cum, pick[d]))])
                break
    fabrics = [FABRICS[CHARACTERS[c]] for c in character]
    sidewalk = np.array([f.sidewalk_m / gsd for f in fabrics])

    # street grids only for districts that can own a pixel near the raster
    lo_i, hi_i = int(np.floor(-MARGIN_PX / cell)) - 1, int(np.floor((width + MARGIN_PX) / cell)) + 1
    lo_j = int(np.floor(-MARGIN_PX / cell)) - 1
    hi_j = int(np.floor((height + MARGIN_PX) / cell)) + 1
    u_parts, v_parts, counts = [], [], []
    for d in range(n):
        gi, gj = int(ii.ravel()[d]), int(jj.ravel()[d])
        if not (lo_i <= gi <= hi_i and lo_j <= gj <= hi_j):
            empty = (np.zeros(0), np.zeros(0), np.zeros(0, bool))
            u_parts.append(empty)
            v_parts.append(empty)
            counts.append(0)
            continue
        rng = np.random.default_rng((seed, _S_GRID, gi - i0, gj - j0))
        fab = fabrics[d]
        # every point of a district is within 1.06 cells of its seed (see the class doc)
        r = 1.07 * cell
        corners_x = sx.ravel()[d] + np.array([-r, r, r, -r])
        corners_y = sy.ravel()[d] + np.array([-r, -r, r, r])
        c, s = np.cos(angle[d]), np.sin(angle[d])
        u = corners_x * c + corners_y * s
        v = -corners_x * s + corners_y * c
        block = tuple(b * style.block_scale for b in fab.block_m)
        depth = tuple(b * style.block_scale for b in fab.depth_m)
        street = tuple(w * style.street_scale for w in fab.street_m)
        u_parts.append(_lines(rng, u.min(), u.max(), block, street, fab, gsd))
        v_parts.append(_lines(rng, v.min(), v.max(), depth, street, fab, gsd))
        counts.append((len(u_parts[-1][0]) - 1) * (len(v_parts[-1][0]) - 1))

    def csr(parts):
        ptr = np.concatenate([[0], np.cumsum([len(p[0]) for p in parts])])
        return (ptr, *(np.concatenate([p[k] for p in parts]) for k in range(3)))

    u_ptr, u_pos, u_hw, u_main = csr(u_parts)
    v_ptr, v_pos, v_hw, v_main = csr(v_parts)
    return Districts(
        cell=cell,
        i0=i0,
        j0=j0,
        sx=sx,
        sy=sy,
        angle=angle,
        character=character,
        sidewalk=sidewalk,
        arterial_hw=style.arterial_m / gsd / 2,
        u_ptr=u_ptr,
        u_pos=u_pos,
        u_hw=u_hw,
        u_main=u_main.astype(bool),
        v_ptr=v_ptr,
        v_pos=v_pos,
        v_hw=v_hw,
        v_main=v_main.astype(bool),
        block_ptr=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
    )


# --------------------------------------------------------------------------- block contents


class _Acc:
    """Collects feature rows (in metres, in a block's lot frame) block by block.

    One 2-size_v array per block and table, not one array per column: a big city has
    hundreds of thousands of blocks, and per-column arrays would cost a gigabyte in
    object overhead alone.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[np.ndarray]] = defaultdict(list)
        self.columns: dict[str, tuple[str, ...]] = {}

    def add(self, table: str, block: int, **cols) -> None:
        n = len(next(iter(cols.values())))
        if n:
            names = self.columns.setdefault(table, tuple(sorted(cols)))
            row = np.empty((n, len(names) + 1))
            row[:, 0] = block
            for k, name in enumerate(names, 1):
                row[:, k] = cols[name]
            self.rows[table].append(row)

    def table(self, name: str, columns: tuple[str, ...]) -> dict[str, np.ndarray]:
        rows = self.rows.get(name, [])
        data = np.concatenate(rows) if rows else np.zeros((0, len(columns) + 1))
        index = {c: k for k, c in enumerate(self.columns.get(name, columns), 1)}
        return {"block": data[:, 0], **{c: data[:, index[c]] for c in columns}}


def _row(rng, length: float, widths: tuple[float, float], attached: float):
    """Buildings side by side along a street: centres and widths (m) in [0, length]."""
    n = int(length / widths[0]) + 2
    w = rng.uniform(*widths, n)
    gap = np.where(rng.random(n) < attached, 0.0, rng.uniform(2.0, 6.0, n))
    start = rng.uniform(0.0, 3.0) + np.concatenate([[0.0], np.cumsum(w + gap)[:-1]])
    keep = start + w <= length - 1.0
    return start[keep] + w[keep] / 2, w[keep]


def _add_buildings(acc, b, u, v, hu, hv, storeys, roof, fu, fv, dang=0.0, height=None):
    storeys, roof = np.asarray(storeys, np.float64), np.asarray(roof)
    height = storeys * 3.0 + np.where(roof == FLAT, 1.0, 2.0) if height is None else height
    acc.add(
        "bld",
        b,
        u=u,
        v=v,
        hu=hu,
        hv=hv,
        dang=dang,
        storeys=storeys,
        roof=roof,
        fu=fu,
        fv=fv,
        height=height,
    )


def _trees_in(acc, b, rng, u0, v0, u1, v1, per_m2, style: Style, r=(1.5, 3.8), avoid=None):
    """Trees scattered in a rectangle (m), kept off the rectangles in `avoid`."""
    if u1 <= u0 or v1 <= v0:
        return
    n = rng.poisson((u1 - u0) * (v1 - v0) * per_m2 * style.tree_density)
    u, v = rng.uniform(u0, u1, n), rng.uniform(v0, v1, n)
    if avoid is not None and n:
        au, av, ahu, ahv = (np.asarray(a, np.float64) for a in avoid)
        hit = (np.abs(u[:, None] - au) < ahu + 2) & (np.abs(v[:, None] - av) < ahv + 2)
        keep = ~hit.any(axis=1)
        u, v = u[keep], v[keep]
    _add_trees(acc, b, rng, u, v, r, style)


def _add_trees(acc, b, rng, u, v, r, style: Style):
    n = len(u)
    radius = rng.uniform(*r, n)
    kind = np.where(
        rng.random(n) < 0.2, EVERGREEN, np.where(rng.random(n) < style.bare_tree_share, BARE, LEAFY)
    )
    radius = np.where(kind == EVERGREEN, radius * 0.7, radius)
    acc.add("tree", b, u=u, v=v, r=radius, height=2 * radius + rng.uniform(2, 5, n), kind=kind)


def _core(acc, b, rng, size_u, size_v, style: Style, flat_share, storeys):
    base = rng.integers(storeys[0], storeys[1] + 1)
    two_rows = size_v >= 30
    depth = rng.uniform(12, max(12, min(24, size_v / 2 - 3))) if two_rows else max(size_v - 4, 6)
    setback = rng.uniform(0, 3) if two_rows else (size_v - depth) / 2
    attached = rng.uniform(0.2, 0.8)
    sides = [(0, -1.0), (1, 1.0)] if two_rows else [(0, -1.0)]
    if two_rows and size_u > 2 * depth + 30:
        sides += [(2, -1.0), (3, 1.0)]
    us, vs, hus, hvs, fus, fvs = [], [], [], [], [], []
    for side, sign in sides:
        if side < 2:
            c, w = _row(rng, size_u, (10, 25), attached)
            d = depth * rng.uniform(0.8, 1.0, len(c))
            v = setback + d / 2 if side == 0 else size_v - setback - d / 2
            us.append(c), vs.append(v), hus.append(w / 2), hvs.append(d / 2)
            fus.append(np.zeros(len(c))), fvs.append(np.full(len(c), sign))
        else:
            span0, span1 = setback + depth + 3, size_v - setback - depth - 3
            c, w = _row(rng, span1 - span0, (10, 25), attached)
            d = depth * rng.uniform(0.8, 1.0, len(c))
            u = setback + d / 2 if side == 2 else size_u - setback - d / 2
            us.append(np.broadcast_to(u, c.shape)), vs.append(c + span0)
            hus.append(d / 2), hvs.append(w / 2)
            fus.append(np.full(len(c), sign)), fvs.append(np.zeros(len(c)))
    u, v = np.concatenate(us), np.concatenate(vs)
    n = len(u)
    st = np.clip(base + rng.integers(-2, 3, n), storeys[0], storeys[1])
    roof = np.where(rng.random(n) < flat_share, FLAT, HIP)
    _add_buildings(
        acc,
        b,
        u,
        v,
        np.concatenate(hus),
        np.concatenate(hvs),
        st,
        roof,
        np.concatenate(fus),
        np.concatenate(fvs),
    )
    if two_rows:
        inner = (
            setback + depth + 2,
            setback + depth + 2,
            size_u - setback - depth - 2,
            size_v - setback - depth - 2,
        )
        _trees_in(acc, b, rng, *inner, 1 / 220, style)
        _parking(acc, b, rng, *inner)


def _parking(acc, b, rng, u0, v0, u1, v1):
    """Rows of parked cars in a courtyard, when it is big enough."""
    if u1 - u0 < 20 or v1 - v0 < 12 or rng.random() < 0.4:
        return
    slots = np.arange(u0 + 2, u1 - 2, 2.7)
    occupied = slots[rng.random(len(slots)) < rng.uniform(0.3, 0.9)]
    v = v0 + 3.5 + rng.uniform(0, max(v1 - v0 - 7, 0))
    acc.add("car", b, u=occupied, v=v, dang=np.pi / 2, kind=CAR)


def _estate(acc, b, rng, size_u, size_v, style: Style):
    towers = rng.random() < 0.3
    bw = rng.uniform(18, 24) if towers else rng.uniform(30, 55)
    bd = bw if towers else rng.uniform(12, 16)
    lo, hi = style.estate_storeys
    gap_u, gap_v = rng.uniform(14, 26), max(18.0, 0.6 * 3 * hi)
    cu = np.arange(8 + bw / 2, size_u - 8 - bw / 2 + 1e-9, bw + gap_u)
    cv = np.arange(8 + bd / 2, size_v - 8 - bd / 2 + 1e-9, bd + gap_v)
    u, v = (a.ravel() for a in np.meshgrid(cu, cv, indexing="ij"))
    keep = rng.random(len(u)) < 0.92
    u, v = u[keep], v[keep]
    n = len(u)
    roof = np.where(rng.random(n) < style.flat_share_core, FLAT, HIP)
    st = rng.integers(lo, hi + 1, n)
    _add_buildings(
        acc, b, u, v, np.full(n, bw / 2), np.full(n, bd / 2), st, roof, np.zeros(n), -np.ones(n)
    )
    for uu, vv in zip(u, v, strict=True):
        if rng.random() < 0.7:
            slots = np.arange(uu - bw / 2 + 1.5, uu + bw / 2 - 1.5, 2.7)
            slots = slots[rng.random(len(slots)) < 0.6]
            acc.add("car", b, u=slots, v=vv - bd / 2 - 5, dang=np.pi / 2, kind=CAR)
    avoid = (u, v - 2.5, np.full(n, bw / 2), np.full(n, bd / 2 + 2.5))
    _trees_in(acc, b, rng, 2, 2, size_u - 2, size_v - 2, 1 / 260, style, avoid=avoid)


def _oldtown(acc, b, rng, size_u, size_v, style: Style):
    def cells(length):
        sizes = []
        total, next_lane = 0.0, rng.integers(3, 6)
        while total < length:
            if next_lane == 0:
                sizes.append(-rng.uniform(2.5, 4.0))
                next_lane = rng.integers(3, 6)
            else:
                sizes.append(rng.uniform(7, 11))
                next_lane -= 1
            total += abs(sizes[-1])
        s = np.array(sizes)
        start = np.concatenate([[0.0], np.cumsum(np.abs(s))[:-1]])
        keep = (s > 0) & (start + s <= length)
        return start[keep] + s[keep] / 2, s[keep]

    cu, su = cells(size_u)
    cv, sv = cells(size_v)
    uu, vv = (a.ravel() for a in np.meshgrid(cu, cv, indexing="ij"))
    wu, wv = (a.ravel() for a in np.meshgrid(su, sv, indexing="ij"))
    n = len(uu)
    occupied = rng.random(n) < 0.86
    hu = wu / 2 * rng.uniform(0.78, 0.98, n)
    hv = wv / 2 * rng.uniform(0.78, 0.98, n)
    u = uu + rng.uniform(-0.6, 0.6, n)
    v = vv + rng.uniform(-0.6, 0.6, n)
    lo, hi = style.low_storeys
    st = rng.integers(lo, hi + 2, n).clip(1, 4)
    roof = np.where(
        rng.random(n) < style.flat_share_low, FLAT, np.where(rng.random(n) < 0.5, HIP, GABLE)
    )
    # the front faces the nearest block edge
    dist = np.stack([v, size_v - v, u, size_u - u])
    side = np.argmin(dist, axis=0)
    fu = np.select([side == 2, side == 3], [-1.0, 1.0], 0.0)
    fv = np.select([side == 0, side == 1], [-1.0, 1.0], 0.0)
    o = occupied
    dang = np.deg2rad(rng.uniform(-7, 7, n))
    _add_buildings(acc, b, u[o], v[o], hu[o], hv[o], st[o], roof[o], fu[o], fv[o], dang[o])
    yard = ~occupied & (rng.random(n) < 0.6)
    _add_trees(acc, b, rng, uu[yard], vv[yard], (1.8, 3.5), style)


def _lowrise(acc, b, rng, size_u, size_v, style: Style, occupancy=0.9):
    rows = [(0, -1.0), (1, 1.0)] if size_v > 40 else [(0, -1.0)]
    plot_d = size_v / len(rows)
    lo, hi = style.low_storeys
    for side, sign in rows:
        n = int(size_u / 16) + 2
        pw = rng.uniform(16, 26, n)
        start = np.concatenate([[0.0], np.cumsum(pw)[:-1]])
        keep = start + pw <= size_u
        pc, pw = start[keep] + pw[keep] / 2, pw[keep]
        m = len(pc)
        w = np.minimum(rng.uniform(8, 13, m), pw - 3)
        d = np.minimum(rng.uniform(8, 12, m), plot_d - 6)
        setback = rng.uniform(3, 6, m)
        u = pc + rng.uniform(-0.3, 0.3, m) * (pw - w)
        v = setback + d / 2 if side == 0 else size_v - setback - d / 2
        has = rng.random(m) < occupancy
        st = rng.integers(lo, hi + 1, m)
        roof = np.where(
            rng.random(m) < style.flat_share_low, FLAT, np.where(rng.random(m) < 0.6, HIP, GABLE)
        )
        ones = np.ones(m)
        _add_buildings(
            acc,
            b,
            u[has],
            v[has] * ones[has],
            w[has] / 2,
            d[has] / 2,
            st[has],
            roof[has],
            0 * ones[has],
            sign * ones[has],
            np.deg2rad(rng.uniform(-4, 4, m))[has],
        )
        # gardens behind the houses: fruit trees in loose rows
        back0 = setback + d + 2 if side == 0 else plot_d * (len(rows) - 1)
        for k in range(m):
            nt = rng.poisson(2.5 * style.tree_density)
            tu = pc[k] + rng.uniform(-pw[k] / 2 + 1.5, pw[k] / 2 - 1.5, nt)
            lo_v = back0[k] if side == 0 else back0
            hi_v = plot_d if side == 0 else size_v - setback[k] - d[k] - 2
            tv = rng.uniform(lo_v, max(hi_v, lo_v), nt)
            _add_trees(acc, b, rng, tu, tv, (1.4, 2.8), style)
        car = has & (rng.random(m) < 0.35)
        cu = u[car] + (w[car] / 2 + 2.0) * np.where(rng.random(car.sum()) < 0.5, -1, 1)
        cv = v[car] * ones[car] if np.ndim(v) else np.full(car.sum(), v)
        acc.add("car", b, u=cu, v=cv, dang=np.pi / 2, kind=CAR)


def _industrial(acc, b, rng, size_u, size_v, style: Style):
    n = int(np.clip(round(size_u / rng.uniform(70, 110)), 1, 3))
    plen = size_u / n
    for k in range(n):
        hu = plen / 2 * rng.uniform(0.55, 0.85)
        hv = size_v / 2 * rng.uniform(0.45, 0.72)
        u = plen * (k + 0.5) + rng.uniform(-1, 1) * (plen / 2 - hu - 2)
        v = size_v / 2 + rng.uniform(-1, 1) * (size_v / 2 - hv - 3)
        height = rng.uniform(7, 13)
        _add_buildings(
            acc,
            b,
            [u],
            [v],
            [hu],
            [hv],
            [np.ceil(height / 4)],
            [METAL],
            [0.0],
            [-1.0],
            height=[height],
        )
        if rng.random() < 0.5 and v - hv > 22:
            _add_buildings(
                acc,
                b,
                [u - hu + 8],
                [v - hv - 10],
                [7],
                [6],
                [rng.integers(2, 4)],
                [FLAT],
                [0.0],
                [-1.0],
            )
        nt = rng.integers(0, 4)
        acc.add(
            "car",
            b,
            u=u + rng.uniform(-hu, hu, nt),
            v=np.full(nt, min(v + hv + 6, size_v - 3)),
            dang=rng.choice([0.0, np.pi / 2], nt),
            kind=TRUCK,
        )


def _open(acc, b, rng, kind, size_u, size_v, style: Style):
    if kind == PARK:
        _trees_in(acc, b, rng, 2, 2, size_u - 2, size_v - 2, 1 / 70, style, r=(2.0, 4.5))
    elif kind == SQUARE:
        edge = np.arange(4, size_u - 4, 9.0)
        _add_trees(acc, b, rng, edge, np.full(len(edge), 3.0), (2.0, 3.5), style)
    elif kind == SPORTS:
        hu, hv = min(50, size_u / 2 - 5), min(32, size_v / 2 - 5)
        if hu > 8 and hv > 6:
            acc.add(
                "prop",
                b,
                u=[size_u / 2],
                v=[size_v / 2],
                hu=[hu],
                hv=[hv],
                dang=[0.0],
                kind=[PITCH],
            )
    elif kind == MOSQUE:
        s = min(rng.uniform(9, 14), size_u / 3, size_v / 3)
        _add_buildings(
            acc,
            b,
            [size_u / 2],
            [size_v / 2],
            [s],
            [s],
            [3],
            [DOME],
            [0.0],
            [-1.0],
            height=[12 + s],
        )
        acc.add(
            "tower",
            b,
            u=[size_u / 2 + s + 3],
            v=[size_v / 2 - s + 2],
            r=[1.3],
            height=[rng.uniform(35, 55)],
        )
        _trees_in(
            acc,
            b,
            rng,
            2,
            2,
            size_u - 2,
            size_v - 2,
            1 / 400,
            style,
            avoid=([size_u / 2], [size_v / 2], [s + 2], [s + 2]),
        )


def _street_side(acc, b, rng, size_u, size_v, sides_hw, sidewalk_m, main, style: Style):
    """Parked and moving cars in the streets around a block, street trees, median trees."""
    p = np.clip(style.cars_per_100m * 5.5 / 100, 0, 0.95)
    for side in range(4):
        hw = sides_hw[side]
        along = size_u if side < 2 else size_v
        out = -1.0 if side in (0, 2) else 1.0
        base = (0.0 if side in (0, 2) else (size_v if side == 1 else size_u)) + out * sidewalk_m
        slots = np.arange(3.0, along - 3.0, 5.5)
        if hw >= 3.5:
            park = slots[rng.random(len(slots)) < p]
            off = base + out * 1.3
            _side_cars(acc, b, side, park, off, 0.0)
        if side in (0, 2) and hw >= 3.0:  # moving cars once per street
            moving = slots[rng.random(len(slots)) < p / 4]
            lane = base + out * hw * rng.choice([0.5, 1.5], len(moving))
            _side_cars(acc, b, side, moving, lane, 0.0)
        if sidewalk_m >= 2.0:
            trees = np.arange(rng.uniform(2, 8), along - 2, 9.0)
            trees = trees[rng.random(len(trees)) < 0.35 * style.tree_density]
            _side_trees(acc, b, rng, side, trees, base - out * sidewalk_m * 0.45, style)
        if side in (0, 2) and main[side] and hw >= 9:
            trees = np.arange(rng.uniform(2, 8), along - 2, 10.0)
            trees = trees[rng.random(len(trees)) < 0.6 * style.tree_density]
            _side_trees(acc, b, rng, side, trees, base + out * hw, style)


def _side_cars(acc, b, side, t, offset, dang):
    if side < 2:
        acc.add("car", b, u=t, v=np.broadcast_to(offset, t.shape), dang=dang, kind=CAR)
    else:
        acc.add("car", b, u=np.broadcast_to(offset, t.shape), v=t, dang=np.pi / 2 + dang, kind=CAR)


def _side_trees(acc, b, rng, side, t, offset, style):
    off = np.broadcast_to(offset, t.shape)
    u, v = (t, off) if side < 2 else (off, t)
    _add_trees(acc, b, rng, u, v, (1.6, 3.0), style)


# --------------------------------------------------------------------------- the whole city


def build_layout(
    width: int, height: int, gsd: float, style: Style, damage_rate: float, seed: int
) -> CityLayout:
    """Lay out a whole city: (width, height) px at `gsd` m/px, deterministic in `seed`."""
    dist = _districts(width, height, gsd, style, seed)
    blocks, acc, lots, open_lots = _blocks(dist, width, height, gsd, style, seed)
    lot_u0, lot_v0, lot_angle = lots

    def place(t: dict[str, np.ndarray]):
        """Lot metres -> raster pixels for a table collected by _Acc."""
        bid = t["block"].astype(np.int64)
        a = lot_angle[bid]
        u = lot_u0[bid] + t["u"] / gsd
        v = lot_v0[bid] + t["v"] / gsd
        c, s = np.cos(a), np.sin(a)
        return u * c - v * s, u * s + v * c, a

    px = 1.0 / gsd
    bt = acc.table("bld", ("u", "v", "hu", "hv", "dang", "storeys", "roof", "fu", "fv", "height"))
    bx, by, ba = place(bt)
    ang = ba + bt["dang"]
    rect = (bx, by, bt["hu"] * px, bt["hv"] * px, np.cos(ang), np.sin(ang))
    keep = _inside(dist, *rect, bt["block"], width, height)
    bt = {k: v[keep] for k, v in bt.items()}
    bx, by, ang = bx[keep], by[keep], ang[keep]
    fronts = (
        bt["fu"] * np.cos(ba[keep]) - bt["fv"] * np.sin(ba[keep]),
        bt["fu"] * np.sin(ba[keep]) + bt["fv"] * np.cos(ba[keep]),
    )
    buildings = _buildings(bt, bx, by, ang, fronts, blocks, style, gsd, damage_rate, seed)

    tt = acc.table("tree", ("u", "v", "r", "height", "kind"))
    tx, ty, _ = place(tt)
    tkeep = _point_ok(dist, tx, ty, tt["block"], width, height)
    tone = 0.85 + 0.3 * noise.unit24(noise.hash2(np.arange(len(tx)), 0, noise.key(seed, 40)))
    f32 = np.float32
    trees = Trees(
        x=tx[tkeep].astype(f32), y=ty[tkeep].astype(f32), r=(tt["r"] * px)[tkeep].astype(f32),
        height_m=tt["height"][tkeep].astype(f32), kind=tt["kind"][tkeep].astype(np.int8),
        tone=tone[tkeep].astype(f32),
    )  # fmt: skip

    sun_az, sun_el = np.deg2rad(style.sun_azimuth_deg), np.deg2rad(style.sun_elevation_deg)
    view_az, off = np.deg2rad(style.view_azimuth_deg), np.deg2rad(style.offnadir_deg)
    shadow = (-np.sin(sun_az) / np.tan(sun_el) * px, np.cos(sun_az) / np.tan(sun_el) * px)
    lean = (-np.sin(view_az) * np.tan(off) * px, np.cos(view_az) * np.tan(off) * px)
    buildings = _derive(buildings, shadow, lean, style, gsd, seed)
    props = _props(acc, place, dist, blocks, open_lots, buildings, style, gsd, seed, width, height)
    wt = acc.table("tower", ("u", "v", "r", "height"))
    wx, wy, _ = place(wt)
    wkeep = _point_ok(dist, wx, wy, wt["block"], width, height)
    towers = Towers(wx[wkeep], wy[wkeep], (wt["r"] * px)[wkeep], wt["height"][wkeep])
    index = {
        "buildings": SpanIndex.build(*buildings.bbox.T),
        "trees": _tree_index(trees, shadow),
        "props": _prop_index(props, shadow),
        "towers": _tree_index(towers, shadow),
    }
    return CityLayout(
        width=width, height=height, gsd=gsd, seed=seed, style=style, shadow_per_m=shadow,
        lean_per_m=lean, districts=dist, blocks=blocks, buildings=buildings, trees=trees,
        props=props, towers=towers, index=index,
    )  # fmt: skip


def _blocks(dist: Districts, width, height, gsd, style: Style, seed):
    """Per-block attributes for every cell of every grid, and the contents of those
    that reach the raster."""
    nb = int(dist.block_ptr[-1])
    fabric = np.zeros(nb, np.int8)
    kind = np.zeros(nb, np.int8)
    lot_u0, lot_v0, lot_angle = np.zeros(nb), np.zeros(nb), np.zeros(nb)
    lot_l, lot_d = np.zeros(nb), np.zeros(nb)
    content = np.zeros(nb, bool)
    acc = _Acc()
    for d in range(len(dist.angle)):
        b0, b1 = dist.block_ptr[d], dist.block_ptr[d + 1]
        if b1 == b0:
            continue
        up, vp = slice(dist.u_ptr[d], dist.u_ptr[d + 1]), slice(dist.v_ptr[d], dist.v_ptr[d + 1])
        U, Uh, Um = dist.u_pos[up], dist.u_hw[up], dist.u_main[up]
        V, Vh, Vm = dist.v_pos[vp], dist.v_hw[vp], dist.v_main[vp]
        sw = dist.sidewalk[d]
        ii, jj = (
            a.ravel()
            for a in np.meshgrid(np.arange(len(U) - 1), np.arange(len(V) - 1), indexing="ij")
        )
        ids = b0 + ii * (len(V) - 1) + jj
        u0, u1 = U[ii] + Uh[ii] + sw, U[ii + 1] - Uh[ii + 1] - sw
        v0, v1 = V[jj] + Vh[jj] + sw, V[jj + 1] - Vh[jj + 1] - sw
        lot_u0[ids], lot_v0[ids], lot_angle[ids] = u0, v0, dist.angle[d]
        lot_l[ids], lot_d[ids] = (u1 - u0) * gsd, (v1 - v0) * gsd
        char = int(dist.character[d])
        fabric[ids] = char
        h = noise.hash2(ids, 0, noise.key(seed, _S_BLOCK))
        r1, r2 = noise.unit24(h), noise.unit24(noise.mix32(h))
        if char == RURAL:
            village = r1 < 0.12
            kind[ids] = np.where(village, BUILT, FIELDS)
            fabric[ids] = np.where(village, CHARACTERS.index("lowrise"), RURAL)
        else:
            opens = r1 < style.open_share * (2.5 if char == CHARACTERS.index("industrial") else 1)
            choice = np.array([PARK, SQUARE, LOT, SPORTS, MOSQUE, PARK, LOT])
            kind[ids] = np.where(opens, choice[(r2 * len(choice)).astype(int)], BUILT)
        # which cells reach the raster and belong (at least partly) to this district
        c, s = np.cos(dist.angle[d]), np.sin(dist.angle[d])
        pu = np.stack([u0, u1, u1, u0, (u0 + u1) / 2])
        pv = np.stack([v0, v0, v1, v1, (v0 + v1) / 2])
        x, y = pu * c - pv * s, pu * s + pv * c
        near = (
            (x.max(0) > -MARGIN_PX)
            & (x.min(0) < width + MARGIN_PX)
            & (y.max(0) > -MARGIN_PX)
            & (y.min(0) < height + MARGIN_PX)
        )
        near &= (u1 > u0) & (v1 > v0)
        if not near.any():
            continue
        owner, _ = dist.locate(x[:, near], y[:, near])
        mine = np.flatnonzero(near)[(owner == d).any(axis=0)]
        content[ids[mine]] = True
        for k in mine:
            bid = int(ids[k])
            rng = np.random.default_rng((seed, _S_BLOCK, bid))
            size_u, size_v = lot_l[bid], lot_d[bid]
            fab = CHARACTERS[int(fabric[bid])]
            if kind[bid] == BUILT:
                _fill_built(acc, bid, rng, fab, size_u, size_v, style)
            elif kind[bid] != FIELDS:
                _open(acc, bid, rng, int(kind[bid]), size_u, size_v, style)
            if fab != "rural":
                i, j = ii[k], jj[k]
                sides_hw = np.array([Vh[j], Vh[j + 1], Uh[i], Uh[i + 1]]) * gsd
                main = (Vm[j], Vm[j + 1], Um[i], Um[i + 1])
                _street_side(acc, bid, rng, size_u, size_v, sides_hw, sw * gsd, main, style)
            elif rng.random() < 0.5:
                edge = np.arange(rng.uniform(0, 20), size_u, 12.0)
                edge = edge[rng.random(len(edge)) < 0.3 * style.tree_density]
                _add_trees(acc, bid, rng, edge, np.full(len(edge), -1.0), (1.5, 3.5), style)
    ground_a, ground_b, mix, parcel = _ground_palette(fabric, kind, lot_d, style, gsd, seed)
    # open spaces (where tent camps go): id, centre px, angle, size m
    o = np.flatnonzero(content & np.isin(kind, (PARK, SQUARE, LOT, SPORTS)))
    uc, vc = lot_u0[o] + lot_l[o] / 2 / gsd, lot_v0[o] + lot_d[o] / 2 / gsd
    c, s = np.cos(lot_angle[o]), np.sin(lot_angle[o])
    open_lots = (o, uc * c - vc * s, uc * s + vc * c, lot_angle[o], lot_l[o], lot_d[o])
    blocks = Blocks(fabric, kind, ground_a, ground_b, mix, parcel)
    return blocks, acc, (lot_u0, lot_v0, lot_angle), open_lots


def _fill_built(acc, bid, rng, fab: str, size_u, size_v, style: Style):
    if size_u < 8 or size_v < 8:
        return
    if fab == "core":
        _core(acc, bid, rng, size_u, size_v, style, style.flat_share_core, style.core_storeys)
    elif fab == "estate":
        _estate(acc, bid, rng, size_u, size_v, style)
    elif fab == "oldtown":
        _oldtown(acc, bid, rng, size_u, size_v, style)
    elif fab == "industrial":
        _industrial(acc, bid, rng, size_u, size_v, style)
    else:
        _lowrise(acc, bid, rng, size_u, size_v, style, occupancy=0.9 if fab == "lowrise" else 0.5)


def _ground_palette(fabric, kind, lot_d, style: Style, gsd, seed):
    """Two ground colours and their mix per block; fields get a parcel width."""
    paving, soil, grass = (np.array(c, np.float32) for c in (style.paving, style.soil, style.grass))
    by_fabric = {
        "core": (paving, soil, 0.35),
        "oldtown": (paving * 0.95, soil, 0.45),
        "estate": (grass, paving, 0.35),
        "lowrise": (grass, soil, 0.5),
        "industrial": (soil * 1.08, paving, 0.4),
        "rural": (soil, grass, 0.4),
    }
    by_kind = {
        PARK: (grass, grass * 0.85, 0.5),
        SQUARE: (paving * 1.06, paving * 0.94, 0.5),
        LOT: (soil, soil * 0.85, 0.45),
        SPORTS: (paving, paving * 0.9, 0.3),
        MOSQUE: (paving * 1.1, paving, 0.3),
        FIELDS: (soil, grass, 0.5),
    }
    n = len(fabric)
    a = np.zeros((n, 3), np.float32)
    bcol = np.zeros((n, 3), np.float32)
    mix = np.zeros(n, np.float32)
    for f, name in enumerate(CHARACTERS):
        sel = (fabric == f) & (kind == BUILT)
        a[sel], bcol[sel], mix[sel] = by_fabric[name]
    for k, (ca, cb, m) in by_kind.items():
        sel = kind == k
        a[sel], bcol[sel], mix[sel] = ca, cb, m
    jitter = 0.92 + 0.16 * noise.unit24(noise.hash2(np.arange(n), 1, noise.key(seed, 41)))
    parcel = np.where(kind == FIELDS, lot_d / gsd / np.maximum(1, np.round(lot_d / 45)), 0.0)
    return (
        (a * jitter[:, None]).astype(np.float32),
        (bcol * jitter[:, None]).astype(np.float32),
        mix,
        parcel.astype(np.float32),
    )


def _inside(dist: Districts, x, y, hu, hv, c, s, block, width, height):
    """Keep rectangles wholly inside their own district, clear of arterials, near the raster."""
    su = np.array([-1.0, 1.0, 1.0, -1.0])[:, None]
    sv = np.array([-1.0, -1.0, 1.0, 1.0])[:, None]
    cx = x + su * hu * c - sv * hv * s
    cy = y + su * hu * s + sv * hv * c
    own = _district_of_block(dist, block)
    who, edge = dist.locate(cx, cy)
    clear = dist.arterial_hw + dist.sidewalk[own] + 1.0
    ok = ((who == own) & (edge > clear)).all(axis=0)
    ext_x, ext_y = rect_extent(hu, hv, c, s)
    return ok & (x + ext_x > 0) & (x - ext_x < width) & (y + ext_y > 0) & (y - ext_y < height)


def _point_ok(dist: Districts, x, y, block, width, height, pad=40.0):
    own = _district_of_block(dist, block)
    who, edge = dist.locate(x, y)
    inside = (x > -pad) & (x < width + pad) & (y > -pad) & (y < height + pad)
    return (who == own) & (edge > dist.arterial_hw + 1.0) & inside


def _district_of_block(dist: Districts, block):
    return np.searchsorted(dist.block_ptr, block.astype(np.int64), side="right") - 1


def _buildings(bt, x, y, ang, fronts, blocks: Blocks, style: Style, gsd, rate, seed) -> Buildings:
    """Building table with colours and damage grades (geometry of damage comes later)."""
    n = len(x)
    px = 1.0 / gsd
    roof = bt["roof"].astype(np.int8)
    h = noise.hash2(np.arange(n), 2, noise.key(seed, 42))
    pick = noise.unit24(h)
    tint = (0.9 + 0.2 * noise.unit24(noise.mix32(h)))[:, None]
    roof_rgb = np.zeros((n, 3), np.float32)
    for kinds, palette in (
        ((FLAT,), style.flat_roofs),
        ((HIP, GABLE), style.tile_roofs),
        ((METAL,), style.metal_roofs),
        ((DOME,), ((0.55, 0.58, 0.60),)),
    ):
        sel = np.isin(roof, kinds)
        pal = np.array(palette, np.float32)
        roof_rgb[sel] = pal[(pick[sel] * len(pal)).astype(int)]
    roof_rgb = (roof_rgb * tint).astype(np.float32)
    fac = np.array(style.facades, np.float32)
    facade_rgb = fac[(noise.unit24(noise.mix32(h + np.uint32(3))) * len(fac)).astype(int)]

    field = damage.damage_field(x, y, style.damage_scale_m / gsd, seed)
    jitter = noise.unit24(noise.mix32(h + np.uint32(5)))
    score = field + 0.12 * jitter + 0.05 * np.clip(bt["height"] / 30, 0, 1)
    storeys = bt["storeys"].astype(np.int16)
    grade = damage.assign_grades(score, storeys, rate, style.collapse_share, style.partial_share)
    zeros = np.zeros(n)
    return Buildings(
        x=x,
        y=y,
        hu=bt["hu"] * px,
        hv=bt["hv"] * px,
        cos=np.cos(ang),
        sin=np.sin(ang),
        height_m=bt["height"],
        storeys=storeys,
        roof=roof,
        roof_rgb=roof_rgb,
        facade_rgb=facade_rgb,
        fabric=blocks.fabric[bt["block"].astype(np.int64)],
        grade=grade,
        st_x=x,
        st_y=y,
        st_hu=zeros,
        st_hv=zeros,
        st_height_m=zeros,
        roof_dx=zeros,
        roof_dy=zeros,
        roof_cos=np.cos(ang),
        roof_sin=np.sin(ang),
        roof_shade=np.ones(n, np.float32),
        heap_x=x,
        heap_y=y,
        heap_hu=zeros,
        heap_hv=zeros,
        spread=zeros,
        bias_x=fronts[0],
        bias_y=fronts[1],
        dust_r=zeros,
        dust=zeros,
        bbox=np.zeros((n, 4)),
    )


def _derive(b: Buildings, shadow, lean, style: Style, gsd, seed) -> Buildings:
    """What still stands and what lies in debris, from each building's damage grade."""
    n = len(b)
    px = 1.0 / gsd
    rng = np.random.default_rng((seed, _S_DAMAGE))
    u = rng.random((n, 8))
    g = b.grade
    st_hu, st_hv = b.hu.copy(), b.hv.copy()
    st_x, st_y = b.x.copy(), b.y.copy()
    st_h = b.height_m.astype(np.float64).copy()
    heap_hu, heap_hv = np.zeros(n), np.zeros(n)
    heap_x, heap_y = b.x.copy(), b.y.copy()
    roof_dang = np.zeros(n)
    shift_x, shift_y = np.zeros(n), np.zeros(n)
    shade = np.ones(n)

    soft = g == damage.SOFT_STOREY
    lost = np.maximum(1, np.floor(u[:, 0] * np.maximum(b.storeys / 3, 1)))
    st_h[soft] = np.maximum(b.height_m[soft] - 3.0 * lost[soft], 2.5)
    roof_dang[soft] = np.deg2rad(u[soft, 1] * 6 - 3)
    shift = (0.5 + 1.5 * u[:, 2]) * px
    shift_x[soft] = (shift * np.cos(u[:, 3] * 2 * np.pi))[soft]
    shift_y[soft] = (shift * np.sin(u[:, 3] * 2 * np.pi))[soft]

    part = g == damage.PARTIAL
    f = 0.3 + 0.3 * u[:, 4]
    sign = np.where(u[:, 5] < 0.5, -1.0, 1.0)
    st_hu[part] = (b.hu * (1 - f))[part]
    off = sign * b.hu * f  # standing part moves away from the collapsed end
    st_x[part], st_y[part] = (b.x + off * b.cos)[part], (b.y + off * b.sin)[part]
    heap_hu[part], heap_hv[part] = (b.hu * f)[part], b.hv[part]
    off = -sign * b.hu * (1 - f)
    heap_x[part], heap_y[part] = (b.x + off * b.cos)[part], (b.y + off * b.sin)[part]
    st_h[part] = (b.height_m * (0.5 + 0.35 * u[:, 6]))[part]
    shade[part] = 0.8 + 0.35 * u[part, 7]

    coll = g == damage.COLLAPSED
    st_hu[coll], st_hv[coll], st_h[coll] = 0, 0, 0
    heap_hu[coll], heap_hv[coll] = b.hu[coll], b.hv[coll]

    debris = part | coll
    spread = np.where(
        debris,
        style.debris_spread_m * px * (0.6 + 0.8 * rng.random(n)) * np.sqrt(b.height_m / 18),
        0.0,
    )
    push = spread * (0.3 + 0.6 * rng.random(n))
    bias_x, bias_y = b.bias_x * push, b.bias_y * push
    dust_r = np.where(coll | (part & (rng.random(n) < 0.5)), (b.hu + b.hv) * 1.3 + spread * 2, 0.0)
    dust = style.dust * (0.4 + 0.6 * rng.random(n)) * (dust_r > 0)

    roof_dx = st_h * lean[0] + shift_x
    roof_dy = st_h * lean[1] + shift_y
    ra = np.arctan2(b.sin, b.cos) + roof_dang
    # the box of everything drawn for a building: footprint, shadow, leaned (and twisted)
    # roof, debris heap and dust; a window draws the building when it meets this box
    ex, ey = rect_extent(b.hu, b.hv, b.cos, b.sin)
    twist = np.abs(roof_dang) * (b.hu + b.hv)
    reach_x = np.maximum.reduce(
        [np.abs(st_h * shadow[0]), np.abs(roof_dx) + twist, spread + np.abs(bias_x), dust_r]
    )
    reach_y = np.maximum.reduce(
        [np.abs(st_h * shadow[1]), np.abs(roof_dy) + twist, spread + np.abs(bias_y), dust_r]
    )
    pad_x, pad_y = ex + reach_x + 3, ey + reach_y + 3
    bbox = np.stack([b.x - pad_x, b.y - pad_y, b.x + pad_x, b.y + pad_y], axis=1)
    return Buildings(
        **{
            **b.__dict__,
            "st_x": st_x,
            "st_y": st_y,
            "st_hu": st_hu,
            "st_hv": st_hv,
            "st_height_m": st_h,
            "roof_dx": roof_dx,
            "roof_dy": roof_dy,
            "roof_cos": np.cos(ra),
            "roof_sin": np.sin(ra),
            "roof_shade": shade.astype(np.float32),
            "heap_x": heap_x,
            "heap_y": heap_y,
            "heap_hu": heap_hu,
            "heap_hv": heap_hv,
            "spread": spread,
            "bias_x": bias_x,
            "bias_y": bias_y,
            "dust_r": dust_r,
            "dust": dust,
            "bbox": bbox,
        }
    )


def _props(
    acc, place, dist, blocks, open_lots, b: Buildings, style: Style, gsd, seed, width, height
) -> Props:
    """Cars and pitches from the blocks, then what damage brings, then roof clutter."""
    px = 1.0 / gsd
    rng = np.random.default_rng((seed, _S_EXTRA))
    cols: dict[str, list[np.ndarray]] = defaultdict(list)

    def add(x, y, hu, hv, ang, kind, rgb, shade=1.0):
        n = len(x)
        for k, v in (
            ("x", x),
            ("y", y),
            ("hu", hu),
            ("hv", hv),
            ("ang", ang),
            ("kind", kind),
            ("shade", shade),
        ):
            cols[k].append(np.broadcast_to(np.asarray(v, np.float64), (n,)))
        cols["rgb"].append(np.broadcast_to(np.asarray(rgb, np.float32), (n, 3)))

    ct = acc.table("car", ("u", "v", "dang", "kind"))
    cx, cy, ca = place(ct)
    ok = _point_ok(dist, cx, cy, ct["block"], width, height)
    truck = ct["kind"] == TRUCK
    car_palette = np.array(
        [
            (0.86, 0.86, 0.85),
            (0.86, 0.86, 0.85),
            (0.62, 0.63, 0.64),
            (0.15, 0.15, 0.16),
            (0.55, 0.14, 0.12),
            (0.18, 0.26, 0.45),
            (0.75, 0.72, 0.62),
        ],
        np.float32,
    )
    rgb = car_palette[rng.integers(0, len(car_palette), len(cx))]
    hu = np.where(truck, 6.0, 2.25) * px
    hv = np.where(truck, 1.25, 0.95) * px
    add(cx[ok], cy[ok], hu[ok], hv[ok], (ca + ct["dang"])[ok], ct["kind"][ok], rgb[ok])

    pt = acc.table("prop", ("u", "v", "hu", "hv", "dang", "kind"))
    ptx, pty, pta = place(pt)
    turf = np.where(rng.random(len(ptx)) < 0.6, 0, 1)
    pitch_rgb = np.array([(0.30, 0.50, 0.26), (0.62, 0.34, 0.26)], np.float32)[turf]
    add(ptx, pty, pt["hu"] * px, pt["hv"] * px, pta + pt["dang"], PITCH, pitch_rgb)

    _tents(add, open_lots, style, gsd, seed, rng, b)
    _rescue(add, b, rng, px)
    _slabs(add, b, rng)
    _roof_clutter(add, b, style, rng, px)

    if not cols:
        z = np.zeros(0)
        return Props(z, z, z, z, z, z, z.astype(np.int8), np.zeros((0, 3), np.float32), z)
    # float32 halves the largest table; positions stay within 0.01 px
    cat = {k: np.concatenate(v).astype(np.float32) for k, v in cols.items()}
    return Props(
        x=cat["x"], y=cat["y"], hu=cat["hu"], hv=cat["hv"], cos=np.cos(cat["ang"]),
        sin=np.sin(cat["ang"]), kind=cat["kind"].astype(np.int8), rgb=cat["rgb"],
        shade=cat["shade"],
    )  # fmt: skip


def _tents(add, lots, style: Style, gsd, seed, rng, b: Buildings):
    """Tent camps and blue tarps in the open spaces of the most damaged areas."""
    if not b.damaged.any():
        return
    px = 1.0 / gsd
    _, cx, cy, ang, size_u, size_v = lots
    scale = style.damage_scale_m / gsd
    field = damage.damage_field(cx, cy, scale, seed)
    level = np.quantile(damage.damage_field(b.x, b.y, scale, seed), 0.6)
    for k in np.flatnonzero(field > level):
        area_ha = size_u[k] * size_v[k] / 1e4
        want = rng.poisson(style.tents_per_ha * area_ha * min(1.0, (field[k] - level) / 0.1))
        cols, rows = int((size_u[k] - 6) // 6), int((size_v[k] - 6) // 5.5)
        n = int(min(want, max(cols, 0) * max(rows, 0)))
        if n == 0:
            continue
        gi, gj = np.divmod(np.arange(n), max(rows, 1))
        du = (gi - (min(n, cols * rows) // max(rows, 1)) / 2) * 6.0 * px
        dv = (gj - min(n, rows) / 2) * 5.5 * px
        c, s = np.cos(ang[k]), np.sin(ang[k])
        x = cx[k] + du * c - dv * s + rng.normal(0, 0.4 * px, n)
        y = cy[k] + du * s + dv * c + rng.normal(0, 0.4 * px, n)
        kind = np.where(rng.random(n) < 0.7, TENT, TARP)
        rgb = np.where(
            (kind == TENT)[:, None],
            np.array([0.86, 0.87, 0.86], np.float32),
            np.array([0.16, 0.36, 0.72], np.float32),
        )
        add(x, y, np.full(n, 2.0 * px), np.full(n, 1.7 * px), ang[k], kind, rgb)


def _rescue(add, b: Buildings, rng, px):
    """Excavators and trucks by collapses, and cleared debris piled along the road."""
    coll = np.flatnonzero(b.grade == damage.COLLAPSED)
    if not len(coll):
        return
    reach = (b.hv[coll] + b.spread[coll]) + 5 * px
    fx, fy = b.bias_x[coll], b.bias_y[coll]
    norm = np.maximum(np.hypot(fx, fy), 1e-9)
    fx, fy = fx / norm, fy / norm
    x, y = b.x[coll] + fx * reach, b.y[coll] + fy * reach
    veh = rng.random(len(coll)) < 0.35
    kind = np.where(rng.random(len(coll)) < 0.6, EXCAVATOR, TRUCK)
    rgb = np.where(
        (kind == EXCAVATOR)[:, None], np.float32([0.85, 0.68, 0.12]), np.float32([0.88, 0.88, 0.86])
    )
    ang = np.arctan2(fy, fx) + np.pi / 2 + rng.normal(0, 0.3, len(coll))
    hu = np.where(kind == EXCAVATOR, 3.0, 4.0) * px
    add(x[veh], y[veh], hu[veh], np.full(veh.sum(), 1.3 * px), ang[veh], kind[veh], rgb[veh])
    pile = rng.random(len(coll)) < 0.3
    lat = rng.uniform(-12, 12, len(coll)) * px
    px_, py_ = x - fy * lat, y + fx * lat
    size = rng.uniform(1.5, 3.0, len(coll)) * px
    add(
        px_[pile],
        py_[pile],
        size[pile],
        size[pile] * 0.7,
        ang[pile],
        PILE,
        np.float32([0.62, 0.60, 0.57]),
    )


def _slabs(add, b: Buildings, rng):
    """Broken roof slabs lying tilted in the debris of a collapse."""
    coll = np.flatnonzero(b.grade == damage.COLLAPSED)
    owner = np.repeat(coll, rng.integers(0, 4, len(coll)))
    n = len(owner)
    if not n:
        return
    hu = b.hu[owner] * rng.uniform(0.25, 0.55, n)
    hv = b.hv[owner] * rng.uniform(0.3, 0.6, n)
    lu = (rng.random(n) * 2 - 1) * (b.hu[owner] - hu)
    lv = (rng.random(n) * 2 - 1) * (b.hv[owner] - hv)
    c, s = b.cos[owner], b.sin[owner]
    x, y = b.x[owner] + lu * c - lv * s, b.y[owner] + lu * s + lv * c
    ang = np.arctan2(s, c) + np.deg2rad(rng.uniform(-25, 25, n))
    add(x, y, hu, hv, ang, SLAB, b.roof_rgb[owner], rng.uniform(0.55, 1.1, n))


def _roof_clutter(add, b: Buildings, style: Style, rng, px):
    """Water tanks, solar water heaters and stair houses on flat roofs still standing."""
    flat = np.flatnonzero((b.roof == FLAT) & (b.grade < damage.PARTIAL))
    if not len(flat):
        return
    area = 4 * b.hu[flat] * b.hv[flat] / px**2
    base_x, base_y = b.x[flat] + b.roof_dx[flat], b.y[flat] + b.roof_dy[flat]
    c, s = b.roof_cos[flat], b.roof_sin[flat]
    hu, hv = b.hu[flat], b.hv[flat]

    def scatter(counts, half_u, half_v, kind, rgb, ang_off=0.0):
        owner = np.repeat(np.arange(len(flat)), counts)
        if not len(owner):
            return
        m = 1.2 * px
        lu = (rng.random(len(owner)) * 2 - 1) * np.maximum(hu[owner] - half_u - m, 0)
        lv = (rng.random(len(owner)) * 2 - 1) * np.maximum(hv[owner] - half_v - m, 0)
        x = base_x[owner] + lu * c[owner] - lv * s[owner]
        y = base_y[owner] + lu * s[owner] + lv * c[owner]
        ang = np.arctan2(s[owner], c[owner]) + ang_off
        add(
            x,
            y,
            np.broadcast_to(half_u, x.shape),
            np.broadcast_to(half_v, x.shape),
            ang,
            kind,
            rgb[owner] if np.ndim(rgb) == 2 else rgb,
        )

    tanks = np.minimum(rng.poisson(area / 110), 8)
    tank_rgb = np.array([(0.92, 0.92, 0.90), (0.12, 0.12, 0.13), (0.25, 0.42, 0.70)], np.float32)
    owner_rgb = tank_rgb[rng.integers(0, 3, len(flat))]
    scatter(tanks, 0.6 * px, 0.6 * px, TANK, owner_rgb)
    heaters = np.where(rng.random(len(flat)) < 0.6, np.minimum(rng.poisson(area / 120), 8), 0)
    scatter(heaters, 1.0 * px, 0.75 * px, HEATER, np.float32([0.16, 0.19, 0.26]))
    stairs = (b.storeys[flat] >= 3).astype(int)
    stair_rgb = np.clip(b.roof_rgb[flat] * 1.08, 0, 1)
    scatter(stairs, 1.6 * px, 2.0 * px, STAIRS, stair_rgb)


def _tree_index(t, shadow) -> SpanIndex:
    """Crowns and their shadows (tree height along the shadow vector)."""
    sx, sy = t.height_m * shadow[0], t.height_m * shadow[1]
    x0 = t.x - t.r + np.minimum(sx, 0) - 2
    x1 = t.x + t.r + np.maximum(sx, 0) + 2
    y0 = t.y - t.r + np.minimum(sy, 0) - 2
    y1 = t.y + t.r + np.maximum(sy, 0) + 2
    return SpanIndex.build(x0, y0, x1, y1)


def _prop_index(p: Props, shadow) -> SpanIndex:
    ex, ey = rect_extent(p.hu, p.hv, p.cos, p.sin)
    h = PROP_HEIGHT_M[p.kind]
    sx, sy = h * shadow[0], h * shadow[1]
    x0 = p.x - ex + np.minimum(sx, 0) - 2
    x1 = p.x + ex + np.maximum(sx, 0) + 2
    y0 = p.y - ey + np.minimum(sy, 0) - 2
    y1 = p.y + ey + np.maximum(sy, 0) + 2
    return SpanIndex.build(x0, y0, x1, y1)

"""Regional looks of a synthetic city: one documented, frozen parameter set per style.

A style fixes everything that differs between the regions and acquisitions of a real
event (synth.md, "Styles and sensors"): the urban fabric (which kinds of districts,
block and street sizes, storeys, roof mix), the palettes (roofs, facades, ground,
vegetation, season), the acquisition (sun azimuth and elevation, off-nadir view, haze,
colour balance, blur, noise, JPEG compression) and how damage looks. The styles are
deliberately far apart so that training on one and testing on another is a real
domain shift. Colours are display RGB in [0, 1]. Names never contain ``_`` so that a
style name is a valid ST_Turkey_2023 region id.
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[float, float, float]

# A district's character sets its street grid and what is built in its blocks:
# core (perimeter rows of mid-rise RC blocks), oldtown (small tile-roof houses, lanes),
# estate (free-standing high slabs on lawns), lowrise (detached houses in gardens),
# industrial (large metal sheds in yards), rural (fields with a few hamlets).
CHARACTERS = ("core", "oldtown", "estate", "lowrise", "industrial", "rural")


@dataclass(frozen=True)
class Style:
    """One regional look. Lengths in metres, angles in degrees, colours display RGB.

    Fabric:
      district_m: mean size of a street-grid district (a Voronoi cell; arterials on
        its edges); grid_angle_deg / grid_angle_jitter_deg: street grid orientation
        (clockwise from the x axis) and its spread between districts.
      characters: (minimum urbanity, ((character, weight), ...)) levels, highest first;
        urbanity is 1 at a town centre and falls off over urban_radius_m.
      block_scale / street_scale: multiply every character's block and street sizes.
      arterial_m: width of the district-edge arterials; open_share: fraction of urban
        blocks left open (parks, squares, bare lots, sports grounds, mosques).
      core_storeys / estate_storeys / low_storeys: storey ranges (3 m a storey).
      flat_share_core / flat_share_low: share of flat roofs in core-estate and in
        lowrise-oldtown fabric (the rest are hipped or gabled tile roofs).
      tree_density: multiplies trees per area; bare_tree_share: leafless deciduous
        trees (winter); cars_per_100m: parked cars per 100 m of kerb.
    Palette: flat_roofs, tile_roofs, metal_roofs, facades (choices), asphalt,
      sidewalk, paving, soil, grass, foliage, crops (field colours).
    Acquisition: sun_azimuth_deg (direction to the sun, clockwise from north),
      sun_elevation_deg, view_azimuth_deg (direction to the satellite), offnadir_deg,
      shadow_rgb (multiplier inside shadows), haze (airlight fraction), airlight,
      gain (per-channel colour balance), gamma, blur_px (PSF sigma), noise (sensor
      noise sigma in [0, 1] units), jpeg_quality (0 = none).
    Damage: damage_scale_m (correlation length of the damage field), collapse_share
      and partial_share of damaged buildings (the rest are soft-storey collapses with
      an intact roof), debris_spread_m (how far a heap spreads past the footprint),
      dust (haze strength around fresh collapses), tents_per_ha (tents and tarps per
      hectare of open space where damage is near).
    """

    name: str
    description: str
    # fabric
    district_m: float
    grid_angle_deg: float
    grid_angle_jitter_deg: float
    characters: tuple[tuple[float, tuple[tuple[str, float], ...]], ...]
    urban_radius_m: float
    block_scale: float
    street_scale: float
    arterial_m: float
    open_share: float
    core_storeys: tuple[int, int]
    estate_storeys: tuple[int, int]
    low_storeys: tuple[int, int]
    flat_share_core: float
    flat_share_low: float
    tree_density: float
    bare_tree_share: float
    cars_per_100m: float
    # palette
    flat_roofs: tuple[RGB, ...]
    tile_roofs: tuple[RGB, ...]
    metal_roofs: tuple[RGB, ...]
    facades: tuple[RGB, ...]
    asphalt: RGB
    sidewalk: RGB
    paving: RGB
    soil: RGB
    grass: RGB
    foliage: RGB
    crops: tuple[RGB, ...]
    # acquisition
    sun_azimuth_deg: float
    sun_elevation_deg: float
    view_azimuth_deg: float
    offnadir_deg: float
    shadow_rgb: RGB
    haze: float
    airlight: RGB
    gain: RGB
    gamma: float
    blur_px: float
    noise: float
    jpeg_quality: int
    # damage
    damage_scale_m: float
    collapse_share: float
    partial_share: float
    debris_spread_m: float
    dust: float
    tents_per_ha: float


STYLES: dict[str, Style] = {
    s.name: s
    for s in (
        Style(
            name="citycentre",
            description=(
                "Dense city centre (Kahramanmaraş-like): rows of 5-12 storey RC blocks, "
                "flat grey roofs with tanks and solar heaters; winter Pléiades, low sun, "
                "long shadows, cool light haze"
            ),
            district_m=1100.0,
            grid_angle_deg=18.0,
            grid_angle_jitter_deg=12.0,
            characters=(
                (0.55, (("core", 1.0),)),
                (0.30, (("core", 0.45), ("estate", 0.35), ("industrial", 0.2))),
                (0.12, (("lowrise", 0.8), ("industrial", 0.2))),
                (0.0, (("rural", 1.0),)),
            ),
            urban_radius_m=2600.0,
            block_scale=1.0,
            street_scale=1.0,
            arterial_m=26.0,
            open_share=0.07,
            core_storeys=(5, 12),
            estate_storeys=(8, 14),
            low_storeys=(1, 3),
            flat_share_core=0.85,
            flat_share_low=0.4,
            tree_density=0.6,
            bare_tree_share=0.6,
            cars_per_100m=9.0,
            flat_roofs=(
                (0.62, 0.62, 0.60),
                (0.70, 0.69, 0.66),
                (0.55, 0.55, 0.54),
                (0.78, 0.77, 0.74),
                (0.48, 0.47, 0.46),
            ),
            tile_roofs=((0.62, 0.36, 0.28), (0.55, 0.33, 0.27), (0.66, 0.42, 0.33)),
            metal_roofs=((0.80, 0.81, 0.82), (0.62, 0.66, 0.70), (0.72, 0.70, 0.66)),
            facades=((0.78, 0.74, 0.68), (0.70, 0.68, 0.66), (0.80, 0.72, 0.62)),
            asphalt=(0.36, 0.36, 0.37),
            sidewalk=(0.60, 0.59, 0.57),
            paving=(0.56, 0.54, 0.51),
            soil=(0.50, 0.45, 0.39),
            grass=(0.42, 0.45, 0.34),
            foliage=(0.30, 0.36, 0.25),
            crops=((0.47, 0.41, 0.34), (0.38, 0.45, 0.30), (0.55, 0.50, 0.41)),
            sun_azimuth_deg=158.0,
            sun_elevation_deg=31.0,
            view_azimuth_deg=110.0,
            offnadir_deg=8.0,
            shadow_rgb=(0.34, 0.37, 0.45),
            haze=0.10,
            airlight=(0.72, 0.75, 0.80),
            gain=(0.97, 1.0, 1.05),
            gamma=1.0,
            blur_px=0.7,
            noise=0.012,
            jpeg_quality=0,
            damage_scale_m=450.0,
            collapse_share=0.55,
            partial_share=0.25,
            debris_spread_m=6.0,
            dust=0.35,
            tents_per_ha=20.0,
        ),
        Style(
            name="oldtown",
            description=(
                "Historic river town (Antakya-like): dense old town of small red-tile houses "
                "and narrow lanes inside a mid-rise new town; WorldView, sharp, high sun, "
                "20° off-nadir, warm balance"
            ),
            district_m=800.0,
            grid_angle_deg=-32.0,
            grid_angle_jitter_deg=25.0,
            characters=(
                (0.70, (("oldtown", 1.0),)),
                (0.40, (("core", 0.65), ("oldtown", 0.35))),
                (0.15, (("lowrise", 0.85), ("estate", 0.15))),
                (0.0, (("rural", 1.0),)),
            ),
            urban_radius_m=2000.0,
            block_scale=0.85,
            street_scale=0.85,
            arterial_m=18.0,
            open_share=0.05,
            core_storeys=(4, 8),
            estate_storeys=(6, 10),
            low_storeys=(1, 2),
            flat_share_core=0.55,
            flat_share_low=0.15,
            tree_density=1.2,
            bare_tree_share=0.1,
            cars_per_100m=6.0,
            flat_roofs=((0.74, 0.70, 0.64), (0.66, 0.62, 0.57), (0.82, 0.79, 0.73)),
            tile_roofs=(
                (0.70, 0.34, 0.22),
                (0.78, 0.45, 0.28),
                (0.62, 0.30, 0.22),
                (0.74, 0.52, 0.36),
            ),
            metal_roofs=((0.78, 0.78, 0.76), (0.60, 0.40, 0.32)),
            facades=((0.86, 0.80, 0.70), (0.82, 0.72, 0.60), (0.90, 0.86, 0.78)),
            asphalt=(0.40, 0.38, 0.37),
            sidewalk=(0.66, 0.62, 0.56),
            paving=(0.70, 0.64, 0.55),
            soil=(0.60, 0.50, 0.40),
            grass=(0.36, 0.46, 0.26),
            foliage=(0.26, 0.38, 0.18),
            crops=((0.42, 0.52, 0.28), (0.62, 0.54, 0.40), (0.50, 0.44, 0.34)),
            sun_azimuth_deg=170.0,
            sun_elevation_deg=52.0,
            view_azimuth_deg=250.0,
            offnadir_deg=20.0,
            shadow_rgb=(0.24, 0.25, 0.30),
            haze=0.04,
            airlight=(0.80, 0.78, 0.74),
            gain=(1.06, 1.0, 0.90),
            gamma=0.92,
            blur_px=0.45,
            noise=0.008,
            jpeg_quality=0,
            damage_scale_m=300.0,
            collapse_share=0.65,
            partial_share=0.2,
            debris_spread_m=4.0,
            dust=0.2,
            tents_per_ha=30.0,
        ),
        Style(
            name="village",
            description=(
                "Small towns and villages (Nurdağı-like): detached 1-3 storey houses with "
                "gardens and orchards among fields; SkySat, soft and noisy, JPEG-compressed, "
                "green cast"
            ),
            district_m=900.0,
            grid_angle_deg=62.0,
            grid_angle_jitter_deg=30.0,
            characters=(
                (0.60, (("lowrise", 0.7), ("core", 0.3))),
                (0.25, (("lowrise", 1.0),)),
                (0.0, (("rural", 0.85), ("lowrise", 0.15))),
            ),
            urban_radius_m=1300.0,
            block_scale=1.15,
            street_scale=0.9,
            arterial_m=14.0,
            open_share=0.05,
            core_storeys=(3, 6),
            estate_storeys=(4, 6),
            low_storeys=(1, 3),
            flat_share_core=0.6,
            flat_share_low=0.35,
            tree_density=2.2,
            bare_tree_share=0.35,
            cars_per_100m=3.0,
            flat_roofs=((0.64, 0.64, 0.62), (0.56, 0.57, 0.56), (0.72, 0.72, 0.70)),
            tile_roofs=((0.66, 0.38, 0.30), (0.58, 0.40, 0.34), (0.50, 0.30, 0.26)),
            metal_roofs=((0.70, 0.72, 0.74), (0.40, 0.52, 0.62)),
            facades=((0.80, 0.78, 0.72), (0.74, 0.70, 0.64)),
            asphalt=(0.42, 0.43, 0.42),
            sidewalk=(0.58, 0.58, 0.54),
            paving=(0.58, 0.57, 0.52),
            soil=(0.52, 0.48, 0.38),
            grass=(0.40, 0.50, 0.30),
            foliage=(0.26, 0.40, 0.20),
            crops=(
                (0.36, 0.48, 0.26),
                (0.55, 0.49, 0.37),
                (0.46, 0.40, 0.32),
                (0.44, 0.54, 0.30),
            ),
            sun_azimuth_deg=140.0,
            sun_elevation_deg=38.0,
            view_azimuth_deg=20.0,
            offnadir_deg=12.0,
            shadow_rgb=(0.36, 0.40, 0.42),
            haze=0.08,
            airlight=(0.70, 0.76, 0.74),
            gain=(0.94, 1.04, 0.96),
            gamma=1.05,
            blur_px=1.0,
            noise=0.025,
            jpeg_quality=60,
            damage_scale_m=350.0,
            collapse_share=0.5,
            partial_share=0.35,
            debris_spread_m=3.0,
            dust=0.15,
            tents_per_ha=25.0,
        ),
        Style(
            name="periurban",
            description=(
                "Dusty city edge (Gaziantep outskirts-like): industrial sheds, high estate "
                "slabs, wide boulevards and bare lots; hazy summer-like light, warm cast, "
                "25° off-nadir"
            ),
            district_m=1400.0,
            grid_angle_deg=0.0,
            grid_angle_jitter_deg=6.0,
            characters=(
                (0.55, (("estate", 0.6), ("core", 0.4))),
                (0.25, (("industrial", 0.6), ("estate", 0.4))),
                (0.0, (("industrial", 0.35), ("rural", 0.65))),
            ),
            urban_radius_m=3200.0,
            block_scale=1.25,
            street_scale=1.3,
            arterial_m=30.0,
            open_share=0.14,
            core_storeys=(4, 9),
            estate_storeys=(10, 16),
            low_storeys=(1, 2),
            flat_share_core=0.95,
            flat_share_low=0.7,
            tree_density=0.35,
            bare_tree_share=0.0,
            cars_per_100m=5.0,
            flat_roofs=((0.74, 0.70, 0.63), (0.80, 0.77, 0.70), (0.66, 0.62, 0.56)),
            tile_roofs=((0.70, 0.44, 0.32), (0.64, 0.38, 0.30)),
            metal_roofs=(
                (0.88, 0.88, 0.86),
                (0.74, 0.78, 0.82),
                (0.80, 0.76, 0.70),
                (0.50, 0.60, 0.72),
            ),
            facades=((0.84, 0.78, 0.68), (0.88, 0.84, 0.78), (0.78, 0.70, 0.62)),
            asphalt=(0.44, 0.42, 0.40),
            sidewalk=(0.68, 0.64, 0.58),
            paving=(0.70, 0.66, 0.58),
            soil=(0.70, 0.62, 0.50),
            grass=(0.55, 0.52, 0.36),
            foliage=(0.36, 0.40, 0.26),
            crops=((0.72, 0.64, 0.48), (0.64, 0.56, 0.44), (0.52, 0.50, 0.36)),
            sun_azimuth_deg=205.0,
            sun_elevation_deg=60.0,
            view_azimuth_deg=300.0,
            offnadir_deg=25.0,
            shadow_rgb=(0.40, 0.40, 0.44),
            haze=0.22,
            airlight=(0.86, 0.80, 0.70),
            gain=(1.08, 1.0, 0.86),
            gamma=0.9,
            blur_px=0.85,
            noise=0.015,
            jpeg_quality=80,
            damage_scale_m=700.0,
            collapse_share=0.45,
            partial_share=0.3,
            debris_spread_m=7.0,
            dust=0.45,
            tents_per_ha=15.0,
        ),
    )
}

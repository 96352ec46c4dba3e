"""The test-time augmentation modes, declared once; importable without torch (the CLI).

Each mode is the views it averages over, as (quarter turns, flipped first) with the
identity first, and the words ``--tta``'s help says about it. ``stmap.runtime.tta``
runs them; the CLI offers exactly these.
"""

from __future__ import annotations

from stmap.errors import InputError

View = tuple[int, bool]

VIEWS: dict[str, tuple[View, ...]] = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "d4": tuple((turns, flip) for flip in (False, True) for turns in range(4)),
}
DESCRIPTIONS = {
    "none": "no augmentation",
    "flip": "the tile and its mirror image",
    "d4": "all 8 flips and turns of the square",
}
TTA_MODES = tuple(VIEWS)


def check_tta(mode: str) -> None:
    """Refuse a ``--tta`` that is not one of TTA_MODES."""
    if mode not in VIEWS:
        raise InputError(f"--tta {mode}: unknown mode; choose one of {', '.join(TTA_MODES)}")

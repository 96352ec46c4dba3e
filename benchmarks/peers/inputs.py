"""The rasters and models the comparisons run on, made once and cached.

Shared by bench_peers.py and bench_scaling.py. Cities come from `stmap.synth`
(seed 0, 0.5 m, 512-px tiles, DEFLATE), cached in the temporary directory beside
bench_runtime.py's, so that one city serves every benchmark.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from stmap.bundle import default_bundle_path

DATA = Path(tempfile.gettempdir()) / "stmap-bench"
RANDOM_THRESHOLD = 0.7  # keeps a random model's damage sparse, as a real map's is
MODELS = {
    "default": "the shipped demo bundle: tiny backbone, 16-channel decoder",
    "decoder64": "tiny backbone, random 64-channel decoder (as in bench_backends.py)",
}


def city(size: int) -> Path:
    """A size × size px synthetic city at 0.5 m, made once and cached."""
    from stmap.synth import generate_city

    path = DATA / f"city{size}.tif"
    if not path.exists():
        DATA.mkdir(parents=True, exist_ok=True)
        generate_city(path, width=size, height=size, seed=0, overwrite=True)
    return path


def model(name: str) -> Path:
    """The bundle called ``name`` in MODELS, or ``name`` itself as a bundle path."""
    if name == "default":
        return default_bundle_path()
    if name == "decoder64":
        from tests.runtime.infer_data import make_varied_bundle

        path = DATA / "bundle-decoder64"
        if not (path / "manifest.json").exists():
            make_varied_bundle(path, decoder_channels=64)
        return path
    return Path(name)


def threshold_for(bundle: Path) -> float | None:
    """The random models' threshold; the demo bundle (and a user's) keeps its own."""
    return RANDOM_THRESHOLD if bundle == DATA / "bundle-decoder64" else None

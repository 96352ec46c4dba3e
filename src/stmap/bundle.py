"""The model bundle: the contract between train, export and runtime.

A directory (or a zip of one) holding ``manifest.json`` and ``weights.safetensors``,
plus whatever export adds (``model.onnx``, TensorRT engines). The manifest carries
everything needed to reproduce training-time preprocessing at inference, and the
SHA-256 of every file; loading verifies them and never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import weakref
import zipfile
from collections.abc import Mapping
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_serializer,
    model_validator,
)

from stmap.errors import BundleError, InputError, OutputExistsError
from stmap.io.paths import check_input_path
from stmap.model.backbones import BackboneSpec, get_spec, weights_interchangeable
from stmap.model.preprocess import Preprocessing
from stmap.model.segmenter import DamageSegmenter, SegmenterConfig

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "weights.safetensors"
DEFAULT = "default"
MAX_ZIP_MEMBER_BYTES = 8 << 30  # refuse zip members (or bombs) beyond 8 GiB uncompressed
MAX_ZIP_RATIO = 100  # weights compress ~1.1:1; a member over 1 MiB packed 100:1 is a bomb
# What a manifest may say: imagery of 5 cm to 10 m pixels (building damage needs
# sub-metre pixels; 10 m is already coarser than most buildings), tiles of 8 to
# 4096 px (a 4096² tile is 200 MB of float32 RGB before the model's activations).
GSD_RANGE_M = (0.05, 10.0)
TILE_RANGE = (8, 4096)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Architecture(_Strict):
    decoder_channels: int = Field(256, gt=0)
    decoder_blocks: int = Field(4, gt=0)
    projection_dim: int = Field(50, gt=0)
    decoder_upsample: Literal["nearest", "bilinear"] = Field(
        "nearest", description="the decoder's ×2 upsampling; bilinear for phase stability (#20)"
    )

    quincunx: bool = Field(
        False,
        description=(
            "run a tiny-family model's last stage at several phases of its subsampling and "
            "average them (DamageSegmenter._quincunx_logits; phase stability, #20)"
        ),
    )
    last_stage_phases: Literal[2, 4] = Field(
        2,
        description=(
            "with quincunx, the phases averaged: 2 (the quincunx, lattices 8 px apart along "
            "both axes) or 4 (every phase: nothing of the last subsampling's aliasing left)"
        ),
    )

    @model_validator(mode="after")
    def _phases_need_the_quincunx(self) -> Architecture:
        if self.last_stage_phases != 2 and not self.quincunx:
            raise ValueError(f"last_stage_phases {self.last_stage_phases}: only with quincunx true")
        return self

    @model_serializer(mode="wrap")
    def _omit_defaults(self, handler: Any) -> dict[str, Any]:
        """Leave ``decoder_upsample`` out while it is ``nearest``, ``quincunx`` while false
        and ``last_stage_phases`` while 2: manifests (and bundle hashes) of models without
        them stay exactly as they were, and older stmap reads them."""
        data = handler(self)
        if data.get("decoder_upsample") == "nearest":
            del data["decoder_upsample"]
        if data.get("quincunx") is False:
            del data["quincunx"]
        if data.get("last_stage_phases") == 2:
            del data["last_stage_phases"]
        return data


class Normalization(_Strict):
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @model_validator(mode="after")
    def _usable(self) -> Normalization:
        """Finite means and positive finite stds, one of each per band: the maths divides."""
        if len(self.mean) != len(self.std):
            raise ValueError(f"{len(self.mean)} means for {len(self.std)} stds")
        if not all(math.isfinite(m) for m in self.mean):
            raise ValueError(f"mean {list(self.mean)}: every mean must be a finite number")
        if not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ValueError(f"std {list(self.std)}: every std must be a positive finite number")
        return self


def _check_tile_range(field: str, tile: int) -> None:
    """ValueError unless ``tile`` lies in TILE_RANGE (sizes are allocated from it)."""
    low, high = TILE_RANGE
    if not low <= tile <= high:
        raise ValueError(f"{field} {tile}: must lie between {low} and {high} px")


class Tiling(_Strict):
    """The tiles ``stmap infer`` cuts for a fully convolutional model, where they differ
    from the tile it was trained on.

    A CNN maps any tile the same away from the tile's edges, and each edge moves the map
    within the model's receptive field (about 150 px for ``tiny``) of it, so a tile much
    larger than that and a modest overlap leave no pixel near an edge that counts: the
    map stops depending on where the tiles fall, and fewer pixels are computed twice
    (#20; benchmarks/results/phase_stability.md).
    """

    tile_size: int = Field(gt=0)
    overlap: int = Field(ge=0)
    margin: int = Field(
        0,
        ge=0,
        description=(
            "each tile's outer pixels the blend gives no weight: context the model sees "
            "and the map never takes (runtime.blend.ramp); below half the overlap"
        ),
    )

    @model_serializer(mode="wrap")
    def _omit_no_margin(self, handler: Any) -> dict[str, Any]:
        """Leave ``margin`` out while it is 0: tilings without one stay as they were."""
        data = handler(self)
        if data.get("margin") == 0:
            del data["margin"]
        return data


# A CNN's tiles at inference. A tile's zero-padded edge moves the map up to ~60 px in
# (tiny's receptive field is about 150 px); with a model whose own aliasing is gone
# (tiny-aa5 + quincunx, #20) that edge is most of what moves the map, so the blend takes
# no pixel within 48 px of a tile's edge and ramps over the next 32. 1024-px tiles keep
# the model pixels per mapped pixel of 128-px tiles at overlap 16 on a large raster
# ((1024/896)² = (128/112)²; benchmarks/results/phase_stability_quincunx.md).
ANY_TILE_INFER = Tiling(tile_size=1024, overlap=128, margin=48)


def default_tiling(backbone: str, tile_size: int) -> Tiling | None:
    """The tiling a new bundle of ``backbone`` trained on ``tile_size`` px records: large
    tiles for a fully convolutional model, none (the training tile) otherwise."""
    if not get_spec(backbone).any_tile or tile_size >= ANY_TILE_INFER.tile_size:
        return None
    return ANY_TILE_INFER


class Manifest(_Strict):
    """Typed, validated manifest; unknown keys are refused."""

    format_version: Literal[1] = FORMAT_VERSION
    name: str
    backbone: str
    backbone_weights: str = Field(description="where the backbone's weights came from")
    architecture: Architecture = Architecture()
    tile_size: int = Field(128, gt=0, description="the tile the model was trained on")
    tiling: Tiling | None = Field(
        None, description="the tiles `stmap infer` cuts, when not tile_size and tile_size / 4"
    )
    gsd_m: float = Field(0.5, gt=0)
    bands: tuple[str, ...] = ("red", "green", "blue")
    input_scaling: dict[str, float] = Field(
        default_factory=lambda: {"uint8": 255.0, "uint16": 4095.0},
        description="raw value that maps to 1.0, per input dtype",
    )
    normalization: Normalization
    num_classes: Literal[1] = 1
    threshold: float = Field(0.5, gt=0, lt=1)
    provenance: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    exports: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, str] = Field(default_factory=dict, description="file name → SHA-256")

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        """Refuse, when the bundle is opened, what would divide by zero or allocate without
        bound later: the ranges are GSD_RANGE_M and TILE_RANGE."""
        low, high = GSD_RANGE_M
        if not (math.isfinite(self.gsd_m) and low <= self.gsd_m <= high):
            raise ValueError(f"gsd_m {self.gsd_m}: must lie between {low} and {high} metres")
        _check_tile_range("tile_size", self.tile_size)
        if self.tiling is not None:
            self._check_tiling(self.tiling)
        if self.architecture.quincunx and not self._backbone_spec().any_tile:
            raise ValueError(
                f"architecture.quincunx: backbone {self.backbone} has no stages to run at two "
                "phases (only the tiny family has); leave it out"
            )
        if len(self.normalization.mean) != len(self.bands):
            raise ValueError(
                f"normalization has {len(self.normalization.mean)} values for "
                f"{len(self.bands)} bands"
            )
        for dtype, value in self.input_scaling.items():
            if not (math.isfinite(value) and value > 0):
                raise ValueError(
                    f"input_scaling {dtype}: {value}; must be a positive finite number"
                )
            # x * a + b on the device: a std of 5e-324 is positive, yet 1 / (255 * std) is inf
            try:
                a, b = self.preprocessing(dtype).scale_and_shift()
            except (ZeroDivisionError, OverflowError):
                a, b = [math.inf], []
            if not all(math.isfinite(v) for v in (*a, *b)):
                raise ValueError(
                    f"input_scaling {dtype} {value} with std {list(self.normalization.std)} and "
                    f"mean {list(self.normalization.mean)} gives non-finite pixel coefficients"
                )
        return self

    @model_serializer(mode="wrap")
    def _omit_absent_tiling(self, handler: Any) -> dict[str, Any]:
        """Leave ``tiling`` out when there is none: manifests without it stay as they were."""
        data = handler(self)
        if data.get("tiling", 0) is None:
            del data["tiling"]
        return data

    def _backbone_spec(self) -> BackboneSpec:
        try:
            return get_spec(self.backbone)
        except InputError as exc:
            raise ValueError(str(exc)) from None

    def _check_tiling(self, tiling: Tiling) -> None:
        tile = tiling.tile_size
        _check_tile_range("tiling.tile_size", tile)
        if tiling.overlap >= tile:
            raise ValueError(f"tiling.overlap {tiling.overlap}: must be below the tile ({tile})")
        if tiling.margin and 2 * tiling.margin >= tiling.overlap:
            raise ValueError(
                f"tiling.margin {tiling.margin}: twice it must lie below the overlap "
                f"({tiling.overlap})"
            )
        spec = self._backbone_spec()
        if not spec.any_tile:
            raise ValueError(
                f"tiling: backbone {self.backbone} maps only the tile it was built for "
                f"({self.tile_size} px); leave tiling out"
            )
        if tile % spec.patch_size:
            raise ValueError(
                f"tiling.tile_size {tile}: not a multiple of {self.backbone}'s output stride "
                f"{spec.patch_size}"
            )

    @property
    def infer_tile(self) -> int:
        """The tile edge ``stmap infer`` and the exported graphs run the model at."""
        return self.tile_size if self.tiling is None else self.tiling.tile_size

    @property
    def infer_overlap(self) -> int | None:
        """The overlap this model's tiles call for; None: the runtime's default."""
        return None if self.tiling is None else self.tiling.overlap

    def segmenter_config(self) -> SegmenterConfig:
        return SegmenterConfig(
            backbone=self.backbone, tile_size=self.tile_size, **self.architecture.model_dump()
        )

    def preprocessing(self, dtype: str = "uint8") -> Preprocessing:
        if dtype not in self.input_scaling:
            raise BundleError(
                f"the model has no scaling for {dtype} input (it knows "
                f"{', '.join(self.input_scaling)}); convert the raster to one of those"
            )
        return Preprocessing(
            mean=self.normalization.mean,
            std=self.normalization.std,
            value_max=self.input_scaling[dtype],
        )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_bundle_path() -> Path:
    """The demo bundle shipped inside the package."""
    return Path(str(resources.files("stmap") / "data" / "demo_bundle"))


class Bundle:
    """A verified bundle on disk: its manifest and the files the manifest lists."""

    def __init__(self, root: Path, manifest: Manifest, source: Path):
        self.root = root
        self.manifest = manifest
        self.source = source  # what the user named (a zip or a directory)

    @property
    def is_default(self) -> bool:
        return self.source.resolve() == default_bundle_path().resolve()

    def path_of(self, name: str) -> Path:
        if name not in self.manifest.files:
            raise BundleError(f"{self.source}: the bundle has no {name}")
        return self.root / name

    def load_segmenter(self) -> DamageSegmenter:
        """The model with its trained weights, on the CPU, in eval mode."""
        from safetensors.torch import load

        from stmap.model.weights import load_strict

        model = DamageSegmenter(self.manifest.segmenter_config())
        path = self.path_of(WEIGHTS)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise BundleError(f"{self.source}: cannot read {WEIGHTS} ({exc})") from exc
        # The bytes loaded are the bytes verified: a file swapped after open_bundle
        # checked it would otherwise run under the manifest's hash.
        if hashlib.sha256(data).hexdigest() != self.manifest.files.get(WEIGHTS):
            raise BundleError(
                f"{self.source}: {WEIGHTS} changed since the bundle was opened (its SHA-256 no "
                "longer matches the manifest); restore the bundle and run again"
            )
        try:
            state = load(data)
        except Exception as exc:
            raise BundleError(f"{self.source}: cannot read {WEIGHTS} ({exc})") from exc
        load_strict(model, state, f"{self.source}/{WEIGHTS}")
        return model.eval()

    def hash(self) -> str:
        """One digest of the model: its weights' hash and the preprocessing it runs with."""
        payload = json.dumps(
            {
                "weights": self.manifest.files.get(WEIGHTS),
                "config": self.manifest.model_dump(
                    include={
                        "backbone",
                        "architecture",
                        "tile_size",
                        "tiling",
                        "gsd_m",
                        "bands",
                        "input_scaling",
                        "normalization",
                    }
                ),
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()


def resolve_bundle_path(path: str | os.PathLike[str]) -> Path:
    """``default`` names the shipped bundle; anything else is a path."""
    return default_bundle_path() if str(path) == DEFAULT else Path(path)


def read_manifest(root: Path, source: Path | None = None) -> Manifest:
    source = source or root
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{source}: not a model bundle (no {MANIFEST})")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise BundleError(f"{source}: {MANIFEST} is corrupted or truncated ({exc})") from exc
    if not isinstance(raw, dict):
        raise BundleError(f"{source}: {MANIFEST} must hold a JSON object")
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{source}: bundle format version {version!r} is not supported by this stmap "
            f"(it reads version {FORMAT_VERSION}); upgrade stmap or re-export the bundle"
        )
    try:
        return Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        field = f" field {where!r}" if where else ""
        raise BundleError(f"{source}: invalid manifest{field}: {message}") from exc


def verify_files(root: Path, manifest: Manifest, source: Path) -> None:
    if WEIGHTS not in manifest.files:
        raise BundleError(f"{source}: the manifest lists no {WEIGHTS}")
    for name, expected in manifest.files.items():
        if Path(name).name != name:
            raise BundleError(f"{source}: manifest file name {name!r} must be a plain name")
        path = root / name
        if not path.is_file() or path.is_symlink():
            raise BundleError(f"{source}: {name} is missing from the bundle")
        if sha256_of(path) != expected:
            raise BundleError(
                f"{source}: {name} does not match its SHA-256 in the manifest "
                "(corrupted, truncated or changed after export)"
            )


def open_bundle(path: str | os.PathLike[str]) -> Bundle:
    """Open and verify a bundle directory or ``.zip``; ``default`` is the shipped one."""
    source = resolve_bundle_path(path)
    if not source.exists():
        raise BundleError(f"{source}: model bundle not found")
    check_input_path(source, BundleError, directory=True)
    if not source.is_file():
        manifest = read_manifest(source, source)
        verify_files(source, manifest, source)
        return Bundle(source, manifest, source)
    unpacked = _extract_zip(source)
    try:
        root = _bundle_root(unpacked)
        manifest = read_manifest(root, source)
        verify_files(root, manifest, source)
    except BaseException:
        shutil.rmtree(unpacked, ignore_errors=True)
        raise
    bundle = Bundle(root, manifest, source)
    # The unpacked copy lives as long as the bundle (or the process), not forever.
    weakref.finalize(bundle, shutil.rmtree, unpacked, ignore_errors=True)
    return bundle


def _extract_zip(source: Path) -> Path:
    """Unpack a zipped bundle into a new private temporary directory, refusing anything
    unsafe; the caller removes the directory."""
    try:
        archive = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError) as exc:
        raise BundleError(f"{source}: neither a bundle directory nor a valid zip ({exc})") from exc
    with archive:
        members = archive.infolist()
        total = 0
        for info in members:
            name = info.filename
            parts = Path(name).parts
            if not name or name.startswith(("/", "\\")) or ".." in parts or ":" in name:
                raise BundleError(f"{source}: unsafe path {name!r} in the zip")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise BundleError(f"{source}: symbolic link {name!r} in the zip is refused")
            if info.file_size > max(1 << 20, MAX_ZIP_RATIO * info.compress_size):
                raise BundleError(
                    f"{source}: {name!r} expands {info.file_size} bytes from "
                    f"{info.compress_size} (compression ratio above {MAX_ZIP_RATIO}:1, a zip "
                    "bomb?); refused"
                )
            total += info.file_size
            if total > MAX_ZIP_MEMBER_BYTES:
                raise BundleError(f"{source}: the zip expands beyond 8 GiB; refused")
        target = Path(tempfile.mkdtemp(prefix="stmap-bundle-"))
        try:
            archive.extractall(target)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(target, ignore_errors=True)
            raise BundleError(f"{source}: the zip is corrupted ({exc})") from exc
    return target


def _bundle_root(unpacked: Path) -> Path:
    """The bundle inside an unpacked zip: its top level, or the one folder zipped."""
    entries = list(unpacked.iterdir())
    if not (unpacked / MANIFEST).exists() and len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return unpacked


def write_bundle(
    directory: str | os.PathLike[str],
    model: DamageSegmenter,
    manifest: Manifest,
    *,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``manifest`` as a bundle, atomically (temporary dir, then rename)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not overwrite:
        raise OutputExistsError(f"{directory}: exists; choose another path or allow overwriting")
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS), metadata={"format": "pt"})
        _finish_manifest(staging, manifest, [WEIGHTS])
        if directory.exists():
            shutil.rmtree(directory)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def write_retiled(
    bundle: Bundle,
    directory: str | os.PathLike[str],
    tiling: Tiling | None,
    *,
    overwrite: bool = False,
) -> Path:
    """A copy of ``bundle`` that maps in other tiles (``tiling``; None: its training tile):
    the same weights under another model hash, for comparing tilings of one model."""
    manifest = bundle.manifest.model_copy(update={"tiling": tiling, "files": {}})
    return write_bundle(directory, bundle.load_segmenter(), manifest, overwrite=overwrite)


def write_with_backbone(
    bundle: Bundle,
    directory: str | os.PathLike[str],
    backbone: str,
    *,
    overwrite: bool = False,
) -> Path:
    """A copy of ``bundle`` whose weights run in ``backbone``, one that holds the same
    tensors and differs only in weightless filters (``weights_interchangeable``): the
    shipped ``tiny-aa5n`` weights behind ``tiny-aa7n``'s longer blur alias less with no
    training (#20). Refused (BundleError) before anything is written otherwise."""
    ours = bundle.manifest.backbone
    target = get_spec(backbone).name
    if not weights_interchangeable(ours, target):
        raise BundleError(
            f"{bundle.source}: its {ours} weights do not fit {target} (other tensors, "
            "normalisation or stride, or a frozen foundation model)"
        )
    manifest = bundle.manifest.model_copy(
        update={
            "backbone": target,
            "backbone_weights": f"{bundle.manifest.backbone_weights}; its {ours} weights "
            f"in {target}, untrained (model {bundle.hash()[:12]})",
            "files": {},
        }
    )
    # interchangeable: the same state dict, key for key and shape for shape
    return write_bundle(directory, bundle.load_segmenter(), manifest, overwrite=overwrite)


def add_files(bundle: Bundle, files: Mapping[str, Path], exports: Mapping[str, Any]) -> Manifest:
    """Move ``files`` into ``bundle`` and record them (hashes, ``exports``) in its manifest.

    The manifest is replaced last and atomically, so a failure leaves the bundle as it was
    (files not yet listed in the manifest are ignored by readers).
    """
    for name, path in files.items():
        os.replace(path, bundle.root / name)
    names = [*bundle.manifest.files, *files]
    merged = {**bundle.manifest.exports, **exports}
    manifest = bundle.manifest.model_copy(update={"exports": merged})
    bundle.manifest = _finish_manifest(bundle.root, manifest, names)
    return bundle.manifest


def _finish_manifest(root: Path, manifest: Manifest, names: list[str]) -> Manifest:
    hashes = {name: sha256_of(root / name) for name in dict.fromkeys(names)}
    final = manifest.model_copy(update={"files": hashes})
    tmp = root / f".{MANIFEST}.tmp"
    tmp.write_text(json.dumps(final.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / MANIFEST)
    return final


def manifest_for(config: SegmenterConfig, **fields: Any) -> Manifest:
    """A manifest matching ``config``; ``fields`` fill the rest (name, normalisation, ...)."""
    architecture = {k: v for k, v in asdict(config).items() if k not in ("backbone", "tile_size")}
    return Manifest(
        backbone=config.backbone,
        tile_size=config.tile_size,
        architecture=Architecture(**architecture),
        **fields,
    )

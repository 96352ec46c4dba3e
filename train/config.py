"""The training configuration: one typed, validated object, built once at the boundary.

Keys keep the method's names (cli.md). A config is a YAML file or the name of a
shipped one (``fullsup``, ``lodo``, ``ssdc``, ``ratio``, ``fewshot``), plus
``--set key=value`` overrides whose values are parsed as YAML
(``--set source_regions=[hatay,nurdagi]``). Unknown keys are refused by name.
Relative paths are taken from the working directory.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from stmap.errors import InputError

SHIPPED = ("fullsup", "lodo", "ssdc", "ratio", "fewshot")
DEFAULT_CACHE_BYTES = 8 << 30  # feature_cache: true keeps up to 8 GiB in memory, then disk
MAX_CONSISTENCY_SHIFT = 15  # shift_consistency draws (dy, dx) in [1, 15]: sub-stride phases
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


class TrainConfig(BaseModel):
    """Every knob of ``stmap train``; defaults are the paper's published settings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    protocol: Literal["fullsup", "lodo", "ssdc", "ratio", "fewshot"]
    data_root: Path
    out_dir: Path
    footprint_dir: Path | None = Field(
        None, description="default <data_root>/footprints (tiles) or <data_root> (rasters)"
    )
    tiles_meta_dir: Path | None = Field(None, description="default <data_root>/tiles_meta")
    source_regions: list[str] | None = Field(None, description="default: every region found")
    target_regions: list[str] | None = Field(None, description="default: per protocol")
    backbone: str = "vit_large_patch16_dinov3.sat493m"
    weights: str | None = Field(
        None, description="local checkpoint, 'download' (fetch the published one) or 'random'"
    )
    img_size: int = Field(128, gt=0)
    batch_size: int = Field(32, gt=0)
    epochs: int = Field(10, gt=0)
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    lambda_pc: float = Field(0.01, ge=0)
    lambda_dpt: float = Field(0.001, ge=0)
    k_folds: int = Field(5, ge=2, description="lowered to the smallest region's tile count")
    train_ratio: float = Field(1.0, gt=0, le=1)
    fewshot_n: list[int] = Field([1, 3, 5, 10], min_length=1)
    seed: int = 42
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    decoder_channels: int = Field(256, gt=0)
    backbone_rope_jitter: bool = Field(
        False, description="the reference's hidden RoPE rescaling augmentation (no feature cache)"
    )
    feature_cache: bool | int = Field(
        True, description="cache frozen-backbone features: true, false or a memory budget in bytes"
    )
    photometric_augment: float = Field(
        0.0,
        ge=0,
        description=(
            "strength of per-tile colour/light augmentation of training batches (train/augment.py);"
            " 0 = off, the paper's protocol; 1 = the documented ranges. A deviation from the "
            "method, for models trained on synthetic styles (the demo bundle)"
        ),
    )
    decoder_upsample: Literal["nearest", "bilinear"] = Field(
        "nearest",
        description=(
            "the decoder's ×2 upsampling; bilinear keeps the map from stepping at the 16-px "
            "feature lattice (#20). Carried in the bundle's manifest"
        ),
    )
    quincunx: bool = Field(
        False,
        description=(
            "map with the last stage at both phases of its subsampling, averaged "
            "(DamageSegmenter._quincunx_logits): the map moves far less with where the tiles "
            "fall (#20). Tiny family only; inference and validation, and the shift-consistency "
            "term's two maps (the map users get); the other losses are unchanged. Carried in "
            "the bundle's manifest"
        ),
    )
    shift_consistency: float = Field(
        0.0,
        ge=0,
        description=(
            "weight of a shift-consistency term (train/losses.py shift_consistency_loss): each "
            "training batch is seen a second time shifted by a random (dy, dx) in [1, 15] px and "
            "the two probability maps are compared on their overlap (with quincunx, the "
            "quincunx maps); 0 = off, the method. A deliberate addition for phase stability (#20)"
        ),
    )
    shift_augment: bool = Field(
        False,
        description=(
            "move each training batch, its labels and building masks by a random (dy, dx) in "
            "[0, 15] px (the rows and columns that fall off refilled by reflection), so a "
            "stride-16 model sees every sub-stride phase of the ground; off = the method. A "
            "deliberate addition for phase stability (#20)"
        ),
    )
    init_bundle: Path | None = Field(
        None,
        description=(
            "start every fold from this bundle's trained weights instead of fresh ones: "
            "fine-tuning a shipped model (e.g. with shift_consistency, which collapses the map "
            "when it is on from the first epoch). Its backbone and decoder must be this "
            "config's. Not the method: it trains from scratch"
        ),
    )
    distill_bundle: Path | None = Field(
        None,
        description=(
            "a teacher: this bundle's map of each training batch (its quincunx included) is "
            "a soft target, weighted by distill_weight, next to the labels; for a cheaper "
            "model taught a phase-stable one's map (#20). Not the method"
        ),
    )
    distill_weight: float = Field(1.0, gt=0, description="weight of the distillation term")
    num_workers: int = Field(2, ge=1, description="threads decoding tiles")
    gsd_m: float = Field(
        0.5, gt=0.05, le=10, description="metres per pixel xBD images are resampled to"
    )
    disaster_types: list[str] | None = Field(
        None, description="xBD: keep only these metadata.disaster_type values (e.g. [earthquake])"
    )
    tile_cache: bool = Field(
        True, description="xBD: keep decoded tiles in the user cache (keyed by file content)"
    )
    lora_rank: int = Field(8, gt=0)
    lora_alpha: float = Field(16.0, gt=0)
    fewshot_lr: float = Field(3e-5, gt=0)
    fewshot_weight_decay: float = Field(0.01, ge=0)
    fewshot_epochs: int = Field(3, gt=0)
    overlays: int = Field(16, ge=0, description="validation tiles drawn as TP/FP/FN overlays")

    @field_validator("feature_cache", mode="before")
    @classmethod
    def _bytes(cls, value: Any) -> Any:
        """Accept budgets such as ``8GiB`` or ``512MB`` next to plain byte counts."""
        if isinstance(value, str):
            match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", value.lower())
            if match is None:
                raise ValueError(f"expected true, false or a size such as 8GiB, got {value!r}")
            return int(float(match[1]) * _UNITS[match[2]])
        return value

    @model_validator(mode="after")
    def _shift_fits_tile(self) -> TrainConfig:
        shifted = self.shift_consistency or self.shift_augment
        if shifted and self.img_size <= 2 * MAX_CONSISTENCY_SHIFT:
            raise ValueError(
                "shift_consistency and shift_augment need img_size above "
                f"{2 * MAX_CONSISTENCY_SHIFT} px (shifts of up to {MAX_CONSISTENCY_SHIFT} px must "
                f"leave an overlap), got {self.img_size}"
            )
        return self

    @model_validator(mode="after")
    def _quincunx_needs_stages(self) -> TrainConfig:
        from stmap.model.backbones import get_spec

        if self.quincunx and not get_spec(self.backbone).any_tile:
            raise ValueError(
                f"quincunx needs a tiny-family backbone (stages to run at two phases), "
                f"not {self.backbone}"
            )
        return self

    @field_validator("fewshot_n")
    @classmethod
    def _positive_shots(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value):
            raise ValueError("every few-shot n must be at least 1")
        return value

    @property
    def cache_budget(self) -> int:
        """Bytes of features kept in memory (0: cache off); beyond it they go to disk."""
        if self.feature_cache is True:
            return DEFAULT_CACHE_BYTES
        return int(self.feature_cache)


def known_keys() -> list[str]:
    return list(TrainConfig.model_fields)


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``key=value`` strings → {key: YAML value}; raises InputError for a malformed pair."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip():
            raise InputError(f"--set {pair!r}: expected key=value (e.g. --set epochs=3)")
        try:
            overrides[key.strip()] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as exc:
            raise InputError(f"--set {pair!r}: the value is not valid YAML ({exc})") from exc
    return overrides


def shipped_config_path(name: str) -> Path:
    return Path(str(resources.files("stmap.train") / "configs" / f"{name}.yaml"))


def load_config(source: str, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config of ``source`` (a YAML path or a shipped name) with ``overrides`` applied."""
    from stmap.io.tiles import read_yaml

    path = Path(source)
    if not path.exists() and source in SHIPPED:
        path = shipped_config_path(source)
    elif not path.is_file():
        raise InputError(
            f"--config {source}: no such file, and not a shipped config ({', '.join(SHIPPED)})"
        )
    values = read_yaml(path) or {}
    if not isinstance(values, dict):
        raise InputError(f"{path}: a config is a mapping of key: value")
    return build_config({**values, **parse_overrides(overrides)}, str(path))


def build_config(values: dict[str, Any], source: str = "the config") -> TrainConfig:
    """Validate ``values``; the error names the first bad key and what it accepts."""
    unknown = [key for key in values if key not in TrainConfig.model_fields]
    if unknown:
        raise InputError(
            f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(known_keys())}"
        )
    try:
        return TrainConfig.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise InputError(f"{source}: {key}: {first['msg']} (got {first.get('input')!r})") from exc

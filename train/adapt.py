"""``stmap adapt``: teach a bundle a new event from the sparse labels a responder holds.

What is adapted follows the method (method.md, few-shot). The decoder is trained
first (its BatchNorm keeping the source's statistics), on the frozen backbone's
features of the labelled tiles, computed once; then,
for a foundation-model backbone, LoRA (rank 8, α 16, on every qkv/proj/fc1/fc2
linear layer) is trained with the method's few-shot settings — AdamW lr 3e-5,
weight decay 0.01, all tiles in one batch, 3 epochs, fp32, clipping 1.0, decoder
frozen with BatchNorm in eval — and merged into the backbone, so the bundle keeps
the base architecture. For ``tiny`` (the demo CNN) only the decoder is adapted:
its backbone is a from-scratch CNN without the linear layers LoRA targets, and with
tens of labelled buildings the decoder's ~1 % of the weights is what can be fitted
without memorising them; it also keeps the features a fixed function, computed once.
PC and DPT are left out: both take every unlabelled pixel of a tile as undamaged,
which sparse labels must never do (point 2 of the issue); only the focal loss runs,
over labelled pixels.

Validation never flatters: objects are dealt to spatially blocked folds
(``spatial_folds``), the whole adaptation is repeated per fold on the other folds'
labels and scored on the fold's, and a threshold is only ever chosen on other
folds' validation pixels. The figures before (the source bundle on all labels) and
after (pooled out-of-fold) go into the new bundle's manifest.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stmap import __version__
from stmap.bundle import Bundle, open_bundle, resolve_bundle_path, write_bundle
from stmap.errors import InputError, OutputExistsError
from stmap.io.blocks import streaming_env
from stmap.io.footprints import read_footprints
from stmap.io.inputs import expand_inputs
from stmap.io.labels import (
    LabelRegions,
    LabelSet,
    label_regions,
    metres_per_unit,
    read_labels,
)
from stmap.io.writers import remove
from stmap.model import DamageSegmenter, Normalize
from stmap.runtime.grid import default_overlap
from stmap.runtime.plan import InferOptions, InputPlan, plan_input, plan_mosaic
from stmap.train.label_metrics import ObjectScores, PixelScores, cross_validated, quantise
from stmap.train.label_tiles import LabelTiles, read_label_tiles
from stmap.train.lora import apply_lora, lora_parameters, merge_lora
from stmap.train.losses import focal_loss
from stmap.train.spatial_folds import block_folds

log = logging.getLogger(__name__)

MIN_PER_CLASS = 3  # damaged and undamaged objects needed to adapt
DECODER_LR, DECODER_WD, BATCH = 3e-4, 1e-4, 32  # the method's training settings
LORA_LR, LORA_WD, LORA_EPOCHS, LORA_CHUNK = 3e-5, 0.01, 3, 16  # its few-shot settings
GRAD_CLIP = 1.0


@dataclass(frozen=True)
class LabelOptions:
    """How labels are read and what each supervises (shared with evaluate)."""

    path: str
    label_field: str | None = None
    damaged: tuple[str, ...] = ()
    undamaged: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    footprints: str | None = None
    snap_m: float = 5.0
    point_radius_m: float = 3.0

    def read(self, crs: Any) -> LabelSet:
        """The labels in ``crs``, classes mapped by the preset or the overrides."""
        return read_labels(
            self.path,
            crs,
            label_field=self.label_field,
            damaged=self.damaged,
            undamaged=self.undamaged,
            ignore=self.ignore,
        )

    def regions(self, labels: LabelSet, crs: Any) -> LabelRegions:
        """What ``labels`` supervise in ``crs``: polygons, points on the ``footprints``
        that hold them (or within ``snap_m``), else disks of ``point_radius_m``."""
        footprints = None
        if self.footprints is not None:
            footprints = read_footprints(self.footprints, crs=crs, bbox=labels.bounds)
        return label_regions(
            labels, footprints=footprints, snap_m=self.snap_m, point_radius_m=self.point_radius_m
        )


@dataclass(frozen=True)
class ImageryOptions:
    """Which imagery, read as ``stmap infer`` reads it."""

    inputs: tuple[str, ...]
    mosaic: str | None = None
    asset: str = "visual"
    aoi: str | None = None
    bands: tuple[int, ...] | None = None


@dataclass
class LabelledScene:
    """The bundle, the labels and the tiles around them, ready to score or to adapt."""

    bundle: Bundle
    labels: LabelSet
    regions: LabelRegions
    tiles: LabelTiles
    inputs: list[str]
    messages: list[str] = field(default_factory=list)


def load_labelled_scene(
    model: str, imagery: ImageryOptions, label_options: LabelOptions, minimum: int
) -> LabelledScene:
    """Validate everything, then read only the tiles around the labels.

    Raises InputError subclasses (exit 2) for a bad bundle, imagery, labels (no field,
    too few of a class, no CRS, no overlap with the imagery) or options.
    """
    bundle = open_bundle(model)
    manifest = bundle.manifest
    options = InferOptions(
        model=model,
        bands=imagery.bands,
        aoi=imagery.aoi,
        mosaic=imagery.mosaic,
        asset=imagery.asset,
    )
    if not imagery.inputs:
        raise InputError("no input raster given")
    scenes = expand_inputs(imagery.inputs, imagery.asset)
    workdir = Path(tempfile.mkdtemp(prefix="stmap-adapt-"))
    try:
        with streaming_env():
            if imagery.mosaic is None:
                plans = [plan_input(s.href, manifest, options, stem=s.id) for s in scenes]
            else:
                plans = [plan_mosaic(scenes, workdir, manifest, options)]
            return _read_scene(bundle, plans, label_options, minimum)
    finally:
        remove(workdir)


def _read_scene(
    bundle: Bundle, plans: list[InputPlan], options: LabelOptions, minimum: int
) -> LabelledScene:
    manifest = bundle.manifest
    tile, overlap = manifest.tile_size, default_overlap(manifest.tile_size)  # as infer
    messages: list[str] = []
    labels = regions = None
    parts = []
    for plan in plans:
        info = plan.info
        if info.crs is None:
            raise InputError(f"--labels {options.path}: {info.path} has no CRS to place them on")
        here = options.read(info.crs)
        if labels is None:
            labels = here
            messages.append(labels.describe())
            labels.check_classes(minimum)
        here_regions = options.regions(here, info.crs)
        if regions is None:
            regions = here_regions
            messages += [f"  {note}" for note in regions.notes]
        found = read_label_tiles(plan, here_regions, tile, overlap)
        if found is not None:
            parts.append(found)
    assert labels is not None and regions is not None
    if not parts:
        info = plans[0].info
        corners = [info.transform @ (c, r) for c in (0, info.width) for r in (0, info.height)]
        xs, ys = zip(*corners, strict=True)
        labels.check_overlap((min(xs), min(ys), max(xs), max(ys)), info.path)
        raise InputError(
            f"--labels {options.path}: no labelled pixel falls on the imagery's valid pixels "
            "(outside the AOI, or on nodata); give labels inside the imagery"
        )
    if len({p.dtype for p in parts}) > 1:
        raise InputError("the inputs mix pixel types (uint8 and uint16); adapt on one kind")
    tiles = LabelTiles.concat(parts)
    pixels = tiles.known & tiles.core
    damaged_px = int((tiles.target.astype(bool) & pixels).sum())
    if damaged_px == 0 or damaged_px == int(pixels.sum()):
        raise InputError(
            f"--labels {options.path}: on the imagery the labels cover {damaged_px} damaged and "
            f"{int(pixels.sum()) - damaged_px} undamaged pixels; both classes are needed"
        )
    messages.append(
        f"  {len(tiles)} tiles of {tile} px around the labels: {damaged_px} damaged and "
        f"{int(pixels.sum()) - damaged_px} undamaged labelled pixels"
    )
    return LabelledScene(bundle, labels, regions, tiles, [p.info.path for p in plans], messages)


# -- scoring ---------------------------------------------------------------------------


def normaliser(scene: LabelledScene, device: torch.device) -> Normalize:
    """The bundle's own preprocessing for the tiles' dtype."""
    return Normalize(scene.bundle.manifest.preprocessing(scene.tiles.dtype)).to(device)


@torch.no_grad()
def backbone_features(
    model: DamageSegmenter, images: torch.Tensor, normalize: Normalize, device: torch.device
) -> torch.Tensor:
    """(N, D, h, w) float32 features of raw tiles, eval mode, in batches: computed once.

    Channels-last in memory: the decoder's convolutions run several times faster on
    that layout on the CPU (as in the training feature cache).
    """
    model.eval()
    out = [
        model.features(normalize(images[i : i + BATCH].to(device))).float()
        for i in range(0, len(images), BATCH)
    ]
    return torch.cat(out).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict_from_features(model: DamageSegmenter, features: torch.Tensor) -> np.ndarray:
    """(N, T, T) uint8 probabilities × 255 from cached features (decoder in eval)."""
    model.eval()
    probs = [
        torch.sigmoid(model.decoder.logits(features[i : i + BATCH]))[:, 0].cpu()
        for i in range(0, len(features), BATCH)
    ]
    return quantise(torch.cat(probs).numpy())


@torch.no_grad()
def map_probabilities(
    model: DamageSegmenter,
    images: torch.Tensor,
    normalize: Normalize,
    device: torch.device,
    features: torch.Tensor | None = None,
) -> np.ndarray:
    """(N, T, T) uint8 probabilities × 255 as the map has them: decoded from the backbone's
    features (``features`` when they are still the model's, else computed), or, for a
    quincunx model (#20), from the whole model on the tiles, which averages the
    phases of its last stage as ``stmap infer`` does."""
    if not model.config.quincunx:
        if features is None:
            features = backbone_features(model, images, normalize, device)
        return predict_from_features(model, features)
    model.eval()
    probs = [
        torch.sigmoid(model(normalize(images[i : i + BATCH].to(device))))[:, 0].cpu()
        for i in range(0, len(images), BATCH)
    ]
    return quantise(torch.cat(probs).numpy())


def score(
    prob8: np.ndarray, tiles: LabelTiles, regions: np.ndarray | None = None
) -> tuple[PixelScores, ObjectScores]:
    """Scores over the labelled pixels each tile owns; only ``regions`` (indices) if given."""
    use = tiles.core.copy()
    if regions is not None:
        use &= np.isin(tiles.region, regions)
    pixels, objects = PixelScores(), ObjectScores()
    pixels.add(prob8, tiles.target, tiles.known & use)
    objects.add(prob8, np.where(use, tiles.region, -1))
    return pixels, objects


def evaluate_scene(scene: LabelledScene, device: torch.device) -> dict[str, Any]:
    """The bundle's scores on the labels (``stmap evaluate --labels`` on imagery)."""
    model = scene.bundle.load_segmenter().to(device)
    model.decoder.to(memory_format=torch.channels_last)
    prob8 = map_probabilities(model, scene.tiles.images, normaliser(scene, device), device)
    pixels, objects = score(prob8, scene.tiles)
    threshold = scene.bundle.manifest.threshold
    return {
        **pixels.scores(threshold),
        "per_class": objects.per_class(scene.labels.values, scene.labels.classes, threshold),
    }


# -- adaptation ------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptSettings:
    """Training choices of ``stmap adapt`` (defaults: the method's, see the module doc)."""

    epochs: int = 10  # the method's training epochs
    fold_block_m: float = 200.0
    max_folds: int = 5
    # True: the F1-best threshold of the validation folds. Off by default: labels cover
    # buildings only, so the pixels it is chosen on hold no background, and on the
    # synthetic test bed a fitted threshold halved the dense F1 (adapt_synthetic.md).
    fit_threshold: bool = False
    # Weight of a term that keeps unlabelled pixels at the source bundle's probability
    # (soft targets, never negatives); 0: labelled pixels alone steer the decoder. On
    # the synthetic test bed 0 let the map flag more and more outside the labelled
    # buildings (dense F1 0.738 → 0.229 at N = 200), 10 kept it (0.735 → 0.733) while
    # dense AUC rose 0.946 → 0.956 (adapt_synthetic.md, adapt_synthetic_anchor10.md).
    anchor: float = 10.0
    seed: int = 0


def uses_lora(model: DamageSegmenter) -> bool:
    """LoRA applies to frozen foundation models (ViTs); ``tiny`` adapts its decoder."""
    return model.backbone_frozen


def fit(
    source: DamageSegmenter,
    scene: LabelledScene,
    features: torch.Tensor,
    train_known: np.ndarray,
    settings: AdaptSettings,
    device: torch.device,
) -> DamageSegmenter:
    """A copy of ``source`` adapted on the labelled pixels ``train_known`` (N, T, T)."""
    torch.manual_seed(settings.seed)
    model = copy.deepcopy(source).to(device)
    model.decoder.to(memory_format=torch.channels_last)  # as the cached features
    tiles = scene.tiles
    used = np.flatnonzero(train_known.any(axis=(1, 2)))
    target = torch.from_numpy(tiles.target).to(device)
    ignore = torch.from_numpy(~train_known).to(device)
    # BatchNorm keeps the source's statistics (eval mode), as in the method's few-shot
    # step: re-estimated on a few label tiles they cost 0.11 of cross-validated F1 on
    # the test bed (benchmarks/results/adapt_synthetic.md).
    model.eval()
    anchor = None
    if settings.anchor > 0:
        with torch.no_grad():
            anchor = torch.cat(
                [
                    torch.sigmoid(source.decoder.logits(features[i : i + BATCH]))
                    for i in range(0, len(features), BATCH)
                ]
            )
    optimiser = torch.optim.AdamW(
        model.decoder.parameters(), lr=DECODER_LR, weight_decay=DECODER_WD
    )
    generator = torch.Generator().manual_seed(settings.seed)
    for _ in range(settings.epochs):
        order = torch.from_numpy(used)[torch.randperm(len(used), generator=generator)]
        for batch in order.split(BATCH):
            logits = model.decoder(features[batch.to(device)])[0]
            loss = focal_loss(logits, target[batch], ignore=ignore[batch])
            if anchor is not None:
                unlabelled = ignore[batch][:, None].float()
                kept = F.binary_cross_entropy_with_logits(
                    logits.float(), anchor[batch], reduction="none"
                )
                loss = loss + settings.anchor * (
                    kept * unlabelled
                ).sum() / unlabelled.sum().clamp_min(1)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), GRAD_CLIP)
            optimiser.step()
    if uses_lora(model):
        _fit_lora(model, scene, target, ignore, used, device)
    return model.eval()


def _fit_lora(
    model: DamageSegmenter,
    scene: LabelledScene,
    target: torch.Tensor,
    ignore: torch.Tensor,
    used: np.ndarray,
    device: torch.device,
) -> None:
    """The method's few-shot LoRA on the backbone, merged back in place."""
    model.eval()  # decoder frozen, BatchNorm in eval
    model.decoder.requires_grad_(False)
    apply_lora(model.backbone)
    params = lora_parameters(model.backbone)
    optimiser = torch.optim.AdamW(params, lr=LORA_LR, weight_decay=LORA_WD)
    normalize = normaliser(scene, device)
    counted = (~ignore[used]).sum().clamp_min(1)
    for _ in range(LORA_EPOCHS):  # one batch of every tile: one step per epoch
        optimiser.zero_grad(set_to_none=True)
        for chunk in torch.from_numpy(used).split(LORA_CHUNK):
            logits = model(normalize(scene.tiles.images[chunk].to(device)))
            share = (~ignore[chunk]).sum() / counted  # chunks add up to one batch's mean
            (focal_loss(logits, target[chunk], ignore=ignore[chunk]) * share).backward()
        torch.nn.utils.clip_grad_norm_(params, GRAD_CLIP)
        optimiser.step()
    merge_lora(model.backbone)
    model.decoder.requires_grad_(True)


def adapt_scene(
    scene: LabelledScene, settings: AdaptSettings, device: torch.device
) -> tuple[DamageSegmenter, dict[str, Any]]:
    """Cross-validated figures before and after, and the model adapted on every label."""
    start = time.perf_counter()
    source = scene.bundle.load_segmenter().to(device)
    source.decoder.to(memory_format=torch.channels_last)
    source_threshold = scene.bundle.manifest.threshold
    normalize = normaliser(scene, device)
    features = backbone_features(source, scene.tiles.images, normalize, device)
    labels, tiles = scene.labels, scene.tiles
    unit = metres_per_unit(labels.crs, labels.bounds)
    folds = block_folds(
        scene.regions.geometries, settings.fold_block_m / unit, settings.seed, settings.max_folds
    )
    pixel_fold = np.where(tiles.region >= 0, folds[np.maximum(tiles.region, 0)], -1)

    before_prob8 = map_probabilities(source, tiles.images, normalize, device, features)
    before_pixels, before_objects = score(before_prob8, tiles)
    before = {
        **before_pixels.scores(source_threshold),
        "per_class": before_objects.per_class(labels.values, labels.classes, source_threshold),
    }
    fold_pixels, fold_objects = [], []
    k = int(folds.max()) + 1
    for f in range(k):
        model = fit(source, scene, features, tiles.known & (pixel_fold != f), settings, device)
        prob8 = _predict(model, scene, features, normalize, device)
        pixels, objects = score(prob8, tiles, np.flatnonzero(folds == f))
        fold_pixels.append(pixels)
        fold_objects.append(objects)
        log.info("fold %d/%d adapted", f + 1, k)
    after = cross_validated(fold_pixels, None if settings.fit_threshold else source_threshold)
    per_object = {}
    for f, objects in enumerate(fold_objects):
        t = after["fold_thresholds"][f] if settings.fit_threshold else source_threshold
        per_object.update(dict.fromkeys(objects.pixels, t))
    merged = ObjectScores()
    for objects in fold_objects:
        merged.merge(objects)
    after["per_class"] = merged.per_class(labels.values, labels.classes, per_object)
    threshold = (
        sum(fold_pixels, PixelScores()).best_threshold()
        if settings.fit_threshold
        else source_threshold
    )
    final = fit(source, scene, features, tiles.known, settings, device)
    report = {
        "before": before,
        "after": after,
        "threshold": threshold,
        "validation": (
            f"{k} spatially blocked folds of {settings.fold_block_m:g} m blocks; after = "
            "pooled out-of-fold predictions, "
            + (
                "each fold at the F1-best threshold of the other folds"
                if settings.fit_threshold
                else "at the source bundle's threshold"
            )
        ),
        "folds": k,
        "fold_block_m": settings.fold_block_m,
        "adapted": "LoRA on the backbone + decoder" if uses_lora(source) else "decoder",
        "epochs": settings.epochs,
        "anchor": settings.anchor,
        "tiles": len(tiles),
        "seconds": round(time.perf_counter() - start, 1),
    }
    return final, report


def _predict(
    model: DamageSegmenter,
    scene: LabelledScene,
    features: torch.Tensor,
    normalize: Normalize,
    device: torch.device,
) -> np.ndarray:
    """Probabilities of an adapted model: from the cached features unless LoRA changed them."""
    cached = None if uses_lora(model) else features
    return map_probabilities(model, scene.tiles.images, normalize, device, cached)


# -- the new bundle --------------------------------------------------------------------


def check_output(model: str, out: str | None, restart: bool) -> Path:
    """Where the adapted bundle goes; refused before any work.

    Without ``-o`` a bundle directory is replaced in place (``--restart`` needed);
    the shipped bundle and zipped bundles need ``-o``.
    """
    source = resolve_bundle_path(model)
    if out is None:
        if str(model) == "default" or source.resolve() == resolve_bundle_path("default").resolve():
            raise InputError(
                "-o is required when the source is the shipped bundle (it is never modified); "
                "give -o NEW_BUNDLE"
            )
        if source.is_file():
            raise InputError(
                f"--model {model}: a zipped bundle is not replaced in place; give -o NEW_BUNDLE"
            )
        target = source
    else:
        target = Path(out)
    if target.exists() and not restart:
        raise OutputExistsError(
            f"{target}: already exists; pass --restart to replace it, or choose another -o"
        )
    if target.exists() and not (target / "manifest.json").is_file():
        raise InputError(f"-o {target}: exists and is not a bundle; it is not replaced")
    return target


def write_adapted(
    target: Path,
    model: DamageSegmenter,
    scene: LabelledScene,
    report: dict[str, Any],
    command: str,
    imagery: Sequence[str],
) -> Path:
    """The adapted model as a normal bundle, atomically, with its provenance and figures."""
    source = scene.bundle
    manifest = source.manifest
    labels = scene.labels
    provenance = {
        **manifest.provenance,
        "adaptation": {
            "source_bundle": str(source.source),
            "source_bundle_hash": source.hash(),
            "labels": labels.path,
            "labels_sha256": labels.sha256,
            "class_mapping": labels.mapping.to_dict(),
            "label_counts": labels.counts(),
            "imagery": list(imagery),
            "command": command,
            "stmap_version": __version__,
        },
    }
    updated = manifest.model_copy(
        update={
            "name": f"{manifest.name}-adapted",
            "threshold": float(min(max(report["threshold"], 1e-3), 1 - 1e-3)),
            "provenance": provenance,
            "metrics": {"adaptation": report},
            "exports": {},
            "files": {},
        }
    )
    return write_bundle(target, model.cpu(), updated, overwrite=True)

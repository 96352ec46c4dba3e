"""``run_training``: a config in, a trained bundle, checkpoints and a report out.

out_dir/bundle/     the selected model (stmap's bundle: manifest + safetensors)
out_dir/folds/      a checkpoint per trained model (decoder + projection head,
                    the backbone too when it trains; LoRA factors of few-shot)
out_dir/report.*    per-region scores (json, tsv, md); out_dir/overlays/*.png
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from stmap import __version__
from stmap.bundle import Normalization, default_tiling, manifest_for, write_bundle
from stmap.cache import user_cache_dir
from stmap.errors import InputError, OutputExistsError
from stmap.model import DamageSegmenter, Normalize, Preprocessing, SegmenterConfig, get_spec
from stmap.provenance import git_commit
from stmap.train.config import TrainConfig
from stmap.train.datasets import TileData, load_tile_data
from stmap.train.features import FeatureCache, cache_applies
from stmap.train.loop import (
    Inputs,
    bundle_state,
    enable_rope_jitter,
    make_deterministic,
    resolve_device,
    teacher_model,
)
from stmap.train.protocols import FEWSHOT_SEED, ProtocolResult, plan_tasks, run_regions, run_tasks
from stmap.train.reports import summarise, write_overlays, write_report

log = logging.getLogger(__name__)
THRESHOLD = 0.5


def run_training(config: TrainConfig, command: str | None = None) -> Path:
    """Run ``config.protocol`` and write everything under ``config.out_dir``; return the bundle.

    command: the command line recorded in the provenance (default: ``sys.argv``).
    """
    out_dir = config.out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExistsError(
            f"{out_dir}: out_dir exists and is not empty; choose another "
            "(--set out_dir=...) or remove it"
        )
    device = resolve_device(config.device)
    make_deterministic(device)
    spec = get_spec(config.backbone)
    model, weights = build_model(config, out_dir)
    initial, initial_hash = None, None
    if config.init_bundle is not None:  # loaded now: a frozen backbone's cache is the bundle's
        initial, initial_hash, theirs = bundle_state(config.init_bundle, model)
        model.load_state_dict(initial)
        weights = f"fine-tuned from the bundle {config.init_bundle} (model {initial_hash[:12]})"
        if get_spec(theirs).name != spec.name:
            weights += f", its {theirs} weights in {model.config.backbone}"
    teacher, teacher_hash = None, None
    if config.distill_bundle is not None:
        teacher, teacher_hash = teacher_model(config.distill_bundle, model)
    model.to(device)
    if teacher is not None:
        teacher.to(device)

    data = load_tile_data(
        config.data_root,
        run_regions(config),
        config.img_size,
        config.footprint_dir,
        config.tiles_meta_dir,
        config.num_workers,
        gsd_m=config.gsd_m,
        disaster_types=config.disaster_types,
        cache_dir=user_cache_dir("xbd-tiles") if config.tile_cache else None,
    )
    if config.lambda_dpt and len(data.regions_with_footprints) < len(data.region_names):
        bare = sorted(set(data.region_names) - data.regions_with_footprints)
        log.warning("no footprints for %s: DPT finds no triplets there", ", ".join(bare))
    tasks = plan_tasks(config, data)
    normalize = Normalize(Preprocessing(spec.mean, spec.std))

    cache = None
    if cache_applies(spec.frozen, config.backbone_rope_jitter, config.cache_budget):
        cache = FeatureCache.build(
            model,
            data.images,
            normalize.to(device),
            device,
            config.batch_size,
            config.cache_budget,
            out_dir / "cache",
        )
    try:
        inputs = Inputs(data, normalize, device, cache)
        result = run_tasks(config, model, inputs, tasks, out_dir / "folds", initial, teacher)
    finally:
        if cache is not None:
            cache.close()

    facts = run_facts(config, data, result, cache, weights)
    differences = deliberate_differences(config, spec.frozen, cache is not None)
    selected = result.selected
    overlays = write_overlays(
        out_dir / "overlays",
        selected.model.to(device),
        inputs.without_cache(),
        selected.scored,
        config.overlays,
        THRESHOLD,
        config.batch_size,
    )
    selected.model.cpu()
    summary = summarise(result.fold_scores)
    report = {
        "command_name": "train",
        "title": f"protocol {config.protocol}, backbone {spec.name}",
        "summary": summary,
        "facts": facts,
        "differences": differences,
        "backbone_rope_jitter": config.backbone_rope_jitter,
        "feature_cache": None if cache is None else ("disk" if cache.on_disk else "memory"),
        "projection_heads": "one, saved with the model",
        "config": config.model_dump(mode="json"),
        "tasks": result.tasks,
        "overlays": overlays,
        "selected": selected_info(result),
    }
    write_report(out_dir, report)

    manifest = manifest_for(
        selected.model.config,
        name=f"smart-transfer-{config.protocol}-{selected.task.name}",
        backbone_weights=weights,
        normalization=Normalization(mean=spec.mean, std=spec.std),
        gsd_m=data.gsd_m,
        tiling=default_tiling(config.backbone, config.img_size),
        threshold=THRESHOLD,
        provenance=provenance(config, data, result, command, weights, initial_hash, teacher_hash),
        metrics={
            "selected": selected_info(result),
            "mean_over_regions": {
                setting: {m: v[0] for m, v in block["mean"].items()}
                for setting, block in summary.items()
            },
        },
    )
    bundle = write_bundle(out_dir / "bundle", selected.model, manifest)
    log.info("bundle written to %s", bundle)
    return bundle


def build_model(config: TrainConfig, out_dir: Path) -> tuple[DamageSegmenter, str]:
    """The segmenter with its backbone weights; returns it and where the weights came from."""
    from stmap.model.weights import download_backbone_weights, load_backbone_weights

    spec = get_spec(config.backbone)
    model = DamageSegmenter(
        SegmenterConfig(
            spec.name,
            config.img_size,
            config.decoder_channels,
            decoder_upsample=config.decoder_upsample,
            quincunx=config.quincunx,
        )
    )
    if config.weights == "download":
        if spec.timm_name is None:
            raise InputError(f"weights: download: {spec.name!r} has no published weights")
        path = download_backbone_weights(spec.timm_name, out_dir / "backbone.safetensors")
        load_backbone_weights(model.backbone, path)
        weights = f"timm:{spec.timm_name} (downloaded on request)"
    elif config.weights == "random" or (config.weights is None and not spec.frozen):
        weights = "random initialisation" + ("" if spec.frozen else ", trained from scratch")
        if spec.frozen:
            log.warning("a frozen %s with random weights learns little (tests only)", spec.name)
    elif config.weights is None:
        raise InputError(
            f"weights: {spec.name} is a frozen foundation model; set weights to a local "
            "checkpoint (--set weights=/path/to/dinov3.pth), 'download' or 'random'"
        )
    else:
        load_backbone_weights(model.backbone, config.weights)
        weights = str(Path(config.weights).resolve())
    if config.backbone_rope_jitter:
        enable_rope_jitter(model.backbone)
    return model, weights


def selected_info(result: ProtocolResult) -> dict[str, Any]:
    selected = result.selected
    return {
        "task": selected.task.name,
        "fold": selected.task.fold,
        "target": selected.task.target,
        "sources": list(selected.task.sources),
        "best_epoch": selected.best_epoch,
        "val_miou": selected.val_miou,
        "fewshot_shots": selected.shots,
        "rule": "best source-validation mIoU over all trained models"
        + ("; the adapted model with the most shots" if selected.shots else ""),
    }


def run_facts(
    config: TrainConfig,
    data: TileData,
    result: ProtocolResult,
    cache: FeatureCache | None,
    weights: str,
) -> list[str]:
    """What this run did, in sentences for the report."""
    folds = 1 + max(t["fold"] for t in result.tasks)
    facts = [
        f"Protocol {config.protocol} on {len(data)} tiles of {len(data.region_names)} regions "
        f"({', '.join(data.region_names)}) from {config.data_root}; {folds} folds, "
        f"{len(result.tasks)} trained models, epochs: {config.epochs} each.",
        f"Backbone {config.backbone} ({weights}); decoder {config.decoder_channels} channels; "
        f"λ_pc = {config.lambda_pc:g}, λ_dpt = {config.lambda_dpt:g}; seed {config.seed} + fold.",
        "backbone_rope_jitter: " + rope_state(config),
        "Feature cache: " + cache_state(config, cache),
        "One projection head per model, saved with it in the bundle and the checkpoints.",
    ]
    if config.protocol == "fewshot":
        facts.append(
            f"Few-shot: n ∈ {config.fewshot_n} target tiles drawn with seed "
            f"{FEWSHOT_SEED} + fold from the target's fold-train tiles; LoRA rank "
            f"{config.lora_rank}, α {config.lora_alpha:g} on qkv/proj/fc1/fc2; AdamW lr "
            f"{config.fewshot_lr:g}, weight decay {config.fewshot_weight_decay:g}, "
            f"{config.fewshot_epochs} steps, fp32; PC prototypes from the shots."
        )
    return facts + data.notes + result.notes


def rope_state(config: TrainConfig) -> str:
    if not get_spec(config.backbone).frozen:
        return "false (the backbone trains, in train mode; it has no RoPE)."
    if config.backbone_rope_jitter:
        return (
            "true — the frozen backbone is put in train mode every epoch, so DINOv3 rescales "
            "its RoPE coordinates log-uniformly in [0.5, 2] (the reference's behaviour)."
        )
    return (
        "false — the frozen backbone stays in eval mode: deterministic features, the method "
        "as described."
    )


def cache_state(config: TrainConfig, cache: FeatureCache | None) -> str:
    if cache is not None:
        where = "memory-mapped on disk" if cache.on_disk else "in memory"
        return f"on ({where}): features computed once in fp32, stored in fp16."
    if not get_spec(config.backbone).frozen:
        return "off (the backbone trains)."
    if config.backbone_rope_jitter:
        return "off (RoPE jitter makes the features random)."
    return "off (feature_cache: false)."


def deliberate_differences(config: TrainConfig, frozen: bool, cached: bool) -> list[str]:
    """The departures from the reference implementation that apply to this run."""
    items = []
    if frozen and not config.backbone_rope_jitter:
        items.append(
            "The frozen DINOv3 stays in eval mode; the reference puts it back in train mode "
            "every epoch, which jitters RoPE coordinates (set backbone_rope_jitter: true)."
        )
    items.append(
        "The projection head is saved with the model and one head is kept throughout; the "
        "reference never saves it"
        + (
            ", so its few-shot prototypes come from a different random head than the "
            "adapted model's."
            if config.protocol == "fewshot"
            else "."
        )
    )
    if cached:
        items.append(
            "Frozen-backbone features are cached in fp16 (computed in fp32): the decoder sees "
            "them rounded to half precision."
        )
    if config.lambda_pc:
        items.append(
            "A class with fewer than 32 pixel samples gets fewer prototypes, with a warning; "
            "the reference fails."
        )
    if config.protocol == "fewshot":
        items.append("LoRA is merged into the backbone weights of the bundle.")
    if config.protocol == "ssdc":
        items.append(
            "SSDC sources come from the config (the reference does not code the choice by "
            "damage level or distance)."
        )
    if config.photometric_augment:
        items.append(
            f"Training batches get photometric augmentation (photometric_augment: "
            f"{config.photometric_augment:g}, train/augment.py); the method trains without it."
        )
    if config.shift_augment:
        items.append(
            "Training batches, their labels and building masks are moved by a random (dy, dx) "
            "in [0, 15] px (shift_augment, #20); the method trains on fixed tiles."
        )
    if config.quincunx:
        items.append(
            "The map averages the last backbone stage at both phases of its subsampling "
            "(quincunx, #20); the method runs it once."
        )
    if config.init_bundle is not None:
        items.append(
            f"Every fold starts from the trained weights of {config.init_bundle} (init_bundle, "
            "fine-tuning); the method trains the decoder from fresh weights."
        )
    if config.distill_bundle is not None:
        items.append(
            f"The map of {config.distill_bundle} (distill_bundle) is a soft target next to the "
            f"labels (KL term, weight {config.distill_weight:g}); the method learns from the "
            "labels alone."
        )
    if config.shift_consistency:
        items.append(
            f"Training batches are seen a second time shifted by a random (dy, dx) in [1, 15] px "
            f"and a shift-consistency term (weight {config.shift_consistency:g}, "
            "train/losses.py) is added to the loss; the method has no such term (#20)."
        )
    return items


def provenance(
    config: TrainConfig,
    data: TileData,
    result: ProtocolResult,
    command: str | None,
    weights: str,
    initial_hash: str | None = None,
    teacher_hash: str | None = None,
) -> dict[str, Any]:
    selected = result.selected
    task = selected.task
    folds = 1 + max(t["fold"] for t in result.tasks)
    sentence = (
        f"Smart Transfer ({config.protocol}) fold {task.fold + 1} of {folds}, epoch "
        f"{selected.best_epoch} of {config.epochs}, on {len(task.train)} tiles of "
        f"{', '.join(task.sources)}"
        + (f"; adapted with {selected.shots} {task.target} tiles" if selected.shots else "")
        + f"; backbone {config.backbone} ({weights})."
    )
    return {
        "command": command if command is not None else " ".join(sys.argv),
        "config": config.model_dump(mode="json"),
        "seeds": {
            "base": config.seed,
            "fold": f"{config.seed} + fold",
            "selected_fold": config.seed + task.fold,
            "fewshot_draw": f"{FEWSHOT_SEED} + fold" if config.protocol == "fewshot" else None,
        },
        "stmap_version": __version__,
        "git_commit": git_commit(),
        "data_root": str(Path(config.data_root).resolve()),
        "regions": data.region_names,
        "training_data": data.kind,
        "trained_on": sentence,
        **({} if initial_hash is None else {"init_bundle_hash": initial_hash}),
        **({} if teacher_hash is None else {"distill_bundle_hash": teacher_hash}),
    }

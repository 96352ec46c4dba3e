"""The evaluation protocols of Smart Transfer, as method.md states them.

Folds are drawn within each region (``splits.region_folds``); fold f splits every
region into its train part and its held-out part. Per protocol, the held-out part is
where the model is selected (sources) or scored (targets):

- ``fullsup``: all regions; train on the train parts, select and score on the
  validation parts (the best epoch's validation scores are the result).
- ``ratio``: ``fullsup`` with the training split subsampled to ``train_ratio``,
  keeping every region.
- ``lodo``: for each target region, train on the other (source) regions, select on
  their validation parts, score on the target's held-out part.
- ``ssdc``: train on ``source_regions``, score on every other region's held-out part.
- ``fewshot``: ``lodo``, then for each n in ``fewshot_n`` adapt a copy of the source
  model with LoRA on n target tiles drawn (seed 0 + fold) from the target's train
  part, scored on the target's held-out part ("0 shots" is the source model).

Each trained model is a *task*; ``run_tasks`` trains them one after the other and
collects per-region, per-fold scores by *setting* (a row block of the report).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stmap.errors import InputError
from stmap.model import DamageSegmenter
from stmap.train.config import TrainConfig
from stmap.train.datasets import TileData
from stmap.train.loop import Inputs, adapt_fewshot, evaluate, reinitialise, train_fold
from stmap.train.lora import lora_state_dict, merge_lora
from stmap.train.metrics import ConfusionCounts, scores
from stmap.train.splits import canonical_region, fewshot_sample, region_folds, subsample_ratio

log = logging.getLogger(__name__)
FEWSHOT_SEED = 0  # shots are drawn with seed 0 + fold (method.md)


@dataclass(frozen=True)
class Task:
    """One model to train: its fold and splits as tile positions into the run's TileData.

    test: None when the model is scored on its validation split (full supervision).
    shot_pool: few-shot only, the target's fold-train ids, sorted.
    """

    name: str
    fold: int
    sources: tuple[str, ...]
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor | None
    target: str | None = None
    shot_pool: tuple[str, ...] = ()


@dataclass
class Selected:
    """The model that becomes the bundle: best source-validation mIoU over all tasks."""

    model: DamageSegmenter
    task: Task
    val_miou: float
    best_epoch: int
    scored: torch.Tensor  # positions it was scored on (overlays come from there)
    shots: int = 0


@dataclass
class ProtocolResult:
    fold_scores: dict[str, dict[str, list[dict[str, float]]]]
    tasks: list[dict[str, Any]]
    selected: Selected
    notes: list[str] = field(default_factory=list)


def run_regions(config: TrainConfig) -> list[str] | None:
    """The regions to load: those named in the config, or None (all) when one side is open."""
    if config.protocol in ("fullsup", "ratio"):
        return config.source_regions
    if config.protocol == "ssdc" and not config.source_regions:
        raise InputError("ssdc: set source_regions (e.g. --set source_regions=[hatay])")
    if config.source_regions and config.target_regions:
        return [*config.source_regions, *config.target_regions]
    return config.source_regions if config.protocol != "ssdc" else None


def plan_tasks(config: TrainConfig, data: TileData) -> list[Task]:
    """Every model the protocol trains, in order (by target, then fold)."""
    folds = region_folds(data.tile_ids, data.damaged_fractions(), config.k_folds, config.seed)
    found = data.region_names
    named = {canonical_region(r) for r in config.source_regions or found}
    targets = [canonical_region(r) for r in config.target_regions or []]
    tasks = []
    if config.protocol in ("fullsup", "ratio"):
        for fold, split in enumerate(folds):
            train = _train_part(split, found, config, fold)
            val = [t for r in found for t in split[r][1]]
            tasks.append(Task(f"fold{fold}", fold, tuple(found), *_pos(data, train, val), None))
    elif config.protocol == "ssdc":
        sources = sorted(named)
        targets = targets or [r for r in found if r not in named]
        if not targets or set(targets) & named:
            raise InputError("ssdc: target_regions must be other regions than source_regions")
        for fold, split in enumerate(folds):
            train = _train_part(split, sources, config, fold)
            val = [t for r in sources for t in split[r][1]]
            test = [t for r in targets for t in split[r][1]]
            tasks.append(Task(f"fold{fold}", fold, tuple(sources), *_pos(data, train, val, test)))
    else:  # lodo, fewshot: each target in turn; the other named (default: all) regions are sources
        for target in targets or sorted(named):
            sources = sorted(named - {target})
            if not sources:
                raise InputError(f"{config.protocol}: no source regions left besides {target!r}")
            for fold, split in enumerate(folds):
                train = _train_part(split, sources, config, fold)
                val = [t for r in sources for t in split[r][1]]
                test = split[target][1]
                tasks.append(
                    Task(
                        f"{target}_fold{fold}",
                        fold,
                        tuple(sources),
                        *_pos(data, train, val, test),
                        target,
                        tuple(split[target][0]),
                    )
                )
    return tasks


def _train_part(split: dict, regions: list[str], config: TrainConfig, fold: int) -> list[str]:
    """The fold's training ids of ``regions``, subsampled to ``train_ratio`` per region."""
    kept = subsample_ratio(
        {r: split[r][0] for r in regions}, config.train_ratio, config.seed + fold
    )
    return [t for r in sorted(kept) for t in kept[r]]


def _pos(data: TileData, *id_lists: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(data.positions(ids) for ids in id_lists)


def setting_name(config: TrainConfig, shots: int | None = None) -> str:
    """The report block a score belongs to."""
    if shots is not None:
        return f"{shots}-shot"
    if config.protocol == "ratio":
        return f"ratio {config.train_ratio:g}"
    return config.protocol


def run_tasks(
    config: TrainConfig,
    model: DamageSegmenter,
    inputs: Inputs,
    tasks: list[Task],
    folds_dir: Path,
    initial: dict[str, torch.Tensor] | None = None,
    teacher: DamageSegmenter | None = None,
) -> ProtocolResult:
    """Train every task (and few-shot adaptations), checkpoint each, collect scores.

    initial: the weights every task starts from (``init_bundle``); None = fresh ones.
    teacher: ``distill_bundle``'s model, on the device."""
    from stmap.io.tiles import save_tensors

    fold_scores: dict[str, dict[str, list[dict[str, float]]]] = {}
    records: list[dict[str, Any]] = []
    notes: list[str] = []
    selected: Selected | None = None

    def record(setting: str, counts: dict[str, ConfusionCounts]) -> None:
        for region, region_counts in counts.items():
            fold_scores.setdefault(setting, {}).setdefault(region, []).append(scores(region_counts))

    for number, task in enumerate(tasks, 1):
        log.info(
            "task %d/%d %s: %d train, %d val, %d test tiles",
            number,
            len(tasks),
            task.name,
            len(task.train),
            len(task.val),
            0 if task.test is None else len(task.test),
        )
        reinitialise(model, config.seed + task.fold)
        if initial is not None:  # fine-tuning: every fold starts from the bundle's weights
            model.load_state_dict(initial)
        result = train_fold(model, inputs, task.train, task.val, config, task.fold, teacher)
        save_tensors(folds_dir / f"{task.name}.safetensors", result.state)
        val_miou = scores(sum(result.val_counts.values(), ConfusionCounts()))["miou"]
        scored = task.val if task.test is None else task.test
        counts = (
            result.val_counts
            if task.test is None
            else evaluate(model, inputs, task.test, config.batch_size)
        )
        record(setting_name(config, 0 if config.protocol == "fewshot" else None), counts)
        entry = {
            "task": task.name,
            "fold": task.fold,
            "sources": list(task.sources),
            "target": task.target,
            "best_epoch": result.best_epoch,
            "val_miou": val_miou,
            "checkpoint": f"folds/{task.name}.safetensors",
            "history": result.history,
        }
        is_best = selected is None or val_miou > selected.val_miou
        if is_best:
            selected = Selected(
                copy.deepcopy(model).cpu(), task, val_miou, result.best_epoch, scored
            )

        if config.protocol == "fewshot":
            entry["adapted"] = []
            for n, shot_ids, adapted, counts in adapt_to_target(config, model, inputs, task):
                name = f"{task.name}_{n}shot.lora.safetensors"
                save_tensors(folds_dir / name, lora_state_dict(adapted))
                record(setting_name(config, n), counts)
                entry["adapted"].append(
                    {"shots": n, "tiles": shot_ids, "checkpoint": f"folds/{name}"}
                )
                if len(shot_ids) < n:
                    notes.append(f"{task.name}: only {len(shot_ids)} tiles to draw {n} shots from")
                if is_best and n == max(config.fewshot_n):
                    merge_lora(adapted.backbone)
                    selected = Selected(adapted.cpu(), task, val_miou, result.best_epoch, scored, n)
        records.append(entry)
    assert selected is not None
    return ProtocolResult(fold_scores, records, selected, notes)


def adapt_to_target(
    config: TrainConfig, model: DamageSegmenter, inputs: Inputs, task: Task
) -> Iterator[tuple[int, list[str], DamageSegmenter, dict[str, ConfusionCounts]]]:
    """For each n of ``fewshot_n``: the shots drawn (seed 0 + fold) from the target's
    fold-train tiles, the source model adapted on them, and its counts on the test split."""
    assert task.test is not None
    for n in config.fewshot_n:
        shot_ids = fewshot_sample(list(task.shot_pool), n, FEWSHOT_SEED + task.fold)
        adapted = adapt_fewshot(model, inputs, inputs.data.positions(shot_ids), config, task.fold)
        counts = evaluate(adapted, inputs.without_cache(), task.test, config.batch_size)
        yield n, shot_ids, adapted, counts

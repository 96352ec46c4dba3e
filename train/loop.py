"""The training loop of Smart Transfer, and the few-shot LoRA adaptation.

One fold: fit the PC prototypes (eval mode, fp32), then ``epochs`` passes of AdamW
over shuffled batches of the training split — fp16 autocast with a GradScaler on
CUDA, plain fp32 on the CPU, gradients clipped to a global norm — each followed by
an fp32 evaluation on the validation split; the epoch with the strictly best mIoU
is kept. With a frozen backbone only the decoder learns, so a feature cache can
stand in for the backbone (``Inputs``).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stmap.errors import DeviceError, InputError
from stmap.model import DamageSegmenter, Normalize, TrainOutput
from stmap.model.backbones import weights_interchangeable
from stmap.train.augment import photometric_augmenter
from stmap.train.config import MAX_CONSISTENCY_SHIFT, TrainConfig
from stmap.train.datasets import TileData
from stmap.train.features import FeatureCache
from stmap.train.lora import apply_lora, lora_parameters
from stmap.train.losses import (
    distillation_loss,
    shift_consistency_loss,
    shift_view,
    total_loss,
)
from stmap.train.metrics import ConfusionCounts, scores
from stmap.train.prototypes import fit_prototypes, sample_pixel_embeddings

log = logging.getLogger(__name__)
PROTOTYPES_PER_CLASS = 32
SAMPLES_PER_CLASS = 512
INFERENCE_SETTINGS = ("quincunx", "last_stage_phases", "tile_size")  # init_bundle may differ


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA device if any, else the CPU; a missing GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: no CUDA GPU here; use --set device=cpu")
    return torch.device(name)


def make_deterministic(device: torch.device) -> None:
    """Deterministic kernels (seeded runs repeat exactly on the CPU)."""
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def enable_rope_jitter(backbone: torch.nn.Module) -> None:
    """Turn on DINOv3's RoPE rescaling (one log-uniform factor in [0.5, 2] per forward in
    train mode), the augmentation the reference gets by leaving its backbone in train mode."""
    ropes = [m for m in backbone.modules() if hasattr(m, "rescale_coords")]
    if not ropes:
        raise InputError("backbone_rope_jitter: true needs a DINOv3 backbone (it has RoPE)")
    for rope in ropes:
        rope.rescale_coords, rope.aug_active = 2.0, True


def reinitialise(model: DamageSegmenter, seed: int) -> None:
    """Draw fresh weights for everything but a frozen backbone, from ``seed`` (42 + fold)."""
    torch.manual_seed(seed)
    parts = [model.decoder, model.projection]
    if not model.backbone_frozen:
        parts.append(model.backbone)
    for part in parts:
        for module in part.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()


def bundle_state(path: Path, model: DamageSegmenter) -> tuple[dict[str, torch.Tensor], str, str]:
    """``init_bundle``'s trained weights, model hash and backbone; refused (exit 2) unless its
    architecture is ``model``'s, but for a backbone whose weights are interchangeable with
    ``model``'s (``weights_interchangeable``: the same tensors, other fixed blurs).

    Checked before anything is loaded or written: a bundle of another backbone,
    decoder width or upsampling would otherwise fail, or train the wrong model. The
    quincunx (its phases) and the tile size are inference settings, free to differ."""
    from stmap.bundle import open_bundle

    bundle = open_bundle(path)
    theirs, ours = bundle.manifest.segmenter_config(), model.config
    for field_ in dataclasses.fields(ours):
        name = field_.name
        if name == "backbone" and weights_interchangeable(theirs.backbone, ours.backbone):
            continue  # the same tensors; only weightless filters differ (tiny-aa5n → aa7n)
        if name not in INFERENCE_SETTINGS and getattr(theirs, name) != getattr(ours, name):
            raise InputError(
                f"init_bundle {path}: its {name} is {getattr(theirs, name)!r}, this config's "
                f"{getattr(ours, name)!r}"
            )
    state = bundle.load_segmenter().state_dict()
    weights = {key: value.clone() for key, value in state.items()}
    return weights, bundle.hash(), theirs.backbone


def teacher_model(path: Path, model: DamageSegmenter) -> tuple[DamageSegmenter, str]:
    """``distill_bundle``'s model (eval mode, frozen) and its hash; refused (exit 2) unless
    it reads its pixels as ``model`` does (the same normalisation and stride)."""
    from stmap.bundle import open_bundle
    from stmap.model.backbones import get_spec

    bundle = open_bundle(path)
    theirs, ours = get_spec(bundle.manifest.backbone), get_spec(model.config.backbone)
    if (theirs.mean, theirs.std, theirs.patch_size) != (ours.mean, ours.std, ours.patch_size):
        raise InputError(
            f"distill_bundle {path}: its backbone {theirs.name} normalises or strides its "
            f"input unlike {ours.name}"
        )
    teacher = bundle.load_segmenter().eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher, bundle.hash()


def trained_state(model: DamageSegmenter) -> dict[str, torch.Tensor]:
    """A copy of what a fold changes: decoder, projection head, and the backbone if it trains."""
    return {
        key: value.detach().clone()
        for key, value in model.state_dict().items()
        if not (model.backbone_frozen and key.startswith("backbone."))
    }


Augment = Callable[[torch.Tensor], torch.Tensor]  # raw (B, 3, S, S) → raw float, same shape


class Inputs:
    """Tile positions → what the model and the losses need, on the device.

    Features come from the feature cache when there is one, else from the backbone.
    """

    def __init__(
        self,
        data: TileData,
        normalize: Normalize,
        device: torch.device,
        cache: FeatureCache | None = None,
    ):
        self.data = data
        self.normalize = normalize.to(device)
        self.device = device
        self.cache = cache

    def features(
        self, model: DamageSegmenter, index: torch.Tensor, augment: Augment | None = None
    ) -> torch.Tensor:
        """(B,) positions → (B, D, h, w) backbone features.

        ``augment`` (training batches only) changes the raw pixels first, so it bypasses
        the cache.
        """
        if self.cache is not None and augment is None:
            return self.cache(index)
        return model.features(self.pixels(index, augment))

    def pixels(self, index: torch.Tensor, augment: Augment | None = None) -> torch.Tensor:
        """(B,) positions → (B, 3, S, S) normalised float tiles (augmented if asked)."""
        images = self.data.images[index].to(self.device)
        return self.normalize(images if augment is None else augment(images))

    def outputs(
        self, model: DamageSegmenter, index: torch.Tensor, augment: Augment | None = None
    ) -> TrainOutput:
        """(B,) positions → TrainOutput(logits (B, 1, S, S), embedding, decoder feature)."""
        return model.forward_from_features(self.features(model, index, augment))

    def labels(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) positions → (B, 1, S, S) float32 labels, 1 = damaged."""
        return self.data.labels[index].to(self.device).unsqueeze(1).float()

    def buildings(self, index: torch.Tensor) -> torch.Tensor:
        """(B,) positions → (B, 1, S, S) float32 building masks."""
        return self.data.buildings[index].to(self.device).unsqueeze(1).float()

    def without_cache(self) -> Inputs:
        return Inputs(self.data, self.normalize, self.device, None)


@torch.no_grad()
def predict(
    model: DamageSegmenter, inputs: Inputs, index: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Eval mode, fp32: yields (positions (B,), logits (B, 1, S, S)) batch by batch.

    The logits are the map's: a quincunx model (#20) averages its phases here as
    ``stmap infer`` does, so validation and ``stmap evaluate`` score what it maps.
    """
    model.eval()
    for batch in index.split(batch_size):
        if not len(batch):  # split() yields one empty batch for no tiles: a ViT refuses it
            continue
        if model.config.quincunx:
            logits = model(inputs.pixels(batch))
        else:
            logits = inputs.outputs(model, batch).logits
        yield batch, logits.float()


def evaluate(
    model: DamageSegmenter,
    inputs: Inputs,
    index: torch.Tensor,
    batch_size: int,
    threshold: float = 0.5,
) -> dict[str, ConfusionCounts]:
    """Confusion counts per region over the tiles at ``index``, pooled at S² pixels."""
    counts: dict[str, ConfusionCounts] = {}
    regions = inputs.data.regions
    for batch, logits in predict(model, inputs, index, batch_size):
        labels = inputs.labels(batch)
        batch_regions = [regions[i] for i in batch.tolist()]
        for region in dict.fromkeys(batch_regions):
            rows = torch.tensor([r == region for r in batch_regions], device=logits.device)
            counts.setdefault(region, ConfusionCounts()).update(
                logits[rows], labels[rows], threshold
            )
    return counts


def pooled_miou(counts: dict[str, ConfusionCounts]) -> float:
    return scores(sum(counts.values(), ConfusionCounts()))["miou"]


@torch.no_grad()
def fit_pc_prototypes(
    model: DamageSegmenter,
    inputs: Inputs,
    index: torch.Tensor,
    batch_size: int,
    seed: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PC prototypes of the tiles at ``index``: eval mode, fp32, 32 per class.

    Returns prototypes (K, E) and prototype_labels (K,), on the device.
    """
    model.eval()
    vectors, labels = [], []
    for batch in index.split(batch_size):
        embedding = model.projection(inputs.features(model, batch).float())
        v, y = sample_pixel_embeddings(
            embedding, inputs.labels(batch), SAMPLES_PER_CLASS, generator
        )
        vectors.append(v)
        labels.append(y)
    prototypes, prototype_labels = fit_prototypes(
        torch.cat(vectors), torch.cat(labels), PROTOTYPES_PER_CLASS, seed
    )
    return prototypes.to(inputs.device), prototype_labels.to(inputs.device)


@dataclass
class FoldResult:
    """The selected epoch of one fold: its validation counts and trained tensors."""

    best_epoch: int
    val_counts: dict[str, ConfusionCounts]
    state: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)


def train_fold(
    model: DamageSegmenter,
    inputs: Inputs,
    train: torch.Tensor,
    val: torch.Tensor,
    config: TrainConfig,
    fold: int,
    teacher: DamageSegmenter | None = None,
) -> FoldResult:
    """Train ``model`` on the tiles at ``train``; leave it at the epoch best on ``val``.

    teacher: ``distill_bundle``'s model, whose map of each batch is a soft target.

    train, val: (N,) int64 tile positions. Seeds: ``config.seed + fold`` for the
    shuffling, pixel sampling, k-means and DPT draws, and (its own generator) for the
    optional photometric augmentation of training batches, and (two more generators) for
    the shifts of ``shift_consistency`` and of ``shift_augment``.
    """
    device = inputs.device
    cuda = device.type == "cuda"  # fp16 autocast + loss scaling on the GPU only
    generator = torch.Generator().manual_seed(config.seed + fold)
    augment = photometric_augmenter(config.photometric_augment, config.seed + fold)
    shifts = torch.Generator().manual_seed(config.seed + fold)
    phases = torch.Generator().manual_seed(config.seed + fold + 1)
    prototypes = (None, None)
    if config.lambda_pc:
        prototypes = fit_pc_prototypes(
            model, inputs, train, config.batch_size, config.seed + fold, generator
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=cuda)

    best_miou, best = -math.inf, None
    history = []
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        model.train()
        if config.backbone_rope_jitter:
            model.backbone.train()  # the reference's hidden RoPE rescaling, on request
        sums: dict[str, float] = defaultdict(float)
        for index in train[torch.randperm(len(train), generator=generator)].split(
            config.batch_size
        ):
            labels, buildings = inputs.labels(index), inputs.buildings(index)
            with torch.autocast(device.type, torch.float16, enabled=cuda):
                if config.shift_consistency or config.shift_augment or teacher is not None:
                    pixels = inputs.pixels(index, augment)  # the cache holds no shifted view
                    if config.shift_augment:
                        phase = torch.randint(0, MAX_CONSISTENCY_SHIFT + 1, (2,), generator=phases)
                        pixels, labels, buildings = (
                            shift_view(t, int(phase[0]), int(phase[1]))
                            for t in (pixels, labels, buildings)
                        )
                    out = model.forward_train(pixels)
                else:
                    out = inputs.outputs(model, index, augment)
                if config.shift_consistency:
                    dy, dx = torch.randint(1, MAX_CONSISTENCY_SHIFT + 1, (2,), generator=shifts)
                    dy, dx = int(dy), int(dx)
                    shifted_logits = model(shift_view(pixels, dy, dx))
                if teacher is not None:
                    with torch.no_grad():
                        taught = torch.sigmoid(teacher(pixels).float())
            loss, parts = total_loss(
                out,
                labels,
                buildings,
                *prototypes,
                config.lambda_pc,
                config.lambda_dpt,
                generator,
            )
            if config.shift_consistency:
                # the map users get on both sides: a quincunx model's averages its phases
                anchor = model(pixels) if model.config.quincunx else out.logits
                consistency = shift_consistency_loss(anchor, shifted_logits, dy, dx)
                loss = loss + config.shift_consistency * consistency
                parts["shift"] = float(consistency.detach())
            if teacher is not None:
                distilled = distillation_loss(out.logits, taught)
                loss = loss + config.distill_weight * distilled
                parts["distill"] = float(distilled.detach())
            if config.shift_consistency or teacher is not None:
                parts["total"] = float(loss.detach())
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            for name, value in parts.items():
                sums[name] += value * len(index)

        counts = evaluate(model, inputs, val, config.batch_size)
        miou = pooled_miou(counts)
        history.append(
            {
                "epoch": epoch,
                **{f"loss_{name}": total / len(train) for name, total in sums.items()},
                "val_miou": miou,
                "seconds": time.perf_counter() - start,
            }
        )
        log.info(
            "fold %d epoch %d/%d: loss %.4f, val mIoU %.4f (%.1f s)",
            fold,
            epoch,
            config.epochs,
            history[-1]["loss_total"],
            miou,
            history[-1]["seconds"],
        )
        if miou > best_miou:  # strict improvement: ties keep the earlier epoch
            best_miou, best = miou, FoldResult(epoch, counts, trained_state(model))
    assert best is not None
    model.load_state_dict(best.state, strict=False)
    best.history = history
    return best


def adapt_fewshot(
    source: DamageSegmenter,
    inputs: Inputs,
    shots: torch.Tensor,
    config: TrainConfig,
    fold: int,
) -> DamageSegmenter:
    """A copy of ``source`` adapted to the tiles at ``shots`` with LoRA on the backbone.

    LoRA (rank, α from the config) on every qkv, proj, fc1 and fc2 linear layer; only
    the LoRA factors train, the decoder stays frozen with BatchNorm in eval; all shots
    form one batch, one AdamW step per epoch, fp32, clipped; PC (prototypes of the
    shots through the model's own projection head) and DPT stay on. The LoRA layers
    are left in place (``merge_lora`` folds them in).
    """
    model = copy.deepcopy(source)
    wrapped = apply_lora(model.backbone, config.lora_rank, config.lora_alpha)
    if not wrapped:
        raise InputError(
            f"few-shot LoRA needs a ViT backbone with qkv/proj/fc1/fc2 layers; "
            f"{config.backbone!r} has none"
        )
    model.decoder.requires_grad_(False)
    inputs = inputs.without_cache()  # the backbone changes, so features are recomputed
    generator = torch.Generator().manual_seed(config.seed + fold)
    lambda_pc = config.lambda_pc
    prototypes = (None, None)
    if lambda_pc and not bool((inputs.data.labels[shots] == 1).any()):
        log.warning("fold %d: the %d shot(s) hold no damage; PC is off for them", fold, len(shots))
        lambda_pc = 0.0
    elif lambda_pc:
        prototypes = fit_pc_prototypes(
            model, inputs, shots, config.batch_size, config.seed + fold, generator
        )
    params = lora_parameters(model.backbone)
    optimizer = torch.optim.AdamW(
        params, lr=config.fewshot_lr, weight_decay=config.fewshot_weight_decay
    )
    for _ in range(config.fewshot_epochs):
        model.eval()  # decoder BatchNorm frozen; the backbone too unless RoPE jitter is asked
        if config.backbone_rope_jitter:
            model.backbone.train()
        loss, _ = total_loss(
            inputs.outputs(model, shots),
            inputs.labels(shots),
            inputs.buildings(shots),
            *prototypes,
            lambda_pc,
            config.lambda_dpt,
            generator,
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
    return model.eval()

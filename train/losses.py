"""The training losses of Smart Transfer: focal, Pixel-wise Clustering (PC) and DPT.

Pure functions of tensors. A pixel is *damaged* where its target is > 0.5, so
float, integer and boolean label masks all work. Numerical details follow the
reference implementation where they can change a result: L2 normalisation is
``x / (‖x‖ + 1e-8)``, nearest prototypes come from ``‖f‖² − 2 f·p + ‖p‖²``, and the
DPT triplets are drawn in the reference's order (one permutation of the anchors per
image, then a positive and a negative per anchor), from the caller's generator.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from stmap.errors import InputError
from stmap.model import TrainOutput

NORM_EPS = 1e-8  # the reference's guard in every L2 normalisation

# DPT patch labels and the thresholds that set them (method.md, DPT step 2).
UNDAMAGED, DAMAGED, NON_BUILDING, IGNORED = 0, 1, 2, -1
MIN_BUILDING_FRACTION = 0.02  # r_b below this: non-building
MAX_UNDAMAGED_RATIO = 0.02  # r_d at most this: undamaged
IGNORE_LABEL = 255  # a pixel label that no loss or metric counts (xBD's un-classified)
MIN_DAMAGED_RATIO = 0.10  # r_d at least this: damaged; in between: ignored


def _l2_normalise(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    return x / (x.norm(dim=dim, keepdim=True) + NORM_EPS)


def _binary_mask(mask: torch.Tensor, b: int, h: int, w: int, name: str) -> torch.Tensor:
    """(B, 1, H, W) or (B, H, W) labels → (B, 1, H, W) bool, True where > 0.5 (and not
    IGNORE_LABEL: an ignored pixel is never damaged)."""
    if mask.numel() != b * h * w or mask.shape[0] != b or tuple(mask.shape[-2:]) != (h, w):
        raise InputError(
            f"{name} has shape {tuple(mask.shape)}; expected ({b}, 1, {h}, {w}) or ({b}, {h}, {w})"
        )
    mask = mask.reshape(b, 1, h, w)
    return (mask > 0.5) & (mask != IGNORE_LABEL)


def _known(target: torch.Tensor, b: int, h: int, w: int) -> torch.Tensor:
    """(B, 1, H, W) bool: pixels whose label is known (not IGNORE_LABEL)."""
    return target.reshape(b, 1, h, w) != IGNORE_LABEL


def _bhw(logits: torch.Tensor) -> tuple[int, int, int]:
    if logits.ndim != 4 or logits.shape[1] != 1:
        raise InputError(f"logits have shape {tuple(logits.shape)}; expected (B, 1, H, W)")
    return logits.shape[0], logits.shape[2], logits.shape[3]


def focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.70,
    gamma: float = 2.0,
    ignore: torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary focal loss, mean over the pixels with a known label; ``alpha`` weights the
    damaged class.

    logits: (B, 1, H, W) float; target: (B, 1, H, W) or (B, H, W) labels, IGNORE_LABEL
    where unknown. ignore: a mask of target's shape, True (> 0.5) where the pixel is
    unlabelled: sparse labels (``stmap adapt``) leave it out of the mean instead of
    calling it undamaged. With no known pixel the loss is a zero that still carries a
    gradient. Built on BCE-with-logits (p_t = exp(−BCE)) so that large logits stay finite.
    """
    logits = logits.float()
    b, h, w = _bhw(logits)
    t = _binary_mask(target, b, h, w, "target").float()
    known = _known(target, b, h, w)
    if ignore is not None:
        known = known & ~_binary_mask(ignore, b, h, w, "ignore").to(known.device)
    bce = F.binary_cross_entropy_with_logits(logits, t, reduction="none")
    p_t = torch.exp(-bce)
    alpha_t = alpha * t + (1.0 - alpha) * (1.0 - t)
    counted = known.float()
    return (alpha_t * (1.0 - p_t) ** gamma * bce * counted).sum() / counted.sum().clamp_min(1.0)


@torch.no_grad()
def assign_prototypes(
    pixel_embedding: torch.Tensor,
    prototypes: torch.Tensor,
    prototype_labels: torch.Tensor,
    size: tuple[int, int],
    chunk_size: int = 1 << 22,
) -> torch.Tensor:
    """The class of each pixel's nearest prototype: PC's pseudo-label y_proto.

    pixel_embedding: (B, E, h, w) float; prototypes: (K, E) float (normalised here);
    prototype_labels: (K,) int, 1 = damaged. Returns (B, 1, *size) bool.

    Nearest upsampling only copies vectors, so the nearest prototype is found at the
    embedding's own resolution and the labels are upsampled: the same result as
    upsampling the embedding first, at a fraction of the memory. Distances are
    computed in fp32, ``chunk_size // K`` pixels at a time.
    """
    b, e, h, w = pixel_embedding.shape
    if prototypes.ndim != 2 or prototypes.shape[1] != e:
        raise InputError(
            f"prototypes have shape {tuple(prototypes.shape)}; the pixel embedding has {e} "
            f"channels, so expected (K, {e})"
        )
    if prototype_labels.shape != prototypes.shape[:1]:
        raise InputError(
            f"prototype_labels have shape {tuple(prototype_labels.shape)}; expected "
            f"({prototypes.shape[0]},), one label per prototype"
        )
    device = pixel_embedding.device
    protos = _l2_normalise(prototypes.to(device=device, dtype=torch.float32))
    proto_sq = (protos * protos).sum(dim=1)
    is_damaged = prototype_labels.to(device) == DAMAGED
    flat = pixel_embedding.float().permute(0, 2, 3, 1).reshape(-1, e)
    rows = max(1, chunk_size // protos.shape[0])
    labels = []
    with torch.autocast(device.type, enabled=False):  # fp32 distances even inside autocast
        for chunk in flat.split(rows):
            f = _l2_normalise(chunk)
            dists = (f * f).sum(dim=1, keepdim=True) - 2.0 * f @ protos.T + proto_sq
            labels.append(is_damaged[dists.argmin(dim=1)])
    y = torch.cat(labels).reshape(b, 1, h, w).float()
    return F.interpolate(y, size=size, mode="nearest") > 0.5


def pc_loss(
    logits: torch.Tensor,
    pixel_embedding: torch.Tensor,
    target: torch.Tensor,
    prototypes: torch.Tensor,
    prototype_labels: torch.Tensor,
) -> torch.Tensor:
    """PC: BCE-with-logits against the prototypes' pseudo-labels, where they agree with the truth.

    logits: (B, 1, H, W) float; pixel_embedding: (B, E, h, w) float from the frozen
    projection head (upsampled nearest to H×W); target: (B, 1, H, W) or (B, H, W)
    labels; prototypes: (K, E) float; prototype_labels: (K,) int, 1 = damaged.
    The mean runs only over pixels whose pseudo-label equals the truth; with none,
    the loss is a zero that still carries a (zero) gradient.
    """
    logits = logits.float()
    b, h, w = _bhw(logits)
    truth = _binary_mask(target, b, h, w, "target")
    y_proto = assign_prototypes(pixel_embedding, prototypes, prototype_labels, (h, w))
    agree = ((y_proto == truth) & _known(target, b, h, w)).float()
    bce = F.binary_cross_entropy_with_logits(logits, y_proto.float(), reduction="none")
    return (bce * agree).sum() / agree.sum().clamp_min(1.0)


def dpt_patch_labels(
    target: torch.Tensor, building_mask: torch.Tensor, grid: int = 4
) -> torch.Tensor:
    """Label each cell of a grid×grid split of the tile for DPT.

    target, building_mask: (B, 1, H, W) or (B, H, W) masks (> 0.5 is set), H and W
    multiples of ``grid``. Returns (B, grid²) int64, row-major: 2 non-building
    (building fraction r_b < 0.02), else 0 undamaged (damage ratio r_d ≤ 0.02),
    1 damaged (r_d ≥ 0.10), −1 ignored (in between). r_d counts damaged pixels
    inside buildings only.
    """
    b, h, w = target.shape[0], target.shape[-2], target.shape[-1]
    if h % grid or w % grid:
        raise InputError(f"tile size {h}×{w} is not divisible by the DPT grid {grid}")
    damaged = _binary_mask(target, b, h, w, "target")
    building = _binary_mask(building_mask, b, h, w, "building_mask").to(damaged.device)
    building &= _known(target, b, h, w)  # an unknown grade tells neither way
    ph, pw = h // grid, w // grid

    def per_patch(mask: torch.Tensor) -> torch.Tensor:
        return mask.reshape(b, grid, ph, grid, pw).sum(dim=(2, 4), dtype=torch.float64)

    building_px = per_patch(building)
    damaged_px = per_patch(damaged & building)
    is_building = building_px / (ph * pw) >= MIN_BUILDING_FRACTION
    ratio = damaged_px / building_px.clamp_min(1.0)
    labels = torch.full_like(building_px, NON_BUILDING, dtype=torch.int64)
    labels[is_building] = IGNORED
    labels[is_building & (ratio <= MAX_UNDAMAGED_RATIO)] = UNDAMAGED
    labels[is_building & (ratio >= MIN_DAMAGED_RATIO)] = DAMAGED
    return labels.reshape(b, grid * grid)


def dpt_triplets(
    patch_labels: torch.Tensor, generator: torch.Generator | None = None, max_anchors: int = 16
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample DPT triplets: (image, anchor, positive, negative) patch indices, each (T,) int64.

    patch_labels: (B, N) int from :func:`dpt_patch_labels`. Per image, up to
    ``max_anchors`` anchors from a random permutation of the labelled building
    patches (0/1); the positive is a random other patch with the anchor's label, the
    negative a random patch with any other label (the other class, non-building or
    ignored, as in the reference). An anchor lacking either is dropped, not
    replaced. Drawn on the CPU from ``generator`` (torch's default when None).
    """
    labels = patch_labels.detach().cpu()
    found: list[tuple[int, int, int, int]] = []
    for image, y in enumerate(labels):
        candidates = ((y == UNDAMAGED) | (y == DAMAGED)).nonzero().flatten()
        if candidates.numel() == 0:
            continue
        order = torch.randperm(candidates.numel(), generator=generator)
        for anchor in candidates[order][:max_anchors].tolist():
            same = y == y[anchor]
            same[anchor] = False
            positives = same.nonzero().flatten()
            negatives = (y != y[anchor]).nonzero().flatten()
            if positives.numel() == 0 or negatives.numel() == 0:
                continue
            p = positives[torch.randint(positives.numel(), (1,), generator=generator)].item()
            n = negatives[torch.randint(negatives.numel(), (1,), generator=generator)].item()
            found.append((image, anchor, p, n))
    columns = torch.tensor(found, dtype=torch.int64).reshape(-1, 4).T
    image, anchor, positive, negative = columns.to(patch_labels.device)
    return image, anchor, positive, negative


def dpt_loss(
    decoder_feature: torch.Tensor,
    target: torch.Tensor,
    building_mask: torch.Tensor,
    generator: torch.Generator | None = None,
    grid: int = 4,
    max_anchors: int = 16,
    margin: float = 0.2,
) -> torch.Tensor:
    """DPT: a triplet loss on patch embeddings whose margin grows with spatial distance.

    decoder_feature: (B, C, H, W) float; target, building_mask: (B, 1, H, W) or
    (B, H, W) masks. Patch embeddings are the L2-normalised mean decoder feature of
    each grid cell; for a triplet, with patch centres in [0, 1]² and their distances
    q, the penalty is P = (q_ap + q_an − q_pn)/√2 and the loss
    ReLU(‖a−p‖² − ‖a−n‖² + P + margin). Per image the mean over its triplets, then
    the mean over images that had any; 0 (with a zero gradient) when none did.
    """
    b, c, h, w = decoder_feature.shape
    labels = dpt_patch_labels(target, building_mask, grid)
    cells = decoder_feature.float().reshape(b, c, grid, h // grid, grid, w // grid)
    emb = _l2_normalise(cells.mean(dim=(3, 5)).permute(0, 2, 3, 1).reshape(b, grid * grid, c))
    image, a, p, n = dpt_triplets(labels, generator, max_anchors)
    if image.numel() == 0:
        return emb.sum() * 0.0

    centre = (torch.arange(grid, device=emb.device, dtype=torch.float32) + 0.5) / grid
    rows, cols = torch.meshgrid(centre, centre, indexing="ij")
    xy = torch.stack([cols.reshape(-1), rows.reshape(-1)], dim=1)  # (N, 2), row-major cells

    def q(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return (xy[i] - xy[j]).norm(dim=1)

    def d(i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        return ((emb[image, i] - emb[image, j]) ** 2).sum(dim=1)

    penalty = (q(a, p) + q(a, n) - q(p, n)) / math.sqrt(2.0)
    per_triplet = F.relu(d(a, p) - d(a, n) + penalty + margin)
    sums = emb.new_zeros(b).index_add(0, image, per_triplet)
    counts = torch.bincount(image, minlength=b)
    used = counts > 0
    return (sums[used] / counts[used]).mean()


def shift_view(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """(B, C, H, W) → the same tiles moved up by ``dy`` and left by ``dx`` px: pixel (i, j)
    of the view is pixel (i + dy, j + dx) of ``x``; the rows and columns that fall off
    the tile are refilled by reflection (``shift_consistency_loss`` never compares them)."""
    h, w = x.shape[-2:]
    if not (0 <= dy < h and 0 <= dx < w):
        raise InputError(f"shift ({dy}, {dx}) leaves nothing of a {h}×{w} tile")
    view = x[..., dy:, dx:]
    if dy or dx:
        view = F.pad(view.float(), (0, dx, 0, dy), mode="reflect").to(x.dtype)
    return view


def shift_consistency_loss(
    logits: torch.Tensor, shifted_logits: torch.Tensor, dy: int, dx: int
) -> torch.Tensor:
    """mean |σ(logits)[i + dy, j + dx] − σ(shifted_logits)[i, j]| over the overlap.

    logits: (B, 1, H, W) of some tiles; shifted_logits: of ``shift_view(tiles, dy, dx)``.
    Only pixels both views hold are compared (not the reflected rows and columns), so a
    model that commutes with shifts — a convolution at stride 1 — scores 0, and one
    that samples its features every 16 px scores more for a sub-16-px shift (#20).
    """
    _, h, w = _bhw(logits)
    if shifted_logits.shape != logits.shape:
        raise InputError(
            f"shifted logits {tuple(shifted_logits.shape)} differ from {tuple(logits.shape)}"
        )
    a = torch.sigmoid(logits.float())[..., dy:, dx:]
    other = torch.sigmoid(shifted_logits.float())[..., : h - dy, : w - dx]
    return (a - other).abs().mean()


def distillation_loss(logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """Mean KL(teacher ‖ student) of the per-pixel damaged/intact Bernoulli distributions.

    The cross-entropy of the student's logits against the teacher's probabilities, less
    the teacher's own entropy: 0 where the two maps agree, whatever the teacher's
    confidence, so the logged term reads as disagreement (#20: a cheaper model taught
    the map of a phase-stable one)."""
    _bhw(logits)
    if teacher_probs.shape != logits.shape:
        raise InputError(
            f"teacher probabilities {tuple(teacher_probs.shape)} differ from {tuple(logits.shape)}"
        )
    t = teacher_probs.float().clamp(1e-6, 1 - 1e-6)
    cross = F.binary_cross_entropy_with_logits(logits.float(), t, reduction="none")
    entropy = -(t * t.log() + (1 - t) * (1 - t).log())
    return (cross - entropy).mean()


def total_loss(
    out: TrainOutput,
    target: torch.Tensor,
    building_mask: torch.Tensor | None,
    prototypes: torch.Tensor | None,
    prototype_labels: torch.Tensor | None,
    lambda_pc: float,
    lambda_dpt: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Focal + λ_pc·PC + λ_dpt·DPT; a term whose λ is 0 is not computed.

    Returns the loss to back-propagate and its parts as floats, keys ``focal``,
    ``pc``, ``dpt`` and ``total`` (a skipped term reads 0.0), read back in one sync.
    """
    loss = focal_loss(out.logits, target)
    parts = {"focal": loss.detach(), "pc": loss.new_zeros(()), "dpt": loss.new_zeros(())}
    if lambda_pc:
        if prototypes is None or prototype_labels is None:
            raise InputError("lambda_pc > 0 needs prototypes and prototype_labels (fit them first)")
        pc = pc_loss(out.logits, out.pixel_embedding, target, prototypes, prototype_labels)
        loss = loss + lambda_pc * pc
        parts["pc"] = pc.detach()
    if lambda_dpt:
        if building_mask is None:
            raise InputError("lambda_dpt > 0 needs a building mask for every tile")
        dpt = dpt_loss(out.decoder_feature, target, building_mask, generator)
        loss = loss + lambda_dpt * dpt
        parts["dpt"] = dpt.detach()
    parts["total"] = loss.detach()
    values = torch.stack(list(parts.values())).tolist()
    return loss, dict(zip(parts, values, strict=True))

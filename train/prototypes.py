"""PC prototypes: sample pixel embeddings per class, then cluster each class with k-means.

Pure functions of tensors and arrays; the training loop runs the frozen backbone
and projection head (eval mode, fp32) over the training split and feeds each batch
to :func:`sample_pixel_embeddings`, then calls :func:`fit_prototypes` once.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

from stmap.errors import InputError
from stmap.lazy import lazy_import
from stmap.train.losses import IGNORE_LABEL

NORM_EPS = 1e-8  # the reference's guard in every L2 normalisation
_CLASS_NAMES = {1: "damaged", 0: "other (not damaged)"}


@torch.no_grad()
def sample_pixel_embeddings(
    embedding: torch.Tensor,
    target: torch.Tensor,
    per_class: int = 512,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, at most ``per_class`` damaged and ``per_class`` other pixels' embeddings.

    embedding: (B, E, h, w) float, upsampled nearest to the label size; target:
    (B, 1, H, W) or (B, H, W) labels (> 0.5 is damaged, 255 unknown). Pixels are drawn without
    replacement and a class short of ``per_class`` is not topped up from the other.
    Returns, on the CPU, vectors (N, E) float32 L2-normalised and labels (N,) int64
    (1 damaged, 0 other), each image's damaged pixels first.
    """
    b, e = embedding.shape[:2]
    h, w = target.shape[-2:]
    if target.numel() != b * h * w or target.shape[0] != b:
        raise InputError(
            f"target has shape {tuple(target.shape)}; expected ({b}, 1, H, W) or ({b}, H, W)"
        )
    flat_target = target.reshape(b, h * w).cpu()
    known = flat_target != IGNORE_LABEL  # an unknown pixel is drawn into neither class
    damaged = (flat_target > 0.5) & known
    vectors, labels = [], []
    for image in range(b):
        up = F.interpolate(embedding[image : image + 1].float(), size=(h, w), mode="nearest")
        flat = up.reshape(e, h * w).T
        for label, members in ((1, damaged[image]), (0, ~damaged[image] & known[image])):
            index = members.nonzero().flatten()
            if index.numel() > per_class:
                index = index[torch.randperm(index.numel(), generator=generator)[:per_class]]
            vectors.append(flat[index.to(flat.device)].cpu())
            labels.append(torch.full((index.numel(),), label, dtype=torch.int64))
    chosen = torch.cat(vectors)
    return chosen / (chosen.norm(dim=1, keepdim=True) + NORM_EPS), torch.cat(labels)


def fit_prototypes(
    vectors: torch.Tensor | np.ndarray,
    labels: torch.Tensor | np.ndarray,
    k: int = 32,
    seed: int = 42,
) -> tuple[torch.Tensor, torch.Tensor]:
    """K prototypes per class: MiniBatchKMeans centres of the L2-normalised vectors.

    vectors: (N, E) float; labels: (N,) int, 1 damaged and 0 other. Returns
    prototypes (K₁ + K₀, E) float32 (damaged first; not normalised — PC normalises
    at assignment) and prototype_labels (K₁ + K₀,) int64. A class with fewer than
    ``k`` samples gets one prototype per sample and a warning (the reference
    crashes there); a class with none is an error.
    """
    cluster = lazy_import("sklearn.cluster")
    x = np.asarray(vectors, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != x.shape[:1]:
        raise InputError(
            f"vectors {x.shape} and labels {y.shape} do not match; expected (N, E) and (N,)"
        )
    x = x / (np.linalg.norm(x, axis=1, keepdims=True) + NORM_EPS)
    centres, centre_labels = [], []
    for label in (1, 0):
        members = x[y == label]
        name = _CLASS_NAMES[label]
        if len(members) == 0:
            raise InputError(
                f"no {name} pixels in the training split — PC needs both classes; set lambda_pc=0"
            )
        n_clusters = k
        if len(members) < k:
            warnings.warn(
                f"only {len(members)} {name} pixel samples for k={k} prototypes; using "
                f"k={len(members)} for this class (the reference implementation fails here)",
                stacklevel=2,
            )
            n_clusters = len(members)
        kmeans = cluster.MiniBatchKMeans(
            n_clusters=n_clusters,
            init="k-means++",
            batch_size=1024,
            max_iter=100,
            random_state=seed,
        ).fit(members)
        centres.append(kmeans.cluster_centers_.astype(np.float32))
        centre_labels.append(np.full(n_clusters, label, dtype=np.int64))
    prototypes = torch.from_numpy(np.concatenate(centres))
    return prototypes, torch.from_numpy(np.concatenate(centre_labels))

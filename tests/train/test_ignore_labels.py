"""Pixels labelled IGNORE_LABEL (255) count in no loss, metric or prototype draw."""

from __future__ import annotations

import torch

from stmap.train.losses import IGNORE_LABEL, dpt_patch_labels, focal_loss, pc_loss
from stmap.train.metrics import ConfusionCounts
from stmap.train.prototypes import sample_pixel_embeddings


def _halves() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and a target whose right half is ignored."""
    torch.manual_seed(0)
    logits = torch.randn(2, 1, 8, 8)
    target = (torch.rand(2, 1, 8, 8) > 0.5).float()
    target[..., 4:] = IGNORE_LABEL
    return logits, target


def test_focal_loss_is_the_mean_over_known_pixels_whatever_the_logits_on_ignored_ones():
    logits, target = _halves()
    wild = logits.clone()
    wild[..., 4:] = 50.0  # confidently "damaged" where nothing is known
    known_only = focal_loss(logits[..., :4], target[..., :4])
    assert torch.allclose(focal_loss(logits, target), known_only)
    assert torch.allclose(focal_loss(wild, target), known_only)
    everything_ignored = torch.full_like(target, IGNORE_LABEL)
    assert focal_loss(logits.requires_grad_(), everything_ignored).item() == 0.0


def test_pc_loss_ignores_unknown_pixels():
    logits, target = _halves()
    embedding = torch.randn(2, 4, 8, 8)
    prototypes = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    wild = logits.clone()
    wild[..., 4:] = -50.0
    assert torch.allclose(
        pc_loss(logits, embedding, target, prototypes, labels),
        pc_loss(wild, embedding, target, prototypes, labels),
    )


def test_metrics_do_not_count_ignored_pixels():
    logits, target = _halves()
    counts = ConfusionCounts()
    counts.update(logits, target)
    known = ConfusionCounts()
    known.update(logits[..., :4], target[..., :4])
    assert counts == known
    assert counts.tp + counts.fp + counts.fn + counts.tn == 2 * 8 * 4


def test_an_ignored_building_is_neither_damaged_nor_undamaged_for_dpt():
    target = torch.zeros(1, 8, 8)
    building = torch.ones(1, 8, 8)
    target[:, :4] = IGNORE_LABEL  # top half: buildings of unknown grade
    labels = dpt_patch_labels(target, building, grid=2)
    assert labels.tolist() == [[2, 2, 0, 0]]  # unknown → no building to learn from


def test_prototype_pixels_are_never_drawn_from_ignored_pixels():
    _, target = _halves()
    embedding = torch.arange(2 * 8 * 8, dtype=torch.float32).reshape(2, 1, 8, 8).repeat(1, 2, 1, 1)
    _, labels = sample_pixel_embeddings(embedding + 1, target, per_class=1000)
    assert len(labels) == 2 * 8 * 4  # only the known half of each image

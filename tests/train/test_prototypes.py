"""Pixel sampling and per-class k-means prototypes for the PC loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stmap.errors import InputError
from stmap.train.prototypes import fit_prototypes, sample_pixel_embeddings


def unique_embedding(b: int, h: int, w: int) -> torch.Tensor:
    """(B, 2, h, w): a distinct direction per pixel, so a vector names its pixel."""
    angle = torch.linspace(0.1, 1.4, b * h * w).reshape(b, h, w)
    return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) * 3.0


def test_sampling_caps_each_class_without_refilling():
    emb = unique_embedding(2, 4, 4)
    target = torch.zeros(2, 1, 4, 4)
    target[0, 0, 0, :] = 1
    target[0, 0, 1, 0] = 1  # image 0: 5 damaged, 11 other; image 1: no damage
    vectors, labels = sample_pixel_embeddings(emb, target, per_class=3)
    assert vectors.dtype == torch.float32 and labels.dtype == torch.int64
    assert labels.tolist() == [1, 1, 1, 0, 0, 0, 0, 0, 0]  # image 1's damage is not made up
    torch.testing.assert_close(vectors.norm(dim=1), torch.ones(9))
    # every vector is a distinct pixel of its own class (drawn without replacement)
    flat = (emb / emb.norm(dim=1, keepdim=True)).permute(0, 2, 3, 1).reshape(-1, 2)
    truth = target.reshape(-1)
    distance, hits = torch.cdist(vectors, flat).min(dim=1)
    assert distance.max() < 1e-3  # neighbouring pixels' directions are 0.04 apart
    assert len(set(hits.tolist())) == 9
    assert truth[hits].long().tolist() == labels.tolist()


def test_sampling_takes_every_pixel_when_a_class_is_small():
    emb = unique_embedding(1, 4, 4)
    target = torch.zeros(1, 4, 4)  # (B, H, W) is accepted
    target[0, 2, 2] = 1
    vectors, labels = sample_pixel_embeddings(emb, target, per_class=512)
    assert labels.tolist() == [1] + [0] * 15
    assert len(vectors) == 16


def test_sampling_upsamples_nearest_to_the_label_size():
    emb = torch.tensor([[[[1.0, 0.0]], [[0.0, 2.0]]]])  # (1, 2, 1, 2): left (1,0), right (0,1)
    target = torch.zeros(1, 1, 2, 4)
    target[..., 0:2] = 1  # the left half is damaged
    vectors, labels = sample_pixel_embeddings(emb, target, per_class=8)
    damaged, other = vectors[labels == 1], vectors[labels == 0]
    torch.testing.assert_close(damaged, torch.tensor([[1.0, 0.0]]).expand(4, 2))
    torch.testing.assert_close(other, torch.tensor([[0.0, 1.0]]).expand(4, 2))


def test_sampling_is_reproducible_from_the_generator():
    emb = unique_embedding(3, 8, 8)
    target = (torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1)) > 0.5).float()

    def draw(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample_pixel_embeddings(emb, target, per_class=5, generator=g)[0]

    assert torch.equal(draw(0), draw(0))
    assert not torch.equal(draw(0), draw(1))


def blobs(centres: np.ndarray, per: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + 0.01 * rng.standard_normal((per, c.size)) for c in centres])


def test_fit_prototypes_finds_each_class_clusters():
    eye = np.eye(6, dtype=np.float32)
    damaged = blobs(eye[:3], 40, 0)
    other = blobs(eye[3:], 40, 1)
    vectors = np.concatenate([other, damaged]).astype(np.float32)
    labels = np.array([0] * 120 + [1] * 120)
    prototypes, proto_labels = fit_prototypes(vectors, labels, k=3, seed=42)
    assert prototypes.shape == (6, 6) and prototypes.dtype == torch.float32
    assert proto_labels.tolist() == [1, 1, 1, 0, 0, 0]  # damaged first
    found = prototypes / prototypes.norm(dim=1, keepdim=True)
    nearest_axis = found.argmax(dim=1)
    assert sorted(nearest_axis[:3].tolist()) == [0, 1, 2]
    assert sorted(nearest_axis[3:].tolist()) == [3, 4, 5]
    assert found.max(dim=1).values.min() > 0.99
    again, _ = fit_prototypes(torch.from_numpy(vectors), torch.from_numpy(labels), k=3, seed=42)
    assert torch.equal(prototypes, again)


def test_fit_prototypes_lowers_k_for_a_small_class_with_a_warning():
    vectors = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    labels = np.array([1, 1] + [0] * 10)
    with pytest.warns(UserWarning, match=r"only 2 damaged pixel samples for k=3"):
        prototypes, proto_labels = fit_prototypes(vectors, labels, k=3)
    assert proto_labels.tolist() == [1, 1, 0, 0, 0]
    assert prototypes.shape == (5, 4)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ([0] * 8, "no damaged pixels in the training split — PC needs both classes; set lambda_pc"),
        ([1] * 8, "no other \\(not damaged\\) pixels"),
    ],
)
def test_fit_prototypes_needs_both_classes(labels, message):
    vectors = np.ones((8, 4), dtype=np.float32)
    with pytest.raises(InputError, match=message):
        fit_prototypes(vectors, np.array(labels), k=2)

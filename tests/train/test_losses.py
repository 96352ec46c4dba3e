"""Focal, PC and DPT losses against values worked out by hand on tiny tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stmap.errors import InputError
from stmap.model import DamageSegmenter, SegmenterConfig
from stmap.train.losses import (
    assign_prototypes,
    dpt_loss,
    dpt_patch_labels,
    dpt_triplets,
    focal_loss,
    pc_loss,
    total_loss,
)


def np_focal(x: np.ndarray, t: np.ndarray, alpha: float = 0.7, gamma: float = 2.0) -> float:
    """Focal loss written from its definition, with stable log-sigmoids."""
    p = 1.0 / (1.0 + np.exp(-x))
    log_p, log_not_p = -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)
    pos = -alpha * (1.0 - p) ** gamma * log_p
    neg = -(1.0 - alpha) * p**gamma * log_not_p
    return float(np.where(t == 1, pos, neg).mean())


def np_bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, x) - y * x


# --- focal -----------------------------------------------------------------------------


def test_focal_single_pixel_by_hand():
    # p = 0.5 at logit 0: α (1 − p)^γ (−log p) = 0.7 · 0.25 · ln 2
    loss = focal_loss(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    assert loss.item() == pytest.approx(0.7 * 0.25 * math.log(2.0), rel=1e-6)
    loss = focal_loss(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1))
    assert loss.item() == pytest.approx(0.3 * 0.25 * math.log(2.0), rel=1e-6)


def test_focal_matches_definition_and_accepts_bhw_targets():
    x = np.array([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]], dtype=np.float32)
    t = np.array([[1, 0, 0], [1, 1, 0]], dtype=np.float32)
    expected = np_focal(x.astype(np.float64), t)
    logits = torch.from_numpy(x).reshape(1, 1, 2, 3)
    assert focal_loss(logits, torch.from_numpy(t)[None]).item() == pytest.approx(expected, rel=1e-5)
    assert focal_loss(logits, torch.from_numpy(t).reshape(1, 1, 2, 3)).item() == pytest.approx(
        expected, rel=1e-5
    )


def test_focal_gamma_zero_is_alpha_weighted_bce():
    x = np.array([0.3, -2.0, 1.7, -0.1])
    t = np.array([1.0, 0.0, 0.0, 1.0])
    expected = float((np.where(t == 1, 0.7, 0.3) * np_bce(x, t)).mean())
    logits = torch.tensor(x, dtype=torch.float32).reshape(1, 1, 2, 2)
    target = torch.tensor(t).reshape(1, 1, 2, 2)
    assert focal_loss(logits, target, gamma=0.0).item() == pytest.approx(expected, rel=1e-5)


def test_focal_is_stable_at_extreme_logits():
    logits = torch.tensor([100.0, -100.0, 100.0, -100.0]).reshape(1, 1, 2, 2).requires_grad_()
    target = torch.tensor([1.0, 1.0, 0.0, 0.0]).reshape(1, 1, 2, 2)
    loss = focal_loss(logits, target)
    # right with certainty: 0; wrong by 100: α·100 (damaged) and (1 − α)·100 (other)
    assert loss.item() == pytest.approx((0.7 * 100 + 0.3 * 100) / 4, rel=1e-5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()


def test_focal_rejects_mismatched_target():
    with pytest.raises(InputError, match=r"target has shape \(1, 1, 3, 3\)"):
        focal_loss(torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 3, 3))


# --- PC --------------------------------------------------------------------------------

# A (1, 2, 1, 2) embedding upsampled nearest to 2×4: columns 0–1 copy the first
# vector, 2–3 the second. Normalised, (2, 0.1) is nearest the damaged prototype
# (1, 0) and (−1, 3) the other prototype (0, 5) — but only once (0, 5) is itself
# normalised: unnormalised, (1, 0) would be the nearer one.
EMBEDDING = torch.tensor([[[[2.0, -1.0]], [[0.1, 3.0]]]])
PROTOTYPES = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
PROTOTYPE_LABELS = torch.tensor([1, 0])
Y_PROTO = np.array([[1, 1, 0, 0], [1, 1, 0, 0]])
LOGITS = np.array([[0.5, -1.0, 2.0, -0.5], [1.5, 3.0, 0.0, -2.0]], dtype=np.float32)
TARGET = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], dtype=np.float32)


def test_assign_prototypes_by_hand():
    y = assign_prototypes(EMBEDDING, PROTOTYPES, PROTOTYPE_LABELS, (2, 4))
    assert y.shape == (1, 1, 2, 4) and y.dtype == torch.bool
    np.testing.assert_array_equal(y[0, 0].numpy(), Y_PROTO)


def test_pc_loss_averages_bce_over_agreeing_pixels_only():
    agree = Y_PROTO == TARGET  # 6 of 8 pixels
    expected = np_bce(LOGITS.astype(np.float64), Y_PROTO)[agree].mean()
    logits = torch.from_numpy(LOGITS).reshape(1, 1, 2, 4)
    loss = pc_loss(logits, EMBEDDING, torch.from_numpy(TARGET)[None], PROTOTYPES, PROTOTYPE_LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_pc_loss_without_agreement_is_zero_with_a_gradient():
    logits = torch.from_numpy(LOGITS).reshape(1, 1, 2, 4).requires_grad_()
    target = torch.from_numpy(1.0 - Y_PROTO).reshape(1, 1, 2, 4)
    loss = pc_loss(logits, EMBEDDING, target, PROTOTYPES, PROTOTYPE_LABELS)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_pc_loss_when_the_tile_has_no_damage():
    # only pixels the prototypes also call "other" (columns 2–3) count
    logits = torch.from_numpy(LOGITS).reshape(1, 1, 2, 4)
    loss = pc_loss(logits, EMBEDDING, torch.zeros(1, 2, 4), PROTOTYPES, PROTOTYPE_LABELS)
    expected = np_bce(LOGITS[:, 2:].astype(np.float64), 0.0).mean()
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_assign_prototypes_in_chunks_matches_one_pass():
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(3, 50, 8, 8, generator=g)
    protos = torch.randn(64, 50, generator=g)
    labels = torch.arange(64) % 2
    whole = assign_prototypes(emb, protos, labels, (128, 128))
    chunked = assign_prototypes(emb, protos, labels, (128, 128), chunk_size=64 * 5)
    assert torch.equal(whole, chunked)
    assert whole.shape == (3, 1, 128, 128)


def test_assign_prototypes_rejects_wrong_width():
    with pytest.raises(InputError, match=r"expected \(K, 2\)"):
        assign_prototypes(EMBEDDING, torch.zeros(4, 3), torch.zeros(4), (2, 4))


# --- DPT patch labels ------------------------------------------------------------------


def _mask(pixels: list[tuple[int, int]], size: int = 10) -> torch.Tensor:
    m = torch.zeros(size, size)
    for r, c in pixels:
        m[r, c] = 1
    return m


def test_dpt_patch_labels_thresholds_by_hand():
    # one 10×10 patch (grid 1): 100 pixels
    half = [(r, c) for r in range(5) for c in range(10)]  # 50 building pixels
    other_half = [(r, c) for r in range(5, 10) for c in range(10)]
    cases = [  # (building, damaged, label)
        ([(0, 0)], [(0, 0)], 2),  # r_b = 0.01 < 0.02: non-building, whatever the damage
        ([(0, 0), (0, 1)], [], 0),  # r_b = 0.02: a building; r_d = 0
        (half, half[:1], 0),  # r_d = 0.02: undamaged
        (half, half[:2], -1),  # r_d = 0.04: ignored
        (half, half[:4], -1),  # r_d = 0.08: ignored
        (half, half[:5], 1),  # r_d = 0.10: damaged
        (half, other_half, 0),  # damage outside the buildings does not count
        ([], other_half, 2),  # damage without buildings: non-building
    ]
    buildings = torch.stack([_mask(b) for b, _, _ in cases])[:, None]
    damage = torch.stack([_mask(d) for _, d, _ in cases])  # (B, H, W) is accepted too
    labels = dpt_patch_labels(damage, buildings, grid=1)
    assert labels.dtype == torch.int64
    assert labels.flatten().tolist() == [label for _, _, label in cases]


def test_dpt_patch_labels_are_row_major():
    building = torch.zeros(1, 1, 8, 8)
    damage = torch.zeros(1, 1, 8, 8)
    building[..., 0:2, 6:8] = 1  # row 0, column 3 → index 3: damaged
    damage[..., 0:2, 6:8] = 1
    building[..., 6:8, 0:2] = 1  # row 3, column 0 → index 12: undamaged
    labels = dpt_patch_labels(damage, building, grid=4)
    expected = [2] * 16
    expected[3], expected[12] = 1, 0
    assert labels.tolist() == [expected]


def test_dpt_patch_labels_need_a_divisible_tile():
    with pytest.raises(InputError, match="not divisible by the DPT grid 4"):
        dpt_patch_labels(torch.zeros(1, 1, 10, 10), torch.zeros(1, 1, 10, 10))


# --- DPT loss --------------------------------------------------------------------------


def _tile(features: list[tuple[float, float]], labels: list[int]):
    """A 4×4 tile in a 2×2 grid: each patch a constant 2-d feature and a DPT label."""
    feature = torch.zeros(2, 4, 4)
    building = torch.zeros(4, 4)
    damage = torch.zeros(4, 4)
    for i, (f, label) in enumerate(zip(features, labels, strict=True)):
        rows, cols = slice(2 * (i // 2), 2 * (i // 2) + 2), slice(2 * (i % 2), 2 * (i % 2) + 2)
        feature[:, rows, cols] = torch.tensor(f)[:, None, None]
        if label in (0, 1):
            building[rows, cols] = 1
        if label == 1:
            damage[rows, cols] = 1
    return feature, damage, building


def _batch(*tiles):
    features, damage, building = zip(*tiles, strict=True)
    return torch.stack(features), torch.stack(damage)[:, None], torch.stack(building)[:, None]


# Patches 0 and 3 (a diagonal) are undamaged buildings, 1 and 2 have none and share a
# feature: every draw gives the same triplets up to the negative's symmetric twin.
# Centres: q_ap = √0.5, q_an = q_pn = 0.5, so P = √0.5/√2 = 0.5; margin 0.2.
# Normalised features a0 = (1, 0), a3 = (0.6, 0.8), n = (0, 1):
#   anchor 0: d_ap = 0.8, d_an = 2.0 → ReLU(0.8 − 2.0 + 0.7) = 0
#   anchor 3: d_ap = 0.8, d_an = 0.4 → ReLU(0.8 − 0.4 + 0.7) = 1.1        image mean 0.55
TILE_A = _tile([(3.0, 0.0), (0.0, 2.0), (0.0, 2.0), (0.6, 0.8)], [0, 2, 2, 0])
# Diagonals labelled 0 and 1, features u = (1, 0) and v = (0.8, 0.6): four triplets,
# each d_ap = 0, d_an = 0.4, P = 0.5 → ReLU(−0.4 + 0.7) = 0.3          image mean 0.3
TILE_B = _tile([(1.0, 0.0), (0.8, 0.6), (0.8, 0.6), (1.0, 0.0)], [0, 1, 1, 0])
TILE_NONE = _tile([(1.0, 0.0)] * 4, [2, 2, 2, 2])  # no building: no triplets


@pytest.mark.parametrize("seed", [0, 1, 2, 3, None])
def test_dpt_loss_forced_triplets_by_hand(seed):
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    feature, damage, building = _batch(TILE_A)
    loss = dpt_loss(feature, damage, building, generator=generator, grid=2)
    assert loss.item() == pytest.approx(0.55, abs=1e-6)


def test_dpt_loss_is_a_mean_of_image_means_over_images_with_triplets():
    feature, damage, building = _batch(TILE_A, TILE_B, TILE_NONE)
    feature.requires_grad_()
    generator = torch.Generator().manual_seed(0)
    loss = dpt_loss(feature, damage, building, generator=generator, grid=2)
    # (0.55 + 0.3) / 2; pooling the six triplets would give 0.3833, counting TILE_NONE 0.2833
    assert loss.item() == pytest.approx(0.425, abs=1e-6)
    loss.backward()
    assert torch.isfinite(feature.grad).all()


@pytest.mark.parametrize(
    "labels",
    [
        [2, 2, 2, 2],  # no buildings
        [0, 0, 0, 0],  # one class everywhere: no negative
        [1, 2, 2, 2],  # a lone labelled patch: no positive
    ],
)
def test_dpt_loss_without_triplets_is_zero_with_a_finite_gradient(labels):
    tile = _tile([(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.5, 0.2)], labels)
    feature, damage, building = _batch(tile)
    feature.requires_grad_()
    loss = dpt_loss(feature, damage, building, generator=torch.Generator().manual_seed(0), grid=2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feature.grad).all()


def test_dpt_ignored_patches_make_no_anchor():
    # 20×20 tile, 2×2 grid, patch 0 a building with r_d = 5/100: ignored; the rest empty
    building = torch.zeros(1, 1, 20, 20)
    damage = torch.zeros(1, 1, 20, 20)
    building[..., :10, :10] = 1
    damage[..., 0, :5] = 1
    assert dpt_patch_labels(damage, building, grid=2).tolist() == [[-1, 2, 2, 2]]
    feature = torch.randn(1, 3, 20, 20, requires_grad=True)
    loss = dpt_loss(feature, damage, building, generator=torch.Generator().manual_seed(0), grid=2)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.isfinite(feature.grad).all()


def test_dpt_triplets_follow_the_sampling_rules():
    g = torch.Generator().manual_seed(123)
    labels = torch.randint(-1, 3, (64, 16), generator=g)
    negative_labels = set()
    for seed in range(5):
        image, a, p, n = dpt_triplets(labels, torch.Generator().manual_seed(seed), max_anchors=16)
        assert image.dtype == a.dtype == p.dtype == n.dtype == torch.int64
        la, lp, ln = labels[image, a], labels[image, p], labels[image, n]
        assert ((la == 0) | (la == 1)).all()
        assert (lp == la).all() and (p != a).all()
        assert (ln != la).all()
        negative_labels |= {(int(x), int(y)) for x, y in zip(la, ln, strict=True)}
        for b in range(labels.shape[0]):
            anchors = a[image == b].tolist()
            assert len(anchors) == len(set(anchors)) <= 16
            y = labels[b]
            has_both = [
                (y == y[i]).sum() >= 2 and (y != y[i]).any() for i in range(16) if y[i] in (0, 1)
            ]
            if all(has_both):  # nothing to drop: every anchor, up to 16, yields a triplet
                assert len(anchors) == min(16, len(has_both))
    # the negative pool holds the other class, non-building and ignored patches
    assert {(0, 1), (0, 2), (0, -1), (1, 0), (1, 2), (1, -1)} <= negative_labels


def test_dpt_triplets_cap_anchors_and_drop_rather_than_replace():
    labels = torch.tensor([[1, 0, 0, 0]])  # the damaged patch has no positive
    _, a, _, n = dpt_triplets(labels, torch.Generator().manual_seed(0))
    assert sorted(a.tolist()) == [1, 2, 3] and n.tolist() == [0, 0, 0]
    counts = {
        len(dpt_triplets(labels, torch.Generator().manual_seed(s), max_anchors=1)[0])
        for s in range(20)
    }
    assert counts == {0, 1}  # a dropped anchor is not replaced by another


def test_dpt_triplets_are_reproducible():
    labels = torch.randint(-1, 3, (8, 16), generator=torch.Generator().manual_seed(5))
    first = dpt_triplets(labels, torch.Generator().manual_seed(9))
    second = dpt_triplets(labels, torch.Generator().manual_seed(9))
    assert all(torch.equal(x, y) for x, y in zip(first, second, strict=True))


# --- total -----------------------------------------------------------------------------


@pytest.fixture
def train_output():
    torch.manual_seed(0)
    model = DamageSegmenter(SegmenterConfig(backbone="tiny", tile_size=64, decoder_channels=8))
    out = model.forward_train(torch.randn(2, 3, 64, 64))
    target = torch.zeros(2, 1, 64, 64)
    target[:, :, :16] = 1
    building = torch.zeros(2, 1, 64, 64)
    building[:, :, :32] = 1
    prototypes = torch.randn(6, 50)
    labels = torch.tensor([1, 1, 1, 0, 0, 0])
    return model, out, target, building, prototypes, labels


def test_total_loss_skips_terms_whose_lambda_is_zero(train_output):
    _, out, target, *_ = train_output
    loss, parts = total_loss(out, target, None, None, None, 0.0, 0.0)
    assert parts == {
        "focal": pytest.approx(focal_loss(out.logits, target).item()),
        "pc": 0.0,
        "dpt": 0.0,
        "total": pytest.approx(loss.item()),
    }
    assert loss.item() == pytest.approx(parts["focal"])


def test_total_loss_weights_and_backpropagates(train_output):
    model, out, target, building, prototypes, labels = train_output
    loss, parts = total_loss(
        out, target, building, prototypes, labels, 0.01, 0.001, torch.Generator().manual_seed(0)
    )
    pc = pc_loss(out.logits, out.pixel_embedding, target, prototypes, labels).item()
    dpt = dpt_loss(
        out.decoder_feature, target, building, generator=torch.Generator().manual_seed(0)
    ).item()
    assert parts["pc"] == pytest.approx(pc) and parts["dpt"] == pytest.approx(dpt)
    assert dpt > 0
    assert loss.item() == pytest.approx(parts["focal"] + 0.01 * pc + 0.001 * dpt, rel=1e-6)
    loss.backward()
    grads = [p.grad for p in model.decoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_total_loss_names_what_an_enabled_term_lacks(train_output):
    _, out, target, building, *_ = train_output
    with pytest.raises(InputError, match="lambda_pc > 0 needs prototypes"):
        total_loss(out, target, building, None, None, 0.01, 0.0)
    with pytest.raises(InputError, match="lambda_dpt > 0 needs a building mask"):
        total_loss(out, target, None, None, None, 0.0, 0.001)

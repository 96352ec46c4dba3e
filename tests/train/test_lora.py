"""LoRA layers: identity at init, only LoRA trains, merging is exact, 96 layers on ViT-L."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from stmap.model import create_backbone
from stmap.train.lora import (
    LoRALinear,
    apply_lora,
    lora_parameters,
    lora_state_dict,
    merge_lora,
)


class Block(nn.Module):
    """Named like a timm ViT block."""

    def __init__(self, dim: int = 12):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(3 * dim, dim)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.proj(self.qkv(x)))))


class Net(nn.Module):
    """Two blocks and a linear head that LoRA must leave alone."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(Block(), Block())
        self.head = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(x))


def randomise_b(module: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(torch.randn(m.lora_B.shape, generator=g) * 0.1)


def test_lora_linear_by_hand():
    torch.manual_seed(0)
    base = nn.Linear(5, 3)
    layer = LoRALinear(base, rank=2, alpha=16)
    assert layer.scale == 8.0
    assert torch.equal(layer.lora_B, torch.zeros(3, 2))
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(5)  # kaiming-uniform(a=√5) bound
    x = torch.randn(4, 5)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: the base layer's output
    randomise_b(layer)
    w, b = base.weight.detach().numpy(), base.bias.detach().numpy()
    a_, b_ = layer.lora_A.detach().numpy(), layer.lora_B.detach().numpy()
    xn = x.numpy()
    expected = xn @ w.T + b + 8.0 * (xn @ a_.T @ b_.T)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_default_scale_is_two():
    layer = LoRALinear(nn.Linear(16, 16))
    assert (layer.rank, layer.scale) == (8, 2.0)
    assert layer.lora_A.shape == (8, 16) and layer.lora_B.shape == (16, 8)


def test_apply_lora_wraps_targets_and_trains_only_lora():
    net = Net()
    names = apply_lora(net)
    assert names == [f"blocks.{i}.{n}" for i in (0, 1) for n in ("qkv", "proj", "fc1", "fc2")]
    assert type(net.head) is nn.Linear  # not a target
    trainable = {name for name, p in net.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.lora_{x}" for n in names for x in "AB"}
    assert {id(p) for p in lora_parameters(net)} == {
        id(p) for p in net.parameters() if p.requires_grad
    }
    assert set(lora_state_dict(net)) == trainable
    assert apply_lora(net) == []  # wrapped layers are not wrapped twice


def test_only_lora_gets_gradients():
    net = Net()
    apply_lora(net)
    randomise_b(net)
    net(torch.randn(3, 12)).sum().backward()
    for name, p in net.named_parameters():
        assert (p.grad is not None) == ("lora_" in name), name


def test_merge_restores_the_base_architecture_with_identical_outputs():
    torch.manual_seed(0)
    net = Net()
    keys = list(net.state_dict())
    x = torch.randn(5, 12)
    before = net(x)
    names = apply_lora(net)
    torch.testing.assert_close(net(x), before)  # unchanged at init
    randomise_b(net)
    adapted = net(x).detach()
    assert not torch.allclose(adapted, before)
    assert merge_lora(net) == names
    assert not any(isinstance(m, LoRALinear) for m in net.modules())
    assert list(net.state_dict()) == keys
    torch.testing.assert_close(net(x), adapted, atol=1e-5, rtol=0)


def test_lora_on_a_dinov3_backbone_merges_exactly():
    torch.manual_seed(0)
    backbone = create_backbone("dinov3-vits16", 32).eval()
    keys = list(backbone.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = backbone(x)
        assert len(apply_lora(backbone)) == 48  # ViT-S: 12 blocks × 4
        torch.testing.assert_close(backbone(x), before)
        randomise_b(backbone)
        adapted = backbone(x)
        assert not torch.allclose(adapted, before)  # the update is not bypassed
        merge_lora(backbone)
        torch.testing.assert_close(backbone(x), adapted, atol=1e-5, rtol=0)
    assert list(backbone.state_dict()) == keys


@pytest.fixture(scope="module")
def vit_large():
    """The paper's backbone, as stmap builds it (random weights; ~300M parameters)."""
    return create_backbone("vit_large_patch16_dinov3.sat493m", 128)


def test_all_96_linear_layers_of_vit_large(vit_large):
    names = apply_lora(vit_large)
    expected = [f"vit.blocks.{i}.{n}" for i in range(24) for n in ("attn.qkv", "attn.proj")]
    expected += [f"vit.blocks.{i}.{n}" for i in range(24) for n in ("mlp.fc1", "mlp.fc2")]
    assert len(names) == 96 and sorted(names) == sorted(expected)
    trainable = [p for p in vit_large.parameters() if p.requires_grad]
    assert len(trainable) == len(lora_parameters(vit_large)) == 192
    assert sum(p.numel() for p in trainable) == 24 * 8 * (
        (1024 + 3072) + (1024 + 1024) + (1024 + 4096) + (4096 + 1024)
    )

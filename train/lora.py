"""LoRA for few-shot adaptation of the frozen backbone, and merging it back for export.

The method adapts all 96 linear layers of DINOv3 ViT-L (24 blocks × qkv, proj, fc1,
fc2) with rank 8 and α 16 (scale 2), dropout 0; A starts kaiming-uniform as an
``nn.Linear`` weight does and B at zero, so the adapted model starts as the base one.
After adaptation :func:`merge_lora` folds B·A into the base weights and restores
plain ``nn.Linear`` layers, so the bundle keeps the base architecture's state-dict
keys and the runtime needs no LoRA code.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


class LoRALinear(nn.Module):
    """``base(x) + scale · B A x`` with ``base`` frozen; A (rank, in) and B (out, rank) train."""

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.rank = rank
        self.scale = alpha / rank
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in) → (..., out)."""
        update = F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)
        return self.base(x) + self.scale * update

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with ``scale · B A`` added to its weight (modified in place)."""
        self.base.weight += (self.scale * self.lora_B @ self.lora_A).to(self.base.weight.dtype)
        return self.base


def _replace(
    module: nn.Module,
    wanted: Callable[[str, nn.Module], bool],
    make: Callable[[nn.Module], nn.Module],
) -> list[str]:
    """Swap every child for which ``wanted(name, child)`` holds by ``make(child)``."""
    names = [name for name, child in module.named_modules() if name and wanted(name, child)]
    for name in names:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name)
        setattr(parent, attr, make(getattr(parent, attr)))
    return names


def apply_lora(
    module: nn.Module,
    rank: int = 8,
    alpha: float = 16.0,
    targets: tuple[str, ...] = LORA_TARGETS,
) -> list[str]:
    """Freeze ``module`` and wrap each ``nn.Linear`` whose attribute name is in ``targets``.

    Changes ``module`` in place; afterwards only the LoRA factors require grad.
    Returns the qualified names of the wrapped layers (96 on DINOv3 ViT-L).
    """
    module.requires_grad_(False)
    return _replace(
        module,
        lambda name, child: isinstance(child, nn.Linear) and name.rpartition(".")[2] in targets,
        lambda child: LoRALinear(child, rank, alpha),
    )


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors (A and B of every wrapped layer): what the optimiser trains."""
    return [p for m in module.modules() if isinstance(m, LoRALinear) for p in (m.lora_A, m.lora_B)]


def merge_lora(module: nn.Module) -> list[str]:
    """Fold every LoRA update into its base weight and put the plain ``nn.Linear`` back.

    Changes ``module`` in place; returns the qualified names of the merged layers.
    """
    return _replace(
        module,
        lambda name, child: isinstance(child, LoRALinear),
        lambda child: child.merged(),
    )


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The LoRA factors by their state-dict keys (``….lora_A``, ``….lora_B``)."""
    return {
        key: value
        for key, value in module.state_dict().items()
        if key.rpartition(".")[2] in ("lora_A", "lora_B")
    }

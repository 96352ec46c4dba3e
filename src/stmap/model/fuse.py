"""Batch norms folded into the convolutions before them, for inference.

In eval mode a ``BatchNorm2d`` after a ``Conv2d`` is an affine map per channel, which
the convolution's weights and bias can absorb exactly (up to float rounding). On a CPU
each unfused norm is a pass over the whole activation map: at full resolution, where
an anti-aliased stage runs its stride-1 convolution (#20), that is a fifth of the
model's time. ONNX Runtime and TensorRT fold them when they build their graphs; the
PyTorch backend does it here.
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batch_norms(model: nn.Module) -> nn.Module:
    """Fold every ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential``
    into it, in place, leaving an ``Identity`` (the layer indices stay); ``model`` must
    be in eval mode. Returns ``model``."""
    if model.training:
        raise ValueError("fold_batch_norms: the model must be in eval mode")
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    return model

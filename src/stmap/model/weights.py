"""Load weights strictly, from local files only, with errors that name the first bad tensor.

Backbone weights are accepted in the official DINOv3 checkpoint layout or in timm's
(timm's own converter maps the former); model weights are safetensors. Pickled
checkpoints are read with ``weights_only=True``, never by unpickling code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from stmap.errors import WeightsError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.safetensors`` or ``.pth``/``.pt`` file (never unpickles code)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or truncated files raise many different types
        raise WeightsError(f"{path}: cannot read weights ({exc})") from exc
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path}: expected a mapping of tensors, found {type(state).__name__}")
    return dict(state)


def load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load ``state`` into ``module``; any missing, extra or mis-shaped tensor is an error."""
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise WeightsError(f"{source}: tensor {key!r} is missing (wrong backbone or model?)")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise WeightsError(
                f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)} (wrong backbone or config?)"
            )
    extra = [key for key in state if key not in expected]
    if extra:
        raise WeightsError(f"{source}: unexpected tensor {extra[0]!r} ({len(extra)} in all)")
    module.load_state_dict(state, strict=True)


def load_backbone_weights(backbone: nn.Module, path: str | Path) -> None:
    """Load foundation-model weights from a local file in DINOv3 or timm layout."""
    state = read_state_dict(path)
    vit = getattr(backbone, "vit", None)
    if vit is None:
        load_strict(backbone, state, str(path))
        return
    from timm.models.eva import checkpoint_filter_fn

    try:
        state = checkpoint_filter_fn(state, vit)
    except Exception as exc:
        raise WeightsError(f"{path}: not a DINOv3/timm ViT checkpoint ({exc})") from exc
    load_strict(vit, state, str(path))


def download_backbone_weights(timm_name: str, destination: str | Path) -> Path:
    """Fetch published weights through timm, only when the user asked, into a local file."""
    import timm
    from safetensors.torch import save_file

    model = timm.create_model(timm_name, pretrained=True, num_classes=0)
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(destination))
    return destination

"""Backbone registry: a name picks a feature extractor returning a (B, D, h, w) map.

Foundation models come from timm (DINOv3 ViT-S/B/L with their published weight
tags); ``tiny`` is a small CNN that trains from scratch on a CPU, for the demo
bundle and the tests. Adding a backbone touches only this module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from stmap.errors import InputError

SAT_MEAN = (0.430, 0.411, 0.296)
SAT_STD = (0.213, 0.156, 0.143)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """What the rest of stmap needs to know about a backbone before building it."""

    name: str
    embed_dim: int
    patch_size: int  # output stride: features are (tile / patch_size)² per tile
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    frozen: bool  # foundation models stay frozen; `tiny` trains from scratch
    # maps tiles of any multiple of patch_size alike (a CNN); a ViT is built for one tile
    any_tile: bool = False
    timm_name: str | None = None
    description: str = ""


_REGISTRY: dict[str, tuple[BackboneSpec, Callable[[BackboneSpec, int], nn.Module]]] = {}


def register_backbone(spec: BackboneSpec, factory: Callable[[BackboneSpec, int], nn.Module]):
    """Add a backbone under ``spec.name``; ``factory(spec, tile_size)`` builds it."""
    _REGISTRY[spec.name] = (spec, factory)


def backbone_names() -> list[str]:
    return sorted(_REGISTRY)


ALIASES = {
    "dinov3-vits16": "vit_small_patch16_dinov3.lvd1689m",
    "dinov3-vitb16": "vit_base_patch16_dinov3.lvd1689m",
    "dinov3-vitl16": "vit_large_patch16_dinov3.lvd1689m",
    "dinov3-vitl16-sat": "vit_large_patch16_dinov3.sat493m",
}


def resolve_name(name: str) -> str:
    """Accept short aliases (``dinov3-vitl16-sat``) next to registered names."""
    return ALIASES.get(name, name)


def get_spec(name: str) -> BackboneSpec:
    try:
        return _REGISTRY[resolve_name(name)][0]
    except KeyError:
        raise InputError(
            f"unknown backbone {name!r}; known backbones: {', '.join(backbone_names())}"
        ) from None


def weights_interchangeable(a: str, b: str) -> bool:
    """Whether backbone ``a``'s trained weights are ``b``'s to start from: both train
    (a frozen foundation model's weights are what it is), read pixels alike (normalisation,
    stride, width), and hold the same tensors name for name and shape for shape, so they
    differ only in weightless filters — ``tiny-aa5n`` and ``tiny-aa7n``'s blurs (#20).
    ``tiny`` and ``tiny-aa`` hold the same shapes under other names: not interchangeable."""
    first, second = get_spec(a), get_spec(b)
    if first.name == second.name:
        return True
    if first.frozen or second.frozen:
        return False
    reads = ("mean", "std", "patch_size", "embed_dim", "any_tile")
    if any(getattr(first, f) != getattr(second, f) for f in reads):
        return False
    tile = 4 * first.patch_size
    shapes = [
        {k: v.shape for k, v in create_backbone(name, tile).state_dict().items()}
        for name in (first.name, second.name)
    ]
    return shapes[0] == shapes[1]


def create_backbone(name: str, tile_size: int) -> nn.Module:
    """Build the backbone ``name`` with random weights for ``tile_size`` px tiles."""
    spec = get_spec(name)
    if tile_size % spec.patch_size:
        raise InputError(
            f"tile size {tile_size} is not a multiple of {name}'s patch size {spec.patch_size}"
        )
    return _REGISTRY[spec.name][1](spec, tile_size)


class TimmViTBackbone(nn.Module):
    """Patch tokens of a timm ViT after the final LayerNorm, as a (B, D, h, w) map.

    Class and register tokens are dropped; tokens are reshaped row-major, as the
    method takes them from the last block.
    """

    def __init__(self, timm_name: str, tile_size: int):
        super().__init__()
        import timm

        self.vit = timm.create_model(timm_name, pretrained=False, img_size=tile_size, num_classes=0)
        self.grid = tile_size // self.vit.patch_embed.patch_size[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float → (B, D, H/16, W/16)."""
        tokens = self.vit.forward_features(x)[:, self.vit.num_prefix_tokens :]
        b, n, d = tokens.shape
        return tokens.transpose(1, 2).reshape(b, d, self.grid, n // self.grid)


BINOMIAL_TAPS = {
    3: (1.0, 2.0, 1.0),
    5: (1.0, 4.0, 6.0, 4.0, 1.0),
    7: (1.0, 6.0, 15.0, 20.0, 15.0, 6.0, 1.0),
    9: (1.0, 8.0, 28.0, 56.0, 70.0, 56.0, 28.0, 8.0, 1.0),
}


class BlurPool(nn.Module):
    """Fixed binomial low-pass ([1, 2, 1] ⊗ [1, 2, 1] / 16, or the 5- and 7-tap binomials,
    which pass less of what aliases), depthwise, reflect-padded, then every
    ``stride``-th pixel (Zhang 2019, "Making Convolutional Networks Shift-Invariant
    Again"). No weights: the filter is a non-persistent buffer, so a state dict holds
    nothing of it."""

    def __init__(self, channels: int, stride: int = 2, taps: int = 3):
        super().__init__()
        row = torch.tensor(BINOMIAL_TAPS[taps])
        kernel = torch.outer(row, row) / row.sum() ** 2
        self.register_buffer(
            "kernel", kernel.expand(channels, 1, taps, taps).clone(), persistent=False
        )
        self.channels, self.stride, self.pad = channels, stride, taps // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The reflect-padded blur, without the reflect-padded copy of ``x``.

        On the CPU that copy cost more than the blur (35 of a 1024² tile's 300 ms for
        the first stage's 16 full-resolution channels): the blur runs zero-padded, on
        ``x`` as it is, and the few outputs whose window reaches past an edge are redone from
        reflect-padded strips. Equal to padding first, to the last bit."""
        if torch.onnx.is_in_onnx_export() or min(x.shape[-2:]) < 4 * self.pad + 2:
            # the exported graph (runtimes have their own pads) and maps too small for
            # edge strips: the plain reflect-padded blur
            return self._blur(nn.functional.pad(x, (self.pad,) * 4, mode="reflect"))
        out = self._blur(x, padding=self.pad)
        for axis in (-2, -1):
            self._reflect_edges(x, out, axis)
        return out

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """The reflect-padded blur at stride 1: every phase of the subsampling at once
        (its cells ``[a::stride, b::stride]``; ``forward``'s are the ``[0::stride]``)."""
        return self._blur(nn.functional.pad(x, (self.pad,) * 4, mode="reflect"), stride=1)

    def _blur(self, x: torch.Tensor, padding: int = 0, stride: int | None = None) -> torch.Tensor:
        kernel = self.kernel.to(x.dtype)
        return nn.functional.conv2d(
            x, kernel, stride=stride or self.stride, padding=padding, groups=self.channels
        )

    def _reflect_edges(self, x: torch.Tensor, out: torch.Tensor, axis: int) -> None:
        """Redo, in ``out``, the outputs along ``axis`` whose window leaves ``x``, from
        reflect-padded strips of ``x``; a strip spans all of the other axis, padded
        there too, so the corners come out right."""
        pad, stride, taps = self.pad, self.stride, self.kernel.shape[-1]
        length, outputs = x.shape[axis], out.shape[axis]
        head = -(-pad // stride)  # outputs whose window starts before the edge
        tail = -(-(length + pad - taps + 1) // stride)  # the first whose window ends past it
        p = pad  # F.pad's order: (left, right, top, bottom)
        if axis == -2:
            head_pads, tail_pads = (p, p, p, 0), (p, p, 0, p)
        else:
            head_pads, tail_pads = (p, 0, p, p), (0, p, p, p)
        head_strip = x.narrow(axis, 0, (head - 1) * stride + taps - pad)
        reflected = self._blur(nn.functional.pad(head_strip, head_pads, mode="reflect"))
        out.narrow(axis, 0, head).copy_(reflected)
        if tail < outputs:
            first = tail * stride - pad
            tail_strip = x.narrow(axis, first, length - first)
            reflected = self._blur(nn.functional.pad(tail_strip, tail_pads, mode="reflect"))
            out.narrow(axis, tail, outputs - tail).copy_(reflected)


TINY_WIDTHS = (16, 32, 48)  # the first three stages' channels; the last has embed_dim

# TinyBackbone's antialias → (each of its four stages' way, the taps: all stages' or each's)
_PB, _BP = "preblur", "blurpool"
ANTIALIAS_STAGES: dict[str | None, tuple[tuple[str | None, ...], int | tuple[int, ...]]] = {
    None: ((None,) * 4, 3),
    "blurpool": ((_BP,) * 4, 3),
    "blurpool5": ((_BP,) * 4, 5),
    "blurpool7": ((_BP,) * 4, 7),
    "blurpool97": ((_BP,) * 4, (9, 7, 7, 7)),
    "preblur": ((_PB,) * 4, 3),
    "lite": ((_PB, _PB, _BP, _BP), 3),
    "lite5": ((_PB, _PB, _BP, _BP), 5),
    "stem5": ((_PB, _BP, _BP, _BP), 5),
}


class TinyBackbone(nn.Module):
    """Four stride-2 conv stages (output stride 16): fast enough to train on a CPU.

    ``antialias`` low-passes the features before every subsampling (#20):

    * ``"blurpool"`` (``tiny-aa``): each stage's first conv runs at stride 1 and a
      ``BlurPool`` (stride 2) follows its ReLU — conv → BN → ReLU → BlurPool, Zhang's
      anti-aliased strided conv. Four times the MACs of each stage's first conv (about
      2× the whole model's time on a CPU).
    * ``"preblur"`` (``tiny-blur``): the fixed blur (stride 1) in front of each stride-2
      conv — the same low-pass, applied before the ReLU instead of after; about the
      plain model's cost.
    * ``"blurpool5"`` (``tiny-aa5``): ``"blurpool"`` with the 5-tap binomial.
    * ``"blurpool7"`` (``tiny-aa7n``): with the 7-tap binomial, whose gain at the new
      Nyquist frequency is 1/8 against the 5-tap's 1/4: of the flips a sub-stride shift
      leaves, about half came from the first stage's subsampling (odd shifts flipped
      twice what even ones did, ``shift_model.md``).
    * ``"blurpool97"`` (``tiny-aa97n``, a candidate, not shipped): ``"blurpool7"`` with
      the 9-tap binomial (gain 1/16 at the new Nyquist frequency) in the first stage,
      where odd shifts still flipped the most (9 taps everywhere cost too much accuracy).
      The shipped weights behind it flipped less on the 768² cities and more on the
      1024² ones and through the pipeline (``shift_model.md``, last section).
    * ``"lite"`` (``tiny-aalite``): ``"preblur"`` in the two full- and half-resolution
      stages, where Zhang's stride-1 conv costs most, ``"blurpool"`` in the last two —
      about 1.3× the plain model's multiply-adds against ``"blurpool"``'s 2.1×.
    * ``"lite5"`` (``tiny-aalite5``): ``"lite"`` with the 5-tap binomial in every blur.
    * ``"stem5"`` (``tiny-aa5stem``): ``"blurpool5"`` except in the first stage, which
      pre-blurs the three input bands instead: there Zhang's stride-1 conv writes
      full-resolution 16-channel maps, most of ``tiny-aa5``'s time, while the blur on
      the input is cheap, and with no nonlinearity before that subsampling the two
      low-pass alike.

    The blur has no weights: the parameters are the plain stages' (the keys' indices
    differ).
    """

    def __init__(
        self,
        embed_dim: int = 64,
        widths: tuple[int, ...] = TINY_WIDTHS,
        antialias: str | None = None,
    ):
        super().__init__()
        if antialias not in ANTIALIAS_STAGES:
            known = ", ".join(repr(k) for k in ANTIALIAS_STAGES)
            raise ValueError(f"antialias {antialias!r}: expected one of {known}")
        modes, stage_taps = ANTIALIAS_STAGES[antialias]
        layers: list[nn.Module] = []
        c_in = 3
        channels = (*widths, embed_dim)
        for stage, c_out in enumerate(channels):
            mode = modes[stage]
            taps = stage_taps if isinstance(stage_taps, int) else stage_taps[stage]
            if mode == "preblur":
                layers.append(BlurPool(c_in, 1, taps))
            stride = 1 if mode == "blurpool" else 2
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            if mode == "blurpool":
                layers.append(BlurPool(c_out, 2, taps))
            layers += [
                nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
            c_in = c_out
            if stage == len(channels) - 2:
                self.last_stage_start = len(layers)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised float → (B, D, H/16, W/16)."""
        return self.body(x)

    def early(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) → the first three stages' map (B, C, H/8, W/8)."""
        return self.body[: self.last_stage_start](x)

    def last(self, features: torch.Tensor) -> torch.Tensor:
        """``early``'s map → the backbone's output: the last stage, whose subsampling
        keeps the even cells of its input (the odd ones: ``last_at_phases``)."""
        return self.body[self.last_stage_start :](features)

    def last_at_phases(
        self, features: torch.Tensor, phases: tuple[tuple[int, int], ...], shared: bool = True
    ) -> list[torch.Tensor]:
        """``last`` at each of ``phases`` — the (row, column) cell its subsampling keeps of
        every 2 × 2 — one map per phase (#20).

        Phase (a, b) is the stage on ``features`` moved up by a cells and left by b, the
        far edge repeated. ``shared``: in a blur-pool stage the convolution and the blur
        before the subsampling run once, at stride 1, and only what follows runs per phase
        (a quarter of the stage's work each) — equal to running the stage on each moved
        map but within a few cells of an edge, where the moved map's own padding differs.
        Not shared (or not a blur-pool stage): the stage runs on each moved map. Each
        phase runs on its own, so batch norms in training see each phase's statistics."""
        stage = self.body[self.last_stage_start :]
        blurpool = stage[3] if len(stage) > 3 else None
        if shared and isinstance(blurpool, BlurPool) and blurpool.stride == 2:
            rows, cols = -(-features.shape[-2] // 2), -(-features.shape[-1] // 2)
            dense = blurpool.dense(stage[:3](features))
            dense = nn.functional.pad(dense, (0, 1, 0, 1), mode="replicate")  # odd sizes
            return [stage[4:](dense[..., a::2, b::2][..., :rows, :cols]) for a, b in phases]
        return [
            stage(nn.functional.pad(features[..., a:, b:], (0, b, 0, a), mode="replicate"))
            for a, b in phases
        ]


def _tiny_factory(
    spec: BackboneSpec, tile_size: int, antialias: str | None, widths: tuple[int, ...]
) -> nn.Module:
    return TinyBackbone(spec.embed_dim, widths, antialias=antialias)


def _timm_factory(spec: BackboneSpec, tile_size: int) -> nn.Module:
    assert spec.timm_name is not None
    return TimmViTBackbone(spec.timm_name, tile_size)


for _timm_name, _dim, _mean, _std, _what in [
    ("vit_small_patch16_dinov3.lvd1689m", 384, IMAGENET_MEAN, IMAGENET_STD, "DINOv3 ViT-S/16, web"),
    ("vit_base_patch16_dinov3.lvd1689m", 768, IMAGENET_MEAN, IMAGENET_STD, "DINOv3 ViT-B/16, web"),
    ("vit_large_patch16_dinov3.lvd1689m", 1024, IMAGENET_MEAN, IMAGENET_STD, "DINOv3 ViT-L/16 web"),
    ("vit_large_patch16_dinov3.sat493m", 1024, SAT_MEAN, SAT_STD, "DINOv3 ViT-L/16 SAT"),
]:
    register_backbone(
        BackboneSpec(
            name=_timm_name,
            embed_dim=_dim,
            patch_size=16,
            mean=_mean,
            std=_std,
            frozen=True,
            timm_name=_timm_name,
            description=_what,
        ),
        _timm_factory,
    )

NARROW_WIDTHS = (8, 24, 48)  # tiny-aa5n: the stride-1 convolutions of the blur-pool cost less

# The trained-from-scratch CNNs: ``tiny`` and its anti-aliased variants (#20).
for _tiny_name, _antialias, _what, _widths in [
    ("tiny", None, "small CNN, output stride 16, trains from scratch (demo, tests)", TINY_WIDTHS),
    (
        "tiny-aa",
        "blurpool",
        "tiny with anti-aliased (blur-pool) downsampling, for phase stability (#20)",
        TINY_WIDTHS,
    ),
    (
        "tiny-aa5",
        "blurpool5",
        "tiny-aa with a 5-tap binomial blur: less aliasing, the same weights and stages",
        TINY_WIDTHS,
    ),
    (
        "tiny-aalite",
        "lite",
        "tiny with a fixed blur before its two early stride-2 convs, blur-pool in the last two",
        TINY_WIDTHS,
    ),
    (
        "tiny-aalite5",
        "lite5",
        "tiny-aalite with the 5-tap binomial blur in all four stages",
        TINY_WIDTHS,
    ),
    (
        "tiny-aa5stem",
        "stem5",
        "tiny-aa5 with a pre-blurred input in place of the first stage's blur-pool: cheaper",
        TINY_WIDTHS,
    ),
    (
        "tiny-blur",
        "preblur",
        "tiny with a fixed blur before each stride-2 conv: anti-aliased at tiny's cost",
        TINY_WIDTHS,
    ),
    (
        "tiny-aa5n",
        "blurpool5",
        "tiny-aa5 with fewer channels in its first two stages (8, 24): about 0.7× its time",
        NARROW_WIDTHS,
    ),
    (
        "tiny-aa7n",
        "blurpool7",
        "tiny-aa5n with the 7-tap binomial blur: less aliasing, tiny-aa5n's weights",
        NARROW_WIDTHS,
    ),
    (
        "tiny-aa97n",
        "blurpool97",
        "tiny-aa7n with a 9-tap blur in its first stage, its weights (a #20 candidate)",
        NARROW_WIDTHS,
    ),
]:
    register_backbone(
        BackboneSpec(
            name=_tiny_name,
            embed_dim=64,
            patch_size=16,
            mean=SAT_MEAN,
            std=SAT_STD,
            frozen=False,
            any_tile=True,
            description=_what,
        ),
        partial(_tiny_factory, antialias=_antialias, widths=_widths),
    )

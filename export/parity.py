"""Every export is checked against eager PyTorch before it enters a bundle.

As timm's ``utils/onnx.py`` does after export, the exported model and the float32 eager
model run the same uint8 tiles (``stmap.parity_tiles``: random bytes and a synthetic
city, the tiles the runtime's CPU precision ladder also uses). The largest absolute
probability difference must stay within the precision's tolerance, or the export is
refused and nothing is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from stmap.errors import InputError
from stmap.lazy import lazy_import
from stmap.parity_tiles import DEFAULT_SAMPLES, Infer, parity_batches, torch_reference
from stmap.stage_contract import INPUT_NAME, OUTPUT_NAME

# max |Δ probability| against eager float32; int8: the CPU ladder's 2/255
TOLERANCES = {"fp32": 1e-3, "fp16": 1e-2, "int8": 2 / 255}


class ParityError(InputError):
    """An export whose outputs differ from PyTorch beyond the tolerance (exit 2)."""


@dataclass(frozen=True)
class ParityReport:
    """The measured agreement of one exported model with eager PyTorch."""

    precision: str
    max_abs_diff: float
    tolerance: float
    samples: int
    per_input: dict[str, float]
    runtime: dict[str, str] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What goes into the manifest under ``exports[...]["parity"]``."""
        return {
            "max_abs_diff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "samples": self.samples,
            "per_input": self.per_input,
            "reference": f"PyTorch {torch.__version__} eager, float32, CPU",
            **self.runtime,
        }


def compare(
    reference: Infer,
    candidate: Infer,
    batches: list[tuple[str, torch.Tensor]],
    *,
    precision: str,
    what: str,
    runtime: dict[str, str] | None = None,
) -> ParityReport:
    """Run both on every batch; raise ParityError if any probability differs too much."""
    tolerance = TOLERANCES[precision]
    per_input: dict[str, float] = {}
    for label, batch in batches:
        expected = reference(batch).float().cpu()
        actual = candidate(batch).float().cpu()
        if actual.shape != expected.shape:
            raise ParityError(
                f"{what} returns shape {tuple(actual.shape)} for a batch of {len(batch)}, "
                f"PyTorch {tuple(expected.shape)}; nothing was added to the bundle"
            )
        diff = (actual - expected).abs().max().item()
        worst = diff if math.isfinite(diff) else math.inf
        per_input[label] = max(per_input.get(label, 0.0), worst)
    max_diff = max(per_input.values())
    samples = sum(len(batch) for _, batch in batches)
    if not max_diff <= tolerance:
        label = max(per_input, key=per_input.__getitem__)
        raise ParityError(
            f"{what} differs from PyTorch by {max_diff:.3g} in probability on {label} tiles "
            f"(tolerance {tolerance:g} for {precision}, {samples} tiles); the export was "
            "refused and nothing was added to the bundle. Try another --opset, or report it "
            "with the model's backbone"
        )
    return ParityReport(precision, max_diff, tolerance, samples, per_input, runtime or {})


def onnx_parity(
    model: torch.nn.Module,
    onnx_path: Path,
    *,
    precision: str,
    tile_size: int,
    channels: int,
    samples: int = DEFAULT_SAMPLES,
) -> ParityReport:
    """Compare ONNX Runtime (CPU provider) running ``onnx_path`` with eager ``model``."""
    ort = lazy_import("onnxruntime")
    provider = "CPUExecutionProvider"
    session = ort.InferenceSession(str(onnx_path), providers=[provider])

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0])

    return compare(
        torch_reference(model),
        run,
        parity_batches(tile_size, channels, samples),
        precision=precision,
        what=f"{onnx_path.name} in ONNX Runtime",
        runtime={"onnxruntime": ort.__version__, "provider": provider},
    )

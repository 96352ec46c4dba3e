"""Reports of a run: per-region scores as mean ± std over folds, the mean over regions,
and TP/FP/FN overlays.

``summarise`` is pure (fold scores in, numbers out); ``write_report`` renders the
same numbers as ``report.json``, ``report.tsv`` and ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from stmap.train.metrics import METRICS, aggregate_folds, aggregate_regions

if TYPE_CHECKING:
    from stmap.train.loop import Inputs

MEAN_ROW = "mean over regions"
# RGB of true positives, false positives and false negatives in the overlays.
TP_COLOUR, FP_COLOUR, FN_COLOUR = (0, 200, 0), (230, 30, 30), (40, 90, 255)
OVERLAY_ALPHA = 0.55

FoldScores = Mapping[str, Mapping[str, Sequence[Mapping[str, float]]]]


def summarise(fold_scores: FoldScores) -> dict[str, dict[str, Any]]:
    """{setting: {region: [per-fold scores]}} → per setting, per region and overall.

    Returns {setting: {"regions": {region: {metric: (mean, std)}}, "mean":
    {metric: (mean, std) of the per-region means}, "folds": {region: n}}}; std is
    the population std (ddof 0).
    """
    summary = {}
    for setting, per_region in fold_scores.items():
        regions = {region: aggregate_folds(list(folds)) for region, folds in per_region.items()}
        summary[setting] = {
            "regions": dict(sorted(regions.items())),
            "mean": aggregate_regions(regions),
            "folds": {region: len(folds) for region, folds in sorted(per_region.items())},
        }
    return summary


def rows(summary: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(setting, region, {metric: (mean, std)}) for every region, then the mean row."""
    table = []
    for setting, block in summary.items():
        for region, metrics in block["regions"].items():
            table.append((setting, region, metrics))
        table.append((setting, MEAN_ROW, block["mean"]))
    return table


def render_tsv(summary: Mapping[str, Mapping[str, Any]]) -> str:
    """One line per (setting, region): mean and std columns of every metric."""
    header = ["setting", "region"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")]
    lines = ["\t".join(header)]
    for setting, region, metrics in rows(summary):
        values = [f"{metrics[m][i]:.6f}" for m in METRICS for i in (0, 1)]
        lines.append("\t".join([setting, region, *values]))
    return "\n".join(lines) + "\n"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The human report: a table per setting, then what this run did and how it differs."""
    lines = [f"# stmap {report['command_name']}: {report['title']}", ""]
    for setting, block in report["summary"].items():
        lines += [f"## {setting}", ""]
        lines.append("| region | " + " | ".join(METRICS) + " |")
        lines.append("|---|" + "---|" * len(METRICS))
        for region, metrics in [*block["regions"].items(), (MEAN_ROW, block["mean"])]:
            cells = [f"{metrics[m][0]:.4f} ± {metrics[m][1]:.4f}" for m in METRICS]
            name = f"**{region}**" if region == MEAN_ROW else region
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append(
        "Scores at threshold 0.5 over all pixels pooled per region and fold, as mean ± "
        "population std over folds; the last row is the mean (± std) of the region means."
    )
    lines.append("")
    for heading, key in (("This run", "facts"), ("Differences from the reference", "differences")):
        if report.get(key):
            lines += [f"## {heading}", "", *[f"- {item}" for item in report[key]], ""]
    if report.get("overlays"):
        lines += [
            "## Overlays",
            "",
            f"`overlays/` holds {len(report['overlays'])} tiles: true positives green, "
            "false positives red, false negatives blue.",
            "",
        ]
    return "\n".join(lines)


def write_report(out_dir: Path, report: Mapping[str, Any]) -> None:
    """``report.json``, ``report.tsv`` and ``report.md`` in ``out_dir``."""
    from stmap.io.tiles import write_text

    write_text(out_dir / "report.json", json.dumps(report, indent=2, default=str) + "\n")
    write_text(out_dir / "report.tsv", render_tsv(report["summary"]))
    write_text(out_dir / "report.md", render_markdown(report))


def overlay(image: torch.Tensor, truth: torch.Tensor, predicted: torch.Tensor) -> np.ndarray:
    """(3, S, S) uint8 RGB with TP green, FP red and FN blue blended in.

    truth, predicted: (S, S) bool.
    """
    out = image.float().clone()
    for mask, colour in (
        (truth & predicted, TP_COLOUR),
        (~truth & predicted, FP_COLOUR),
        (truth & ~predicted, FN_COLOUR),
    ):
        tint = torch.tensor(colour, dtype=torch.float32).view(3, 1, 1)
        out = torch.where(mask, (1 - OVERLAY_ALPHA) * out + OVERLAY_ALPHA * tint, out)
    return out.round().clamp(0, 255).to(torch.uint8).numpy()


def write_overlays(
    directory: Path,
    model: torch.nn.Module,
    inputs: Inputs,
    index: torch.Tensor,
    count: int,
    threshold: float,
    batch_size: int,
) -> list[str]:
    """Overlays of ``model`` on up to ``count`` tiles of ``index`` (damaged first), as PNGs.

    Returns the file names written in ``directory`` (``<tile id>.png``); tiles the data
    places on the map get their CRS and transform (``.aux.xml`` and a world file).
    """
    from stmap.io.tiles import write_png
    from stmap.train.loop import predict

    data = inputs.data
    sample = overlay_sample((data.labels[index].flatten(1) == 1).any(1), index, count)
    names = []
    for batch, logits in predict(model, inputs, sample, batch_size):
        predicted = (torch.sigmoid(logits[:, 0]) > threshold).cpu()
        for position, mask in zip(batch.tolist(), predicted, strict=True):
            name = f"{data.tile_ids[position]}.png"
            image = overlay(data.images[position], data.labels[position] == 1, mask)
            write_png(directory / name, image, data.georef.get(data.tile_ids[position]))
            names.append(name)
    return names


def overlay_sample(damaged: torch.Tensor, index: torch.Tensor, count: int) -> torch.Tensor:
    """Up to ``count`` positions of ``index``, evenly spread, tiles with damage first.

    damaged: (len(index),) bool, whether each tile has labelled damage.
    """
    ordered = torch.cat([index[damaged], index[~damaged]])
    if count <= 0 or len(ordered) == 0:
        return ordered[:0]
    with_damage = int(damaged.sum())
    pool = ordered[: max(with_damage, min(count, len(ordered)))]
    picks = torch.linspace(0, len(pool) - 1, min(count, len(pool))).round().long().unique()
    return pool[picks]

"""``stmap evaluate --labels``: how good a damage map is against a responder's labels.

Scores an existing ``S_damage_prob.tif`` (windows around the labels only), or a
bundle run on imagery over the tiles around the labels (``train.adapt``'s reading,
which is the runtime's), with the same sparse reading and metrics as ``stmap adapt``.
"""

from __future__ import annotations

from typing import Any

from stmap.io.labels import probability_windows
from stmap.io.raster import describe_raster
from stmap.train.adapt import LabelOptions
from stmap.train.label_metrics import ObjectScores, PixelScores

MIN_PER_CLASS = 1  # AUC needs one object of each class


def is_probability_map(path: str) -> bool:
    """A one-band uint8 raster is taken for a map; imagery has the model's bands."""
    info = describe_raster(path)
    return info.count == 1 and info.dtype == "uint8"


def evaluate_probability_map(path: str, options: LabelOptions, threshold: float) -> dict[str, Any]:
    """Scores of the map at ``path`` against the labels at ``threshold``.

    Raises InputError naming the file or option for a map without CRS, labels that
    do not overlap it, or labels of one class.
    """
    from stmap.errors import InputError

    info = describe_raster(path)
    if info.crs is None:
        raise InputError(f"{path}: the map has no CRS to place the labels on")
    labels = options.read(info.crs)
    messages = [labels.describe()]
    labels.check_classes(MIN_PER_CLASS)
    corners = [info.transform @ (c, r) for c in (0, info.width) for r in (0, info.height)]
    xs, ys = zip(*corners, strict=True)
    labels.check_overlap((min(xs), min(ys), max(xs), max(ys)), path)
    regions = options.regions(labels, info.crs)
    messages += [f"  {note}" for note in regions.notes]
    pixels, objects = PixelScores(), ObjectScores()
    for prob8, target, known, region in probability_windows(path, regions):
        pixels.add(prob8, target, known)
        objects.add(prob8, region)
    damaged, undamaged = pixels.counts
    if not damaged or not undamaged:
        raise InputError(
            f"--labels {options.path}: on the map's valid pixels the labels cover {damaged} "
            f"damaged and {undamaged} undamaged pixels; both classes are needed"
        )
    return {
        "map": path,
        "labels": _labels_facts(labels),
        "messages": messages,
        "scores": {
            **pixels.scores(threshold),
            "per_class": objects.per_class(labels.values, labels.classes, threshold),
        },
    }


def _labels_facts(labels) -> dict[str, Any]:
    return {
        "path": labels.path,
        "sha256": labels.sha256,
        "mapping": labels.mapping.to_dict(),
        "counts": labels.counts(),
    }


def evaluate_bundle_on_imagery(
    model: str, imagery, options: LabelOptions, device
) -> dict[str, Any]:
    """Scores of ``model`` run on the tiles around the labels of ``imagery``."""
    from stmap.train.adapt import evaluate_scene, load_labelled_scene

    scene = load_labelled_scene(model, imagery, options, MIN_PER_CLASS)
    return {
        "model": str(scene.bundle.source),
        "imagery": scene.inputs,
        "labels": _labels_facts(scene.labels),
        "messages": scene.messages,
        "scores": evaluate_scene(scene, device),
    }

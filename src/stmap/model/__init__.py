"""The model core shared by train, export and runtime."""

from stmap.model.backbones import BackboneSpec, backbone_names, create_backbone, get_spec
from stmap.model.preprocess import Normalize, Preprocessing
from stmap.model.segmenter import (
    DamageSegmenter,
    InferenceModel,
    SegmenterConfig,
    TrainOutput,
)

__all__ = [
    "BackboneSpec",
    "DamageSegmenter",
    "InferenceModel",
    "Normalize",
    "Preprocessing",
    "SegmenterConfig",
    "TrainOutput",
    "backbone_names",
    "create_backbone",
    "get_spec",
]

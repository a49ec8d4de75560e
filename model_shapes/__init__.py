"""The target DeepSeek-VL2-style model as data and as code.

``model_shapes.load("tiny")`` returns a frozen :class:`ModelShape`; the data pipeline and the validation model
both read their numbers from it, so a shard and a model cannot disagree. ``build_model(shape)`` builds the
model in plain PyTorch with the official parameter names, and ``load_official_weights`` / ``from_pretrained``
fill it from an official checkpoint. The model code (torch) is imported on first use of one of its names,
so that the data side, which needs only shapes, starts fast; safetensors only when files are read.
"""

from __future__ import annotations

import importlib
from typing import Any

from model_shapes.shape import (
    TOKEN_STRINGS,
    VARIANTS,
    LanguageShape,
    ModelShape,
    ProjectorShape,
    ShapeError,
    SpecialTokens,
    VisionShape,
    from_dict,
    from_official_config,
    load,
)

_LAZY = {
    "DeepseekVL2": "model_shapes.vlm",
    "ModelOutput": "model_shapes.vlm",
    "build_model": "model_shapes.vlm",
    "WeightsError": "model_shapes.weights",
    "from_pretrained": "model_shapes.weights",
    "load_official_weights": "model_shapes.weights",
    "read_safetensors": "model_shapes.weights",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'model_shapes' has no attribute {name!r}")


__all__ = [
    "TOKEN_STRINGS",
    "VARIANTS",
    "DeepseekVL2",
    "LanguageShape",
    "ModelOutput",
    "ModelShape",
    "ProjectorShape",
    "ShapeError",
    "SpecialTokens",
    "VisionShape",
    "WeightsError",
    "build_model",
    "from_dict",
    "from_official_config",
    "from_pretrained",
    "load",
    "load_official_weights",
    "read_safetensors",
]

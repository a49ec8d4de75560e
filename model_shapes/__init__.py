"""The target DeepSeek-VL2-style model as data: named shapes (tiny, small, base, toy), loading and validation.

``model_shapes.load("tiny")`` returns a frozen :class:`ModelShape`; the data pipeline and the validation model
both read their numbers from it, so a shard and a model cannot disagree. Imports only the standard library.
"""

from model_shapes.shape import (
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

__all__ = [
    "VARIANTS",
    "LanguageShape",
    "ModelShape",
    "ProjectorShape",
    "ShapeError",
    "SpecialTokens",
    "VisionShape",
    "from_dict",
    "from_official_config",
    "load",
]

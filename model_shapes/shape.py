"""The target model as data: frozen dataclasses for a DeepSeek-VL2-style model, with loading and validation.

A :class:`ModelShape` holds every number that the data side (tiling, visual-token layout, special token ids,
sequence length) and the model side (ViT, adaptor, MLA/MHA + MoE language model) need. Shapes come from our
own JSON files (``shapes/{tiny,small,base,toy}.json``, see :func:`load`) or from an official ``config.json``
(:func:`from_official_config`). Everything is validated when a shape is built; a problem raises
:class:`ShapeError` naming the offending key. Only the standard library is used here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS: tuple[str, ...] = ("tiny", "small", "base", "toy")
_KNOWN = (
    f"known variants: {', '.join(VARIANTS)} "
    "(or give the path of a shape JSON file or an official config.json)"
)
"""Said by every error about a shape that could not be found, so that a typo shows the right names."""
SHAPES_DIR = Path(__file__).resolve().parent / "shapes"

TOPK_METHODS = ("greedy", "group_limited_greedy", "noaux_tc")
SCORING_FUNCS = ("softmax", "sigmoid")


class ShapeError(ValueError):
    """A model shape is malformed or inconsistent; the message names the offending key."""


# ----------------------------------------------------------------------------------------------------
# field checks shared by the dataclasses


def _normalize_fields(obj: Any, prefix: str) -> None:
    """Check the type of every field of a frozen dataclass and normalize ints given for floats to float.

    Annotations are strings here (``from __future__ import annotations``), so the few kinds used are matched
    by name.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        kind = f.type
        if kind == "int":
            if not _is_int(value):
                raise ShapeError(f"{key} must be an integer, got {value!r}")
        elif kind == "int | None":
            if value is not None and not _is_int(value):
                raise ShapeError(f"{key} must be an integer or null, got {value!r}")
        elif kind == "float":
            if not (_is_int(value) or isinstance(value, float)) or not math.isfinite(value):
                raise ShapeError(f"{key} must be a finite number, got {value!r}")
            object.__setattr__(obj, f.name, float(value))
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ShapeError(f"{key} must be true or false, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str):
                raise ShapeError(f"{key} must be a string, got {value!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _require_positive(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value <= 0:
            raise ShapeError(f"{prefix}{name}={value} must be positive")


def _require_non_negative(obj: Any, prefix: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(obj, name)
        if value < 0:
            raise ShapeError(f"{prefix}{name}={value} must not be negative")


# ----------------------------------------------------------------------------------------------------
# the dataclasses


@dataclass(frozen=True, kw_only=True)
class VisionShape:
    """The SigLIP-style ViT (timm names): patch embed, pre-LN blocks, final norm, unused MAP pool head."""

    model_name: str
    image_size: int = 384
    patch_size: int = 14
    width: int
    layers: int
    heads: int
    mlp_ratio: float
    global_pool: str = "map"
    ignore_head: bool = True

    def __post_init__(self) -> None:
        p = "vision."
        _normalize_fields(self, p)
        _require_positive(self, p, ("image_size", "patch_size", "width", "layers", "heads", "mlp_ratio"))
        if self.width % self.heads:
            raise ShapeError(f"vision.width={self.width} is not divisible by vision.heads={self.heads}")
        # 384 is not a multiple of 14: the stride-14 patch conv sees 27 patches (378 px) and ignores the rest.
        if self.patch_size > self.image_size:
            raise ShapeError(
                f"vision.patch_size={self.patch_size} exceeds vision.image_size={self.image_size}"
            )
        if self.mlp_hidden < 1:
            raise ShapeError(f"vision.mlp_ratio={self.mlp_ratio} gives an empty MLP for width {self.width}")
        if self.global_pool != "map":
            raise ShapeError(
                f"vision.global_pool={self.global_pool!r} is not supported: only 'map' (the attention-pool "
                "head that DeepSeek-VL2 builds and ships unused)"
            )
        if not self.ignore_head:
            raise ShapeError("vision.ignore_head=false is not supported: DeepSeek-VL2 uses the patch tokens")

    @property
    def mlp_hidden(self) -> int:
        """MLP hidden width, truncated as the official ViT does: int(width * mlp_ratio) (4304 for SigLIP)."""
        return int(self.width * self.mlp_ratio)

    @property
    def grid(self) -> int:
        """Patches per side of one tile, floor(image_size / patch_size): 27 for 384 / 14 (the last 6 px of
        each side are never seen by the stride-14 patch conv)."""
        return self.image_size // self.patch_size

    @property
    def head_dim(self) -> int:
        """Width of one attention head (72 for SigLIP)."""
        return self.width // self.heads


@dataclass(frozen=True, kw_only=True)
class ProjectorShape:
    """The vision-language adaptor: 2×2 pixel-unshuffle then an MLP (``downsample_mlp_gelu``)."""

    projector_type: str = "downsample_mlp_gelu"
    input_dim: int
    n_embed: int
    depth: int = 2
    mlp_ratio: int = 1
    downsample_ratio: int = 2
    token_pooling: bool = False

    def __post_init__(self) -> None:
        p = "projector."
        _normalize_fields(self, p)
        if self.projector_type != "downsample_mlp_gelu":
            raise ShapeError(
                f"projector.projector_type={self.projector_type!r} is not supported: only "
                "'downsample_mlp_gelu' (the DeepSeek-VL2 adaptor)"
            )
        _require_positive(self, p, ("input_dim", "n_embed", "depth", "mlp_ratio", "downsample_ratio"))
        if self.token_pooling:
            raise ShapeError("projector.token_pooling=true is not supported: DeepSeek-VL2 leaves it off")


@dataclass(frozen=True, kw_only=True)
class LanguageShape:
    """The DeepSeek-V2-style decoder: MHA or MLA attention, dense first layers then MoE (config.json names).

    With ``use_mla`` false the MLA fields (``q_lora_rank``, ``kv_lora_rank``, ``qk_nope_head_dim``,
    ``qk_rope_head_dim``, ``v_head_dim``) are unused; our files set them to null/0.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    moe_intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    n_shared_experts: int
    n_routed_experts: int
    num_experts_per_tok: int
    first_k_dense_replace: int
    moe_layer_freq: int = 1
    n_group: int = 1
    topk_group: int = 1
    topk_method: str
    scoring_func: str
    norm_topk_prob: bool
    routed_scaling_factor: float
    use_mla: bool
    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int
    attention_bias: bool = False
    hidden_act: str = "silu"
    aux_loss_alpha: float = 0.001
    seq_aux: bool = True
    tie_word_embeddings: bool = False

    def __post_init__(self) -> None:
        p = "language."
        _normalize_fields(self, p)
        _require_positive(
            self,
            p,
            (
                "vocab_size",
                "hidden_size",
                "intermediate_size",
                "moe_intermediate_size",
                "num_hidden_layers",
                "num_attention_heads",
                "num_key_value_heads",
                "n_routed_experts",
                "moe_layer_freq",
                "n_group",
                "max_position_embeddings",
                "rms_norm_eps",
                "rope_theta",
                "routed_scaling_factor",
            ),
        )
        _require_non_negative(
            self,
            p,
            (
                "n_shared_experts",
                "first_k_dense_replace",
                "aux_loss_alpha",
                "kv_lora_rank",
                "qk_nope_head_dim",
                "qk_rope_head_dim",
                "v_head_dim",
            ),
        )
        if self.hidden_act != "silu":
            raise ShapeError(f"language.hidden_act={self.hidden_act!r} is not supported: only 'silu'")
        if self.topk_method not in TOPK_METHODS:
            raise ShapeError(
                f"language.topk_method={self.topk_method!r} is not one of {', '.join(TOPK_METHODS)}"
            )
        if self.scoring_func not in SCORING_FUNCS:
            raise ShapeError(
                f"language.scoring_func={self.scoring_func!r} is not one of {', '.join(SCORING_FUNCS)}"
            )
        if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
            if self.num_experts_per_tok < 1:
                raise ShapeError(
                    f"language.num_experts_per_tok={self.num_experts_per_tok} must be at least 1"
                )
            raise ShapeError(
                f"language.num_experts_per_tok={self.num_experts_per_tok} exceeds "
                f"n_routed_experts={self.n_routed_experts}"
            )
        if self.n_routed_experts % self.n_group:
            raise ShapeError(
                f"language.n_group={self.n_group} does not divide n_routed_experts={self.n_routed_experts}"
            )
        if not 1 <= self.topk_group <= self.n_group:
            raise ShapeError(f"language.topk_group={self.topk_group} must lie in [1, n_group={self.n_group}]")
        if self.first_k_dense_replace > self.num_hidden_layers:
            raise ShapeError(
                f"language.first_k_dense_replace={self.first_k_dense_replace} exceeds "
                f"num_hidden_layers={self.num_hidden_layers}"
            )
        if self.use_mla:
            self._check_mla()
        else:
            self._check_mha()

    def _check_mha(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ShapeError(
                f"language.hidden_size={self.hidden_size} is not divisible by "
                f"language.num_attention_heads={self.num_attention_heads} (MHA, use_mla=false)"
            )
        if self.num_key_value_heads != self.num_attention_heads:
            raise ShapeError(
                f"language.num_key_value_heads={self.num_key_value_heads} must equal "
                f"num_attention_heads={self.num_attention_heads} (MHA, use_mla=false; no GQA)"
            )
        if self.q_lora_rank is not None and self.q_lora_rank < 0:
            raise ShapeError(f"language.q_lora_rank={self.q_lora_rank} must not be negative")

    def _check_mla(self) -> None:
        if self.kv_lora_rank <= 0:
            raise ShapeError(f"language.kv_lora_rank={self.kv_lora_rank} must be positive with use_mla=true")
        if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
            raise ShapeError(
                f"language.qk_rope_head_dim={self.qk_rope_head_dim} must be positive and even "
                "(RoPE rotates pairs)"
            )
        if self.v_head_dim <= 0:
            raise ShapeError(f"language.v_head_dim={self.v_head_dim} must be positive with use_mla=true")
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            raise ShapeError(
                f"language.q_lora_rank={self.q_lora_rank} must be positive, or null for a direct q_proj"
            )

    @property
    def head_dim(self) -> int:
        """Query/key width per head: hidden_size // num_attention_heads for MHA, q_head_dim for MLA."""
        if self.use_mla:
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.hidden_size // self.num_attention_heads

    @property
    def q_head_dim(self) -> int:
        """Query/key width per head that sets the softmax scale q_head_dim**-0.5: nope + rope for MLA (192),
        head_dim for MHA."""
        return self.head_dim

    def is_moe_layer(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` (0-based) is an MoE layer rather than a dense SwiGLU MLP."""
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0


TOKEN_STRINGS: dict[str, str] = {  # SpecialTokens field -> token string (bos/eos/pad differ per tokenizer)
    "bos": "bos",
    "eos": "eos",
    "pad": "pad",
    "image": "<image>",
    "ref_start": "<|ref|>",
    "ref_end": "<|/ref|>",
    "det_start": "<|det|>",
    "det_end": "<|/det|>",
    "grounding": "<|grounding|>",
    "user": "<|User|>",
    "assistant": "<|Assistant|>",
}


@dataclass(frozen=True, kw_only=True)
class SpecialTokens:
    """Special token ids: they belong to the shape; the tokenizer encodes only the text between them."""

    bos: int
    eos: int
    pad: int
    image: int
    ref_start: int
    ref_end: int
    det_start: int
    det_end: int
    grounding: int
    user: int
    assistant: int

    def __post_init__(self) -> None:
        p = "special_tokens."
        _normalize_fields(self, p)
        _require_non_negative(self, p, tuple(TOKEN_STRINGS))
        seen: dict[int, str] = {}
        for name in TOKEN_STRINGS:
            token_id = getattr(self, name)
            if token_id in seen:
                raise ShapeError(
                    f"special_tokens.{name}={token_id} duplicates special_tokens.{seen[token_id]}={token_id}"
                )
            seen[token_id] = name

    def as_dict(self) -> dict[str, int]:
        """Token string → id. bos, eos and pad are keyed by the plain names "bos", "eos", "pad" (their
        strings differ between tokenizers); the others by their literal strings, e.g. "<image>", "<|ref|>",
        "<|User|>"."""
        return {token: getattr(self, name) for name, token in TOKEN_STRINGS.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], prefix: str = "special_tokens.") -> SpecialTokens:
        """Build from a mapping keyed either by field names (``image``) or by the keys of :meth:`as_dict`
        (``<image>``); every one of the eleven tokens must be given exactly once."""
        if not isinstance(data, Mapping):
            raise ShapeError(f"{prefix.rstrip('.')} must be an object, got {type(data).__name__}")
        by_string = {token: name for name, token in TOKEN_STRINGS.items()}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = key if key in TOKEN_STRINGS else by_string.get(key)
            if name is None:
                raise ShapeError(f"unknown key {prefix}{key}; known: {', '.join(TOKEN_STRINGS)}")
            if name in values:
                raise ShapeError(f"{prefix}{name} is given twice")
            values[name] = value
        missing = [name for name in TOKEN_STRINGS if name not in values]
        if missing:
            raise ShapeError(f"{prefix}{missing[0]} is missing")
        return cls(**values)


@dataclass(frozen=True, kw_only=True)
class ModelShape:
    """A whole DeepSeek-VL2-style model: ViT, adaptor, language model, tiling constants and special token ids.

    ``candidate_resolutions`` are (width, height) pairs in the official order (order decides exact ties in
    best-resolution selection). ``special_tokens`` is None for shapes read from official config files, which
    carry no ids. ``description`` is prose: it is ignored by ``==`` and by :meth:`fingerprint`.
    """

    name: str
    vision: VisionShape
    projector: ProjectorShape
    language: LanguageShape
    candidate_resolutions: tuple[tuple[int, int], ...]
    tile_tag: str = "2D"
    global_view_pos: str = "head"
    image_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    image_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    special_tokens: SpecialTokens | None = None
    max_seq_len: int = 4096
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        for key, kind in (("name", str), ("tile_tag", str), ("global_view_pos", str), ("description", str)):
            if not isinstance(getattr(self, key), kind):
                raise ShapeError(f"{key} must be a string, got {getattr(self, key)!r}")
        sections = (("vision", VisionShape), ("projector", ProjectorShape), ("language", LanguageShape))
        for key, kind in sections:
            value = getattr(self, key)
            if not isinstance(value, kind):
                raise ShapeError(f"{key} must be a {kind.__name__}, got {type(value).__name__}")
        if self.special_tokens is not None and not isinstance(self.special_tokens, SpecialTokens):
            raise ShapeError(f"special_tokens must be SpecialTokens or None, got {self.special_tokens!r}")
        if not _is_int(self.max_seq_len) or self.max_seq_len < 1:
            raise ShapeError(f"max_seq_len={self.max_seq_len!r} must be a positive integer")
        object.__setattr__(self, "candidate_resolutions", self._checked_resolutions())
        object.__setattr__(self, "image_mean", _rgb_triple("image_mean", self.image_mean, lo=0.0, hi=1.0))
        object.__setattr__(self, "image_std", _rgb_triple("image_std", self.image_std, lo=0.0, hi=math.inf))
        if self.tile_tag != "2D":
            raise ShapeError(
                f"tile_tag={self.tile_tag!r} is not supported: only '2D' (the official '1D' path with "
                "tile_indicators is abandoned)"
            )
        if self.global_view_pos != "head":
            raise ShapeError(
                f"global_view_pos={self.global_view_pos!r} is not supported: only 'head' (the other official "
                "positions belong to the abandoned paths)"
            )
        if self.projector.input_dim != self.vision.width:
            raise ShapeError(
                f"projector.input_dim={self.projector.input_dim} does not match "
                f"vision.width={self.vision.width}"
            )
        if self.projector.n_embed != self.language.hidden_size:
            raise ShapeError(
                f"projector.n_embed={self.projector.n_embed} does not match "
                f"language.hidden_size={self.language.hidden_size}"
            )
        if self.special_tokens is not None:
            vocab = self.language.vocab_size
            for name in TOKEN_STRINGS:
                token_id = getattr(self.special_tokens, name)
                if token_id >= vocab:
                    raise ShapeError(
                        f"special_tokens.{name}={token_id} is outside [0, language.vocab_size={vocab})"
                    )

    def _checked_resolutions(self) -> tuple[tuple[int, int], ...]:
        raw = self.candidate_resolutions
        if isinstance(raw, str | bytes) or not hasattr(raw, "__iter__"):
            raise ShapeError(f"candidate_resolutions must be a list of [width, height] pairs, got {raw!r}")
        size = self.vision.image_size
        pairs: list[tuple[int, int]] = []
        for i, pair in enumerate(raw):
            key = f"candidate_resolutions[{i}]"
            if isinstance(pair, str | bytes) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ShapeError(f"{key}={pair!r} must be a [width, height] pair")
            width, height = pair
            if not (_is_int(width) and _is_int(height)) or width <= 0 or height <= 0:
                raise ShapeError(f"{key}={list(pair)} must hold two positive integers")
            if width % size or height % size:
                raise ShapeError(
                    f"{key}={[width, height]} is not a multiple of vision.image_size={size} on both sides"
                )
            if (width, height) in pairs:
                raise ShapeError(f"{key}={[width, height]} is a duplicate")
            pairs.append((width, height))
        if not pairs:
            raise ShapeError("candidate_resolutions is empty")
        if pairs[0] != (size, size):
            raise ShapeError(
                f"candidate_resolutions[0]={list(pairs[0])} must be [{size}, {size}] "
                "(image_size is taken from the first candidate)"
            )
        return tuple(pairs)

    # convenience for the tiling and layout code --------------------------------------------------

    @property
    def image_size(self) -> int:
        """Side of one tile in pixels (384); equals candidate_resolutions[0][0]."""
        return self.vision.image_size

    @property
    def patch_size(self) -> int:
        """ViT patch side in pixels (14)."""
        return self.vision.patch_size

    @property
    def downsample_ratio(self) -> int:
        """Pixel-unshuffle factor of the adaptor (2)."""
        return self.projector.downsample_ratio

    @property
    def pad_color(self) -> tuple[int, int, int]:
        """RGB fill for padding, truncated as the official processor does: (127, 127, 127) for mean 0.5."""
        return tuple(int(m * 255) for m in self.image_mean)  # type: ignore[return-value]

    # conversions --------------------------------------------------------------------------------

    def with_special_tokens(self, special_tokens: SpecialTokens | None) -> ModelShape:
        """A copy with ``special_tokens`` replaced (validated against the vocabulary)."""
        return dataclasses.replace(self, special_tokens=special_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Our shape-file layout (plain JSON types); loading a file holding it gives back an equal shape."""
        special = None if self.special_tokens is None else dataclasses.asdict(self.special_tokens)
        return {
            "name": self.name,
            "description": self.description,
            "vision": dataclasses.asdict(self.vision),
            "projector": dataclasses.asdict(self.projector),
            "language": dataclasses.asdict(self.language),
            "candidate_resolutions": [list(pair) for pair in self.candidate_resolutions],
            "tile_tag": self.tile_tag,
            "global_view_pos": self.global_view_pos,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
            "special_tokens": special,
            "max_seq_len": self.max_seq_len,
        }

    def to_official_config(self, include_special_tokens: bool = False) -> dict[str, Any]:
        """The official ``config.json`` layout (what ``DeepseekVLV2Config(**d)`` takes), every language key
        explicit.

        The official layout has no place for ``image_mean``/``image_std`` (they live in
        processor_config.json), ``max_seq_len`` or ``description``; :func:`from_official_config` gives those
        their defaults. Special token ids are left out unless ``include_special_tokens`` (then as a top-level
        ``special_token_ids`` object, which :func:`from_official_config` reads); bos/eos ids go into
        ``language_config`` whenever they are known.
        """
        language: dict[str, Any] = {"model_type": "deepseek_v2", "architectures": ["DeepseekV2ForCausalLM"]}
        language.update(dataclasses.asdict(self.language))
        # The official code treats n_shared_experts=None as "no shared experts"; 0 would build an empty MLP.
        if language["n_shared_experts"] == 0:
            language["n_shared_experts"] = None
        if self.special_tokens is not None:
            language["bos_token_id"] = self.special_tokens.bos
            language["eos_token_id"] = self.special_tokens.eos
        config: dict[str, Any] = {
            "architectures": ["DeepseekVLV2ForCausalLM"],
            "model_type": "deepseek_vl_v2",
            "tile_tag": self.tile_tag,
            "global_view_pos": self.global_view_pos,
            "candidate_resolutions": [list(pair) for pair in self.candidate_resolutions],
            "vision_config": {
                "model_type": "vision",
                **dataclasses.asdict(self.vision),
                "class_token": False,
            },
            "projector_config": {"model_type": "mlp_projector", **dataclasses.asdict(self.projector)},
            "language_config": language,
        }
        if include_special_tokens and self.special_tokens is not None:
            config["special_token_ids"] = self.special_tokens.as_dict()
        return config

    def fingerprint(self) -> str:
        """First 16 hex digits of the sha256 of the canonical JSON of :meth:`to_dict` (sorted keys, no
        spaces), leaving out ``description`` so that rewording prose does not change a shape's identity."""
        data = self.to_dict()
        del data["description"]
        canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _rgb_triple(key: str, value: Any, *, lo: float, hi: float) -> tuple[float, float, float]:
    if isinstance(value, str | bytes) or not hasattr(value, "__len__") or len(value) != 3:
        raise ShapeError(f"{key}={value!r} must be three numbers (R, G, B)")
    out = []
    for v in value:
        if not (_is_int(v) or isinstance(v, float)) or not math.isfinite(v):
            raise ShapeError(f"{key}={list(value)!r} must be three finite numbers")
        out.append(float(v))
    if key == "image_std" and min(out) <= 0:
        raise ShapeError(f"{key}={out} must be positive")
    if min(out) < lo or max(out) > hi:
        raise ShapeError(f"{key}={out} must lie in [{lo}, {hi}]")
    return tuple(out)  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------------
# our shape-file layout


_TOP_LEVEL_REQUIRED = (
    "vision",
    "projector",
    "language",
    "candidate_resolutions",
    "tile_tag",
    "global_view_pos",
    "image_mean",
    "image_std",
    "max_seq_len",
)
_TOP_LEVEL_OPTIONAL = ("name", "description", "special_tokens")


def _section(cls: type, data: Any, prefix: str) -> Any:
    """Build one section dataclass from a JSON object that must hold exactly its fields."""
    if not isinstance(data, Mapping):
        raise ShapeError(f"{prefix} must be an object, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ShapeError(f"unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}")
    missing = [name for name in names if name not in data]
    if missing:
        raise ShapeError(f"{prefix}.{missing[0]} is missing")
    return cls(**data)


def from_dict(data: Mapping[str, Any], *, name: str | None = None) -> ModelShape:
    """Build a shape from our shape-file layout (see :meth:`ModelShape.to_dict`). Unknown keys are errors.

    ``name`` is used when the data has no ``name`` key (``load`` passes the file's stem).
    """
    if not isinstance(data, Mapping):
        raise ShapeError(f"a shape must be a JSON object, got {type(data).__name__}")
    if "language_config" in data:
        raise ShapeError("this is an official config.json layout: use from_official_config")
    unknown = [key for key in data if key not in _TOP_LEVEL_REQUIRED + _TOP_LEVEL_OPTIONAL]
    if unknown:
        raise ShapeError(f"unknown top-level key(s) {', '.join(map(repr, unknown))}")
    missing = [key for key in _TOP_LEVEL_REQUIRED if key not in data]
    if missing:
        raise ShapeError(f"{missing[0]} is missing")
    shape_name = data.get("name", name)
    if shape_name is None:
        raise ShapeError("name is missing")
    special = data.get("special_tokens")
    return ModelShape(
        name=shape_name,
        description=data.get("description", ""),
        vision=_section(VisionShape, data["vision"], "vision"),
        projector=_section(ProjectorShape, data["projector"], "projector"),
        language=_section(LanguageShape, data["language"], "language"),
        candidate_resolutions=data["candidate_resolutions"],
        tile_tag=data["tile_tag"],
        global_view_pos=data["global_view_pos"],
        image_mean=data["image_mean"],
        image_std=data["image_std"],
        special_tokens=None if special is None else SpecialTokens.from_dict(special),
        max_seq_len=data["max_seq_len"],
    )


# ----------------------------------------------------------------------------------------------------
# the official config.json layout


# Defaults of the official config classes (deepseek_vl2/models/modeling_deepseek_vl_v2.py VisionEncoderConfig
# and MlpProjectorConfig; configuration_deepseek.py DeepseekV2Config), applied to keys a config.json omits.
_OFFICIAL_VISION_DEFAULTS: dict[str, Any] = {
    "model_name": "siglip_large_patch16_384",
    "image_size": 384,
    "patch_size": 16,
    "width": 1024,
    "layers": 24,
    "heads": 16,
    "mlp_ratio": 4,
    "global_pool": "map",
    "ignore_head": True,
}
_OFFICIAL_PROJECTOR_DEFAULTS: dict[str, Any] = {
    "projector_type": "downsample_mlp_gelu",
    "input_dim": 1152,
    "n_embed": 2048,
    "depth": 2,
    "mlp_ratio": 1,
    "downsample_ratio": 2,
    "token_pooling": False,
}
_OFFICIAL_LANGUAGE_DEFAULTS: dict[str, Any] = {
    "vocab_size": 102400,
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "moe_intermediate_size": 1407,
    "num_hidden_layers": 30,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "n_shared_experts": None,
    "n_routed_experts": None,
    "num_experts_per_tok": None,
    "first_k_dense_replace": 0,
    "moe_layer_freq": 1,
    "n_group": None,
    "topk_group": None,
    "topk_method": "greedy",
    "scoring_func": "softmax",
    "norm_topk_prob": False,
    "routed_scaling_factor": 1.0,
    "use_mla": True,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 2048,
    "attention_bias": False,
    "hidden_act": "silu",
    "aux_loss_alpha": 0.001,
    "seq_aux": True,
    "tie_word_embeddings": False,
}
_OFFICIAL_PREFIXES = (
    ("vision.", "vision_config."),
    ("projector.", "projector_config."),
    ("language.", "language_config."),
)


def _official_sub(config: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    sub = config.get(key, {})
    if not isinstance(sub, Mapping):
        raise ShapeError(f"{key} must be an object, got {type(sub).__name__}")
    return sub


def _official_language(raw: Mapping[str, Any]) -> LanguageShape:
    values = {key: raw.get(key, default) for key, default in _OFFICIAL_LANGUAGE_DEFAULTS.items()}
    if raw.get("rope_scaling") is not None:
        raise ShapeError(
            f"language_config.rope_scaling={raw['rope_scaling']!r} is not supported (VL2 sets none)"
        )
    for key in ("n_routed_experts", "num_experts_per_tok"):
        if values[key] is None:
            raise ShapeError(
                f"language_config.{key} is missing or null: a dense-only language model is not supported"
            )
    # None in the official config means: no shared experts / one expert group / key-value heads = heads.
    if values["n_shared_experts"] is None:
        values["n_shared_experts"] = 0
    for key in ("n_group", "topk_group"):
        if values[key] is None:
            values[key] = 1
    if raw.get("num_key_value_heads", 0) is None:
        values["num_key_value_heads"] = values["num_attention_heads"]
    if not values["use_mla"]:
        # MHA configs (e.g. tiny) may carry null for the unused MLA dimensions.
        for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
            if values[key] is None:
                values[key] = 0
    return LanguageShape(**values)


def from_official_config(config: Mapping[str, Any], name: str = "official") -> ModelShape:
    """Build a shape from a dict in the official ``config.json`` layout (``vision_config``,
    ``projector_config``, ``language_config``, ``candidate_resolutions``, ``tile_tag``, ``global_view_pos``).

    Keys the official classes know but the dict leaves out take the official class defaults (for the language
    model those of ``DeepseekV2Config``, e.g. num_hidden_layers 30, num_attention_heads 32, qk dims
    128/64/128, kv_lora_rank 512, q_lora_rank 1536, max_position_embeddings 2048). Other keys (``model_type``,
    ``torch_dtype``, ...) are ignored. ``candidate_resolutions`` is required. Optional top-level extras that
    are not official: ``special_token_ids`` (keyed as in :meth:`SpecialTokens.as_dict` or by field name),
    ``image_mean``, ``image_std``, ``max_seq_len`` (default 4096).
    """
    try:
        return _from_official_config(config, name)
    except ShapeError as error:
        message = str(error)
        for ours, official in _OFFICIAL_PREFIXES:
            message = re.sub(rf"(?<![\w.]){re.escape(ours)}", official, message)
        raise ShapeError(message) from None


def _from_official_config(config: Mapping[str, Any], name: str) -> ModelShape:
    if not isinstance(config, Mapping):
        raise ShapeError(f"an official config must be a JSON object, got {type(config).__name__}")
    if "language_config" not in config:
        raise ShapeError("language_config is missing: not an official config.json layout")
    vision_raw = _official_sub(config, "vision_config")
    projector_raw = _official_sub(config, "projector_config")
    language_raw = _official_sub(config, "language_config")
    if vision_raw.get("class_token", False):
        raise ShapeError("vision_config.class_token=true is not supported (SigLIP has no class token)")
    if "candidate_resolutions" not in config:
        raise ShapeError("candidate_resolutions is missing")
    special = config.get("special_token_ids")
    return ModelShape(
        name=name,
        vision=VisionShape(**{k: vision_raw.get(k, d) for k, d in _OFFICIAL_VISION_DEFAULTS.items()}),
        projector=ProjectorShape(
            **{k: projector_raw.get(k, d) for k, d in _OFFICIAL_PROJECTOR_DEFAULTS.items()}
        ),
        language=_official_language(language_raw),
        candidate_resolutions=config["candidate_resolutions"],
        tile_tag=config.get("tile_tag", "2D"),
        global_view_pos=config.get("global_view_pos", "head"),
        image_mean=config.get("image_mean", (0.5, 0.5, 0.5)),
        image_std=config.get("image_std", (0.5, 0.5, 0.5)),
        special_tokens=(
            None if special is None else SpecialTokens.from_dict(special, prefix="special_token_ids.")
        ),
        max_seq_len=config.get("max_seq_len", 4096),
    )


# ----------------------------------------------------------------------------------------------------
# loading


def load(name_or_path: str | os.PathLike[str]) -> ModelShape:
    """Load a shape: a variant name (``tiny``, ``small``, ``base``, ``toy``), a path to one of our shape JSON
    files, or a path to an official ``config.json`` (recognised by its ``language_config`` key)."""
    if isinstance(name_or_path, str) and name_or_path in VARIANTS:
        path = SHAPES_DIR / f"{name_or_path}.json"
    elif isinstance(name_or_path, os.PathLike) or _looks_like_path(name_or_path):
        path = Path(name_or_path)
    else:
        raise ShapeError(f"unknown model shape {name_or_path!r}; {_KNOWN}")
    if not path.is_file():
        # A mistyped variant name arrives here as a path (a config resolves names against its folder).
        raise ShapeError(f"shape file not found: {path}; {_KNOWN}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise ShapeError(f"{path}: cannot read: {error}") from error
    except json.JSONDecodeError as error:
        raise ShapeError(f"{path}: not valid JSON: {error}") from error
    try:
        if isinstance(data, Mapping) and "language_config" in data:
            return from_official_config(data)
        return from_dict(data, name=path.stem)
    except ShapeError as error:
        raise ShapeError(f"{path}: {error}") from None


def _looks_like_path(value: Any) -> bool:
    if not isinstance(value, str):
        raise ShapeError(f"load() takes a variant name or a path, got {type(value).__name__}")
    return value.endswith(".json") or "/" in value or os.sep in value or Path(value).exists()

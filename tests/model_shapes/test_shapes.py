"""Tests for model_shapes: published values, parameter counts, round trips, official configs, validation."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import model_shapes
from model_shapes import (
    LanguageShape,
    ModelShape,
    ProjectorShape,
    ShapeError,
    SpecialTokens,
    VisionShape,
)

REPO = Path(__file__).resolve().parents[2]
GOLDEN_MODEL = REPO / "tests" / "golden" / "model" / "public_mla"
GOLDEN_CONFIG = GOLDEN_MODEL / "config.json"
GOLDEN_META = GOLDEN_MODEL / "meta.json"

# spec §1: every (m*384, n*384) with m*n <= 9, (width, height), in the [HFconv] order.
CANDIDATES = [
    (384, 384),
    (384, 768), (768, 384),
    (384, 1152), (1152, 384),
    (384, 1536), (1536, 384), (768, 768),
    (384, 1920), (1920, 384),
    (384, 2304), (2304, 384), (768, 1152), (1152, 768),
    (384, 2688), (2688, 384),
    (384, 3072), (3072, 384), (768, 1536), (1536, 768),
    (384, 3456), (3456, 384), (1152, 1152),
]  # fmt: skip

# spec §4 table (plus the shared rows above it).
LANGUAGE = {
    "tiny": dict(
        vocab_size=129280, hidden_size=1280, num_hidden_layers=12, num_attention_heads=10,
        num_key_value_heads=10,
        use_mla=False, intermediate_size=6848, moe_intermediate_size=896, n_routed_experts=64,
        n_shared_experts=2, num_experts_per_tok=6, topk_method="greedy", scoring_func="softmax", n_group=1,
        topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0, max_position_embeddings=4096,
    ),
    "small": dict(
        vocab_size=102400, hidden_size=2048, num_hidden_layers=27, num_attention_heads=16,
        num_key_value_heads=16,
        use_mla=True, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, intermediate_size=10944, moe_intermediate_size=1408, n_routed_experts=64,
        n_shared_experts=2, num_experts_per_tok=6, topk_method="greedy", scoring_func="softmax", n_group=1,
        topk_group=1, norm_topk_prob=False, routed_scaling_factor=1.0, max_position_embeddings=4096,
    ),
    "base": dict(
        vocab_size=129280, hidden_size=2560, num_hidden_layers=30, num_attention_heads=32,
        num_key_value_heads=32,
        use_mla=True, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64,
        v_head_dim=128, intermediate_size=12288, moe_intermediate_size=1536, n_routed_experts=72,
        n_shared_experts=2, num_experts_per_tok=6, topk_method="noaux_tc", scoring_func="sigmoid", n_group=1,
        topk_group=1, norm_topk_prob=True, routed_scaling_factor=2.0, max_position_embeddings=4096,
    ),
}  # fmt: skip
LANGUAGE_SHARED = dict(
    first_k_dense_replace=1, moe_layer_freq=1, rms_norm_eps=1e-6, rope_theta=10000.0, attention_bias=False,
    hidden_act="silu", aux_loss_alpha=0.001, seq_aux=True, tie_word_embeddings=False,
)  # fmt: skip
N_EMBED = {"tiny": 1280, "small": 2048, "base": 2560}
V3_IDS = dict(bos=0, eos=1, pad=2, image=128815, ref_start=128816, ref_end=128817, det_start=128818,
              det_end=128819, grounding=128820, user=128821, assistant=128822)  # fmt: skip
SPECIAL = {
    "tiny": V3_IDS,
    "base": V3_IDS,
    "small": dict(bos=100000, eos=100001, pad=100002, image=100003, ref_start=100004, ref_end=100005,
                  det_start=100006, det_end=100007, grounding=100008, user=100009, assistant=100010),
}  # fmt: skip
# spec §4: totals in billions; LM activated parameters excluding the input embedding.
TOTAL_B = {"tiny": 3.371, "small": 16.148, "base": 27.480}
ACTIVATED_LM_B = {"tiny": 0.574, "small": 2.451, "base": 4.124}
REAL = ("tiny", "small", "base")


# ----------------------------------------------------------------------------------------------------
# parameter counting from the official checkpoint layout (spec §4, "every parameter name and shape")


def _linear(out_features: int, in_features: int, bias: bool = True) -> int:
    return out_features * in_features + (out_features if bias else 0)


def vision_parameters(v: VisionShape) -> tuple[int, int]:
    """(ViT parameters, unused attention-pool head parameters)."""
    d, f, p = v.width, v.mlp_hidden, v.patch_size
    block = 2 * 2 * d + _linear(3 * d, d) + _linear(d, d) + _linear(f, d) + _linear(d, f)
    vit = d * 3 * p * p + d + v.grid**2 * d + v.layers * block + 2 * d
    pool = d + _linear(d, d) + _linear(2 * d, d) + _linear(d, d) + 2 * d + _linear(f, d) + _linear(d, f)
    return vit, pool


def attention_parameters(lm: LanguageShape) -> int:
    h, n = lm.hidden_size, lm.num_attention_heads
    if not lm.use_mla:
        hd = lm.head_dim
        return 3 * _linear(n * hd, h, bias=False) + _linear(h, n * hd, bias=False)
    qk = lm.qk_nope_head_dim + lm.qk_rope_head_dim
    if lm.q_lora_rank is None:
        q = _linear(n * qk, h, bias=False)
    else:
        q = _linear(lm.q_lora_rank, h, False) + lm.q_lora_rank + _linear(n * qk, lm.q_lora_rank, False)
    kv = (
        _linear(lm.kv_lora_rank + lm.qk_rope_head_dim, h, False)
        + lm.kv_lora_rank
        + _linear(n * (lm.qk_nope_head_dim + lm.v_head_dim), lm.kv_lora_rank, False)
    )
    return q + kv + _linear(h, n * lm.v_head_dim, bias=False)


def language_parameters(lm: LanguageShape, activated: bool = False) -> int:
    """All LM parameters, or (activated) those one token uses, without the input embedding."""
    h = lm.hidden_size
    swiglu = 3 * h  # gate, up, down per unit of intermediate width
    total = (0 if activated else lm.vocab_size * h) + h + lm.vocab_size * h  # embed, final norm, lm_head
    for layer in range(lm.num_hidden_layers):
        total += 2 * h + attention_parameters(lm)
        if not lm.is_moe_layer(layer):
            total += swiglu * lm.intermediate_size
            continue
        experts = lm.num_experts_per_tok if activated else lm.n_routed_experts
        total += lm.n_routed_experts * h  # gate.weight
        total += lm.n_routed_experts if lm.topk_method == "noaux_tc" else 0  # e_score_correction_bias
        total += experts * swiglu * lm.moe_intermediate_size
        total += swiglu * lm.n_shared_experts * lm.moe_intermediate_size
    return total


def total_parameters(shape: ModelShape) -> int:
    vit, pool = vision_parameters(shape.vision)
    p, r = shape.projector, shape.projector.downsample_ratio
    projector = _linear(p.n_embed, p.input_dim * r * r) + _linear(p.n_embed, p.n_embed)
    newline_and_separator = 2 * shape.language.hidden_size
    return vit + pool + projector + newline_and_separator + language_parameters(shape.language)


# ----------------------------------------------------------------------------------------------------
# published values


def test_variants() -> None:
    assert model_shapes.VARIANTS == ("tiny", "small", "base", "toy")
    assert issubclass(ShapeError, ValueError)


@pytest.mark.parametrize("variant", REAL)
def test_published_values(variant: str) -> None:
    shape = model_shapes.load(variant)
    assert shape.name == variant
    assert shape.vision == VisionShape(
        model_name="siglip_so400m_patch14_384", image_size=384, patch_size=14, width=1152, layers=27,
        heads=16, mlp_ratio=3.7362, global_pool="map", ignore_head=True,
    )  # fmt: skip
    assert (shape.vision.mlp_hidden, shape.vision.grid, shape.vision.head_dim) == (4304, 27, 72)
    assert shape.projector == ProjectorShape(
        projector_type="downsample_mlp_gelu", input_dim=1152, n_embed=N_EMBED[variant], depth=2, mlp_ratio=1,
        downsample_ratio=2, token_pooling=False,
    )  # fmt: skip
    language = dataclasses.asdict(shape.language)
    for key, value in {**LANGUAGE[variant], **LANGUAGE_SHARED}.items():
        assert language[key] == value, key
        assert type(language[key]) is type(value), key
    assert shape.candidate_resolutions == tuple(CANDIDATES)
    assert (shape.tile_tag, shape.global_view_pos) == ("2D", "head")
    assert shape.image_mean == shape.image_std == (0.5, 0.5, 0.5)
    assert shape.special_tokens == SpecialTokens(**SPECIAL[variant])
    assert shape.max_seq_len == 4096
    assert (shape.image_size, shape.patch_size, shape.downsample_ratio) == (384, 14, 2)
    assert shape.image_size == shape.candidate_resolutions[0][0]
    assert shape.pad_color == (127, 127, 127)
    assert shape.description


def test_head_dims() -> None:
    tiny, small, toy = (model_shapes.load(v).language for v in ("tiny", "small", "toy"))
    assert (tiny.head_dim, tiny.q_head_dim) == (128, 128)
    assert (small.head_dim, small.q_head_dim) == (192, 192)
    assert toy.q_head_dim == 24
    assert [tiny.is_moe_layer(layer) for layer in range(3)] == [False, True, True]


@pytest.mark.parametrize("variant", REAL)
def test_parameter_count_matches_spec(variant: str) -> None:
    shape = model_shapes.load(variant)
    assert round(total_parameters(shape) / 1e9, 3) == TOTAL_B[variant]
    assert round(language_parameters(shape.language, activated=True) / 1e9, 3) == ACTIVATED_LM_B[variant]
    vit, pool = vision_parameters(shape.vision)
    assert (round(vit / 1e9, 3), round(pool / 1e9, 3)) == (0.413, 0.015)


def test_toy() -> None:
    toy = model_shapes.load("toy")
    assert toy.candidate_resolutions == tuple(CANDIDATES)
    assert (toy.image_size, toy.patch_size, toy.downsample_ratio, toy.vision.grid) == (384, 14, 2, 27)
    assert (toy.vision.width, toy.vision.layers, toy.vision.heads) == (64, 2, 4)
    lm = toy.language
    assert (lm.hidden_size, lm.num_hidden_layers, lm.first_k_dense_replace, lm.use_mla) == (64, 3, 1, True)
    assert (lm.q_lora_rank, lm.kv_lora_rank, lm.qk_nope_head_dim, lm.qk_rope_head_dim, lm.v_head_dim) == (
        24, 32, 16, 8, 16,
    )  # fmt: skip
    assert (lm.num_attention_heads, lm.n_routed_experts, lm.n_shared_experts) == (4, 8, 2)
    assert lm.num_experts_per_tok == 2
    assert (lm.topk_method, lm.scoring_func, lm.intermediate_size, lm.moe_intermediate_size) == (
        "greedy", "softmax", 160, 32,
    )  # fmt: skip
    assert toy.projector.n_embed == 64
    assert toy.max_seq_len == 4096
    assert total_parameters(toy) < 3_000_000


def test_toy_special_ids_at_top_of_vocab() -> None:
    toy = model_shapes.load("toy")
    assert toy.language.vocab_size == 8192
    tokens = toy.special_tokens
    assert tokens is not None
    assert (tokens.bos, tokens.eos, tokens.pad) == (0, 1, 2)
    ids = tokens.as_dict()
    others = [ids[t] for t in ("<image>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<|grounding|>",
                               "<|User|>", "<|Assistant|>")]  # fmt: skip
    assert others == list(range(8184, 8192))


def test_toy_language_is_the_golden_language_with_a_bigger_vocab() -> None:
    toy = model_shapes.load("toy")
    golden = model_shapes.load(GOLDEN_CONFIG)
    assert dataclasses.replace(golden.language, vocab_size=8192) == toy.language
    assert dataclasses.replace(golden.vision, model_name=toy.vision.model_name) == toy.vision
    assert golden.projector == toy.projector


def test_special_tokens_as_dict() -> None:
    tokens = model_shapes.load("small").special_tokens
    assert tokens is not None
    assert tokens.as_dict() == {
        "bos": 100000, "eos": 100001, "pad": 100002, "<image>": 100003, "<|ref|>": 100004, "<|/ref|>": 100005,
        "<|det|>": 100006, "<|/det|>": 100007, "<|grounding|>": 100008, "<|User|>": 100009,
        "<|Assistant|>": 100010,
    }  # fmt: skip
    assert SpecialTokens.from_dict(tokens.as_dict()) == tokens


@pytest.mark.parametrize("variant", model_shapes.VARIANTS)
def test_shape_files_are_canonical(variant: str) -> None:
    """Each file holds exactly to_dict() of its shape: no stray or missing keys, no official layout."""
    data = json.loads((REPO / "model_shapes" / "shapes" / f"{variant}.json").read_text(encoding="utf-8"))
    assert "language_config" not in data
    assert data == model_shapes.load(variant).to_dict()


def test_shapes_are_frozen() -> None:
    shape = model_shapes.load("toy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.max_seq_len = 8  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        shape.language.vocab_size = 8  # type: ignore[misc]


# ----------------------------------------------------------------------------------------------------
# round trips, official configs, fingerprints


@pytest.mark.parametrize("variant", model_shapes.VARIANTS)
def test_to_dict_round_trip(variant: str, tmp_path: Path) -> None:
    shape = model_shapes.load(variant)
    path = tmp_path / "copy.json"
    path.write_text(json.dumps(shape.to_dict()), encoding="utf-8")
    again = model_shapes.load(path)
    assert again == shape
    assert again.description == shape.description
    assert again.fingerprint() == shape.fingerprint()
    assert model_shapes.load(str(path)) == shape


@pytest.mark.parametrize("variant", model_shapes.VARIANTS)
def test_official_config_round_trip(variant: str, tmp_path: Path) -> None:
    shape = model_shapes.load(variant)
    official = shape.to_official_config()
    assert "special_token_ids" not in official
    json.dumps(official)  # plain JSON types
    assert model_shapes.from_official_config(official, name=variant) == shape.with_special_tokens(None)
    assert model_shapes.from_official_config(official).name == "official"
    with_ids = shape.to_official_config(include_special_tokens=True)
    assert model_shapes.from_official_config(with_ids, name=variant) == shape
    path = tmp_path / "config.json"
    path.write_text(json.dumps(official), encoding="utf-8")
    loaded = model_shapes.load(path)
    assert loaded.special_tokens is None
    assert dataclasses.replace(loaded, name=variant) == shape.with_special_tokens(None)


def test_official_defaults_fill_missing_language_keys() -> None:
    """Base's official file leaves out layers, heads and qk dims: the DeepseekV2Config defaults apply."""
    base = model_shapes.load("base")
    official = base.to_official_config()
    absent = (
        "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "qk_nope_head_dim",
        "qk_rope_head_dim", "v_head_dim", "kv_lora_rank", "rms_norm_eps", "rope_theta", "hidden_act",
        "aux_loss_alpha", "seq_aux", "attention_bias", "tie_word_embeddings", "moe_layer_freq",
    )  # fmt: skip
    for key in absent:
        del official["language_config"][key]
    assert model_shapes.from_official_config(official, name="base") == base.with_special_tokens(None)


def test_official_nulls() -> None:
    """Null MLA dims of an MHA config and null expert-group / shared-expert settings keep their official
    meaning."""
    official = model_shapes.load("tiny").to_official_config()
    language = official["language_config"]
    language.update(kv_lora_rank=None, qk_nope_head_dim=None, n_group=None, topk_group=None,
                    n_shared_experts=None, num_key_value_heads=None)  # fmt: skip
    shape = model_shapes.from_official_config(official)
    assert shape.language.kv_lora_rank == 0
    assert (shape.language.n_group, shape.language.topk_group, shape.language.n_shared_experts) == (1, 1, 0)
    assert shape.language.num_key_value_heads == 10


def test_golden_config_loads() -> None:
    shape = model_shapes.load(GOLDEN_CONFIG)
    assert shape.name == "official"
    assert shape.special_tokens is None
    assert (shape.vision.width, shape.vision.layers, shape.vision.heads, shape.vision.grid) == (64, 2, 4, 27)
    assert shape.vision.mlp_hidden == 239
    assert shape.language.vocab_size == 400
    assert shape.language.q_lora_rank == 24
    assert shape.candidate_resolutions == tuple(CANDIDATES)
    raw = json.loads(GOLDEN_CONFIG.read_text(encoding="utf-8"))
    assert model_shapes.from_official_config(raw) == shape


def test_golden_config_with_special_token_ids() -> None:
    raw = json.loads(GOLDEN_CONFIG.read_text(encoding="utf-8"))
    ids = json.loads(GOLDEN_META.read_text(encoding="utf-8"))["special_token_ids"]
    shape = model_shapes.from_official_config({**raw, "special_token_ids": ids}, name="public_mla")
    assert shape.name == "public_mla"
    assert shape.special_tokens is not None
    assert shape.special_tokens.image == 390
    assert shape.special_tokens.as_dict() == ids


def test_fingerprint() -> None:
    prints = {v: model_shapes.load(v).fingerprint() for v in model_shapes.VARIANTS}
    assert len(set(prints.values())) == len(prints)
    for variant, value in prints.items():
        assert len(value) == 16 and int(value, 16) >= 0
        assert model_shapes.load(variant).fingerprint() == value
    toy = model_shapes.load("toy")
    assert dataclasses.replace(toy, description="reworded").fingerprint() == prints["toy"]
    assert dataclasses.replace(toy, max_seq_len=2048).fingerprint() != prints["toy"]
    assert toy.with_special_tokens(None).fingerprint() != prints["toy"]


def test_with_special_tokens_validates() -> None:
    toy = model_shapes.load("toy")
    small_ids = model_shapes.load("small").special_tokens
    assert small_ids is not None
    with pytest.raises(ShapeError, match="outside"):
        toy.with_special_tokens(small_ids)
    assert toy.with_special_tokens(None).special_tokens is None
    assert toy.special_tokens is not None


# ----------------------------------------------------------------------------------------------------
# validation: every error names its key


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


def _delete(path: str) -> Callable[[dict[str, Any]], None]:
    keys = path.split(".")

    def edit(data: dict[str, Any]) -> None:
        target = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]

    return edit


def _edits(*edits: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def edit(data: dict[str, Any]) -> None:
        for one in edits:
            one(data)

    return edit


def _append_resolution(pair: list[int]) -> Callable[[dict[str, Any]], None]:
    return lambda data: data["candidate_resolutions"].append(pair)


BAD_SHAPES = [
    ("unknown top-level key", _set("colour", "red"), "colour"),
    ("unknown vision key", _set("vision.dropout", 0.1), "vision.dropout"),
    ("unknown language key", _set("language.ep_size", 1), "language.ep_size"),
    ("missing language key", _delete("language.vocab_size"), "language.vocab_size"),
    ("missing top-level key", _delete("max_seq_len"), "max_seq_len"),
    ("string for int", _set("vision.width", "64"), "vision.width"),
    ("bool for int", _set("language.num_hidden_layers", True), "language.num_hidden_layers"),
    ("float for int", _set("projector.depth", 2.0), "projector.depth"),
    ("int for bool", _set("language.use_mla", 1), "language.use_mla"),
    ("section not an object", _set("projector", [64]), "projector"),
    ("zero layers", _set("vision.layers", 0), "vision.layers"),
    ("negative vocab", _set("language.vocab_size", -1), "language.vocab_size"),
    ("zero eps", _set("language.rms_norm_eps", 0), "language.rms_norm_eps"),
    ("width not divisible by heads", _set("vision.heads", 5), "vision.heads"),
    ("patch bigger than image", _set("vision.patch_size", 400), "vision.patch_size"),
    ("pool not map", _set("vision.global_pool", "avg"), "vision.global_pool"),
    ("head used", _set("vision.ignore_head", False), "vision.ignore_head"),
    ("no candidates", _set("candidate_resolutions", []), "candidate_resolutions"),
    ("candidate not a multiple", _append_resolution([384, 500]), "candidate_resolutions[23]"),
    ("candidate not a pair", _append_resolution([384]), "candidate_resolutions[23]"),
    ("duplicate candidate", _append_resolution([768, 768]), "candidate_resolutions[23]"),
    (
        "first candidate not the tile",
        lambda d: d["candidate_resolutions"].reverse(),
        "candidate_resolutions[0]",
    ),
    ("1D tile tag", _set("tile_tag", "1D"), "tile_tag"),
    ("global view at the tail", _set("global_view_pos", "tail"), "global_view_pos"),
    ("projector input", _set("projector.input_dim", 65), "projector.input_dim"),
    ("projector output", _set("projector.n_embed", 128), "projector.n_embed"),
    ("projector type", _set("projector.projector_type", "mlp_gelu"), "projector.projector_type"),
    ("token pooling", _set("projector.token_pooling", True), "projector.token_pooling"),
    (
        "MHA heads do not divide hidden",
        _edits(
            _set("language.use_mla", False),
            _set("language.num_attention_heads", 3),
            _set("language.num_key_value_heads", 3),
        ),
        "language.num_attention_heads",
    ),
    (
        "MHA with GQA",
        _edits(_set("language.use_mla", False), _set("language.num_key_value_heads", 2)),
        "language.num_key_value_heads",
    ),
    ("odd rope dim", _set("language.qk_rope_head_dim", 7), "language.qk_rope_head_dim"),
    ("MLA without latent", _set("language.kv_lora_rank", 0), "language.kv_lora_rank"),
    ("zero q-LoRA rank", _set("language.q_lora_rank", 0), "language.q_lora_rank"),
    (
        "too many experts per token",
        _set("language.num_experts_per_tok", 10),
        "language.num_experts_per_tok=10 exceeds n_routed_experts=8",
    ),
    ("no experts per token", _set("language.num_experts_per_tok", 0), "language.num_experts_per_tok"),
    ("groups do not divide experts", _set("language.n_group", 3), "language.n_group"),
    ("topk_group above n_group", _set("language.topk_group", 2), "language.topk_group"),
    ("topk method", _set("language.topk_method", "topk"), "language.topk_method"),
    ("scoring func", _set("language.scoring_func", "relu"), "language.scoring_func"),
    ("activation", _set("language.hidden_act", "gelu"), "language.hidden_act"),
    ("too many dense layers", _set("language.first_k_dense_replace", 4), "language.first_k_dense_replace"),
    ("duplicate special id", _set("special_tokens.user", 8184), "special_tokens.user"),
    ("special id outside vocab", _set("special_tokens.assistant", 8192), "special_tokens.assistant"),
    ("negative special id", _set("special_tokens.bos", -1), "special_tokens.bos"),
    ("unknown special token", _set("special_tokens.think", 8000), "special_tokens.think"),
    ("missing special token", _delete("special_tokens.grounding"), "special_tokens.grounding"),
    ("zero max_seq_len", _set("max_seq_len", 0), "max_seq_len"),
    ("short image_mean", _set("image_mean", [0.5, 0.5]), "image_mean"),
    ("zero image_std", _set("image_std", [0.5, 0.0, 0.5]), "image_std"),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [case[1:] for case in BAD_SHAPES], ids=[case[0] for case in BAD_SHAPES]
)
def test_validation_names_the_key(
    edit: Callable[[dict[str, Any]], None], expected: str, tmp_path: Path
) -> None:
    data = copy.deepcopy(model_shapes.load("toy").to_dict())
    edit(data)
    with pytest.raises(ShapeError, match=expected.replace("[", r"\[").replace("]", r"\]")):
        model_shapes.from_dict(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ShapeError) as info:
        model_shapes.load(path)
    assert str(path) in str(info.value) and expected in str(info.value)


BAD_OFFICIAL = [
    ("rope scaling", _set("language_config.rope_scaling", {"type": "yarn"}), "language_config.rope_scaling"),
    ("dense-only LM", _delete("language_config.n_routed_experts"), "language_config.n_routed_experts"),
    ("class token", _set("vision_config.class_token", True), "vision_config.class_token"),
    ("no candidates", _delete("candidate_resolutions"), "candidate_resolutions"),
    ("MLA with null latent", _set("language_config.kv_lora_rank", None), "language_config.kv_lora_rank"),
    ("projector mismatch", _set("projector_config.input_dim", 32), "projector_config.input_dim"),
    (
        "too many experts per token",
        _set("language_config.num_experts_per_tok", 10),
        "language_config.num_experts_per_tok=10",
    ),
    ("bad special ids", _set("special_token_ids", {"<image>": 1}), "special_token_ids."),
]


@pytest.mark.parametrize(
    ("edit", "expected"), [case[1:] for case in BAD_OFFICIAL], ids=[case[0] for case in BAD_OFFICIAL]
)
def test_official_validation_names_the_key(edit: Callable[[dict[str, Any]], None], expected: str) -> None:
    data = json.loads(GOLDEN_CONFIG.read_text(encoding="utf-8"))
    edit(data)
    with pytest.raises(ShapeError, match=expected):
        model_shapes.from_official_config(data)


def test_unknown_variant_lists_the_known_ones() -> None:
    with pytest.raises(ShapeError) as info:
        model_shapes.load("huge")
    for variant in model_shapes.VARIANTS:
        assert variant in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ShapeError, match="not found"):
        model_shapes.load(tmp_path / "nope.json")
    with pytest.raises(ShapeError, match="not found"):
        model_shapes.load(str(tmp_path / "nope.json"))


def test_a_mistyped_variant_given_as_a_path_lists_the_known_ones(tmp_path: Path) -> None:
    """A config resolves `model_shape: tiniest` against its folder: the missing file's message still says
    which names exist."""
    with pytest.raises(ShapeError, match="shape file not found") as info:
        model_shapes.load(tmp_path / "tiniest")
    assert "known variants: tiny, small, base, toy" in str(info.value)


def test_invalid_json(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(ShapeError, match="not valid JSON"):
        model_shapes.load(path)
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ShapeError, match="JSON object"):
        model_shapes.load(path)


def test_from_dict_rejects_official_layout() -> None:
    raw = json.loads(GOLDEN_CONFIG.read_text(encoding="utf-8"))
    with pytest.raises(ShapeError, match="from_official_config"):
        model_shapes.from_dict(raw)


# ----------------------------------------------------------------------------------------------------
# import hygiene


def test_imports_nothing_heavy() -> None:
    code = "import json, sys, model_shapes; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    modules = json.loads(result.stdout)
    # torch too: the model code loads on first use, so the data side imports shapes cheaply.
    forbidden = ("pipeline", "jobs", "PIL", "yaml", "ray", "pyarrow", "schemas", "torch", "safetensors")
    loaded = [m for m in modules if m.split(".")[0] in forbidden]
    assert loaded == []

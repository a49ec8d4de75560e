"""The language model against a naive float64 reading of spec §4-§5, for every attention and routing variant
(tiny-like MHA, MLA with q_proj, MLA with q-LoRA, base-like MLA + noaux_tc with a non-zero bias, group-limited
greedy), on left-padded batches; MLA's absorbed and expanded forms; packed rows against separate documents."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import model_shapes

TOY = model_shapes.load("toy")

VARIANTS: dict[str, dict[str, object]] = {
    "mha_half_split_rope": dict(
        use_mla=False, q_lora_rank=None, kv_lora_rank=0, qk_nope_head_dim=0, qk_rope_head_dim=0, v_head_dim=0
    ),
    "mla_q_proj": dict(q_lora_rank=None, v_head_dim=12),
    "mla_q_lora": dict(),
    "mla_noaux_tc_bias": dict(
        q_lora_rank=None,
        topk_method="noaux_tc",
        scoring_func="sigmoid",
        norm_topk_prob=True,
        routed_scaling_factor=2.0,
        num_experts_per_tok=3,
    ),
    "group_limited_greedy": dict(topk_method="group_limited_greedy", n_group=4, topk_group=2),
}


def reduced_shape(**language: object) -> model_shapes.ModelShape:
    """The toy shape with a 256-token vocabulary and the given language-model changes."""
    changed = dataclasses.replace(TOY.language, vocab_size=256, **language)
    return dataclasses.replace(TOY, language=changed, special_tokens=None)


def randomize(model: model_shapes.DeepseekVL2, seed: int) -> model_shapes.DeepseekVL2:
    """Weights of a useful scale (the init's std 0.02 leaves every signal near zero): norms 1 + N(0, 0.1),
    biases N(0, 0.1), router biases N(0, 0.3), matrices N(0, 1/fan_in), positions N(0, 0.5), else N(0, 1)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64)
            if name.endswith("e_score_correction_bias"):
                value = 0.3 * noise
            elif "norm" in (name.split(".")[-2:-1] or [""])[0] and name.endswith("weight"):
                value = 1 + 0.1 * noise
            elif name.endswith("bias"):
                value = 0.1 * noise
            elif name.endswith("pos_embed"):
                value = 0.5 * noise
            elif tensor.dim() >= 2:
                value = noise / math.sqrt(tensor[0].numel())
            else:
                value = noise
            tensor.copy_(value)
    return model


# ----------------------------------------------------------------------------------------------------
# the naive reading: one unpadded sample, float64, loops where the spec speaks of heads and tokens


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * weight


def _rotate(x: torch.Tensor, theta: float, interleaved: bool) -> torch.Tensor:
    """x [seq, heads, d] at positions 0..seq-1, as complex numbers times e^(i·pos·theta^(-2j/d))."""
    d = x.shape[-1]
    angle = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * theta ** (
        -torch.arange(0, d, 2, dtype=torch.float64) / d
    )
    turn = torch.polar(torch.ones_like(angle), angle)[:, None, :]
    if interleaved:
        z = torch.complex(x[..., 0::2], x[..., 1::2]) * turn
        return torch.stack((z.real, z.imag), dim=-1).flatten(-2)
    z = torch.complex(x[..., : d // 2], x[..., d // 2 :]) * turn
    return torch.cat((z.real, z.imag), dim=-1)


def _causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Per head h: softmax(q_h·k_hᵀ·scale + causal mask)·v_h; q, k, v [seq, heads, d]."""
    seq = q.shape[0]
    future = torch.ones(seq, seq, dtype=torch.bool).triu(1)
    heads = []
    for h in range(q.shape[1]):
        scores = (q[:, h] @ k[:, h].T * scale).masked_fill(future, -math.inf)
        heads.append(scores.softmax(-1) @ v[:, h])
    return torch.stack(heads, dim=1)


def _attention(
    w: dict[str, torch.Tensor], x: torch.Tensor, shape: model_shapes.LanguageShape
) -> torch.Tensor:
    seq, n = x.shape[0], shape.num_attention_heads
    if not shape.use_mla:
        hd = shape.hidden_size // n
        q, k, v = ((x @ w[f"{p}_proj.weight"].T).view(seq, n, hd) for p in "qkv")
        q, k = _rotate(q, shape.rope_theta, False), _rotate(k, shape.rope_theta, False)
        return _causal_attention(q, k, v, hd**-0.5).reshape(seq, -1) @ w["o_proj.weight"].T
    dn, dr, dv, r = shape.qk_nope_head_dim, shape.qk_rope_head_dim, shape.v_head_dim, shape.kv_lora_rank
    if shape.q_lora_rank is None:
        q = x @ w["q_proj.weight"].T
    else:
        q_latent = _rms(x @ w["q_a_proj.weight"].T, w["q_a_layernorm.weight"], shape.rms_norm_eps)
        q = q_latent @ w["q_b_proj.weight"].T
    q = q.view(seq, n, dn + dr)
    kv_a = x @ w["kv_a_proj_with_mqa.weight"].T
    c = _rms(kv_a[:, :r], w["kv_a_layernorm.weight"], shape.rms_norm_eps)
    k_pe = _rotate(kv_a[:, None, r:], shape.rope_theta, True)  # one rope key for all heads
    kv = (c @ w["kv_b_proj.weight"].T).view(seq, n, dn + dv)
    k = torch.cat((kv[..., :dn], k_pe.expand(seq, n, dr)), dim=-1)
    q = torch.cat((q[..., :dn], _rotate(q[..., dn:], shape.rope_theta, True)), dim=-1)
    out = _causal_attention(q, k, kv[..., dn:], (dn + dr) ** -0.5)
    return out.reshape(seq, -1) @ w["o_proj.weight"].T


def _swiglu(w: dict[str, torch.Tensor], prefix: str, x: torch.Tensor) -> torch.Tensor:
    gate = x @ w[f"{prefix}gate_proj.weight"].T
    return (gate * torch.sigmoid(gate) * (x @ w[f"{prefix}up_proj.weight"].T)) @ w[
        f"{prefix}down_proj.weight"
    ].T


def _moe(
    w: dict[str, torch.Tensor], x: torch.Tensor, shape: model_shapes.LanguageShape, stats: dict[str, float]
) -> torch.Tensor:
    k, experts = shape.num_experts_per_tok, shape.n_routed_experts
    out = []
    for token in x:
        z = w["gate.weight"] @ token
        s = z.softmax(0) if shape.scoring_func == "softmax" else z.sigmoid()
        choice = s.clone()
        if shape.topk_method == "noaux_tc":
            choice = s + w["gate.e_score_correction_bias"]
            unbiased = set(s.argsort(descending=True)[:k].tolist())
            stats["bias_flips"] += unbiased != set(choice.argsort(descending=True)[:k].tolist())
        if shape.topk_method == "group_limited_greedy":
            size = experts // shape.n_group
            best = torch.stack([s[g * size : (g + 1) * size].max() for g in range(shape.n_group)])
            for g in best.argsort(descending=True)[shape.topk_group :].tolist():
                choice[g * size : (g + 1) * size] = 0.0
        ranked = choice.argsort(descending=True)
        stats["min_margin"] = min(stats["min_margin"], (choice[ranked[k - 1]] - choice[ranked[k]]).item())
        chosen = ranked[:k]
        weight = s[chosen]
        if shape.norm_topk_prob and k > 1:
            weight = weight / weight.sum()
        weight = weight * shape.routed_scaling_factor
        y = sum(
            wt * _swiglu(w, f"experts.{e}.", token) for wt, e in zip(weight, chosen.tolist(), strict=True)
        )
        if shape.n_shared_experts:
            y = y + _swiglu(w, "shared_experts.", token)
        out.append(y)
    return torch.stack(out)


def naive_logits(
    model: model_shapes.DeepseekVL2, embeds: torch.Tensor, stats: dict[str, float]
) -> torch.Tensor:
    """Logits [seq, vocab] of one unpadded sample's embeddings [seq, hidden], positions 0..seq-1."""
    shape = model.shape.language
    w = {name: t.double() for name, t in model.language.state_dict().items()}
    x = embeds.double()
    for layer in range(shape.num_hidden_layers):
        p = f"model.layers.{layer}."
        layer_w = {name[len(p) :]: t for name, t in w.items() if name.startswith(p)}
        attn_w = {
            name[len("self_attn.") :]: t for name, t in layer_w.items() if name.startswith("self_attn.")
        }
        mlp_w = {name[len("mlp.") :]: t for name, t in layer_w.items() if name.startswith("mlp.")}
        x = x + _attention(attn_w, _rms(x, layer_w["input_layernorm.weight"], shape.rms_norm_eps), shape)
        h = _rms(x, layer_w["post_attention_layernorm.weight"], shape.rms_norm_eps)
        x = x + (_moe(mlp_w, h, shape, stats) if shape.is_moe_layer(layer) else _swiglu(mlp_w, "", h))
    return _rms(x, w["model.norm.weight"], shape.rms_norm_eps) @ w["lm_head.weight"].T


def _left_padded(lengths: list[int], hidden: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    embeds = torch.randn(len(lengths), seq, hidden, generator=generator)
    mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, seq - length :] = 1
    return embeds, mask


# ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_language_model_matches_the_naive_reading_on_a_left_padded_batch(variant: str) -> None:
    model = randomize(model_shapes.build_model(reduced_shape(**VARIANTS[variant])), seed=11)
    embeds, mask = _left_padded([13, 7], TOY.language.hidden_size, seed=12)
    with torch.no_grad():
        logits = model.language(embeds, mask)
    stats = {"bias_flips": 0, "min_margin": math.inf}
    for row in range(len(mask)):
        real = mask[row].bool()
        expected = naive_logits(model, embeds[row, real], stats)
        torch.testing.assert_close(logits[row, real].double(), expected, rtol=0, atol=1e-4)
    assert stats["min_margin"] > 1e-5  # no routing decision sits on a float32 near-tie
    if variant == "mla_noaux_tc_bias":
        assert stats["bias_flips"] > 0  # the bias changed some choices (the weights ignore it: see above)


@pytest.mark.parametrize("variant", ["mla_q_proj", "mla_q_lora"])
def test_absorbed_mla_equals_expanded_mla(variant: str) -> None:
    model = randomize(model_shapes.build_model(reduced_shape(**VARIANTS[variant])), seed=21)
    embeds, mask = _left_padded([10, 4], TOY.language.hidden_size, seed=22)
    real = mask.bool()
    with torch.no_grad():
        absorbed = model.language(embeds, mask)
        for layer in model.language.model.layers:
            layer.self_attn.absorb = False
        expanded = model.language(embeds, mask)
    torch.testing.assert_close(absorbed[real], expanded[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("variant", ["mha_half_split_rope", "mla_q_lora"])
def test_packed_rows_equal_separate_documents(variant: str) -> None:
    model = randomize(model_shapes.build_model(reduced_shape(**VARIANTS[variant])), seed=31)
    lengths = [5, 7, 8, 4]  # row 0: documents 0 and 1; row 1: documents 2 and 3
    cu_seqlens = torch.tensor([0, 5, 12, 20, 24], dtype=torch.int32)
    embeds = torch.randn(2, 12, TOY.language.hidden_size, generator=torch.Generator().manual_seed(32))
    restarting = torch.tensor([list(range(5)) + list(range(7)), list(range(8)) + list(range(4))])
    with torch.no_grad():
        packed = model.language(embeds, cu_seqlens=cu_seqlens)
        explicit = model.language(embeds, position_ids=restarting, cu_seqlens=cu_seqlens)
        flat_embeds, flat_packed = embeds.flatten(0, 1), packed.flatten(0, 1)
        for start, length in zip(cu_seqlens[:-1].tolist(), lengths, strict=True):
            alone = model.language(flat_embeds[None, start : start + length])[0]
            torch.testing.assert_close(flat_packed[start : start + length], alone, rtol=0, atol=1e-5)
    torch.testing.assert_close(packed, explicit, rtol=0, atol=0)


def test_packed_documents_with_an_image_equal_separate_runs_and_losses() -> None:
    torch.manual_seed(41)
    model = randomize(model_shapes.build_model(TOY), seed=41).eval()
    image_id = TOY.special_tokens.image
    generator = torch.Generator().manual_seed(42)
    # document A: 3 text tokens, one 1×1 image (421 positions), 6 text tokens; document B: 9 text tokens.
    ids_a = torch.cat(
        (torch.randint(3, 1000, (3,), generator=generator), torch.full((421,), image_id),
         torch.randint(3, 1000, (6,), generator=generator))
    )  # fmt: skip
    ids_b = torch.randint(3, 1000, (9,), generator=generator)
    mask_a = ids_a == image_id
    labels_a = ids_a.masked_fill(mask_a, -100)
    labels_b = ids_b.clone()
    labels_b[:2] = -100
    tiles = torch.rand(1, 3, 3, 384, 384, generator=generator) * 2 - 1
    tiles[0, 2] = 0.0  # a zero slot after the image's two real tiles
    crop = torch.tensor([[[1, 1]]])
    with torch.no_grad():
        alone_a = model(ids_a[None], None, tiles, mask_a[None], crop, labels=labels_a[None])
        alone_b = model(ids_b[None], labels=labels_b[None])
        packed = model(
            torch.cat((ids_a, ids_b))[None],
            None,
            tiles,
            torch.cat((mask_a, torch.zeros(9, dtype=torch.bool)))[None],
            crop,
            labels=torch.cat((labels_a, labels_b))[None],
            cu_seqlens=torch.tensor([0, len(ids_a), len(ids_a) + 9]),
        )
    torch.testing.assert_close(packed.logits[0, : len(ids_a)], alone_a.logits[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(packed.logits[0, len(ids_a) :], alone_b.logits[0], rtol=0, atol=1e-5)
    # B's first token is no target of A's last: the packed loss averages exactly the documents' own targets.
    targets_a, targets_b = int((labels_a[1:] != -100).sum()), int((labels_b[1:] != -100).sum())
    combined = (alone_a.loss * targets_a + alone_b.loss * targets_b) / (targets_a + targets_b)
    torch.testing.assert_close(packed.loss, combined, rtol=1e-6, atol=1e-6)

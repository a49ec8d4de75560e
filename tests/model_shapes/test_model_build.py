"""Building the model and loading weights: the three published variants on the ``meta`` device against the
spec's checkpoint layout (every name and shape) and parameter totals; the toy model on the CPU (finite logits,
loss, gradients, bfloat16); strict loading from a state dict, a safetensors file or a checkpoint folder, and
the errors for missing, unexpected and mis-shaped keys."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import model_shapes

REPO = Path(__file__).resolve().parents[2]
TOY = model_shapes.load("toy")


def spec_checkpoint_layout(shape: model_shapes.ModelShape) -> dict[str, tuple[int, ...]]:
    """Every parameter name and shape of an official checkpoint, written out from spec §4 "Official checkpoint
    layout"."""
    vision, lm = shape.vision, shape.language
    D, F, P = vision.width, vision.mlp_hidden, vision.patch_size
    H, V, n = lm.hidden_size, lm.vocab_size, lm.num_attention_heads
    layout: dict[str, tuple[int, ...]] = {"image_newline": (H,), "view_seperator": (H,)}
    v = "vision."
    layout |= {
        f"{v}patch_embed.proj.weight": (D, 3, P, P),
        f"{v}patch_embed.proj.bias": (D,),
        f"{v}pos_embed": (1, (vision.image_size // P) ** 2, D),
        f"{v}norm.weight": (D,),
        f"{v}norm.bias": (D,),
        f"{v}attn_pool.latent": (1, 1, D),
        f"{v}attn_pool.q.weight": (D, D),
        f"{v}attn_pool.q.bias": (D,),
        f"{v}attn_pool.kv.weight": (2 * D, D),
        f"{v}attn_pool.kv.bias": (2 * D,),
        f"{v}attn_pool.proj.weight": (D, D),
        f"{v}attn_pool.proj.bias": (D,),
        f"{v}attn_pool.norm.weight": (D,),
        f"{v}attn_pool.norm.bias": (D,),
        f"{v}attn_pool.mlp.fc1.weight": (F, D),
        f"{v}attn_pool.mlp.fc1.bias": (F,),
        f"{v}attn_pool.mlp.fc2.weight": (D, F),
        f"{v}attn_pool.mlp.fc2.bias": (D,),
    }
    for i in range(vision.layers):
        b = f"{v}blocks.{i}."
        layout |= {
            f"{b}norm1.weight": (D,), f"{b}norm1.bias": (D,),
            f"{b}norm2.weight": (D,), f"{b}norm2.bias": (D,),
            f"{b}attn.qkv.weight": (3 * D, D), f"{b}attn.qkv.bias": (3 * D,),
            f"{b}attn.proj.weight": (D, D), f"{b}attn.proj.bias": (D,),
            f"{b}mlp.fc1.weight": (F, D), f"{b}mlp.fc1.bias": (F,),
            f"{b}mlp.fc2.weight": (D, F), f"{b}mlp.fc2.bias": (D,),
        }  # fmt: skip
    layout |= {
        "projector.layers.0.weight": (H, 4 * D),
        "projector.layers.0.bias": (H,),
        "projector.layers.2.weight": (H, H),
        "projector.layers.2.bias": (H,),
        "language.model.embed_tokens.weight": (V, H),
        "language.model.norm.weight": (H,),
        "language.lm_head.weight": (V, H),
    }
    dn, dr, dv, r, q = (
        lm.qk_nope_head_dim,
        lm.qk_rope_head_dim,
        lm.v_head_dim,
        lm.kv_lora_rank,
        lm.q_lora_rank,
    )
    E, M = lm.n_routed_experts, lm.moe_intermediate_size
    S, I = lm.n_shared_experts * M, lm.intermediate_size  # noqa: E741
    for layer in range(lm.num_hidden_layers):
        p = f"language.model.layers.{layer}."
        layout |= {f"{p}input_layernorm.weight": (H,), f"{p}post_attention_layernorm.weight": (H,)}
        a = f"{p}self_attn."
        if not lm.use_mla:
            hd = H // n
            layout |= {f"{a}{x}_proj.weight": (n * hd, H) for x in "qkv"} | {f"{a}o_proj.weight": (H, n * hd)}
        else:
            if q is None:
                layout[f"{a}q_proj.weight"] = (n * (dn + dr), H)
            else:
                layout |= {
                    f"{a}q_a_proj.weight": (q, H),
                    f"{a}q_a_layernorm.weight": (q,),
                    f"{a}q_b_proj.weight": (n * (dn + dr), q),
                }
            layout |= {
                f"{a}kv_a_proj_with_mqa.weight": (r + dr, H),
                f"{a}kv_a_layernorm.weight": (r,),
                f"{a}kv_b_proj.weight": (n * (dn + dv), r),
                f"{a}o_proj.weight": (H, n * dv),
            }
        m = f"{p}mlp."
        if layer < lm.first_k_dense_replace:
            layout |= {
                f"{m}gate_proj.weight": (I, H),
                f"{m}up_proj.weight": (I, H),
                f"{m}down_proj.weight": (H, I),
            }
            continue
        layout[f"{m}gate.weight"] = (E, H)
        if lm.topk_method == "noaux_tc":
            layout[f"{m}gate.e_score_correction_bias"] = (E,)
        for e in range(E):
            x = f"{m}experts.{e}."
            layout |= {
                f"{x}gate_proj.weight": (M, H),
                f"{x}up_proj.weight": (M, H),
                f"{x}down_proj.weight": (H, M),
            }
        s = f"{m}shared_experts."
        layout |= {
            f"{s}gate_proj.weight": (S, H),
            f"{s}up_proj.weight": (S, H),
            f"{s}down_proj.weight": (H, S),
        }
    return layout


# spec §4: "The totals come to 3.371B / 16.148B / 27.480B" (ViT incl. its unused pool head, adaptor, LM).
TOTAL_BILLIONS = {"tiny": 3.371, "small": 16.148, "base": 27.480}


@pytest.mark.parametrize("variant", ["tiny", "small", "base"])
def test_published_variants_have_the_official_checkpoint_layout(variant: str) -> None:
    shape = model_shapes.load(variant)
    model = model_shapes.build_model(shape, device="meta")
    state = model.state_dict()
    assert all(tensor.is_meta for tensor in state.values())
    got = {name: tuple(tensor.shape) for name, tensor in state.items()}
    expected = spec_checkpoint_layout(shape)
    assert sorted(got.keys() - expected.keys()) == []
    assert sorted(expected.keys() - got.keys()) == []
    assert got == expected
    total = sum(tensor.numel() for tensor in state.values())
    assert round(total / 1e9, 3) == TOTAL_BILLIONS[variant]


def test_attention_and_routing_blocks_of_the_variants() -> None:
    from model_shapes.attention import MultiHeadAttention, MultiHeadLatentAttention

    tiny, base = (model_shapes.build_model(model_shapes.load(n), device="meta") for n in ("tiny", "base"))
    assert isinstance(tiny.language.model.layers[3].self_attn, MultiHeadAttention)
    assert isinstance(base.language.model.layers[3].self_attn, MultiHeadLatentAttention)
    assert base.language.model.layers[3].self_attn.scale == pytest.approx(192**-0.5)
    gate = base.language.model.layers[3].mlp.gate
    assert (gate.topk_method, gate.scoring_func, gate.norm_topk_prob, gate.routed_scaling_factor) == (
        "noaux_tc",
        "sigmoid",
        True,
        2.0,
    )


# ----------------------------------------------------------------------------------------------------
# the toy model on the CPU


def _toy_batch() -> dict[str, torch.Tensor]:
    """Sample 0: text, a 2×1 image, text; sample 1: text only, left-padded."""
    generator = torch.Generator().manual_seed(3)
    image_id, visual = TOY.special_tokens.image, 211 + 14 * 29  # global + separator + 14 rows of 28 + 1
    seq = 4 + visual + 3
    ids = torch.randint(3, 4000, (2, seq), generator=generator)
    ids[0, 4 : 4 + visual] = image_id
    mask = ids == image_id
    attention = torch.ones(2, seq, dtype=torch.long)
    attention[1, :-20] = 0
    ids[1, :-20] = TOY.special_tokens.pad
    labels = ids.masked_fill(mask | (attention == 0), -100)
    images = torch.zeros(2, 3, 3, 384, 384)
    images[0] = torch.rand(3, 3, 384, 384, generator=generator) * 2 - 1
    crop = torch.tensor([[[2, 1]], [[0, 0]]])
    return dict(
        input_ids=ids,
        attention_mask=attention,
        images=images,
        images_seq_mask=mask,
        images_spatial_crop=crop,
        labels=labels,
    )


def test_toy_model_forward_is_finite_with_a_loss_and_gradients() -> None:
    torch.manual_seed(0)
    model = model_shapes.build_model(TOY)
    assert all(torch.isfinite(t).all() for t in model.state_dict().values())
    batch = _toy_batch()
    out = model(**batch)
    assert out.logits.shape == (*batch["input_ids"].shape, TOY.language.vocab_size)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits[batch["attention_mask"].bool()]).all()
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name in (
        "vision.patch_embed.proj.weight",
        "projector.layers.0.weight",
        "image_newline",
        "view_seperator",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model(**{**batch, "labels": None}).loss is None


def test_ids_outside_the_vocabulary_are_named() -> None:
    model = model_shapes.build_model(TOY)
    batch = _toy_batch()
    vocab = TOY.language.vocab_size
    for name, value in (("input_ids", vocab), ("input_ids", -3), ("labels", vocab + 5)):
        broken = {**batch, name: batch[name].clone()}
        broken[name][0, -1] = value
        with pytest.raises(
            ValueError, match=rf"{name} hold id {value} outside the vocabulary \[0, {vocab}\)"
        ):
            model(**broken)


def test_toy_model_runs_in_bfloat16() -> None:
    torch.manual_seed(0)
    model = model_shapes.build_model(TOY, dtype=torch.bfloat16)
    assert {t.dtype for t in model.state_dict().values()} == {torch.bfloat16}
    batch = _toy_batch()
    with torch.no_grad():
        out = model(**batch)
    assert out.logits.dtype == torch.float32
    assert torch.isfinite(out.logits[batch["attention_mask"].bool()]).all() and torch.isfinite(out.loss)


def test_tied_embeddings_are_refused() -> None:
    import dataclasses

    tied = dataclasses.replace(TOY, language=dataclasses.replace(TOY.language, tie_word_embeddings=True))
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        model_shapes.build_model(tied, device="meta")


# ----------------------------------------------------------------------------------------------------
# loading official weights


@pytest.fixture(scope="module")
def toy_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {name: t.clone() for name, t in model_shapes.build_model(TOY).state_dict().items()}


def _logits(model: model_shapes.DeepseekVL2) -> torch.Tensor:
    batch = _toy_batch()
    with torch.no_grad():
        return model(**{**batch, "labels": None}).logits


def test_strict_round_trip_into_a_built_model_and_into_a_meta_model(
    toy_state: dict[str, torch.Tensor],
) -> None:
    built = model_shapes.load_official_weights(model_shapes.build_model(TOY), toy_state)
    meta = model_shapes.load_official_weights(model_shapes.build_model(TOY, device="meta"), toy_state)
    for model in (built, meta):
        state = model.state_dict()
        assert state.keys() == toy_state.keys()
        assert all(torch.equal(state[name], toy_state[name]) for name in toy_state)
    assert all(p.requires_grad and not p.is_meta for p in meta.parameters())
    torch.testing.assert_close(_logits(built), _logits(meta), rtol=0, atol=0)


def test_missing_unexpected_and_misshaped_keys_are_listed(toy_state: dict[str, torch.Tensor]) -> None:
    model = model_shapes.build_model(TOY, device="meta")
    broken = dict(toy_state)
    del broken["view_seperator"]
    del broken["vision.attn_pool.latent"]
    broken["view_separator"] = toy_state["view_seperator"]
    broken["language.lm_head.weight"] = torch.zeros(3, 3)
    with pytest.raises(model_shapes.WeightsError) as error:
        model_shapes.load_official_weights(model, broken)
    message = str(error.value)
    assert "2 missing keys: view_seperator, vision.attn_pool.latent" in message
    assert "1 unexpected keys: view_separator" in message
    assert "language.lm_head.weight (3, 3) != (8192, 64)" in message


def test_a_long_key_list_is_cut(toy_state: dict[str, torch.Tensor]) -> None:
    model = model_shapes.build_model(TOY, device="meta")
    vision_only = {name: t for name, t in toy_state.items() if name.startswith("vision.")}
    with pytest.raises(model_shapes.WeightsError, match=r"missing keys: .* \(\+\d+ more\)"):
        model_shapes.load_official_weights(model, vision_only)


def test_checkpoint_folder_with_config_and_sharded_safetensors(
    tmp_path: Path, toy_state: dict[str, torch.Tensor]
) -> None:
    from safetensors.torch import save_file

    names = sorted(toy_state)
    half = len(names) // 2
    save_file({n: toy_state[n] for n in names[:half]}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({n: toy_state[n] for n in names[half:]}, tmp_path / "model-00002-of-00002.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(TOY.to_official_config()), encoding="utf-8")

    model = model_shapes.from_pretrained(tmp_path)
    expected = model_shapes.load_official_weights(model_shapes.build_model(TOY), toy_state)
    torch.testing.assert_close(_logits(model), _logits(expected), rtol=0, atol=0)
    halved = model_shapes.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert {t.dtype for t in halved.state_dict().values()} == {torch.bfloat16}

    save_file({"extra.weight": torch.zeros(2)}, tmp_path / "stray.safetensors")
    with pytest.raises(model_shapes.WeightsError, match=r"1 unexpected keys: extra\.weight"):
        model_shapes.load_official_weights(model_shapes.build_model(TOY, device="meta"), tmp_path)
    save_file({names[0]: toy_state[names[0]]}, tmp_path / "stray.safetensors")
    with pytest.raises(model_shapes.WeightsError, match="repeats keys"):
        model_shapes.read_safetensors(tmp_path)
    with pytest.raises(model_shapes.WeightsError, match="no safetensors file"):
        model_shapes.read_safetensors(tmp_path / "config.json.missing")


def test_import_leaves_safetensors_unloaded() -> None:
    code = "import json, sys, model_shapes; print(json.dumps(sorted(sys.modules)))"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    assert "safetensors" not in json.loads(result.stdout)

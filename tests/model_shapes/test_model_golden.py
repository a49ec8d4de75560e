"""The whole model against the official implementation's reference forward pass (``tests/golden/model/
public_mla``: MLA with q-LoRA, softmax-greedy MoE, a left-padded batch of a 3×1 and a 1×1 image), with its
intermediates to localise a difference: ViT features, adaptor output, input embeddings, hidden states per
layer, router picks. The reference's safetensors files are stored xz-compressed, cut in parts of at most
2 MB; the fixture puts them back together in a temporary folder."""

from __future__ import annotations

import json
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import model_shapes

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "model" / "public_mla"
FILES = ("state_dict", "inputs", "expected", "expected_extra", "expected_vision")
TOLERANCE = 1e-4  # spec: a correct float32 implementation is within a few 1e-6


@dataclass
class Run:
    model: model_shapes.DeepseekVL2
    inputs: dict[str, torch.Tensor]
    images: torch.Tensor
    expected: dict[str, torch.Tensor]
    captured: dict[str, object]
    logits: torch.Tensor

    @property
    def real(self) -> torch.Tensor:
        return self.inputs["attention_mask"].bool()

    def forward(self, **changes: torch.Tensor) -> torch.Tensor:
        batch = {
            "input_ids": self.inputs["input_ids"],
            "attention_mask": self.inputs["attention_mask"],
            "images": self.images,
            "images_seq_mask": self.inputs["images_seq_mask"],
            "images_spatial_crop": self.inputs["images_spatial_crop"],
            **changes,
        }
        with torch.no_grad():
            return self.model(**batch).logits


def unpacked(folder: Path) -> Path:
    """The reference's safetensors files, decompressed from their parts into `folder`."""
    for name in FILES:
        parts = sorted(GOLDEN.glob(f"{name}.safetensors.xz*"))
        assert parts, f"{name}.safetensors.xz is missing from {GOLDEN}"
        data = lzma.decompress(b"".join(part.read_bytes() for part in parts))
        (folder / f"{name}.safetensors").write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    from safetensors.torch import load_file

    files = unpacked(tmp_path_factory.mktemp("public_mla"))
    config = json.loads((GOLDEN / "config.json").read_text(encoding="utf-8"))
    model = model_shapes.build_model(model_shapes.from_official_config(config), device="meta")
    model_shapes.load_official_weights(model, files / "state_dict.safetensors")
    model.eval()
    inputs = load_file(files / "inputs.safetensors")
    expected: dict[str, torch.Tensor] = {}
    for name in ("expected", "expected_extra", "expected_vision"):
        expected.update(load_file(files / f"{name}.safetensors"))
    images = inputs["pixel_lut"][inputs["images_u8"].long()]
    images[~inputs["images_tile_valid"]] = 0.0

    captured: dict[str, object] = {}

    def keep(name: str) -> Callable[..., None]:
        """A forward hook that stores the module's output under ``name``."""
        return lambda module, args, output: captured.__setitem__(name, output)

    model.vision.register_forward_hook(keep("vision_features"))
    model.projector.register_forward_hook(keep("projector_out"))
    model.language.model.layers[0].register_forward_pre_hook(
        lambda module, args: captured.__setitem__("hidden_states.0", args[0])
    )
    layers = model.language.model.layers
    for i, layer in enumerate(layers[:-1]):
        layer.register_forward_hook(keep(f"hidden_states.{i + 1}"))
    model.language.model.norm.register_forward_hook(keep(f"hidden_states.{len(layers)}"))
    for i, layer in enumerate(layers):
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.register_forward_hook(keep(f"router.layer{i}"))
    golden = Run(model, inputs, images, expected, captured, torch.empty(0))
    golden.logits = golden.forward()
    return golden


def _max_diff(got: torch.Tensor, expected: torch.Tensor, where: torch.Tensor | None = None) -> float:
    difference = (got - expected).abs()
    return float((difference if where is None else difference[where]).max())


def test_logits_match_the_official_model_at_every_real_token(run: Run) -> None:
    difference = _max_diff(run.logits, run.expected["logits"], run.real)
    print(f"max |logits - official| at real tokens: {difference:.2e}")
    assert difference < TOLERANCE


def test_vision_features_and_adaptor_output(run: Run) -> None:
    assert _max_diff(run.captured["vision_features"], run.expected["vision_features"]) < TOLERANCE
    assert _max_diff(run.captured["projector_out"], run.expected["projector_out"]) < TOLERANCE


def test_inputs_embeds_and_hidden_states_per_layer(run: Run) -> None:
    assert _max_diff(run.captured["hidden_states.0"], run.expected["inputs_embeds"], run.real) < TOLERANCE
    for i in range(len(run.model.language.model.layers) + 1):
        name = f"hidden_states.{i}"
        assert _max_diff(run.captured[name], run.expected[name], run.real) < TOLERANCE, name


def test_router_picks_and_weights(run: Run) -> None:
    batch, seq = run.real.shape
    for layer in (1, 2):
        index, weight = run.captured[f"router.layer{layer}"]
        index, weight = index.view(batch, seq, -1), weight.view(batch, seq, -1)
        order = index.argsort(dim=-1)  # the reference lists each token's picks by expert id
        index, weight = index.gather(-1, order), weight.gather(-1, order)
        assert torch.equal(index[run.real], run.expected[f"router_topk_idx.layer{layer}"][run.real])
        assert _max_diff(weight, run.expected[f"router_topk_weight.layer{layer}"], run.real) < 1e-5


def test_expanded_mla_and_generation_positions_give_the_same_logits(run: Run) -> None:
    layers = run.model.language.model.layers
    try:
        for layer in layers:
            layer.self_attn.absorb = False
        logits = run.forward(position_ids=run.inputs["position_ids_generate"])
    finally:
        for layer in layers:
            layer.self_attn.absorb = True
    assert _max_diff(logits, run.expected["logits"], run.real) < TOLERANCE


def test_padding_tile_slots_are_never_read(run: Run) -> None:
    images = run.images.clone()
    images[~run.inputs["images_tile_valid"]] = 7.0
    assert torch.equal(run.forward(images=images)[run.real], run.logits[run.real])


def test_loss_is_the_official_shifted_cross_entropy(run: Run) -> None:
    ids = run.inputs["input_ids"]
    labels = ids.masked_fill(run.inputs["images_seq_mask"] | ~run.real, -100)
    # the first real token (bos) would be the target of a padding position, whose logits are arbitrary
    labels[torch.arange(len(ids)), run.real.int().argmax(dim=1)] = -100
    with torch.no_grad():
        loss = run.model(
            ids,
            run.inputs["attention_mask"],
            run.images,
            run.inputs["images_seq_mask"],
            run.inputs["images_spatial_crop"],
            labels=labels,
        ).loss
    logits = run.expected["logits"]
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    assert abs(loss.item() - expected.item()) < 1e-5

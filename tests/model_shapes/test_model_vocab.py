"""The toy model fed ids outside its vocabulary: a ValueError naming the largest offending id (the smallest
negative one when none overshoots), how many there are and the vocabulary size, never the embedding's bare
IndexError."""

from __future__ import annotations

import pytest
import torch

import model_shapes

TOY = model_shapes.load("toy")
VOCAB = TOY.language.vocab_size


@pytest.fixture(scope="module")
def model() -> model_shapes.DeepseekVL2:
    torch.manual_seed(0)
    return model_shapes.build_model(TOY)


def _text_batch(ids: list[int]) -> dict[str, torch.Tensor]:
    """One text-only sample: no image, every position attended."""
    input_ids = torch.tensor([ids])
    return dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids))


@pytest.mark.timeout(60)
def test_the_largest_out_of_vocabulary_id_and_the_vocabulary_size_are_named(
    model: model_shapes.DeepseekVL2,
) -> None:
    # The first id outside is not the largest: a message naming the first would name VOCAB + 1.
    ids = [5, VOCAB + 1, 7, VOCAB + 500, -2, VOCAB]
    with pytest.raises(ValueError) as raised:
        model(**_text_batch(ids))
    assert str(raised.value) == (
        f"input_ids hold id {VOCAB + 500} outside the vocabulary [0, {VOCAB}) "
        f"(the largest of 4 such ids; vocabulary size {VOCAB})"
    )


@pytest.mark.timeout(60)
def test_negative_ids_alone_name_the_smallest(model: model_shapes.DeepseekVL2) -> None:
    with pytest.raises(ValueError) as raised:
        model(**_text_batch([5, -1, 6, -40]))
    assert str(raised.value) == (
        f"input_ids hold id -40 outside the vocabulary [0, {VOCAB}) "
        f"(the smallest of 2 such ids; vocabulary size {VOCAB})"
    )


@pytest.mark.timeout(60)
def test_labels_past_the_vocabulary_are_named_and_ignored_labels_are_not(
    model: model_shapes.DeepseekVL2,
) -> None:
    batch = _text_batch([5, 6, 7, 8])
    labels = torch.tensor([[-100, 6, VOCAB + 3, 8]])
    with pytest.raises(ValueError) as raised:
        model(**batch, labels=labels)
    assert str(raised.value) == (
        f"labels hold id {VOCAB + 3} outside the vocabulary [0, {VOCAB}) "
        f"(the largest of 1 such id; vocabulary size {VOCAB})"
    )
    with torch.no_grad():
        out = model(**batch, labels=torch.tensor([[-100, 6, 7, 8]]))
    assert torch.isfinite(out.loss)


@pytest.mark.timeout(60)
def test_ids_inside_the_vocabulary_pass(model: model_shapes.DeepseekVL2) -> None:
    with torch.no_grad():
        out = model(**_text_batch([0, VOCAB - 1, 3]))
    assert out.logits.shape == (1, 3, VOCAB)

"""pipeline.inspect_rows: golden renderings of a caption, a grounding sample and a packed row."""

from __future__ import annotations

import re

import pytest
from shard_support import TOK, TOY, image, png, row_of, small_output, text

from pipeline import inspect_rows
from pipeline.packing import pack_rows
from pipeline.sequence import SequenceOptions, build
from schemas.sample import sample_id_for


def test_caption_golden():
    row = row_of("pics", "k", "caption", [image(0), text("A red square.")], [png(640, 480)])
    rendered = inspect_rows.render_row(row, TOY, TOK)
    assert rendered.splitlines()[1:5] == [
        "source pics · key k · kind caption · part 0",
        f"{row['seq_len']} tokens: 1023 image, {row['seq_len'] - 1023} text, "
        f"{row['num_loss_tokens']} trained; truncated no",
        "image 0: 640x480.png PNG 640×480, grid 2×2, 1023 tokens at 4",
        "sequence («…»: trained on; the rest is no target):",
    ]
    assert rendered.splitlines()[5].startswith("<bos><|User|>: <image ×1023 grid 2×2>")
    assert rendered.endswith("<|Assistant|>:«A red square.<eos>»")


def test_grounding_boxes_as_written_and_in_pixels():
    sample = {
        "sample_id": sample_id_for("g", "1"),
        "source": "g",
        "key": "1",
        "kind": "grounding",
        "content": [image(0)],
        "images": [png(640, 480)],
        "regions": [
            {
                "phrase": "the cat",
                "image": 0,
                "boxes": [[64, 48, 320, 240]],
                "segment": None,
                "start": None,
                "end": None,
            }
        ],
        "meta": "{}",
    }
    (row,) = build(sample, TOK, options=SequenceOptions()).rows
    rendered = inspect_rows.render_row(row, TOY, TOK)
    assert (
        "region 0 'the cat' on image 0 (640×480): [[100, 100, 500, 500]] → pixels [[64, 48, 320, 240]]"
        in rendered
    )
    assert "«<|ref|>the cat<|/ref|><|det|>[[100, 100, 500, 500]]<|/det|><eos>»" in rendered


def test_packed_row_shows_documents_and_padding():
    docs = [row_of("t", str(i), "text", [text(f"Document {i}.")]) for i in range(2)]
    packed = pack_rows(docs, 40, TOY.special_tokens.pad)
    rendered = inspect_rows.render_row(packed, TOY, TOK)
    pad = 40 - sum(d["seq_len"] for d in docs)
    assert (
        "<bos>«Document 0.<eos>»\n── next document ──\n<bos>«Document 1.<eos>»\n── next document ──\n"
        f"<pad ×{pad}>" in rendered
    )
    assert f"document {docs[1]['sample_id']}: t text part 0, {docs[1]['seq_len']} tokens" in rendered


# ------------------------------------------------------------------------------------------------
# damaged rows and files: shown or named, never an exception


def test_a_damaged_row_is_shown_not_refused():
    """Ids the tokenizer does not know once raised IndexError in the decoder (sentencepiece), labels of
    another length an IndexError, a grid that is not a tile grid a ValueError, a region without its image an
    IndexError."""
    row = row_of("pics", "k", "caption", [image(0), text("A red square.")], [png(640, 480)])
    ids = list(row["input_ids"])
    ids[-3:-1] = [-5, 10**6]
    ids.insert(-1, TOK.piece_count)  # inside the model's vocabulary, past the tokenizer's pieces
    damaged = dict(
        row,
        input_ids=ids,
        labels=row["labels"][:-3],
        images_spatial_crop=[[0, 0]],
        regions=[{"phrase": "thing", "image": 4, "boxes": [[1.0, 2.0, 3.0, 4.0]]}],
    )
    lines = inspect_rows.render_row(damaged, TOY, TOK).splitlines()
    assert f"damaged: {len(ids) - 4} labels for {len(ids)} input ids" in lines[3]
    assert lines[4] == "damaged: 3 ids the tokenizer does not know, shown as <id N?>"
    assert lines[5].endswith("grid 0×0, not a tile grid at 4")
    assert lines[6] == "region 0 'thing' on image 4: the row has no such image"
    assert lines[-1].endswith(f"<id -5?><id 1000000?><id {TOK.piece_count}?><eos>")


def test_an_unreadable_shard_is_named(tmp_path):
    out = small_output(tmp_path)
    shard = tmp_path / "shards" / "chat" / "part-00000-000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])  # cut short on disk: the footer is gone
    assert inspect_rows.find_row(str(out), row=2)[1] == 2  # the file before it is still read
    with pytest.raises(
        inspect_rows.UnreadableShard, match=f"^{re.escape(str(shard))}: cannot be read: .*magic bytes"
    ):
        inspect_rows.find_row(str(out), row=3)
    with pytest.raises(inspect_rows.UnreadableShard, match=f"^{re.escape(str(shard))}: cannot be read"):
        inspect_rows.find_row(str(out), sample_id="nowhere")

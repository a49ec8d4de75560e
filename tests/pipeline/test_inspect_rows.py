"""pipeline.inspect_rows: golden renderings of a caption, a grounding sample and a packed row."""

from __future__ import annotations

from shard_support import TOK, TOY, image, png, row_of, text

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
        "sequence («…»: trained on; the rest has label -100):",
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

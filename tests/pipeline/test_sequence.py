"""pipeline.sequence: exact token sequences per kind, labels, image spans, length policies, shard rows."""

from __future__ import annotations

import io
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import model_shapes
from pipeline import images as image_io
from pipeline import layout, sequence, tiling, tokenizer
from pipeline.sequence import SequenceBuilder, SequenceOptions, build
from pipeline.templates import TemplateConfig
from schemas import shard
from schemas.sample import sample_id_for

TOY = model_shapes.load("toy")
TOK = tokenizer.load("default", TOY)
BOS, EOS, IMG = 0, 1, 8184
REF, REF_END, DET, DET_END, GROUNDING, USER, ASSISTANT = range(8185, 8192)
X = -100

# The demo tokenizer's pieces for the text of the golden sequences, written out by hand (checked below),
# so that a change of the shipped model shows up here.
PIECES = {
    ": ": [3780, 3745],
    ":": [3780],
    "\nDescribe this image.\n\n": [14, 1665, 639, 491, 3764, 14, 14],
    "A cat on a mat.": [3773, 659, 299, 261, 960, 3764],
    "You are brief.": [2800, 351, 871, 3746, 3761, 3764],
    ": What is this?\n\n": [3780, 3745, 575, 305, 639, 3798, 14, 14],
    "A cat.": [3773, 659, 3764],
    ": Why?\n\n": [3780, 3371, 3798, 14, 14],
    "Two cats.": [1764, 659, 3751, 3764],
    "\nRead the text.\n\n": [14, 3116, 265, 996, 3764, 14, 14],
    "OPEN": [3109],
    "\nLocate ": [14, 2131, 3745],
    "the red car": [1178, 490, 450],
    " in the given image.\n\n": [290, 265, 2176, 491, 3764, 14, 14],
    "[[10, 20, 30, 40]]": [
        509,
        3772,
        3770,
        3767,
        3745,
        3771,
        3770,
        3767,
        3745,
        3778,
        3770,
        3767,
        3745,
        3777,
        3770,
        510,
    ],
    "Title\nFirst.": [3510, 14, 3495, 3764],
    " after": [719],
    "end": [1164],
    "Just text.": [3824, 690, 996, 3764],
}
P = PIECES
CONFIG = TemplateConfig(prompts={"caption": ["Describe this image."], "ocr": ["Read the text."]})


def png(width, height, color=(200, 30, 30)):
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, format="PNG")
    return {
        "bytes": buffer.getvalue(),
        "path": f"{width}x{height}.png",
        "width": width,
        "height": height,
        "format": "PNG",
    }


def text(value, turn=0, role=None):
    return {"turn": turn, "role": role, "type": "text", "text": value, "image": None}


def image(index, turn=0, role=None):
    return {"turn": turn, "role": role, "type": "image", "text": None, "image": index}


def sample(kind, content, images=(), regions=(), key="k"):
    return {
        "sample_id": sample_id_for("src", key),
        "source": "src",
        "key": key,
        "kind": kind,
        "content": list(content),
        "images": list(images),
        "regions": list(regions),
        "meta": "{}",
    }


def listed(row):
    """The row with its numpy columns (input_ids, labels) as lists, for comparing."""
    return {
        **row,
        "input_ids": np.asarray(row["input_ids"]).tolist(),
        "labels": np.asarray(row["labels"]).tolist(),
    }


def one_row(s, **options):
    built = build(s, TOK, options=SequenceOptions(templates=CONFIG, **options))
    assert built.reject is None, built.reject
    (row,) = built.rows
    assert row["input_ids"].dtype == row["labels"].dtype == np.int32
    return listed(row)


def test_pieces_are_what_the_demo_tokenizer_gives():
    for piece, ids in PIECES.items():
        assert TOK.encode(piece) == ids, piece


# ----------------------------------------------------------------------------------------------------
# golden sequences, one per kind


def test_golden_caption_chat():
    row = one_row(sample("caption", [image(0), text("A cat on a mat.")], [png(640, 480)]))  # 2×2: 1023
    prompt = [BOS, USER, *P[": "], *[IMG] * 1023, *P["\nDescribe this image.\n\n"], ASSISTANT, *P[":"]]
    answer = [*P["A cat on a mat."], EOS]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [BOS] + [X] * (len(prompt) - 1) + answer  # bos keeps its id, as officially
    assert row["image_token_offsets"] == [4] and row["images_spatial_crop"] == [[2, 2]]
    assert (row["num_image_tokens"], row["num_loss_tokens"], row["seq_len"]) == (1023, 7, len(prompt) + 7)
    assert row["num_text_tokens"] == row["seq_len"] - 1023


def test_golden_caption_plain():
    config = TemplateConfig(render="plain")
    s = sample("caption", [image(0), text("A cat on a mat.\n")], [png(640, 480)])  # document ends stripped
    (row,) = map(listed, build(s, TOK, options=SequenceOptions(templates=config)).rows)
    assert row["input_ids"] == [BOS, *[IMG] * 1023, *P["A cat on a mat."], EOS]
    assert row["labels"] == [BOS, *[X] * 1023, *P["A cat on a mat."], EOS]


def test_golden_conversation_with_system():
    content = [
        text("You are brief.", 0, "system"),
        text("What is this?", 1, "user"),
        text("A cat.", 2, "assistant"),
        text("Why?", 3, "user"),
        text("Two cats.", 4, "assistant"),
    ]
    row = one_row(sample("conversation", content))
    # The system text on its own, masked, with no separator before <|User|>.
    first = [BOS, *P["You are brief."], USER, *P[": What is this?\n\n"], ASSISTANT, *P[":"]]
    second = [USER, *P[": Why?\n\n"], ASSISTANT, *P[":"]]
    assert row["input_ids"] == [*first, *P["A cat."], EOS, *second, *P["Two cats."], EOS]
    masked = [BOS, *[X] * (len(first) - 1)]
    assert row["labels"] == [*masked, *P["A cat."], EOS, *[X] * len(second), *P["Two cats."], EOS]
    assert row["images"] == [] and row["images_spatial_crop"] == [] and row["num_loss_tokens"] == 9


def test_golden_ocr():
    row = one_row(sample("ocr", [image(0), text("OPEN")], [png(384, 384)]))  # 1×1: 421
    prompt = [BOS, USER, *P[": "], *[IMG] * 421, *P["\nRead the text.\n\n"], ASSISTANT, *P[":"]]
    assert row["input_ids"] == [*prompt, *P["OPEN"], EOS]
    assert row["labels"] == [BOS, *[X] * (len(prompt) - 1), *P["OPEN"], EOS]


def test_golden_grounding_referring_expression():
    regions = [
        {
            "phrase": "the red car",
            "image": 0,
            "boxes": [[10, 20, 30, 40]],
            "segment": None,
            "start": None,
            "end": None,
        }
    ]
    row = one_row(sample("grounding", [image(0)], [png(999, 999)], regions))  # 3×3: 2017
    prompt = [BOS, USER, *P[": "], *[IMG] * 2017, *P["\nLocate "], REF, *P["the red car"], REF_END]
    prompt += [*P[" in the given image.\n\n"], ASSISTANT, *P[":"]]
    answer = [REF, *P["the red car"], REF_END, DET, *P["[[10, 20, 30, 40]]"], DET_END, EOS]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [BOS] + [X] * (len(prompt) - 1) + answer
    assert row["regions"] == [{"phrase": "the red car", "image": 0, "boxes": [[10, 20, 30, 40]]}]
    assert row["images_spatial_crop"] == [[3, 3]]


def test_golden_interleaved_with_three_images_stops_cropping():
    content = [text("Title"), text("First."), image(0), text(" after"), image(1), image(2), text("end")]
    row = one_row(sample("interleaved", content, [png(640, 480), png(999, 999), png(200, 1500)]))
    ids = [BOS, *P["Title\nFirst."], *[IMG] * 421, *P[" after"], *[IMG] * 842, *P["end"], EOS]
    assert row["input_ids"] == ids
    assert row["labels"] == [BOS, *P["Title\nFirst."], *[X] * 421, *P[" after"], *[X] * 842, *P["end"], EOS]
    assert row["images_spatial_crop"] == [[1, 1]] * 3
    assert row["image_token_offsets"] == [5, 427, 848]


def test_golden_text():
    row = one_row(sample("text", [text("Just text.")]))
    assert row["input_ids"] == [BOS, *P["Just text."], EOS]
    assert row["labels"] == [BOS, *P["Just text."], EOS]
    assert row["tokenizer_sha256"] == TOK.identity and row["shape_fingerprint"] == TOY.fingerprint()
    assert (row["part"], row["truncated"], row["position_ids"], row["documents"]) == (0, False, None, None)


# ----------------------------------------------------------------------------------------------------
# invariants over generated samples

WORDS = st.sampled_from(["a", "cat", " ", "\n", "<|ref|>", "<|/ref|>", "é", "🙂", "  the dog ", "9"])
TEXTS = st.lists(WORDS, min_size=1, max_size=8).map("".join).filter(str.strip)
SIZES = st.tuples(st.integers(1, 2500), st.integers(1, 2500))


@st.composite
def documents(draw):
    sizes = draw(st.lists(SIZES, max_size=4))
    parts = [image(i) for i in range(len(sizes))] + [
        text(t) for t in draw(st.lists(TEXTS, min_size=1, max_size=4))
    ]
    order = draw(st.permutations(parts))
    # Image segments must come in image order.
    numbered, seen = [], 0
    for segment in order:
        if segment["type"] == "image":
            segment, seen = image(seen), seen + 1
        numbered.append(segment)
    kind = draw(st.sampled_from(["interleaved", "caption"]))
    return sample(kind, numbered, [fake_image(w, h) for w, h in sizes], key=str(draw(st.integers(0, 10**6))))


BLANKS = st.sampled_from(["", " ", "\n \t"])
LITERAL = st.sampled_from(["<|User|>", "<|Assistant|>", "<｜end▁of▁sentence｜>", "<｜▁pad▁｜>"])


@st.composite
def conversations(draw):
    """Conversations as the official processor takes them: an optional system message, user turns with
    images, blank turns, and special-token strings typed in the text (which stay text here)."""
    n_images = draw(st.integers(0, 4))
    rounds = draw(st.integers(1, 3))
    content, placed, turn = [], 0, 0

    def words():
        return draw(st.one_of(TEXTS, BLANKS, st.tuples(TEXTS, LITERAL, TEXTS).map("".join)))

    if draw(st.booleans()):
        content.append(text(words(), turn, "system"))
        turn += 1
    for r in range(rounds):
        here = n_images - placed if r == rounds - 1 else draw(st.integers(0, n_images - placed))
        content += [image(placed + i, turn, "user") for i in range(here)]
        placed += here
        content.append(text(words(), turn, "user"))
        content.append(text(words(), turn + 1, "assistant"))
        turn += 2
    images = [fake_image(*draw(SIZES)) for _ in range(n_images)]
    return sample("conversation", content, images, key=str(draw(st.integers(0, 10**6))))


def fake_image(width, height):
    # Layouts need only the size: no pixels are decoded when building sequences.
    return {"bytes": b"\x89PNG", "path": "x.png", "width": width, "height": height, "format": "PNG"}


def check_row(row, max_seq_len=None):
    row = listed(row)
    ids, labels = row["input_ids"], row["labels"]
    assert len(labels) == len(ids) == row["seq_len"]
    if max_seq_len is not None:
        assert row["seq_len"] <= max_seq_len
    assert ids[0] == BOS and labels[0] == BOS and ids[-1] == EOS
    images = row["images"]
    cropping = len(images) <= 2
    spans = set()
    for offset, grid, img in zip(row["image_token_offsets"], row["images_spatial_crop"], images, strict=True):
        assert tuple(grid) == tiling.best_grid((img["width_px"], img["height_px"]), TOY, cropping)
        spans.update(range(offset, offset + layout.image_token_count(tuple(grid), TOY)))
    mask = [i == IMG for i in ids]
    # The image ids are exactly the images' spans, each as long as its layout.
    assert {i for i, is_image in enumerate(mask) if is_image} == spans
    assert sum(mask) == row["num_image_tokens"] == len(spans)
    assert all(label == X for label, is_image in zip(labels, mask, strict=True) if is_image)
    assert row["num_loss_tokens"] == sum(label != X for label in labels[1:])
    assert row["num_text_tokens"] == row["seq_len"] - row["num_image_tokens"]
    assert all(label in (X, token) for label, token in zip(labels, ids, strict=True))
    return mask


@given(st.one_of(documents(), conversations()))
def test_invariants_of_every_row(s):
    (row,) = map(listed, build(s, TOK, options=SequenceOptions(max_seq_len=10**5)).rows)
    check_row(row)
    assert len(row["images"]) == len(s["images"])
    if s["kind"] == "conversation":
        assert row == official(s, row)
        typed = "".join(segment["text"] or "" for segment in s["content"])
        assert row["special_strings_as_text"] == TOK.count_special_strings(typed)


def official(s, row):
    """The row as an independent reading of the official `process_one` (training path) gives it: bos (its id
    also the first label); a system message stripped and tokenized alone, masked; each user turn's string
    (`<|User|>: {content}\\n\\n<|Assistant|>:`, or `<|User|>:<|Assistant|>:` when blank) split at
    `<image>` and the special tokens and tokenized piecewise, masked; each answer stripped and tokenized
    alone, plus eos, trained; -100 on images. The one departure: special-token strings typed in the data stay
    text, so only the grounding markup in the text becomes special ids."""
    special = {v: getattr(TOY.special_tokens, k) for k, v in tokenizer.GROUNDING_STRINGS.items()}
    split = re.compile("(" + "|".join(map(re.escape, ["<image>", *special])) + ")")
    cropping = len(s["images"]) <= 2
    counts = [
        layout.image_token_count(tiling.best_grid((i["width"], i["height"]), TOY, cropping), TOY)
        for i in s["images"]
    ]

    def tokens_of(text, images=None):
        tokens = []
        for piece in split.split(text):
            if piece == "<image>":
                tokens += [IMG] * counts[next(images)]
            elif piece in special:
                tokens.append(special[piece])
            elif piece:
                tokens += TOK.encode(piece)
        return tokens

    ids, labels = [BOS], [BOS]
    turns = {}
    for segment in s["content"]:
        turns.setdefault(segment["turn"], []).append(segment)
    for number in sorted(turns):
        segments = turns[number]
        body = "".join(seg["text"] if seg["type"] == "text" else "<image>" for seg in segments).strip()
        role = segments[0]["role"]
        if role == "system":
            tokens = tokens_of(body)
            ids += tokens
            labels += [X] * len(tokens)
        elif role == "user":
            images = iter(seg["image"] for seg in segments if seg["type"] == "image")
            tail = tokens_of(f": {body}\n\n", images) if body else TOK.encode(":")
            tokens = [USER, *tail, ASSISTANT, *TOK.encode(":")]
            ids += tokens
            labels += [X] * len(tokens)
        else:
            tokens = tokens_of(body)
            ids += [*tokens, EOS]
            labels += [*tokens, EOS]
    return {**row, "input_ids": ids, "labels": labels}


def test_a_reader_rebuilds_the_pixels_from_the_row_alone():
    pictures = [png(640, 480), png(200, 1500), png(384, 384)]
    for images in (pictures[:2], pictures):
        content = [image(i) for i in range(len(images))] + [text("A cat.")]
        row = one_row(sample("interleaved", content, images))
        for stored, grid in zip(row["images"], row["images_spatial_crop"], strict=True):
            tiles = tiling.tile_image(image_io.decode(stored["bytes"]), TOY, cropping=grid != [1, 1])
            assert list(tiles.grid) == grid


# ----------------------------------------------------------------------------------------------------
# length policies


def long_document(n_images=5, words=60):
    content = []
    for i in range(n_images):
        content.append(
            text(" ".join(["the red car"] * words) + f" <|ref|>car {i}<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>")
        )
        content.append(image(i))
    content.append(text("The end."))
    return sample(
        "interleaved", content, [fake_image(640 + 10 * i, 480) for i in range(n_images)], key="long"
    )


LONG_DOCUMENT_TOKENS = build(long_document(), TOK, options=SequenceOptions(max_seq_len=10**5)).rows[0][
    "seq_len"
]


def test_drop_rejects_too_long_with_the_length():
    s = long_document()
    built = build(s, TOK, options=SequenceOptions(max_seq_len=2000))
    assert built.rows == []
    assert built.reject["reason"] == "too_long" and built.reject["stage"] == "sequence"
    assert built.reject["detail"].startswith(f"{LONG_DOCUMENT_TOKENS} tokens > max_seq_len 2000")
    assert built.reject["sample_id"] == s["sample_id"] and built.reject["key"] == "long"


def spans_whole(row):
    """Every ref/det group in the row is complete."""
    ids = [i for i in row["input_ids"] if i in (REF, REF_END, DET, DET_END)]
    text = "".join({REF: "(", REF_END: ")", DET: "[", DET_END: "]"}[i] for i in ids)
    return re.fullmatch(r"(\(\)(\[\])?|\[\])*", text) is not None


@given(st.integers(10, 4000))
def test_truncate_plain_never_splits_a_span(max_seq_len):
    s = long_document()
    built = build(s, TOK, options=SequenceOptions(max_seq_len=max_seq_len, overflow="truncate"))
    if built.reject is not None:
        assert built.reject["reason"] == "no_loss_tokens"
        return
    (row,) = built.rows
    check_row(row, max_seq_len)
    assert spans_whole(row)
    assert row["truncated"] is (max_seq_len < LONG_DOCUMENT_TOKENS)
    assert row["num_loss_tokens"] >= 2  # some text and the eos


def test_truncate_plain_keeps_as_much_as_fits():
    s = long_document(n_images=3)
    assert one_row(s, max_seq_len=2500, overflow="truncate")["images_spatial_crop"] == [[1, 1]] * 3
    row = one_row(s, max_seq_len=1500, overflow="truncate")
    # Three images at 421 tokens each end past 1500, two would be cropped (1023 each) and do not fit either:
    # one image is kept, cropped, with all the text up to where the second one was.
    check_row(row, 1500)
    assert row["images_spatial_crop"] == [[2, 2]] and row["seq_len"] > 1400


@given(st.integers(20, 1500))
def test_truncate_chat_shortens_the_last_kept_answer(max_seq_len):
    answer = " ".join(["the <|ref|>red car<|/ref|><|det|>[[1, 2, 3, 4]]<|/det|>"] * 30)
    content = [
        image(0, 0, "user"),
        text("What is this?", 0, "user"),
        text(answer, 1, "assistant"),
        text("Why?", 2, "user"),
        text(answer, 3, "assistant"),
    ]
    s = sample("conversation", content, [fake_image(384, 384)])
    built = build(s, TOK, options=SequenceOptions(max_seq_len=max_seq_len, overflow="truncate"))
    full = build(s, TOK, options=SequenceOptions(max_seq_len=10**5)).rows[0]["input_ids"].tolist()
    first_prompt = full.index(ASSISTANT) + 2  # bos, <|User|>: <image ×421>..., <|Assistant|>:
    if max_seq_len < first_prompt + 2:  # not even one answer token and the eos fit after it
        assert built.reject["reason"] == "no_loss_tokens"
        return
    (row,) = map(listed, built.rows)
    check_row(row, max_seq_len)
    assert spans_whole(row)
    ids, labels = row["input_ids"], row["labels"]
    assert labels[-1] == EOS and labels[-2] != X  # the answer keeps its eos and some text
    if ids.count(USER) == 2:
        assert ids.count(EOS) == 2


def test_truncate_drops_a_trailing_question():
    content = [text("Q", 0, "user"), text("A cat.", 1, "assistant"), text("Why " * 50, 2, "user")]
    row = one_row(sample("conversation", content), max_seq_len=20, overflow="truncate")
    assert row["input_ids"][-4:] == [*P["A cat."], EOS] and USER not in row["input_ids"][2:]


@given(st.integers(1100, 3000))
def test_split_cuts_plain_documents_into_valid_parts(max_seq_len):
    s = long_document(n_images=5, words=80)
    built = build(s, TOK, options=SequenceOptions(max_seq_len=max_seq_len, overflow="split"))
    assert built.reject is None and len(built.rows) >= 2
    for k, row in enumerate(built.rows, start=1):
        check_row(row, max_seq_len)  # includes the >2-images rule on the part's own images
        assert (row["part"], row["sample_id"]) == (k, f"{s['sample_id']}-{k}")
        assert spans_whole(row)
    assert sum(len(row["images"]) for row in built.rows) == 5
    text_of = [TOK.decode([i for i in row["input_ids"].tolist() if 3 < i < 4096]) for row in built.rows]
    assert text_of[-1].endswith("The end.") and text_of[0].startswith("the red car")


def test_split_a_text_too_long_for_one_part():
    s = sample("text", [text(" ".join(f"word{i}" for i in range(3000)))], key="t")
    built = build(s, TOK, options=SequenceOptions(max_seq_len=500, overflow="split"))
    assert len(built.rows) > 10
    for row in built.rows:
        check_row(row, 500)
    words = " ".join(TOK.decode(row["input_ids"][1:-1].tolist()) for row in built.rows).split()
    assert words == [f"word{i}" for i in range(3000)]


def test_split_refuses_chats_and_images_that_do_not_fit():
    content = [text("Q " * 100, 0, "user"), text("A", 1, "assistant")]
    built = build(
        sample("conversation", content), TOK, options=SequenceOptions(max_seq_len=50, overflow="split")
    )
    assert built.reject["reason"] == "too_long" and "plain documents only" in built.reject["detail"]
    s = sample("interleaved", [text("x"), image(0)], [fake_image(384, 3456)])  # 2101 tokens
    built = build(s, TOK, options=SequenceOptions(max_seq_len=1000, overflow="split"))
    assert built.reject["reason"] == "too_long" and "a single image does not fit" in built.reject["detail"]


# ----------------------------------------------------------------------------------------------------
# rows, options, tables


def test_images_by_reference_and_missing_bytes():
    s = sample("caption", [image(0), text("A cat.")], [png(384, 384)])
    row = one_row(s, embed_images=False)
    assert row["images"][0]["bytes"] is None and row["images"][0]["path"] == "384x384.png"
    s["images"][0]["bytes"] = None
    assert build(s, TOK).reject["reason"] == "missing_image"
    s["images"][0]["path"] = None
    assert build(s, TOK, options=SequenceOptions(embed_images=False)).reject["reason"] == "missing_image"


def test_template_errors_become_reject_rows():
    built = build(sample("caption", [text("a <image> b")]), TOK)
    assert built.rows == [] and built.reject["reason"] == "placeholder_mismatch"


def test_build_table_round_trips_through_parquet():
    samples = [
        sample("caption", [image(0), text("A cat.")], [png(640, 480)], key="a"),
        sample("caption", [text("x <image>")], key="bad"),
        long_document(n_images=3),
    ]
    builder = SequenceBuilder(TOK, options=SequenceOptions(max_seq_len=1500, overflow="split"))
    rows, rejects = builder.build_table(pa.Table.from_pylist(samples))
    assert rows.schema.equals(shard.SCHEMA) and rejects.num_rows == 1
    assert rows.column("sample_id").to_pylist()[0] == samples[0]["sample_id"]
    buffer = io.BytesIO()
    pq.write_table(rows, buffer)
    back = pq.read_table(io.BytesIO(buffer.getvalue()))
    assert back.equals(rows)
    one_by_one = [row for x in samples for row in builder.build(x).rows]
    assert shard.to_table(one_by_one).equals(rows)


def test_shape_must_be_the_tokenizers():
    assert SequenceBuilder(TOK, TOY.with_special_tokens(None)).shape == TOY
    with pytest.raises(ValueError, match="not the shape tokenizer"):
        SequenceBuilder(TOK, model_shapes.load("tiny"))
    with pytest.raises(ValueError, match="overflow='cut'"):
        SequenceOptions(overflow="cut")
    with pytest.raises(ValueError, match="max_seq_len=2"):
        SequenceOptions(max_seq_len=2)


def test_caches_never_change_the_rows(monkeypatch):
    samples = [
        sample("caption", [image(0), text(f"A cat number {i}.")], [fake_image(100 + i, 80)], key=str(i))
        for i in range(6)
    ]
    expected = shard.to_table([row for s in samples for row in build(s, TOK).rows])
    monkeypatch.setattr(sequence, "_CACHE_ENTRIES", 2)  # the caches fill and are dropped many times
    builder = SequenceBuilder(TOK)
    for _ in range(2):
        assert shard.to_table([row for b in builder.build_many(samples) for row in b.rows]).equals(expected)


# ----------------------------------------------------------------------------------------------------
# the real DeepSeek-VL2 tokenizer with the tiny shape; the official processor's rules, each named

TINY = model_shapes.load("tiny")
VL2 = tokenizer.load("default", TINY)


def conversation(*turns, images=()):
    """A conversation sample from (role, text) turns; `<image>` in a user text is the next image."""
    content, index = [], 0
    for number, (role, value) in enumerate(turns):
        for k, piece in enumerate(value.split("<image>")):
            if k:
                content.append(image(index, number, role))
                index += 1
            content.append(text(piece, number, role))
    return sample("conversation", content, images)


def test_tiny_rows_carry_the_real_deepseek_vl2_ids():
    # The official processor's output for golden case single_basic (tests/golden/tokens): the same
    # conversation as a caption sample with that prompt gives the same ids.
    s = sample("caption", [image(0), text("A red square on a plain background.")], [png(640, 480)])
    (row,) = map(listed, build(s, VL2, options=SequenceOptions(templates=CONFIG)).rows)
    prompt = [0, 128821, 28, 223, *[128815] * 1023, 201, 72188, 566, 4609, 339, 128822, 28]
    answer = [35, 4332, 5080, 377, 260, 17603, 6951, 16, 1]
    assert row["input_ids"] == prompt + answer
    assert row["labels"] == [0, *[X] * (len(prompt) - 1), *answer]
    assert row["shape_fingerprint"] == TINY.fingerprint() and row["tokenizer_sha256"] == VL2.identity


def test_labels_keep_the_bos_id_at_position_0_as_the_official_target_ids():
    (row,) = build(conversation(("user", "Hi"), ("assistant", "Hello.")), VL2).rows
    assert row["labels"][0] == row["input_ids"][0] == 0
    assert row["num_loss_tokens"] == int((row["labels"][1:] != X).sum())  # the bos is no target of the row


def test_a_system_message_is_encoded_alone_with_no_separator():
    system = "You are a careful visual assistant."
    (row,) = build(conversation(("system", f" {system}\n"), ("user", "Hi"), ("assistant", "Yes.")), VL2).rows
    alone = VL2.encode(system)
    ids = row["input_ids"].tolist()
    assert ids[: 2 + len(alone)] == [0, *alone, 128821]
    assert row["labels"].tolist()[1 : 1 + len(alone)] == [X] * len(alone)
    # With the "\n\n" of the readable sft_format string the last piece would merge into another id.
    assert VL2.encode(system + "\n\n")[-1] == 339 != alone[-1]


def test_a_source_system_text_is_rendered_as_a_system_message():
    turns = (("user", "<image>\nWhat is this?"), ("assistant", "A grey square."))
    configured = SequenceOptions(templates=TemplateConfig(system=" Answer briefly. "))
    (by_source,) = build(conversation(*turns, images=[png(512, 512)]), VL2, options=configured).rows
    as_message = conversation(("system", "Answer briefly."), *turns, images=[png(512, 512)])
    (by_message,) = build(as_message, VL2).rows
    assert by_source["input_ids"].tolist() == by_message["input_ids"].tolist()
    assert by_source["labels"].tolist() == by_message["labels"].tolist()


def test_special_token_strings_typed_in_the_data_stay_text_and_are_counted():
    typed = conversation(("user", "Say <|User|> twice: <|User|>"), ("assistant", "Done<｜end▁of▁sentence｜>"))
    (row,) = build(typed, VL2).rows
    ids = row["input_ids"].tolist()
    assert ids.count(128821) == 1 and ids.count(1) == 1  # the template's <|User|> and eos only
    assert row["special_strings_as_text"] == 3
    text_ids = [i for i in ids if i < 128815 and i > 2]
    assert "<|User|>" in VL2.decode(text_ids) and "<｜end▁of▁sentence｜>" in VL2.decode(text_ids)
    # The grounding markup in data text does become its ids, as officially.
    (grounded,) = build(conversation(("user", "Find it."), ("assistant", "<|ref|>it<|/ref|>")), VL2).rows
    assert 128816 in grounded["input_ids"].tolist() and grounded["special_strings_as_text"] == 0


def test_empty_turns_as_the_official_processor_takes_them():
    (row,) = build(conversation(("user", "  "), ("assistant", "")), VL2).rows
    assert row["input_ids"].tolist() == [0, 128821, 28, 128822, 28, 1]  # <|User|>:<|Assistant|>: eos
    assert row["labels"].tolist() == [0, X, X, X, X, 1] and row["num_loss_tokens"] == 1

"""Shard rows: one pretokenized training sequence per row, everything a reader needs to rebuild the official
DeepSeek-VL2 processor's tensors from the row alone.

`pipeline/sequence.py` makes these rows (and `pipeline/packing.py` packed ones); the pretokenize job writes
them to Parquet. Rebuilding the official batch from a row, with `shape` = the shape whose fingerprint the row
carries:

- `input_ids`, and `target_ids` = `labels`, position for position (an unpacked row's labels are exactly the
  official `target_ids`, the bos id at position 0 included);
- `images_seq_mask` = (`input_ids` == `shape.special_tokens.image`);
- `images_spatial_crop` = the column as is, one [w_tiles, h_tiles] row per image;
- pixels: `pipeline.tiling.tile_image(decode(image bytes), shape, cropping=grid != [1, 1])` per image, in
  order (a 1×1 grid tiles the same with cropping on or off, so the stored grid decides), normalized.

Columns, in this fixed order:

- `sample_id` (string): the sample's id (`schemas.sample.sample_id_for`); for part k of a split document
  `"{sample_id}-{k}"`; for a packed row the sha256 (first 32 hex digits) of its documents' ids joined by NUL.
- `source` (string): the configured source name; "packed" for a packed row (its `documents` say more).
- `key` (string, null for a packed row): the record's key within the source.
- `kind` (string): the sample's kind (`schemas.sample.KINDS`); "packed" for a packed row.
- `part` (int32): 0 for a whole sample; 1, 2, ... for the consecutive parts of a document split to fit
  `max_seq_len` (each part is a valid sequence of its own); 0 for a packed row.
- `input_ids` (list<int32>): the token ids: bos, text pieces and special tokens, `image_token_count` copies
  of the `<image>` id per image, eos (and for a packed row, pad ids after the last document).
- `labels` (list<int32>): the training targets, as long as `input_ids`: the id where the model is trained
  on the token, -100 elsewhere. -100 on every image token, on user turns and system text, on pad; the id on
  assistant answers and their eos (chat) or on all text and the eos (plain documents). Position 0 holds the
  bos id, as the official `target_ids` do (after the causal shift no logit is scored against it, except in a
  left-padded batch, where the last pad position predicts it, as in the official batches). The one place rows
  differ from the official processor's output: in a packed row, every document's first position (its bos)
  is -100, so that no loss crosses a document boundary.
- `images` (list<IMAGE>): the row's images in order of appearance in `input_ids`.
- `images_spatial_crop` (list<[int32, int32]>): per image [w_tiles, h_tiles] = `pipeline.tiling.best_grid`
  of its original size, with cropping off ([1, 1]) when its sample (or split part) has more than 2 images.
- `image_token_offsets` (list<int32>): per image the index in `input_ids` of the first token of its span; the
  span is `pipeline.layout.image_token_count(grid)` tokens long.
- `regions` (list<REGION>): the sample's grounding regions on the row's images, boxes in original-image
  pixels (what the text writes is `pipeline.templates.quantize_box` of them); empty when none.
- `num_image_tokens` (int32): `<image>` tokens in the row (the sum of the spans).
- `num_text_tokens` (int32): the other tokens of the documents: bos, text, special tokens, eos (not pad).
- `num_loss_tokens` (int32): the tokens trained on: labels that are not -100, position 0 left out (the
  bos there is no target of the row's own shifted loss).
- `seq_len` (int32): len(input_ids).
- `truncated` (bool): text was cut away to fit `max_seq_len` (the `truncate` length policy).
- `special_strings_as_text` (int32): how many special-token strings (`<|User|>`, `<｜end▁of▁sentence｜>`, the
  tokenizer's other special tokens; not the grounding markup) the sample's text spells. They are encoded as
  ordinary text, where the official tokenizer would give special ids: data cannot inject control tokens
  (`pipeline.tokenizer`). For a packed row, the sum over its documents.
- `tokenizer_sha256` (string): sha256 of the tokenizer file (`pipeline.tokenizer.Tokenizer.identity`).
- `shape_fingerprint` (string): `ModelShape.fingerprint()` of the model shape, special token ids included.
- `position_ids` (list<int32>, null unless packed): per token its position within its document, restarting
  at 0 at every document and at the pad tail.
- `cu_seqlens` (list<int32>, null unless packed): cumulative lengths [0, l1, l1 + l2, ..., seq_len]; the pad
  tail, when there is one, is the last segment.
- `documents` (list<DOCUMENT>, null unless packed): the rows packed into this one, in order.
"""

from __future__ import annotations

import pyarrow as pa

from schemas import table_of

SCHEMA_VERSION = 2
"""2: labels keep the bos id at position 0 (1 held -100 there) and rows carry `special_strings_as_text`."""

IGNORE_INDEX = -100
"""The label of a position the loss ignores (the official `ignore_id`)."""

IMAGE = pa.struct(
    [
        pa.field("bytes", pa.binary()),  # the encoded file as read (null when images are stored by reference)
        pa.field("path", pa.string()),  # where it came from (the sample's path); what a reference resolves
        pa.field(
            "format", pa.string(), nullable=False
        ),  # container format as Pillow names it: JPEG, PNG, ...
        pa.field("width_px", pa.int32(), nullable=False),  # original (stored) width in pixels
        pa.field("height_px", pa.int32(), nullable=False),  # original (stored) height in pixels
    ]
)

BOX = pa.list_(pa.float64(), 4)
"""[x1, y1, x2, y2] in original-image pixels (the convention of `schemas.sample`)."""

REGION = pa.struct(
    [
        pa.field("phrase", pa.string(), nullable=False),  # the referring expression, phrase or OCR text
        pa.field("image", pa.int32(), nullable=False),  # index into the row's `images`
        pa.field("boxes", pa.list_(BOX), nullable=False),  # one or more boxes for the phrase
    ]
)

DOCUMENT = pa.struct(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # the document's own sample_id (and part id)
        pa.field("source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("seq_len", pa.int32(), nullable=False),  # its length: one cu_seqlens step
        pa.field("special_strings_as_text", pa.int32(), nullable=False),  # as the row column
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("part", pa.int32(), nullable=False),
        pa.field("input_ids", pa.list_(pa.int32()), nullable=False),
        pa.field("labels", pa.list_(pa.int32()), nullable=False),
        pa.field("images", pa.list_(IMAGE), nullable=False),
        pa.field("images_spatial_crop", pa.list_(pa.list_(pa.int32(), 2)), nullable=False),
        pa.field("image_token_offsets", pa.list_(pa.int32()), nullable=False),
        pa.field("regions", pa.list_(REGION), nullable=False),
        pa.field("num_image_tokens", pa.int32(), nullable=False),
        pa.field("num_text_tokens", pa.int32(), nullable=False),
        pa.field("num_loss_tokens", pa.int32(), nullable=False),
        pa.field("seq_len", pa.int32(), nullable=False),
        pa.field("truncated", pa.bool_(), nullable=False),
        pa.field("special_strings_as_text", pa.int32(), nullable=False),
        pa.field("tokenizer_sha256", pa.string(), nullable=False),
        pa.field("shape_fingerprint", pa.string(), nullable=False),
        pa.field("position_ids", pa.list_(pa.int32())),
        pa.field("cu_seqlens", pa.list_(pa.int32())),
        pa.field("documents", pa.list_(DOCUMENT)),
    ],
    metadata={"vl2prep.schema": "shard", "vl2prep.schema_version": str(SCHEMA_VERSION)},
)


def schema_for_version(version: int) -> pa.Schema:
    """The shard schema an output of `version` was written with: 1 lacks `special_strings_as_text` (in rows
    and documents), 2 is `SCHEMA`. ValueError for any other version."""
    if version == SCHEMA_VERSION:
        return SCHEMA
    if version == 1:
        document_v1 = pa.struct([field for field in DOCUMENT if field.name != "special_strings_as_text"])
        fields = [
            pa.field("documents", pa.list_(document_v1)) if field.name == "documents" else field
            for field in SCHEMA
            if field.name != "special_strings_as_text"
        ]
        return pa.schema(fields, metadata={"vl2prep.schema": "shard", "vl2prep.schema_version": "1"})
    raise ValueError(f"unknown shard schema version {version!r}; known: 1, {SCHEMA_VERSION}")


def to_table(rows: list[dict]) -> pa.Table:
    """Shard rows (dicts with the schema's columns) as a table of exactly `SCHEMA`."""
    return table_of(rows, SCHEMA)

"""Reject rows: every input record that does not become a sample (or a sequence) ends here, once.

Nothing is dropped silently: a record that fails at any stage becomes exactly one reject row with a
reason code from `REASONS` and a human-readable detail, so that read = written + rejected holds in
every count.

Columns, in this fixed order:

- `source` (string): the configured source `name`.
- `key` (string): the record's key within the source (as in `schemas.sample`), or the file's path
  relative to the source root when a whole file could not be read.
- `sample_id` (string, null when the record never got that far): `schemas.sample.sample_id_for`.
- `stage` (string): one of `STAGES`, where the record was stopped.
- `reason` (string): a code from `REASONS`.
- `detail` (string): what exactly was wrong, for a person (the failing value, the limit, the error).
- `value` (float64, null unless a number failed): the measured quantity that a configured filter found
  out of bounds (pixels, characters, tokens, a share), for a machine to check without parsing `detail`.
"""

from __future__ import annotations

import pyarrow as pa

from schemas import table_of

SCHEMA_VERSION = 2

STAGES = ("read", "image", "sample", "sequence", "filter", "dedup", "decontaminate")
"""read: the file or record could not be parsed. image: an image could not be used. sample: the
record parsed but does not make a valid sample. sequence: the sample could not become a token
sequence. filter: a configured filter dropped it. dedup: a duplicate (or near-duplicate) of a kept
sample. decontaminate: it overlaps an evaluation set."""

REASONS: dict[str, str] = {
    # read
    "unreadable_file": "a whole input file could not be opened or parsed; each of its records is rejected",
    "malformed_record": "a record that is not valid JSON (or not the expected structure)",
    "missing_field": "a required field of the format is absent or null",
    "bad_field": "a field has the wrong type or an impossible value",
    "unsafe_member": "a tar member with an absolute name, '..', a link or a device: never extracted",
    "record_too_large": "a JSON line, JSON array element or tar text/JSON member over max_record_bytes",
    "unsupported_file": "a file in a source's folder or glob that its format cannot read (the detail names "
    "the file and the formats that would); one reject per file, never a silent skip",
    "failed_download": "a record a downloader (img2dataset) marked as not downloaded; the detail gives its "
    "status and error",
    # image
    "missing_image": "an image file referenced by the record does not exist or is not a regular file (a "
    "folder, FIFO, device)",
    "outside_root": "an image file whose real path (symlinks resolved) is outside images_root: never opened",
    "empty_image": "an image file of zero bytes",
    "unreadable_image": "image bytes in an unknown format or corrupt",
    "truncated_image": "image bytes that end before the image does",
    "zero_size_image": "an image with a zero-sized side",
    "image_too_large": "an image with more pixels than max_image_pixels or more bytes than max_image_bytes "
    "(decompression bomb guard)",
    # sample
    "bad_text": "text that is not valid UTF-8 or contains NUL characters",
    "empty_text": "an empty caption, turn or document where text is required",
    "placeholder_mismatch": "the number of <image> placeholders differs from the number of images",
    "box_outside_image": "a box that does not overlap its image at all",
    "degenerate_box": "a box with zero or negative width or height",
    "no_content": "a record with neither usable text nor images",
    # sequence
    "too_long": "the token sequence exceeds max_seq_len under the 'drop' length policy",
    "no_loss_tokens": "a sequence with no token to train on",
    "bad_tokens": "a token id outside the vocabulary or equal to a special id where text was expected",
    "too_many_tiles": "packing with max_tiles: a sample whose images alone need more tiles than a packed row "
    "may hold (value: its tiles)",
    # filter / dedup
    "filtered": "dropped by a reader's own filter (grit's min_score: the detail names it and the value)",
    "image_too_small": "filter min_image_side: an image side shorter than the minimum (value: pixels)",
    "extreme_aspect_ratio": "filter max_aspect_ratio: an image's long/short side ratio above the maximum",
    "too_many_pixels": "filter max_image_pixels: an image with more pixels than the maximum (value: pixels)",
    "text_too_short": "filter min_text_chars: fewer text characters than the minimum",
    "text_too_long": "filter max_text_chars: more text characters than the maximum",
    "too_few_text_tokens": "filter min_text_tokens: fewer text tokens than the minimum",
    "too_many_text_tokens": "filter max_text_tokens: more text tokens than the maximum",
    "too_much_padding": "filter max_padding_share: an image whose tiled canvas is too much padding (a share)",
    "box_too_small": "filter min_box_area: a grounding box smaller than the minimum area (value: pixels²)",
    "duplicate_sample": "dedup by sample: the same content as an earlier sample (the detail names it)",
    "duplicate_image": "dedup by image: the same images as an earlier sample (the detail names it)",
    "duplicate_text": "dedup by text: the same normalized text as an earlier sample (the detail names it)",
    "near_duplicate_image": "dedup by image_near: an image within near_distance bits (perceptual hash) of an "
    "earlier kept sample's image (the detail names it; value: the distance)",
    # decontaminate
    "eval_image_overlap": "an image within image_distance bits (perceptual hash) of an evaluation image (the "
    "detail names it; value: the distance)",
    "eval_text_overlap": "text sharing a word n-gram with an evaluation text after normalization (the detail "
    "names the evaluation item and the n-gram)",
}

SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_id", pa.string()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
    ],
    metadata={"vl2prep.schema": "reject", "vl2prep.schema_version": str(SCHEMA_VERSION)},
)


def schema_for_version(version: int) -> pa.Schema:
    """The reject schema an output of `version` was written with: 1 lacks the `value` column (outputs
    made before filters existed), 2 is `SCHEMA`. ValueError for any other version."""
    if version == SCHEMA_VERSION:
        return SCHEMA
    if version == 1:
        return SCHEMA.remove(SCHEMA.get_field_index("value")).with_metadata(
            {"vl2prep.schema": "reject", "vl2prep.schema_version": "1"}
        )
    raise ValueError(f"unknown reject schema version {version!r}; known: 1, {SCHEMA_VERSION}")


def reject(
    source: str,
    key: str,
    stage: str,
    reason: str,
    detail: str,
    sample_id: str | None = None,
    value: float | None = None,
) -> dict:
    """One reject row; raises ValueError for a stage or reason code that is not documented here."""
    if stage not in STAGES:
        raise ValueError(f"unknown reject stage {stage!r}; known: {', '.join(STAGES)}")
    if reason not in REASONS:
        raise ValueError(f"unknown reject reason {reason!r}; known: {', '.join(REASONS)}")
    return {
        "source": source,
        "key": key,
        "sample_id": sample_id,
        "stage": stage,
        "reason": reason,
        "detail": detail,
        "value": value,
    }


def to_table(rows: list[dict]) -> pa.Table:
    """Reject rows as a table of exactly `SCHEMA`."""
    return table_of(rows, SCHEMA)

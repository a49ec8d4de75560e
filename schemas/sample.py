"""The unified sample: one row per usable input record, whatever the corpus format.

Readers in `pipeline/ingest/` turn records of every public format into rows of `SCHEMA`;
`pipeline/sequence.py` turns those rows into token sequences. A row keeps what the record said
(text, image bytes as read, boxes in the original image's pixels) and nothing model-specific:
templates, tokens and tiling come later, from the model shape.

Columns, in this fixed order:

- `sample_id` (string): lowercase hex, `sample_id_for(source, key)`: stable across runs and machines.
- `source` (string): the configured source `name` the record came from.
- `key` (string): the record's key within the source (a file path relative to the source root plus
  a record index or id, a tar member key, ...); with `source` it identifies the input record.
- `kind` (string): one of `KINDS`: what the sample is, which decides how it is templated.
- `content` (list of `SEGMENT`): the sample's text and image references, in reading order.
  A conversation is a list of turns: every segment carries its `turn` number (0-based) and `role`
  (`user`, `assistant` or `system`), and a turn's text may be split around its images. Documents
  (captions, interleaved web pages, OCR transcriptions, plain text) have `turn` 0 and `role` null.
  A segment is either text (`type` "text", `text` set, `image` null) or an image (`type` "image",
  `image` = index into `images`, `text` null). Every image of the sample appears exactly once, in
  `images` order.
- `images` (list of `IMAGE`): the images of the sample in order of appearance.
- `regions` (list of `REGION`): grounding regions where the format has them (referring expressions,
  grounded captions, OCR words or lines), else empty.
- `meta` (string): a JSON object with whatever else the record carried that is worth keeping
  (original ids, URLs, similarity scores, licences); `"{}"` when nothing.

Coordinates: pixels of the original, stored image (no EXIF rotation, as the official loader sees it);
x grows to the right, y downwards, the origin is the top-left corner of the top-left pixel, so a
box `[x1, y1, x2, y2]` satisfies 0 ≤ x1 < x2 ≤ width and 0 ≤ y1 < y2 ≤ height.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

from schemas import table_of

SCHEMA_VERSION = 1

KINDS = ("caption", "conversation", "interleaved", "ocr", "grounding", "text")
"""caption: one image and its description. conversation: chat turns (LLaVA-style), images in user
turns. interleaved: a document of text and images in reading order. ocr: an image and the text it
shows (optionally with line or word boxes). grounding: phrases with boxes on an image. text: text only."""

ROLES = ("user", "assistant", "system")

SEGMENT = pa.struct(
    [
        pa.field("turn", pa.int32(), nullable=False),  # 0-based turn number; 0 for documents
        pa.field("role", pa.string()),  # user | assistant | system; null for documents
        pa.field("type", pa.string(), nullable=False),  # "text" | "image"
        pa.field("text", pa.string()),  # the text of a text segment, else null
        pa.field("image", pa.int32()),  # index into `images` for an image segment, else null
    ]
)

IMAGE = pa.struct(
    [
        pa.field("bytes", pa.binary()),  # the encoded file exactly as read (JPEG, PNG, ...)
        pa.field("path", pa.string()),  # where it came from: path relative to images_root, URL or tar member
        pa.field("width", pa.int32(), nullable=False),  # stored width in pixels
        pa.field("height", pa.int32(), nullable=False),  # stored height in pixels
        pa.field(
            "format", pa.string(), nullable=False
        ),  # container format as Pillow names it: JPEG, PNG, ...
    ]
)

BOX = pa.list_(pa.float64(), 4)
"""[x1, y1, x2, y2] in original-image pixels (see the module docstring for the convention)."""

REGION = pa.struct(
    [
        pa.field("phrase", pa.string(), nullable=False),  # the referring expression, phrase or OCR text
        pa.field("image", pa.int32(), nullable=False),  # index into `images` of the image the boxes are on
        pa.field("boxes", pa.list_(BOX), nullable=False),  # one or more boxes for this phrase
        pa.field("segment", pa.int32()),  # index into `content` of the text the phrase occurs in, if known
        pa.field("start", pa.int32()),  # character offset of the phrase in that segment's text, if known
        pa.field("end", pa.int32()),  # character offset just past the phrase, if known
    ]
)

SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),
        pa.field("content", pa.list_(SEGMENT), nullable=False),
        pa.field("images", pa.list_(IMAGE), nullable=False),
        pa.field("regions", pa.list_(REGION), nullable=False),
        pa.field("meta", pa.string(), nullable=False),
    ],
    metadata={"vl2prep.schema": "sample", "vl2prep.schema_version": str(SCHEMA_VERSION)},
)


def sample_id_for(source: str, key: str) -> str:
    """The stable id of a record: the first 32 hex digits of sha256(source NUL key)."""
    return hashlib.sha256(f"{source}\0{key}".encode()).hexdigest()[:32]


def to_table(rows: list[dict]) -> pa.Table:
    """Rows (dicts with the schema's columns) as a table of exactly `SCHEMA`."""
    return table_of(rows, SCHEMA)

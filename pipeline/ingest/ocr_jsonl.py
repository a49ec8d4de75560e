"""Reader for OCR transcriptions in JSON Lines (`format: ocr_jsonl`): one `ocr` sample per record.

A record is `{"image": "pages/0001.png", "text": "the transcription", "lines": [{"text": "a line",
"bbox": [x1, y1, x2, y2]}, ...]}` (JSON Lines, or a JSON array of such records): a document scan or a
rendered text image (path relative to `images_root`) and the text it shows; `lines` is optional
(absent, null or `[]`: no regions), its boxes in pixels of the image.

- Content: the image, then the transcription exactly as given.
- Regions: one per line, in order: `phrase` the line's text, its box clipped to the image, and
  `segment` 1 with `start`/`end` where the line occurs in the transcription (searched from the end of
  the previous line found; null when it does not occur there).
- Key: `<file relative to the source root>#<record index>`. Meta: the record's other fields.
- Checks: `image` and `text` present (`missing_field`) and valid (`bad_field`, `bad_text`,
  `empty_text`); `lines` a list of objects (`bad_field`), each line's text valid and not blank, its
  box four finite numbers (`bad_field`) with an area (`degenerate_box`) overlapping the image
  (`box_outside_image`): any bad line rejects the record; the image file (see `checks`); a record of
  more than `max_record_bytes` is `record_too_large`, skipped unread (`streams.json_records`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig
from pipeline.ingest.checks import (
    Rejected,
    check_text,
    clip_box,
    image_path,
    image_segment,
    load_image,
    record_rows,
    sample_row,
    text_segment,
)
from pipeline.ingest.streams import json_records

__all__ = ["FORMAT", "OcrJsonlOptions", "read_file"]


@dataclass(frozen=True)
class OcrJsonlOptions(ImageOptions):
    """Options of `format: ocr_jsonl` (the image options only)."""


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    records = json_records(config.root, file, config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a record must be a JSON object, not {record!r:.80}")
    path = image_path(record.get("image"), "image")
    text = check_text(record.get("text"), "text")
    lines = record.get("lines")
    lines = [] if lines is None else lines
    if not isinstance(lines, list):
        raise Rejected("read", "bad_field", "lines is not a list")
    for index, line in enumerate(lines):
        if not isinstance(line, dict):
            raise Rejected("read", "bad_field", f"lines[{index}] is not an object")
        check_text(line.get("text"), f"lines[{index}].text")
    image = load_image(config, path)
    width, height = image.row["width"], image.row["height"]
    regions = []
    cursor = 0
    for index, line in enumerate(lines):
        phrase = line["text"]
        box = clip_box(line.get("bbox"), width, height, f"lines[{index}].bbox")
        region = {"phrase": phrase, "image": 0, "boxes": [box], "segment": None, "start": None, "end": None}
        start = text.find(phrase, cursor)
        if start >= 0:
            cursor = start + len(phrase)
            region.update(segment=1, start=start, end=cursor)
        regions.append(region)
    meta = {name: value for name, value in record.items() if name not in ("image", "text", "lines")}
    content = [image_segment(0), text_segment(text)]
    return sample_row(config, key, "ocr", content, [image], regions=regions, meta=meta)


FORMAT = Format(
    name="ocr_jsonl",
    options=OcrJsonlOptions,
    suffixes=(".jsonl", ".json"),
    uses_images_root=True,
    read_file=read_file,
)

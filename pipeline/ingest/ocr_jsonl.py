"""Reader for OCR transcriptions in JSON Lines (`format: ocr_jsonl`): one `ocr` sample per record.

A record is `{"image": "pages/0001.png", "text": "the transcription", "lines": [{"text": "a line",
"bbox": [x1, y1, x2, y2]}, ...]}` (JSON Lines, or a JSON array of such records; compressed or in a
`.zip` too): a document scan or a rendered text image (path relative to `images_root`, or absolute
inside it) and the text it shows; `lines` is optional (absent, null or `[]`: no regions), its boxes in
pixels of the image. Other tools' field names are options: `image_field`, `text_field`, `lines_field`,
`line_text_field`, `box_field` (mmocr's `{"filename", "text"}` is `image_field: filename`; WildReceipt's
`{"file_name", "annotations": [{"box": [8 numbers], "text"}]}` is `image_field: file_name`,
`lines_field: annotations`, `box_field: box`).

- Boxes: 4 numbers, `[x1, y1, x2, y2]` or with `box_format: xywh` `[x, y, width, height]`; or a
  polygon (a 4-point quad or more points) as a flat list `[x1, y1, x2, y2, x3, y3, ...]` or as points
  `[[x, y], ...]`, which becomes its enclosing box.
- Content: the image, then the transcription exactly as given; a record without `text_field` but with
  lines gets its lines' texts joined by newlines.
- Regions: one per line, in order: `phrase` the line's text, its box clipped to the image, and
  `segment` 1 with `start`/`end` where the line occurs in the transcription (searched from the end of
  the previous line found; null when it does not occur there). Lines whose text is blank (as
  WildReceipt has) are skipped and counted in meta `blank_lines`.
- Key: `<file relative to the source root>#<record index>`. Meta: the record's other fields.
- Checks: the image and the text present (`missing_field`) and valid (`bad_field`, `bad_text`,
  `empty_text`); the lines a list of objects (`bad_field`), each line's text a valid string, its box
  four finite numbers or a polygon of them (`bad_field`) with an area (`degenerate_box`) overlapping the
  image (`box_outside_image`): any bad line rejects the record; the image file (see `checks`); a record
  of more than `max_record_bytes` is `record_too_large`, skipped unread (`streams.json_records`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    Rejected,
    check_text,
    clip_box,
    image_path,
    image_segment,
    is_finite_number,
    load_image,
    record_rows,
    sample_row,
    text_field,
    text_segment,
)
from pipeline.ingest.streams import json_records

__all__ = ["FORMAT", "OcrJsonlOptions", "box_corners", "read_file"]


@dataclass(frozen=True)
class OcrJsonlOptions(ImageOptions):
    """Options of `format: ocr_jsonl`."""

    image_field: str = option("image", "record field with the image path")
    text_field: str = option(
        "text", "record field with the transcription (absent: the lines' texts joined by newlines)"
    )
    lines_field: str = option("lines", "record field with the list of lines (absent, null or []: no regions)")
    line_text_field: str = option("text", "field of a line with its text")
    box_field: str = option(
        "bbox",
        "field of a line with its box: 4 numbers (see box_format), or a polygon (a 4-point quad or more) as "
        "[x1, y1, x2, y2, ...] or [[x, y], ...], which becomes its enclosing box",
    )
    box_format: str = option(
        "xyxy",
        "what 4 numbers of a box are: xyxy ([x1, y1, x2, y2]) or xywh ([x, y, width, height])",
        choices=("xyxy", "xywh"),
    )


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per record of `file`, in file order."""
    records = json_records(config.root, file, config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, OcrJsonlOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a record must be a JSON object, not {record!r:.80}")
    path = image_path(record.get(options.image_field), options.image_field, absolute=True)
    lines = record.get(options.lines_field)
    lines = [] if lines is None else lines
    if not isinstance(lines, list):
        raise Rejected("read", "bad_field", f"{options.lines_field} is not a list")
    kept: list[tuple[str, str, object]] = []  # (what, text, box) of the lines that are not blank
    blank = 0
    for index, line in enumerate(lines):
        what = f"{options.lines_field}[{index}]"
        if not isinstance(line, dict):
            raise Rejected("read", "bad_field", f"{what} is not an object")
        phrase = text_field(line.get(options.line_text_field), f"{what}.{options.line_text_field}")
        if phrase.strip():
            kept.append((what, phrase, line.get(options.box_field)))
        else:
            blank += 1
    if record.get(options.text_field) is None and kept:
        text = "\n".join(phrase for _, phrase, _ in kept)
    else:
        text = check_text(record.get(options.text_field), options.text_field)
    image = load_image(config, path)
    width, height = image.row["width"], image.row["height"]
    regions = []
    cursor = 0
    for what, phrase, value in kept:
        corners = box_corners(value, options.box_format, f"{what}.{options.box_field}")
        box = clip_box(corners, width, height, f"{what}.{options.box_field}")
        region = {"phrase": phrase, "image": 0, "boxes": [box], "segment": None, "start": None, "end": None}
        start = text.find(phrase, cursor)
        if start >= 0:
            cursor = start + len(phrase)
            region.update(segment=1, start=start, end=cursor)
        regions.append(region)
    fields = (options.image_field, options.text_field, options.lines_field)
    meta = {name: value for name, value in record.items() if name not in fields}
    if blank:
        meta["blank_lines"] = blank
    content = [image_segment(0), text_segment(text)]
    return sample_row(config, key, "ocr", content, [image], regions=regions, meta=meta)


def box_corners(value: object, box_format: str, what: str) -> object:
    """`[x1, y1, x2, y2]` of a box given as 4 numbers (`box_format` xyxy or xywh) or as a polygon of
    three points or more (a flat list of coordinates or a list of [x, y] points): its enclosing box.
    Anything else is returned as it is, for `clip_box` to reject."""
    if not isinstance(value, list):
        return value
    if value and all(isinstance(point, list) and len(point) == 2 for point in value):
        value = [coordinate for point in value for coordinate in point]
    if not all(is_finite_number(v) for v in value):
        return value
    if len(value) == 4:
        if box_format == "xywh":
            x, y, w, h = value
            return [x, y, x + w, y + h]
        return value
    if len(value) >= 6 and len(value) % 2 == 0:
        xs, ys = value[0::2], value[1::2]
        return [min(xs), min(ys), max(xs), max(ys)]
    return value


FORMAT = Format(
    name="ocr_jsonl",
    options=OcrJsonlOptions,
    suffixes=(".jsonl", ".json"),
    uses_images_root=True,
    read_file=read_file,
    streamed=(".jsonl", ".json"),
)

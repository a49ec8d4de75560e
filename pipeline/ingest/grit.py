"""Reader for GRIT-style grounded captions (`format: grit`): one `grounding` sample per row.

A row is a Parquet row or a JSON record (JSON Lines or a JSON array), as img2dataset writes GRIT:
`key`, `caption`, `width`, `height`, and `noun_chunks` and/or `ref_exps`, lists of
`[start, end, x1, y1, x2, y2, score]`: the character span of a phrase in the caption and its box
normalized to [0, 1] of the image. The image is the first of `image_fields` that the row has (not
null): encoded bytes or a `{bytes, path}` struct (embedded), or a path relative to `images_root`;
with none, the file `images_root/<key>.jpg`.

- Content: the image, then the caption exactly as given.
- Regions: one per span of the `span_fields` (in that order, then in list order; an identical span
  and box given twice is kept once) whose score is at least `min_score` (when set): `phrase` the
  caption's characters `start:end`, `segment` 1 with that `start` and `end`, and the box in pixels of
  the stored image (normalized coordinates times its width and height, so an image that img2dataset
  resized keeps its boxes right), clipped to it.
- Key: `<file relative to the source root>#<row index>`. Meta: the row's other fields (`key`, `url`,
  the declared `width` and `height`, ...).
- Checks: `caption` present and valid text (`missing_field`, `bad_field`, `bad_text`, `empty_text`);
  the span lists lists of 7 numbers with whole-number `start` < `end` inside the caption (Parquet
  stores them as floats) (`bad_field`);
  at least one span (`missing_field`), and one at least `min_score` (`filtered`); boxes with an area
  (`degenerate_box`) overlapping the image (`box_outside_image`); the image (see `checks`;
  `missing_field` with no image field and no `key`); a JSON record of more than `max_record_bytes` is
  `record_too_large`, skipped unread; a Parquet file without `caption` rejects each of its rows
  (`streams.table_records`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    CheckedImage,
    Rejected,
    check_image,
    check_text,
    clip_box,
    image_path,
    image_segment,
    is_finite_number,
    load_image,
    record_rows,
    sample_row,
    text_segment,
)
from pipeline.ingest.streams import table_records

__all__ = ["FORMAT", "GritOptions", "read_file"]

SPAN_FIELDS = ("noun_chunks", "ref_exps")


@dataclass(frozen=True)
class GritOptions(ImageOptions):
    """Options of `format: grit`."""

    span_fields: tuple[str, ...] = option(
        SPAN_FIELDS, "fields whose spans become regions, in this order", choices=SPAN_FIELDS
    )
    min_score: float | None = option(None, "leave out spans scored below this (null: keep every span)")
    image_fields: tuple[str, ...] = option(
        ("image", "jpg"),
        "fields tried in order for the image: bytes or {bytes, path} (embedded) or a path under "
        "images_root; with none of them, images_root/<key>.jpg",
    )


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per row of `file`, in file order."""
    records = table_records(config.root, file, ["caption"], config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, GritOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a row must be an object, not {record!r:.80}")
    caption = check_text(record.get("caption"), "caption")
    spans = _spans(record, caption, options)
    image = _image(config, record, options)
    width, height = image.row["width"], image.row["height"]
    regions = []
    seen = set()
    for start, end, corners, what in spans:
        x1, y1, x2, y2 = corners
        box = clip_box([x1 * width, y1 * height, x2 * width, y2 * height], width, height, what)
        if (start, end, *box) in seen:
            continue
        seen.add((start, end, *box))
        regions.append(
            {
                "phrase": caption[start:end],
                "image": 0,
                "boxes": [box],
                "segment": 1,
                "start": start,
                "end": end,
            }
        )
    not_meta = {"caption", *options.span_fields, *options.image_fields}
    meta = {name: value for name, value in record.items() if name not in not_meta}
    content = [image_segment(0), text_segment(caption)]
    return sample_row(config, key, "grounding", content, [image], regions=regions, meta=meta)


def _spans(record: dict, caption: str, options: GritOptions) -> list[tuple[int, int, list[float], str]]:
    """(start, end, normalized box, name) of the spans kept, checked."""
    spans = []
    total = 0
    for field in options.span_fields:
        values = record.get(field)
        if values is None:
            continue
        if not isinstance(values, list):
            raise Rejected("read", "bad_field", f"{field} is not a list")
        total += len(values)
        for index, value in enumerate(values):
            what = f"{field}[{index}]"
            if (
                not isinstance(value, list | tuple)
                or len(value) != 7
                or not all(map(is_finite_number, value))
            ):
                raise Rejected("read", "bad_field", f"{what} {value!r:.80} is not 7 numbers")
            start, end, *corners, score = value
            if not (
                float(start).is_integer() and float(end).is_integer() and 0 <= start < end <= len(caption)
            ):
                detail = f"{what} span {start}..{end} is not inside the {len(caption)}-character caption"
                raise Rejected("read", "bad_field", detail)
            start, end = int(start), int(end)
            if options.min_score is None or score >= options.min_score:
                spans.append((start, end, [float(v) for v in corners], f"{what} box"))
    if not total:
        raise Rejected("read", "missing_field", f"no spans in {' or '.join(options.span_fields)}")
    if not spans:
        raise Rejected(
            "filter", "filtered", f"min_score {options.min_score}: all {total} spans score below it"
        )
    return spans


def _image(config: SourceConfig, record: dict, options: GritOptions) -> CheckedImage:
    name = next((field for field in options.image_fields if record.get(field) is not None), None)
    if name is None:
        key = record.get("key")
        if key is None:
            raise Rejected("read", "missing_field", f"no {' or '.join(options.image_fields)} and no key")
        if not isinstance(key, str):
            raise Rejected("read", "bad_field", f"key {key!r:.40} is not a string")
        return load_image(config, image_path(f"{key}.jpg", "images_root/<key>.jpg"))
    value = record[name]
    if isinstance(value, bytes):
        return check_image(value, None, options)
    if isinstance(value, dict) and isinstance(value.get("bytes"), bytes):
        stored = value.get("path")
        try:
            stored = image_path(stored, f"{name}.path") if stored is not None else None
        except Rejected:
            stored = None  # an absolute cache path or the like: not worth keeping
        return check_image(value["bytes"], stored, options)
    return load_image(config, image_path(value, name, absolute=True))


FORMAT = Format(
    name="grit",
    options=GritOptions,
    suffixes=(".parquet", ".jsonl", ".json"),
    uses_images_root=True,
    read_file=read_file,
    streamed=(".jsonl", ".json"),
)

"""Reader for TextOCR / COCO-Text annotation files (`format: textocr`): one `ocr` sample per image.

The file is one JSON object: `imgs` {image id: {file_name, width, height, ...}}, `anns` {annotation
id: {image_id, bbox [x, y, w, h] in pixels, utf8_string, ...}} and `imgToAnns` {image id: [annotation
id, ...]} (as TextOCR and COCO-Text publish them; `file_name` is relative to `images_root`). Without
`imgToAnns`, an image's words are the annotations whose `image_id` is its id, in `anns` order.

Every entry of `imgs` is one record, in file order:

- Words: the image's annotations in order; illegible ones (`utf8_string` "." as in TextOCR, or
  `legibility` "illegible" as in COCO-Text) are skipped; blank strings too.
- Content: the image, then the words joined by single spaces (the transcription).
- Regions: one per word: `phrase` the word, its box `[x, y, x + w, y + h]` clipped to the image,
  `segment` 1 with the word's `start`/`end` in the transcription.
- Key: `<file relative to the source root>#<image id>`. Meta: `image_id` and the image entry's
  other fields (`set`, ...) except `file_name`, `width` and `height`.
- Checks: the image entry an object with `file_name` (`malformed_record`, `missing_field`,
  `bad_field`); its annotations existing and objects (`bad_field`); a legible word's `utf8_string`
  present and valid (`missing_field`, `bad_field`, `bad_text`); its box four finite numbers
  (`bad_field`) with an area (`degenerate_box`) overlapping the image (`box_outside_image`: any bad
  box rejects the image); at least one legible word (`empty_text`); the image file (see `checks`)
  and the declared width and height, when given, equal to the file's (`bad_field`).

The whole file is parsed at once (a JSON object cannot be streamed record by record).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig
from pipeline.ingest.checks import (
    FileUnreadable,
    Rejected,
    clip_box,
    file_reject_row,
    image_segment,
    is_finite_number,
    load_entry_image,
    reject_row,
    sample_row,
    text_field,
    text_segment,
)
from pipeline.ingest.streams import json_object

__all__ = ["FORMAT", "TextOcrOptions", "read_file"]

ILLEGIBLE = "."


@dataclass(frozen=True)
class TextOcrOptions(ImageOptions):
    """Options of `format: textocr` (the image options only)."""


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per entry of `imgs` in `file`, in file order."""
    try:
        document = json_object(config.root, file)
        images, annotations = document.get("imgs"), document.get("anns")
        if not isinstance(images, dict) or not isinstance(annotations, dict):
            raise FileUnreadable("not a TextOCR / COCO-Text file: imgs and anns must be JSON objects")
        by_image = document.get("imgToAnns")
        if not isinstance(by_image, dict):
            by_image = {}
            for annotation_id, annotation in annotations.items():
                if isinstance(annotation, dict) and isinstance(annotation.get("image_id"), int | str):
                    by_image.setdefault(str(annotation["image_id"]), []).append(annotation_id)
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)
        return
    for image_id, entry in images.items():
        key = f"{file}#{image_id}"
        try:
            words = _words(by_image.get(image_id, []), annotations, image_id)
            row = _sample(config, key, image_id, entry, words)
        except Rejected as rejected:
            row = reject_row(config, key, rejected)
        yield row


def _words(annotation_ids: object, annotations: dict, image_id: str) -> list[tuple[str, object]]:
    """(word, [x, y, w, h]) of the legible annotations of an image, in order."""
    if not isinstance(annotation_ids, list):
        raise Rejected("read", "bad_field", f"imgToAnns[{image_id!r}] is not a list")
    words = []
    for annotation_id in annotation_ids:
        annotation = annotations.get(str(annotation_id)) if isinstance(annotation_id, int | str) else None
        what = f"anns[{annotation_id!r:.40}]"
        if not isinstance(annotation, dict):
            raise Rejected("read", "bad_field", f"{what} is missing or not an object")
        if annotation.get("legibility") == "illegible" or annotation.get("utf8_string") == ILLEGIBLE:
            continue
        word = text_field(annotation.get("utf8_string"), f"{what}.utf8_string")
        if word.strip():
            words.append((word, annotation.get("bbox")))
    return words


def _sample(
    config: SourceConfig, key: str, image_id: str, entry: object, words: list[tuple[str, object]]
) -> Row:
    if not isinstance(entry, dict):
        raise Rejected("read", "malformed_record", f"imgs[{image_id!r}] is not an object")
    if not words:
        raise Rejected("sample", "empty_text", "the image has no legible word")
    image = load_entry_image(config, entry, f"imgs[{image_id!r}]")
    width, height = image.row["width"], image.row["height"]
    regions = []
    start = 0
    for word, box in words:
        end = start + len(word)
        pixels = clip_box(_corners(box), width, height, f"the box of {word!r:.40}")
        regions.append(
            {"phrase": word, "image": 0, "boxes": [pixels], "segment": 1, "start": start, "end": end}
        )
        start = end + 1
    content = [image_segment(0), text_segment(" ".join(word for word, _ in words))]
    meta = {"image_id": image_id}
    meta.update({k: v for k, v in entry.items() if k not in ("file_name", "width", "height")})
    return sample_row(config, key, "ocr", content, [image], regions=regions, meta=meta)


def _corners(box: object) -> object:
    """`[x, y, w, h]` as `[x1, y1, x2, y2]`; anything else unchanged, for `clip_box` to reject."""
    if isinstance(box, list) and len(box) == 4 and all(is_finite_number(v) for v in box):
        x, y, w, h = (float(v) for v in box)
        return [x, y, x + w, y + h]
    return box


FORMAT = Format(
    name="textocr",
    options=TextOcrOptions,
    suffixes=(".json",),
    uses_images_root=True,
    read_file=read_file,
)

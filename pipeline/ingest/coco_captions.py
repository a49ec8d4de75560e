"""Reader for COCO captions annotation files (`format: coco_captions`): one sample per caption.

The file is one JSON object: `images` [{id, file_name, width, height, ...}] and `annotations`
[{id, image_id, caption}] (as in `captions_train2017.json`); `file_name` is relative to
`images_root`. Every annotation is one record:

- Order: annotations grouped by image, images in the order of `images`, annotations in file order
  within an image (so each image file is read and checked once, however many captions it has);
  annotations that cannot be attached to an image come first, as rejects.
- Key: `<file relative to the source root>#<annotation index>` (0-based position in `annotations`).
  Meta: `image_id` and `annotation_id`.
- Checks: the caption (`missing_field`, `bad_field`, `bad_text`, `empty_text`); `image_id` naming
  exactly one entry of `images` (`missing_field`, `bad_field`); the image file (see `checks`); the
  declared width and height, when given, equal to the file's (`bad_field`).

The whole file is parsed at once (a JSON object cannot be streamed record by record); COCO
annotation files are tens of MB.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig
from pipeline.ingest.checks import (
    CheckedImage,
    FileUnreadable,
    Rejected,
    check_text,
    file_reject_row,
    image_segment,
    load_entry_image,
    reject_row,
    sample_row,
    text_segment,
)
from pipeline.ingest.streams import json_document

__all__ = ["FORMAT", "CocoCaptionsOptions", "read_file"]


@dataclass(frozen=True)
class CocoCaptionsOptions(ImageOptions):
    """Options of `format: coco_captions` (the image options only)."""


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per annotation of `file` (order in the module docstring)."""
    try:
        images, annotations = _load(config, file)
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)
        return
    entries: dict[object, list[int]] = {}  # image id → positions in `images`
    for position, entry in enumerate(images):
        if isinstance(entry, dict) and _is_id(entry.get("id")):
            entries.setdefault(entry["id"], []).append(position)
    by_image: dict[object, list[int]] = {}  # image id → annotation indices
    for index, annotation in enumerate(annotations):
        try:
            by_image.setdefault(_image_id(annotation, index, entries), []).append(index)
        except Rejected as rejected:
            yield reject_row(config, f"{file}#{index}", rejected)
    for position, entry in enumerate(images):
        if not isinstance(entry, dict) or not _is_id(entry.get("id")) or entry["id"] not in by_image:
            continue
        image: CheckedImage | Rejected | None = None  # read once, when a caption first needs it
        for index in by_image.pop(entry["id"]):
            key = f"{file}#{index}"
            annotation = annotations[index]
            try:
                caption = check_text(annotation.get("caption"), f"annotations[{index}].caption")
                if image is None:
                    image = _image(config, entry, position)
                if isinstance(image, Rejected):
                    raise image
                meta = {"image_id": entry["id"], "annotation_id": annotation.get("id")}
                content = [image_segment(0), text_segment(caption)]
                row = sample_row(config, key, "caption", content, [image], meta=meta)
            except Rejected as rejected:
                row = reject_row(config, key, rejected)
            yield row


def _load(config: SourceConfig, file: str) -> tuple[list, list]:
    document = json_document(config.root, file)
    if not isinstance(document, dict):
        raise FileUnreadable("not a COCO annotation file: expected a JSON object with images and annotations")
    for field in ("images", "annotations"):
        if not isinstance(document.get(field), list):
            raise FileUnreadable(f"not a COCO annotation file: {field!r} is missing or not a list")
    return document["images"], document["annotations"]


def _is_id(value: object) -> bool:
    return isinstance(value, int | str) and not isinstance(value, bool)


def _image_id(annotation: object, index: int, entries: dict[object, list[int]]) -> object:
    """The id of the one image an annotation belongs to."""
    what = f"annotations[{index}]"
    if not isinstance(annotation, dict):
        raise Rejected("read", "malformed_record", f"{what} must be an object, not {annotation!r:.80}")
    image_id = annotation.get("image_id")
    if image_id is None:
        raise Rejected("read", "missing_field", f"{what}.image_id is missing")
    if not _is_id(image_id):
        raise Rejected("read", "bad_field", f"{what}.image_id {image_id!r:.40} is not an id")
    found = len(entries.get(image_id, ()))
    if found != 1:
        raise Rejected(
            "read", "bad_field", f"{what}.image_id {image_id!r:.40} matches {found} entries of images"
        )
    return image_id


def _image(config: SourceConfig, entry: dict, position: int) -> CheckedImage | Rejected:
    """The checked image of an `images` entry, or why it cannot be used."""
    try:
        return load_entry_image(config, entry, f"images[{position}]")
    except Rejected as rejected:
        return rejected


FORMAT = Format(
    name="coco_captions",
    options=CocoCaptionsOptions,
    suffixes=(".json",),
    uses_images_root=True,
    read_file=read_file,
)

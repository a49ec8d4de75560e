"""Reader for MMC4 documents (`format: mmc4`): one `interleaved` sample per document.

A document is a JSON Lines record (or an element of a JSON array; the file compressed, or a member of a
`.zip` as MMC4 shards are distributed, `docs_shard_0_v3.jsonl.zip`): `text_list` (the sentences, in
order) and `image_info` [{`image_name`, `raw_url`, `matched_text_index`, `matched_sim`}], where
`image_name` is the downloaded file, relative to `images_root` (or absolute, and then read only when its
real path lies inside it), and `matched_text_index` the sentence the image was assigned to. Each image
goes right before its matched sentence; images matched to the same sentence keep their `image_info`
order. Images whose `matched_sim` is below `min_sim` (when set) are left out and counted in meta
`below_min_sim`. The record's other fields (`url`, ...) go to meta, except the bulky
`similarity_matrix`; the kept images' `raw_url` and `matched_sim` go to meta as `image_urls` and
`matched_sim`.

Missing or unusable image files follow `missing_images` exactly as in `format: obelics` (skip:
left out, listed in meta `skipped_images` with their position in `image_info`; a document left
without any image is rejected with the first image's reason; reject: the first rejects the document).

Checks: `text_list` and `image_info` present (`missing_field`) and lists (`bad_field`); sentences
valid text (`bad_field`, `bad_text`), not all blank (`empty_text`); each `image_info` entry an object
with `image_name` and an integer `matched_text_index` naming a sentence (`missing_field`,
`bad_field`); `matched_sim` a number when `min_sim` is set (`bad_field`); a line or array element
over `max_record_bytes` is `record_too_large`, skipped unread (`streams.json_records`). Key: `<file
relative to the source root>#<record index>`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    CheckedImage,
    Rejected,
    image_path,
    load_image,
    meta_json,
    record_rows,
    text_field,
)
from pipeline.ingest.obelics import MISSING_IMAGES, ImagePart, interleaved_sample
from pipeline.ingest.streams import json_records

__all__ = ["FORMAT", "Mmc4Options", "read_file"]

_NOT_META = ("text_list", "image_info", "similarity_matrix")


@dataclass(frozen=True)
class Mmc4Options(ImageOptions):
    """Options of `format: mmc4`."""

    min_sim: float | None = option(
        None, "leave out images whose matched_sim is below this (null: keep every image)"
    )
    missing_images: str = option(
        "skip",
        "skip: leave out images that cannot be used (listed in meta skipped_images); reject: reject "
        "the document",
        choices=MISSING_IMAGES,
    )


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per document of `file`, in file order."""
    records = json_records(config.root, file, config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config))


def _sample(config: SourceConfig, key: str, record: object) -> Row:
    options = config.options
    assert isinstance(options, Mmc4Options)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a document must be an object, not {record!r:.80}")
    sentences, infos = record.get("text_list"), record.get("image_info")
    for name, value in (("text_list", sentences), ("image_info", infos)):
        if value is None:
            raise Rejected("read", "missing_field", f"{name} is missing")
        if not isinstance(value, list):
            raise Rejected("read", "bad_field", f"{name} is not a list")
    texts = [text_field(sentence, f"text_list[{i}]") for i, sentence in enumerate(sentences)]
    before: list[list[ImagePart]] = [[] for _ in texts]  # the images before each sentence
    used: list[dict] = []  # image_info entries of the images read, in document order
    below = 0
    for position, info in enumerate(infos):
        what = f"image_info[{position}]"
        if not isinstance(info, dict):
            raise Rejected("read", "bad_field", f"{what} is not an object")
        sentence = info.get("matched_text_index")
        if sentence is None:
            raise Rejected("read", "missing_field", f"{what}.matched_text_index is missing")
        if isinstance(sentence, bool) or not isinstance(sentence, int) or not 0 <= sentence < len(texts):
            raise Rejected(
                "read", "bad_field", f"{what}.matched_text_index {sentence!r:.40} names no sentence"
            )
        path = image_path(info.get("image_name"), f"{what}.image_name", absolute=True)
        similarity = info.get("matched_sim")
        if options.min_sim is not None:
            if isinstance(similarity, bool) or not isinstance(similarity, int | float):
                raise Rejected("read", "bad_field", f"{what}.matched_sim {similarity!r:.40} is not a number")
            if similarity < options.min_sim:
                below += 1
                continue
        before[sentence].append((position, functools.partial(_load, config, path, info, used)))
    parts: list[str | ImagePart] = []
    for text, images in zip(texts, before, strict=True):
        parts += [*images, text]
    meta = {name: value for name, value in record.items() if name not in _NOT_META}
    if below:
        meta["below_min_sim"] = below
    row = interleaved_sample(config, key, parts, options.missing_images, meta)
    meta = json.loads(row["meta"])
    meta["image_urls"] = [info.get("raw_url") for info in used]
    meta["matched_sim"] = [info.get("matched_sim") for info in used]
    return {**row, "meta": meta_json(meta)}


def _load(config: SourceConfig, path: str, info: dict, used: list[dict]) -> CheckedImage:
    """Read and check an image; on success append its `image_info` entry to `used`."""
    image = load_image(config, path)
    used.append(info)
    return image


FORMAT = Format(
    name="mmc4",
    options=Mmc4Options,
    suffixes=(".jsonl", ".json"),
    uses_images_root=True,
    read_file=read_file,
    streamed=(".jsonl", ".json"),
)

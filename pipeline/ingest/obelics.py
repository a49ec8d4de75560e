"""Reader for OBELICS-style interleaved web documents (`format: obelics`): one `interleaved` sample
per document.

A document is a Parquet row or a JSON record (JSON Lines or a JSON array) with two parallel lists,
`texts` and `images`, of the same length: at each position exactly one of them is non-null, and the
positions give the reading order. Every other field (`url`, `general_metadata`, `metadata`, ...) goes
to meta. An `images` entry is one of:

- encoded image bytes, or a `{bytes, path}` struct with bytes (embedded; the struct's relative `path`
  is kept as the image's path);
- a URL, resolved through `url_map` when set: img2dataset output tables (Parquet, under `images_root`)
  whose `url` column names the downloaded image by a `path` column (relative to `images_root`) or by
  `key` (the file `<table folder>/<table name without .parquet>/<key>.<url_map_extension>`, as
  img2dataset lays out its shards); rows whose `status` is not `success` are left out. The map is
  confined like the rest: `url_map` must resolve inside `images_root`, the tables of a `url_map`
  folder inside that folder (real paths, symlinks resolved; else every file is rejected as
  `unreadable_file`), a `path` must be relative and stay inside `images_root`, a `key` must be a
  file name (no `/`), both `bad_field` otherwise, and the image file must resolve inside
  `images_root` (`outside_root`);
- a URL without `url_map`: the file `images_root/<last component of the URL's path>`.

Content: the non-blank texts and the usable images in document order (blank texts are left out).
With `missing_images: skip` (the default) an image that cannot be used (missing, unreadable, not in
the map, ...) is left out and listed in meta `skipped_images` ([{position, reason}]); a document left
without any image is rejected with the first image's reason. With `missing_images: reject` the first
unusable image rejects the document.

Checks: `texts` and `images` present (`missing_field`), lists of one length with exactly one entry
per position (`bad_field`), texts valid (`bad_field`, `bad_text`), some text (`empty_text`), some
image (`missing_field` when the document has none). Key: `<file relative to the source root>#<record
index>`. Parquet files are read in record batches, JSON Lines a line at a time.
"""

from __future__ import annotations

import functools
import posixpath
import urllib.parse
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from functools import partial

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.ingest.base import (
    ConfigError,
    Format,
    ImageOptions,
    OutsideRoot,
    Row,
    SourceConfig,
    filesystem,
    list_files,
    open_input,
    option,
    real_path_inside,
)
from pipeline.ingest.checks import (
    CheckedImage,
    FileUnreadable,
    Rejected,
    check_image,
    file_reject_row,
    image_path,
    image_segment,
    load_image,
    record_rows,
    sample_row,
    text_field,
    text_segment,
)
from pipeline.ingest.streams import table_records

__all__ = ["FORMAT", "ObelicsOptions", "interleaved_sample", "read_file"]

MISSING_IMAGES = ("skip", "reject")


@dataclass(frozen=True)
class ObelicsOptions(ImageOptions):
    """Options of `format: obelics`."""

    url_map: str | None = option(
        None,
        "img2dataset output tables mapping image URLs to files: a Parquet file or a folder of them, "
        "relative to images_root (null: images_root/<basename of the URL>)",
    )
    url_map_extension: str = option("jpg", "extension of the image files img2dataset wrote (with url_map)")
    missing_images: str = option(
        "skip",
        "skip: leave out images that cannot be used (listed in meta skipped_images); reject: reject "
        "the document",
        choices=MISSING_IMAGES,
    )


@dataclass(frozen=True)
class _BadEntry:
    """A `url_map` row that names no usable file, and why."""

    detail: str


UrlMap = dict[str, str | _BadEntry]
"""A loaded `url_map`: URL → image path relative to `images_root`, or why its row names no file."""

ImagePart = tuple[int, Callable[[], CheckedImage]]
"""A document image not read yet: (its position in the record, for meta `skipped_images`; a function
returning the checked image or raising `Rejected`)."""


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per document of `file`, in file order."""
    try:
        urls = _url_map(config)
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)
        return
    records = table_records(config.root, file, ["texts", "images"], config.options.max_record_bytes)
    yield from record_rows(config, file, records, partial(_sample, config, urls=urls))


def _sample(config: SourceConfig, key: str, record: object, urls: UrlMap | None) -> Row:
    options = config.options
    assert isinstance(options, ObelicsOptions)
    if not isinstance(record, dict):
        raise Rejected("read", "malformed_record", f"a document must be an object, not {record!r:.80}")
    texts, images = record.get("texts"), record.get("images")
    for name, value in (("texts", texts), ("images", images)):
        if value is None:
            raise Rejected("read", "missing_field", f"{name} is missing")
        if not isinstance(value, list):
            raise Rejected("read", "bad_field", f"{name} is not a list")
    if len(texts) != len(images):
        raise Rejected("read", "bad_field", f"texts has {len(texts)} entries, images {len(images)}")
    parts: list[str | ImagePart] = []
    for position, (text, image) in enumerate(zip(texts, images, strict=True)):
        if (text is None) == (image is None):
            which = "both a text and" if text is not None else "neither a text nor"
            raise Rejected("read", "bad_field", f"position {position} has {which} an image")
        if text is not None:
            parts.append(text_field(text, f"texts[{position}]"))
        else:
            parts.append((position, functools.partial(_image, config, image, f"images[{position}]", urls)))
    meta = {name: value for name, value in record.items() if name not in ("texts", "images")}
    return interleaved_sample(config, key, parts, options.missing_images, meta)


def interleaved_sample(
    config: SourceConfig, key: str, parts: Sequence[str | ImagePart], missing_images: str, meta: dict
) -> Row:
    """The `interleaved` sample of a document given as texts (checked) and images to read, in order
    (rules in the module docstring; `missing_images` is skip or reject). Images are read in order."""
    content: list[dict] = []
    images: list[CheckedImage] = []
    skipped: list[tuple[int, Rejected]] = []
    for part in parts:
        if isinstance(part, str):
            if part.strip():
                content.append(text_segment(part))
            continue
        position, load = part
        try:
            image = load()
        except Rejected as rejected:
            if missing_images == "reject":
                raise
            skipped.append((position, rejected))
            continue
        content.append(image_segment(len(images)))
        images.append(image)
    if not any(segment["type"] == "text" for segment in content):
        raise Rejected("sample", "empty_text", "the document has no text")
    if not images:
        if not skipped:
            raise Rejected("read", "missing_field", "the document has no image")
        first = skipped[0][1]
        raise Rejected(first.stage, first.reason, f"no usable image; the first: {first.detail}")
    if skipped:
        meta = {**meta, "skipped_images": [{"position": p, "reason": r.reason} for p, r in skipped]}
    return sample_row(config, key, "interleaved", content, images, meta=meta)


def _image(config: SourceConfig, value: object, what: str, urls: UrlMap | None) -> CheckedImage:
    assert isinstance(config.options, ObelicsOptions)
    if isinstance(value, bytes):
        return check_image(value, None, config.options)
    if isinstance(value, dict) and value.get("bytes") is not None:
        data, stored = value["bytes"], value.get("path")
        if not isinstance(data, bytes):
            raise Rejected("read", "bad_field", f"{what}.bytes is not bytes")
        try:
            stored = image_path(stored, f"{what}.path") if stored is not None else None
        except Rejected:
            stored = None  # an absolute cache path or the like: not worth keeping
        return check_image(data, stored, config.options)
    if not isinstance(value, str) or not value:
        raise Rejected("read", "bad_field", f"{what} is neither image bytes nor a URL: {value!r:.80}")
    if urls is not None:
        if value not in urls:
            raise Rejected(
                "image", "missing_image", f"{what} {value!r:.200} is not a downloaded URL of url_map"
            )
        entry = urls[value]
        if isinstance(entry, _BadEntry):
            raise Rejected("read", "bad_field", f"{what} {value!r:.200}: {entry.detail}")
        return load_image(config, image_path(entry, f"{what} {value!r:.200}: url_map path"))
    name = posixpath.basename(urllib.parse.urlsplit(value).path)
    if not name:
        raise Rejected("read", "bad_field", f"{what} {value!r:.200} is a URL without a file name")
    return load_image(config, image_path(name, f"{what} (file name of URL {value!r:.200})"))


def _url_map(config: SourceConfig) -> UrlMap | None:
    options = config.options
    assert isinstance(options, ObelicsOptions)
    if options.url_map is None:
        return None
    try:
        return _load_url_map(config.images_root, options.url_map, options.url_map_extension)
    except (OSError, pa.ArrowException, ValueError, TypeError) as error:
        raise FileUnreadable(f"url_map {options.url_map!r} cannot be read: {error}") from None


@functools.lru_cache(maxsize=4)
def _load_url_map(images_root: str, url_map: str, extension: str) -> UrlMap:
    """URL → image path relative to `images_root` (a `path` as given, checked when used), or why the
    row names no usable file, from the img2dataset tables of `url_map`."""
    location = posixpath.join(images_root, url_map)
    fs, path = filesystem(location)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        # (folder the table is confined to, its name there, its path relative to images_root)
        tables = [
            (location, name, posixpath.normpath(posixpath.join(url_map, name)))
            for name in list_files(location, (".parquet",))
        ]
    else:
        tables = [(images_root, url_map, posixpath.normpath(url_map))]
    urls: UrlMap = {}
    for folder, name, relative in tables:
        with open_input(folder, name, random_access=True) as source:
            table = pq.read_table(source)
        columns = table.column_names
        if "url" not in columns or ("path" not in columns and "key" not in columns):
            raise ValueError(f"{relative} has no url column with a path or key column ({', '.join(columns)})")
        shard = posixpath.splitext(relative)[0]
        rows = table.select([c for c in ("url", "path", "key", "status") if c in columns]).to_pylist()
        for row in rows:
            if row["url"] is None or row.get("status", "success") != "success":
                continue
            if row.get("path") is not None:
                urls[row["url"]] = row["path"]
            elif row.get("key") is not None:
                key = str(row["key"])
                if not key or "/" in key:
                    urls[row["url"]] = _BadEntry(f"url_map key {key!r:.100} in {relative} is not a file name")
                else:
                    urls[row["url"]] = posixpath.join(shard, f"{key}.{extension}")
    return urls


def _select_files(config: SourceConfig, files: list[str]) -> list[str]:
    """Check that `url_map` names img2dataset tables, so that a wrong value fails at once."""
    options = config.options
    assert isinstance(options, ObelicsOptions)
    if options.url_map is not None:
        location = posixpath.join(config.images_root, options.url_map)
        fs, path = filesystem(location)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"url_map: {options.url_map!r} does not exist under images_root")
        if isinstance(fs, pafs.LocalFileSystem):
            try:
                real_path_inside(filesystem(config.images_root)[1], options.url_map, "images_root")
            except OutsideRoot as error:
                raise ConfigError(f"url_map: {error}") from None
        if info.type == pafs.FileType.Directory and not list_files(location, (".parquet",)):
            raise ConfigError(f"url_map: folder {options.url_map!r} holds no .parquet table")
    return files


FORMAT = Format(
    name="obelics",
    options=ObelicsOptions,
    suffixes=(".parquet", ".jsonl", ".json"),
    uses_images_root=True,
    read_file=read_file,
    streamed=(".jsonl", ".json"),
    select_files=_select_files,
)

"""Readers of public corpus formats: each turns input files into `schemas.sample` rows or
`schemas.reject` rows, one row per record read (see `pipeline.ingest.base` for the interface).

Formats: captions and conversations (`llava`, `coco_captions`, `webdataset`, `parquet`), plain text
(`text`), interleaved documents (`obelics`, `mmc4`), OCR (`textocr`, `ocr_jsonl`) and grounding
(`refcoco`, `grit`); each module's docstring describes its input and what becomes what.

`READERS` maps a `format:` name of a job config to its `Format`; `make_reader` validates one source
mapping of a config (failing fast with `ConfigError` naming the key) and returns its `Reader`;
`make_readers` does that for a config's whole `sources` list and checks that names are unique.
`options_table` lists every option of every format with its default and meaning.
Compressed inputs, `.zip` archives and the files a format cannot read (`unsupported_file`) are
handled for every format by `pipeline.ingest.containers`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Collection

from pipeline.ingest import (
    coco_captions,
    grit,
    llava,
    mmc4,
    obelics,
    ocr_jsonl,
    parquet,
    refcoco,
    text,
    textocr,
    webdataset,
)
from pipeline.ingest.base import (
    Batch,
    ConfigError,
    Counts,
    Format,
    Reader,
    SourceConfig,
    is_reject,
    parse_source,
)

__all__ = [
    "READERS",
    "Batch",
    "ConfigError",
    "Counts",
    "Format",
    "Reader",
    "SourceConfig",
    "is_reject",
    "make_reader",
    "make_readers",
    "options_table",
]

READERS: dict[str, Format] = {
    module.FORMAT.name: module.FORMAT
    for module in (
        llava,
        coco_captions,
        webdataset,
        parquet,
        text,
        obelics,
        mmc4,
        textocr,
        ocr_jsonl,
        refcoco,
        grit,
    )
}


def make_reader(
    source: object,
    *,
    where: str = "source",
    base_dir: str | os.PathLike[str] | None = None,
    reserved: Collection[str] = (),
) -> Reader:
    """The reader of one source mapping (`{name, format, path, ...}`), validated completely:
    `where` prefixes error messages, relative paths resolve against `base_dir`, and `reserved` keys
    belong to the caller (allowed, ignored here). Raises `ConfigError`."""
    config = parse_source(source, READERS, where=where, base_dir=base_dir, reserved=reserved)
    return Reader(config, READERS[config.format])


def make_readers(
    sources: object,
    *,
    where: str = "sources",
    base_dir: str | os.PathLike[str] | None = None,
    reserved: Collection[str] = (),
) -> list[Reader]:
    """The readers of a config's `sources` list (non-empty, names unique). Raises `ConfigError`."""
    if not isinstance(sources, list) or not sources:
        raise ConfigError(f"{where}: must be a non-empty list of sources")
    readers: list[Reader] = []
    for index, source in enumerate(sources):
        reader = make_reader(source, where=f"{where}[{index}]", base_dir=base_dir, reserved=reserved)
        for earlier, other in enumerate(readers):
            if other.config.name == reader.config.name:
                raise ConfigError(
                    f"{where}[{index}].name: {reader.config.name!r} is already the name of {where}[{earlier}]"
                )
        readers.append(reader)
    return readers


def options_table() -> list[tuple[str, str, str, str]]:
    """(format, option, default as YAML would show it, meaning) for every option of every format."""
    rows = []
    for name, reader_format in READERS.items():
        for option_field in dataclasses.fields(reader_format.options):
            default = option_field.default
            if default is None:
                shown = "null"
            elif isinstance(default, bool):
                shown = "true" if default else "false"
            elif isinstance(default, tuple):
                shown = f"[{', '.join(default)}]"
            else:
                shown = str(default)
            rows.append((name, option_field.name, shown, option_field.metadata["doc"]))
    return rows

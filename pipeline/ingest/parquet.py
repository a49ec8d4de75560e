"""Reader for image–text Parquet files (`format: parquet`): one caption sample per row.

The image column (`image_column`) is binary (the encoded file), the Hugging Face image struct
`{bytes, path}` (bytes used when present, else the file `path` under `images_root`), or a string
(a path under `images_root`). A path may be absolute, as Hugging Face `datasets` writes it for images
it did not embed: it is read when its real path lies inside `images_root` (`outside_root` otherwise;
`images_root` defaults to the folder of `path`). The text column (`text_column`) is a string, or
binary holding UTF-8.
Those of the `meta_columns` that a file has are copied into meta. Files are read page by page in record
batches of `streams.PARQUET_BATCH_ROWS` rows, so memory stays bounded whatever the file size.

- img2dataset's Parquet output (`image_column: jpg`, `text_column: caption`): a row whose `status`
  starts with "failed" (`failed_to_download`, `failed_to_resize`) is a `failed_download` reject with
  its `error_message`.
- Key: `<file relative to the source root>#<row index>` (0-based within the file).
- Image path in the row: the path the image was read from, or for embedded bytes the struct's
  `path` when it is a relative path (Hugging Face keeps the original file name there), else null.
- Every row the file's footer declares ends as a row: when the file lacks one of the two columns
  (`missing_field`) or has one of a type that cannot be used (`bad_field`, the detail names the column
  and its type), each of its rows is rejected on its own (key `<file>#<row>`), and so is each row of a
  row group that fails to decode part-way (`unreadable_file`). Only a file that is not Parquet at all
  is one reject row keyed by the file (its detail gives the rows its footer declares, when readable),
  and so is a file whose footer declares more such rows than it could hold
  (`streams.MAX_ROWS_PER_BYTE`).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from functools import partial

import pyarrow as pa

from pipeline.ingest.base import Format, ImageOptions, Row, SourceConfig, option
from pipeline.ingest.checks import (
    CheckedImage,
    FileUnreadable,
    Rejected,
    check_download,
    check_image,
    check_text,
    file_reject_row,
    image_path,
    image_segment,
    load_image,
    reject_row,
    sample_row,
    text_segment,
)
from pipeline.ingest.streams import LostRows, column_values, is_bytes_type, is_text_type, parquet_batches

__all__ = ["DOWNLOAD_COLUMNS", "FORMAT", "ParquetOptions", "read_file"]

DOWNLOAD_COLUMNS = ("status", "error_message")
"""img2dataset's columns saying whether a row's image was downloaded, read when a file has them."""


@dataclass(frozen=True)
class ParquetOptions(ImageOptions):
    """Options of `format: parquet`."""

    image_column: str = option("image", "column with the image: binary, {bytes, path} struct, or a path")
    text_column: str = option("text", "column with the caption: string, or binary holding UTF-8")
    meta_columns: tuple[str, ...] = option((), "columns copied into each sample's meta (those a file has)")


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per row of the Parquet file `file`, in row order."""
    options = config.options
    assert isinstance(options, ParquetOptions)
    columns = [options.image_column, options.text_column]
    usable = partial(_check_types, options=options)
    try:
        optional = (*options.meta_columns, *DOWNLOAD_COLUMNS)
        for start, batch in parquet_batches(config.root, file, columns, optional, usable):
            if isinstance(batch, LostRows):
                for index, rejected in batch.records(start):
                    yield reject_row(config, f"{file}#{index}", rejected)
                continue
            values = {name: column_values(batch.column(name), name) for name in batch.schema.names}
            for offset in range(batch.num_rows):
                key = f"{file}#{start + offset}"
                try:
                    row = _sample(config, key, {name: column[offset] for name, column in values.items()})
                except Rejected as rejected:
                    row = reject_row(config, key, rejected)
                yield row
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)


def _check_types(schema: pa.Schema, options: ParquetOptions) -> Rejected | None:
    """Why the file's image or text column cannot be used (then none of its rows can), or None."""
    image_type = schema.field(options.image_column).type
    if not (is_bytes_type(image_type) or is_text_type(image_type) or _is_image_struct(image_type)):
        return Rejected(
            "read",
            "bad_field",
            f"column {options.image_column!r} has type {image_type}, not binary, string or "
            "struct<bytes, path>",
        )
    text_type = schema.field(options.text_column).type
    if not (is_bytes_type(text_type) or is_text_type(text_type)):
        return Rejected(
            "read", "bad_field", f"column {options.text_column!r} has type {text_type}, not string or binary"
        )
    return None


def _is_image_struct(data_type: pa.DataType) -> bool:
    if not pa.types.is_struct(data_type):
        return False
    names = {data_type.field(i).name: data_type.field(i).type for i in range(data_type.num_fields)}
    return (
        "bytes" in names
        and is_bytes_type(names["bytes"])
        and ("path" not in names or is_text_type(names["path"]))
    )


def _sample(config: SourceConfig, key: str, row: dict) -> Row:
    options = config.options
    assert isinstance(options, ParquetOptions)
    for value in row.values():
        if isinstance(value, Rejected):
            raise value
    check_download(row.get("status"), row.get("error_message"))
    caption = check_text(row[options.text_column], f"column {options.text_column!r}")
    image = _image(config, row[options.image_column], options)
    meta = {name: row[name] for name in options.meta_columns if name in row}
    return sample_row(config, key, "caption", [image_segment(0), text_segment(caption)], [image], meta=meta)


def _image(config: SourceConfig, value: object, options: ParquetOptions) -> CheckedImage:
    what = f"column {options.image_column!r}"
    if value is None:
        raise Rejected("read", "missing_field", f"{what} is null")
    if isinstance(value, bytes):
        return check_image(value, None, options)
    if isinstance(value, str):
        return load_image(config, image_path(value, what, absolute=True))
    data, path = value.get("bytes"), value.get("path")
    if data is not None:
        stored = None
        if path is not None:
            try:
                stored = image_path(path, f"{what}.path")
            except Rejected:
                stored = None  # an absolute cache path or the like: not worth keeping
        return check_image(data, stored, options)
    if path is None:
        raise Rejected("read", "missing_field", f"{what} has neither bytes nor path")
    return load_image(config, image_path(path, f"{what}.path", absolute=True))


FORMAT = Format(
    name="parquet",
    options=ParquetOptions,
    suffixes=(".parquet",),
    uses_images_root=True,
    read_file=read_file,
)

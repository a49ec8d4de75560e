"""Compressed input files, `.zip` archives, and the files a source lists that its format cannot read.

`file_rows` is what `Reader.read_file` runs for each file a source lists:

- a file the format reads (`Format.reads`) goes to the format's reader; so does a `path` that names
  one file, whatever its name, unless it is a `.zip` or compressed with a name under the compression
  suffix that the format does not read (a named compressed document, `captions.json.gz`, is read whole
  through `open_stream`, as formats read whole documents);
- a `.zip` archive (for a format with streamed suffixes, `Format.streamed`) is read member by member in
  the archive's order, never extracted: a member the format reads is read as the file
  `<archive>/<member>` (its records keyed `<archive>/<member>#<index>`); any other member is one
  `unsupported_file` reject keyed `<archive>/<member>` (a nested archive too); folders and members with
  a path component starting with `.` or `_` (`__MACOSX/`) are passed over, as a folder walk passes them
  over; a name stored twice is read once and its repeats are one `bad_field` reject; an archive that
  cannot be opened is one `unreadable_file` reject keyed by it;
- any other file is one `unsupported_file` reject keyed by the file, whose detail names the suffixes the
  format reads and the formats that read the file.

`open_stream` opens a file, or a `.zip` member (`<archive>/<member>`), as a binary stream, decompressed
on the fly when its name ends with a suffix of `base.COMPRESSIONS` (gzip, zstd and bz2 through pyarrow's
`CompressedInputStream`, which also reads concatenated gzip members; xz through Python's `lzma`): a chunk
at a time, never a whole decompressed file in memory. Reading such a stream raises one of
`STREAM_ERRORS` on corrupt or truncated data (a truncated gzip, bz2 or xz stream is an error, not a
short file).
"""

from __future__ import annotations

import contextlib
import lzma
import os
import zipfile
import zlib
from collections.abc import Generator, Iterator
from typing import BinaryIO

import pyarrow as pa

from pipeline.ingest.base import Format, Row, SourceConfig, open_input, split_compression
from pipeline.ingest.checks import FileUnreadable, Rejected, file_reject_row, reject_row

__all__ = ["STREAM_ERRORS", "file_rows", "open_stream", "split_member"]

STREAM_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    pa.ArrowException,
    lzma.LZMAError,
    zipfile.BadZipFile,
    zlib.error,
)
"""What reading a (decompressed, zip member) stream raises on data it cannot read. `ValueError` covers
pyarrow's `ArrowInvalid` and `zipfile`'s complaints about impossible offsets."""


def split_member(file: str) -> tuple[str, str | None]:
    """(archive, member) of a `.zip` member's name `<archive>/<member>`; (file, None) for a plain file."""
    parts = file.split("/")
    for index, part in enumerate(parts[:-1]):
        if part.endswith(".zip"):
            return "/".join(parts[: index + 1]), "/".join(parts[index + 1 :])
    return file, None


@contextlib.contextmanager
def open_stream(location: str, file: str) -> Iterator[BinaryIO]:
    """`file` under the folder `location` (or a member of a `.zip` there) as a binary stream,
    decompressed by its suffix; `FileUnreadable` when it cannot be opened."""
    archive, member = split_member(file)
    with contextlib.ExitStack() as stack:
        try:
            if member is None:
                stream = stack.enter_context(open_input(location, file))
            else:
                source = stack.enter_context(open_input(location, archive, random_access=True))
                zipped = stack.enter_context(zipfile.ZipFile(source))
                stream = stack.enter_context(zipped.open(member))
            compression = split_compression(member or file)[1]
            if compression == "xz":
                stream = stack.enter_context(lzma.LZMAFile(stream))
            elif compression is not None:
                stream = stack.enter_context(pa.CompressedInputStream(stream, compression))
        except (*STREAM_ERRORS, KeyError, RuntimeError, NotImplementedError) as error:
            # KeyError: no such member; RuntimeError: an encrypted member; NotImplementedError: a
            # compression method zipfile lacks.
            raise FileUnreadable(f"cannot open: {error}") from None
        yield stream


def file_rows(config: SourceConfig, reader_format: Format, file: str) -> Generator[Row, None, None]:
    """The rows of one listed file (see the module docstring)."""
    inner, compression = split_compression(file)
    # A named file: read whatever its name, and decompressed when the name under the compression
    # suffix is the format's (one compressed COCO annotation file, say), but never as a zip.
    named = _named(config, file) and not file.endswith(".zip")
    if file.endswith(".zip") and reader_format.streamed:
        yield from _zip_rows(config, reader_format, file)
    elif reader_format.reads(file) or (named and (compression is None or reader_format.reads(inner))):
        yield from reader_format.read_file(config, file)
    else:
        detail = _unsupported(reader_format, file)
        yield file_reject_row(config, file, FileUnreadable(detail, reason="unsupported_file"))


def _named(config: SourceConfig, file: str) -> bool:
    """Whether `file` is the one file the source's `path` names (not one a folder or glob lists)."""
    return config.path in (os.path.join(config.root, file), f"{config.root}/{file}")


def _zip_rows(config: SourceConfig, reader_format: Format, file: str) -> Generator[Row, None, None]:
    try:
        with open_input(config.root, file, random_access=True) as source, zipfile.ZipFile(source) as archive:
            # Not `ZipInfo.is_dir`, which fails on an empty name.
            names = [info.filename for info in archive.infolist() if not info.filename.endswith("/")]
    except (*STREAM_ERRORS, RuntimeError, NotImplementedError) as error:
        detail = f"not a readable zip archive: {type(error).__name__}: {error}"
        yield file_reject_row(config, file, FileUnreadable(detail))
        return
    stored: dict[str, int] = {}
    for name in names:
        stored[name] = stored.get(name, 0) + 1
    for name in dict.fromkeys(names):  # each name once, in archive order
        if any(part.startswith((".", "_")) for part in name.split("/")):
            continue
        member = f"{file}/{name}"
        if stored[name] > 1:
            detail = f"{name} is stored {stored[name]} times in {file}; the last one stored is read"
            yield reject_row(config, member, Rejected("read", "bad_field", detail))
        if name.endswith(".zip"):
            detail = f"{member}: an archive inside an archive is not read; extract it first"
            yield file_reject_row(config, member, FileUnreadable(detail, reason="unsupported_file"))
        elif reader_format.reads(name):
            yield from reader_format.read_file(config, member)
        else:
            detail = _unsupported(reader_format, name, member)
            yield file_reject_row(config, member, FileUnreadable(detail, reason="unsupported_file"))


def _unsupported(reader_format: Format, name: str, shown: str | None = None) -> str:
    """Why format `reader_format` does not read the file `name` (shown as `shown`), and what would."""
    # Imported here: the registry imports every reader, and the readers import this module.
    from pipeline.ingest import READERS

    others = [other.name for other in READERS.values() if other is not reader_format and other.reads(name)]
    inner, compression = split_compression(name)
    suffixes = ", ".join(reader_format.suffixes)
    detail = f"{shown or name}: format {reader_format.name} reads files ending in {suffixes}"
    if reader_format.streamed:
        detail += (
            f" ({', '.join(reader_format.streamed)} also compressed: .gz, .zst, .bz2, .xz, or in a .zip)"
        )
    if others:
        detail += f"; format {' or '.join(others)} reads this file"
    if compression is not None and reader_format.reads(inner):
        detail += f"; decompress it ({compression}) to read it with format {reader_format.name}"
    elif not others:
        detail += "; no format reads this file"
    return detail

"""Reader for WebDataset tar shards (`format: webdataset`), as img2dataset writes them.

A shard is an uncompressed tar whose members are grouped into samples by key: the member name up to
the first dot of its last path component, folder included (`00000/000000123.jpg` → key
`00000/000000123`, extension `jpg`; extensions are compared in lower case). Members of one sample are
adjacent. Every group of adjacent members sharing a key is one record:

- image: the first of `image_extensions` present (`missing_field` when none);
- caption: the `text_extension` member (UTF-8), else the first of `json_text_fields` found in the
  `.json` member (`missing_field` when none; a `.json` that is not a JSON object is
  `malformed_record`);
- meta: the `.json` member's other fields (img2dataset's url, width, height, status, ...); other
  members are not read. A `.json` member whose `status` starts with "failed" (img2dataset's
  `failed_to_download`, `failed_to_resize`) makes the group a `failed_download` reject with its
  `error_message` (checked before anything else of the group, as such a group has no image).

Shards may be compressed (`.tar.gz`, `.tgz`, `.tar.zst`, `.tar.bz2`, `.tar.xz`) or `.zip` members, as
the webdataset library reads them: they are decompressed as a stream and read forward only, never
decompressed to disk or held whole. Next to the shards, img2dataset's `X.parquet` and `X_stats.json`
are ignored by rule (`pipeline.ingest.base`).

Safety: members are read from the tar into memory, never extracted, so nothing is written to disk. A
group with a member whose name is absolute or contains `..`, or that is a link, a device, a FIFO or
anything but a regular file or a folder is rejected whole as `unsafe_member`, without reading that
member. Sizes are checked on the header before any data is read: a group whose image member declares
more than `max_image_bytes` is `image_too_large`, one whose text or `.json` member declares more than
`max_record_bytes` is `record_too_large`, and that member is skipped unread. The tar is read member by
member (a seek past what is not read) and no read of the archive may ask for more than those limits,
so a header declaring a huge name or pax record cannot pull it into memory either (the tar is then
unreadable from there). A key that appears again after other members, or an extension twice in a
group, is `bad_field` (a repeated key gets the key `...#<key>#<n>` for its n-th group, to stay unique).

Truncation: the tar is read member by member; when it ends without its end-of-archive marker, or a
header or a member's data cannot be read, the group being read is rejected as `unreadable_file` (it
may be incomplete) and nothing after it is read; with no group started, one reject row keyed by the
file stands for the rest. Key: `<shard relative to the source root>#<member key>`; the image's path
in the row is its member name.
"""

from __future__ import annotations

import contextlib
import json
import tarfile
import typing
from collections.abc import Generator
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.ingest.base import (
    Format,
    ImageOptions,
    Row,
    SourceConfig,
    open_input,
    option,
    split_compression,
)
from pipeline.ingest.checks import (
    FileUnreadable,
    Rejected,
    check_download,
    check_image,
    check_text,
    file_reject_row,
    image_segment,
    reject_row,
    sample_row,
    text_segment,
    valid_text,
)
from pipeline.ingest.containers import STREAM_ERRORS, open_stream, split_member

__all__ = ["FORMAT", "WebDatasetOptions", "read_file"]

_TAR_ERRORS = (tarfile.TarError, OverflowError, *STREAM_ERRORS)
_END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)


@dataclass(frozen=True)
class WebDatasetOptions(ImageOptions):
    """Options of `format: webdataset`."""

    image_extensions: tuple[str, ...] = option(
        ("jpg", "jpeg", "png", "webp"), "member extensions taken as the image, in order of preference"
    )
    text_extension: str = option("txt", "member extension holding the caption as UTF-8 text")
    json_text_fields: tuple[str, ...] = option(
        ("caption", "text"), "fields of the .json member tried in order when there is no text member"
    )


@dataclass
class _Group:
    """The members of one key read so far: extension → (member name, bytes)."""

    key: str
    occurrence: int
    members: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    problems: list[Rejected] = field(default_factory=list)


def read_file(config: SourceConfig, file: str) -> Generator[Row, None, None]:
    """One sample or reject row per member group of the shard `file`, in tar order."""
    streamed = split_compression(file)[1] is not None or split_member(file)[1] is not None
    with contextlib.ExitStack() as stack:
        try:
            if streamed:
                source = _ForwardReads(stack.enter_context(open_stream(config.root, file)))
            else:
                source = stack.enter_context(open_input(config.root, file, random_access=True))
        except FileUnreadable as problem:
            yield file_reject_row(config, file, problem)
            return
        except (OSError, pa.ArrowException) as error:
            yield file_reject_row(config, file, FileUnreadable(f"cannot open: {error}"))
            return
        yield from _shard_rows(config, file, source, "compressed tar" if streamed else "uncompressed tar")


def _shard_rows(
    config: SourceConfig, file: str, source: pa.NativeFile | _ForwardReads, kind: str
) -> Generator[Row, None, None]:
    """The rows of the shard `file`, read from `source` (a seekable file, or `_ForwardReads`)."""
    options = config.options
    assert isinstance(options, WebDatasetOptions)
    try:
        bounded = _BoundedReads(source, max(options.max_image_bytes, options.max_record_bytes))
        tar = tarfile.open(fileobj=bounded, mode="r:")
    except _TAR_ERRORS as error:
        yield file_reject_row(config, file, FileUnreadable(f"not a readable {kind}: {error}"))
        return
    wanted = {*options.image_extensions, options.text_extension, "json"}
    occurrences: dict[str, int] = {}
    group: _Group | None = None
    problem: str | None = None
    while True:
        try:
            member = tar.next()
        except _TAR_ERRORS as error:
            problem = f"a tar header cannot be read: {error}"
            break
        if member is None:
            problem = _end_problem(tar.offset, source)
            break
        tar.members.clear()  # tarfile keeps every header it read: memory would grow with the shard
        unsafe = _unsafe(member)
        if member.isdir() and unsafe is None:
            continue
        key, extension = _split_name(member.name)
        if group is None or key != group.key:
            if group is not None:
                yield _row(config, file, group)
            occurrences[key] = occurrences.get(key, 0) + 1
            group = _Group(key, occurrences[key])
        if unsafe is not None:
            group.problems.append(Rejected("read", "unsafe_member", unsafe))
            continue
        if extension not in wanted:
            continue  # other members (class labels, features, ...) are not read at all
        too_large = _too_large(member, extension, options)
        if too_large is not None:
            group.problems.append(too_large)
            continue
        try:
            data = tar.extractfile(member).read()
        except _TAR_ERRORS as error:
            problem = f"member {valid_text(member.name)!r} cannot be read: {error}"
            break
        if extension in group.members:
            detail = f"member {valid_text(member.name)!r} appears twice"
            group.problems.append(Rejected("read", "bad_field", detail))
        group.members[extension] = (member.name, data)
    if group is None:
        if problem is not None:
            yield file_reject_row(config, file, FileUnreadable(f"no sample could be read: {problem}"))
    elif problem is not None:
        detail = f"the tar ends or breaks inside this sample, and nothing after it can be read: {problem}"
        yield reject_row(config, _key(file, group), Rejected("read", "unreadable_file", detail))
    else:
        yield _row(config, file, group)


def _end_problem(offset: int, source: pa.NativeFile | _ForwardReads) -> str | None:
    """Why the tar stopped at `offset` (where the next header was expected), or None when it ends
    with its end-of-archive marker."""
    try:
        source.seek(offset)
        block = source.read(tarfile.BLOCKSIZE)
    except _TAR_ERRORS as error:
        return f"cannot read past byte {offset}: {error}"
    if block == _END_OF_ARCHIVE:
        return None
    if not block:
        return f"the tar ends at byte {offset} without its end-of-archive marker (truncated)"
    return f"unreadable header at byte {offset} (corrupt or truncated)"


def _too_large(member: tarfile.TarInfo, extension: str, options: WebDatasetOptions) -> Rejected | None:
    """Why a member is too large to read, from the size its header declares, or None."""
    declared = f"member {valid_text(member.name)!r} declares {member.size} bytes"
    if extension in options.image_extensions:
        if member.size > options.max_image_bytes:
            detail = f"{declared}, over max_image_bytes {options.max_image_bytes}; not read"
            return Rejected("image", "image_too_large", detail)
    elif member.size > options.max_record_bytes:
        detail = f"{declared}, over max_record_bytes {options.max_record_bytes}; not read"
        return Rejected("read", "record_too_large", detail)
    return None


class _ForwardReads:
    """A decompressed stream as the seekable file `tarfile` reads: a seek forward reads and drops the
    bytes in between, a seek back reaches only the last `KEEP` bytes read (as far back as `tarfile`
    and `_end_problem` go), further is an `OSError`."""

    KEEP = 2 * tarfile.BLOCKSIZE

    def __init__(self, stream: typing.BinaryIO) -> None:
        self._stream = stream
        self._end = 0  # bytes read from the stream
        self._position = 0
        self._kept = b""  # the last bytes read from the stream, up to `_end`

    def read(self, size: int) -> bytes:
        pieces = []
        if self._position < self._end:  # a replay of kept bytes after a seek back
            start = len(self._kept) - (self._end - self._position)
            pieces.append(self._kept[start : start + size])
            self._position += len(pieces[0])
            size -= len(pieces[0])
        if size > 0:
            pieces.append(self._pull(size))
            self._position = self._end
        return b"".join(pieces)

    def _pull(self, size: int) -> bytes:
        """Up to `size` bytes from the stream (fewer only at its end), remembered in `_kept`."""
        pieces = []
        while size > 0 and (piece := self._stream.read(size)):
            pieces.append(piece)
            size -= len(piece)
        data = b"".join(pieces)
        self._end += len(data)
        self._kept = (self._kept + data[-self.KEEP :])[-self.KEEP :]
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        target = offset if whence == 0 else self._position + offset if whence == 1 else None
        if target is None or target < self._end - len(self._kept):
            raise OSError(f"a compressed tar is read forward only (seek to {offset}, whence {whence})")
        self._position = min(target, self._end)
        while self._end < target and self._pull(min(target - self._end, 1 << 20)):
            self._position = self._end
        return self._position

    def tell(self) -> int:
        return self._position


class _BoundedReads:
    """The tar file for `tarfile`, refusing any read of more than `limit` bytes: a header's declared
    size (a long name, a pax record) never becomes an allocation of that size."""

    def __init__(self, file: pa.NativeFile | _ForwardReads, limit: int) -> None:
        self._file = file
        self._limit = limit

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0 or size > self._limit:
            raise OSError(f"a read of {size} bytes asked for, more than the {self._limit} allowed")
        return self._file.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()


def _unsafe(member: tarfile.TarInfo) -> str | None:
    """Why a member must not be used, or None."""
    name = valid_text(member.name)
    parts = member.name.replace("\\", "/").split("/")
    if member.name.startswith(("/", "\\")) or ".." in parts:
        return f"member {name!r} has an absolute path or '..'"
    if not (member.isreg() or member.isdir()):
        kind = "link" if member.issym() or member.islnk() else "device, FIFO or special file"
        return f"member {name!r} is a {kind}, not a regular file"
    return None


def _split_name(name: str) -> tuple[str, str]:
    """(key, lower-case extension) of a member name."""
    dot = name.find(".", name.rfind("/") + 1)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :].lower()


def _key(file: str, group: _Group) -> str:
    key = f"{file}#{group.key}"
    return key if group.occurrence == 1 else f"{key}#{group.occurrence}"


def _row(config: SourceConfig, file: str, group: _Group) -> Row:
    key = _key(file, group)
    try:
        return _sample(config, key, group)
    except Rejected as rejected:
        return reject_row(config, key, rejected)


def _sample(config: SourceConfig, key: str, group: _Group) -> Row:
    options = config.options
    assert isinstance(options, WebDatasetOptions)
    if group.problems:
        unsafe = [problem for problem in group.problems if problem.reason == "unsafe_member"]
        raise (unsafe or group.problems)[0]
    if group.occurrence > 1:
        raise Rejected(
            "read",
            "bad_field",
            f"key {valid_text(group.key)!r} appears again after other members (time {group.occurrence})",
        )
    meta = _json_member(group)
    check_download(meta.get("status"), meta.get("error_message"))
    image_extension = next((ext for ext in options.image_extensions if ext in group.members), None)
    if image_extension is None:
        raise Rejected("read", "missing_field", f"no image member ({', '.join(options.image_extensions)})")
    if options.text_extension in group.members:
        caption = check_text(group.members[options.text_extension][1], f".{options.text_extension} member")
    else:
        field_name = next((name for name in options.json_text_fields if name in meta), None)
        if field_name is None:
            raise Rejected(
                "read",
                "missing_field",
                f"no .{options.text_extension} member and no "
                f"{' or '.join(options.json_text_fields)} in the .json member",
            )
        caption = check_text(meta[field_name], f".json {field_name}")
    name, data = group.members[image_extension]
    image = check_image(data, valid_text(name), options)
    meta = {name: value for name, value in meta.items() if name not in options.json_text_fields}
    return sample_row(config, key, "caption", [image_segment(0), text_segment(caption)], [image], meta=meta)


def _json_member(group: _Group) -> dict:
    if "json" not in group.members:
        return {}
    try:
        value = json.loads(group.members["json"][1].decode("utf-8", "surrogateescape"))
    except (ValueError, RecursionError) as error:
        raise Rejected("read", "malformed_record", f".json member is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise Rejected("read", "malformed_record", f".json member is not a JSON object: {value!r:.80}")
    return value


FORMAT = Format(
    name="webdataset",
    options=WebDatasetOptions,
    suffixes=(".tar",),
    uses_images_root=False,
    read_file=read_file,
    streamed=(".tar",),
)

"""The reader interface of `pipeline.ingest`: source configs, format options, file listing and counts.

A source in a job config is one mapping: `name`, `format` and `path` (required), `images_root` for the
formats that read image files, and the format's own options at the same level, each with a
documented default. `parse_source` validates such a mapping completely, before any data is read, and
raises `ConfigError` naming the key to change (`sources[2].text_column: unknown option ...`).

A `Reader` (config + format) is a small picklable object, so that a job can ship it to workers:

- `Reader.files()` lists the source's input files as paths relative to the source root: the unit of
  parallel work (one task per file).
- `Reader.read_file(file)` yields one row dict per record read, in a deterministic order: either a
  sample row (`schemas.sample` columns) or a reject row (`schemas.reject` columns; `is_reject` tells
  them apart). A file that cannot be read (or whose rest cannot be read) ends with one reject row
  whose key is the file itself, so every record read is accounted for exactly once.
- `Reader.batches(file)` groups those rows into `Batch`es: a samples table and a rejects table of
  exactly the two schemas, size-bounded, with their `Counts` (records read, samples, rejects by
  reason), which add up across files and reconcile by construction: read = samples + rejects.

Paths: `path` is a file, a folder (every file under it, recursively, none of whose path components
starts with `.` or `_`) or a glob (`*`, `?`, `[...]` within one path component, `**` for any number
of folders; as in a shell, wildcards do not match names starting with `.`). Relative paths resolve
against `base_dir` (the job config's folder). A path may also be a URI that `pyarrow.fs` understands
(`file://`, `s3://`, `gs://`, percent-encoded); every file access goes through `pyarrow.fs`. The
source root is the folder of `path` (the folder itself, or for a glob the folder before its first
wildcard); keys and stored paths are relative to it or to `images_root`, so rows never depend on where
a corpus lives.

No file is skipped in silence: every file a folder or glob lists is read when its name ends with one
of the format's suffixes (`Format.reads`: for the suffixes the format reads as streams, also compressed
as `.gz`, `.zst`, `.bz2` or `.xz`, `.tgz` for `.tar`, or inside a `.zip` archive, read member by
member), and any other becomes one `unsupported_file` reject naming the file and the formats that read
it (`pipeline.ingest.containers`). Ignored by rule, besides hidden files, among the files the format
cannot read: image files (`IMAGE_SUFFIXES`) of a format that reads images from `images_root` (they are
its images), and the sidecars that tools write next to their output, `X_stats.json` next to an input
file `X.*` and `X.parquet` next to a shard `X.tar` (img2dataset). A `path` naming one file is read
whatever its name, unless it is a `.zip` or compressed in a way the format cannot read (see
`containers.file_rows`).

Confinement: a file is read only inside its declared root. On a local file system (plain paths and
`file://` URIs) a file that a folder or glob lists, a record names or a map points to is opened by its
real path (symlinks resolved), only when that lies inside the real path of its root (the source root
for input files, `images_root` for images; `open_input` and `real_path_inside` check it and raise
`OutsideRoot`), and only when it is a regular file (a FIFO, device or socket is never opened, so a read
cannot block). Listing does not enter symlinked folders unless the source sets `follow_symlinks: true`;
even then only those that resolve inside the source root, and a folder reached twice is walked once
(folders reached through no symlink first); a file reached by several names (a symlink to another
listed file) is listed once. A `path` that names one file must resolve inside its own folder. Object
stores have no symlinks: their paths are checked lexically, as record paths are.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import heapq
import math
import os
import posixpath
import re
import stat
import types
import typing
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from pipeline import images
from pipeline.errors import ConfigError
from schemas import reject as reject_schema
from schemas import sample as sample_schema

__all__ = [
    "Batch",
    "ConfigError",
    "Counts",
    "Format",
    "ImageOptions",
    "Options",
    "OutsideRoot",
    "Reader",
    "SourceConfig",
    "filesystem",
    "is_reject",
    "list_files",
    "open_input",
    "option",
    "parse_source",
    "real_path_inside",
]

Image.init()
FORMAT_OPENERS: dict[str, str] = {name: name for name in Image.OPEN}
"""Container format (Pillow's name) → the Pillow opener that reads it. MPO (multi-picture JPEG, as
phone cameras write) has no opener of its own: JPEG's opener reads it and reports "MPO"."""
if "MPO" not in Image.OPEN and "JPEG" in Image.OPEN and "MPO" in Image.SAVE:
    FORMAT_OPENERS["MPO"] = "JPEG"
PILLOW_FORMATS = tuple(sorted(FORMAT_OPENERS))
"""Every container format the installed Pillow can open (names as Pillow spells them)."""

PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Pillow refuses to open images above this many pixels (DecompressionBombError)."""

MAX_IMAGE_BYTES = 1 << 30
"""The largest `max_image_bytes` allowed (1 GiB): image bytes go into Arrow binary columns (2 GiB per
array) and through the object store, so one image must stay far below that."""
MAX_RECORD_BYTES = 1 << 30
"""The largest `max_record_bytes` allowed (1 GiB): a record is held whole while it is parsed."""

COMPRESSIONS: dict[str, str] = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2", ".xz": "xz"}
"""File name suffix → the compression a streamed input file with that suffix is read through."""

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
"""Image file extensions: such files next to the records of a format that reads images from
`images_root` are its images, not inputs that it fails to read."""

SHARD_SUFFIXES = (".tar", ".tgz", *(".tar" + suffix for suffix in COMPRESSIONS))
"""Tar shards, plain or compressed."""

SOURCE_KEYS = ("name", "format", "path", "images_root")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GLOB_CHARACTERS = frozenset("*?[")


class OutsideRoot(PermissionError):
    """A file whose real path (symlinks resolved) lies outside the root it must stay in: never opened.
    An `OSError`, so that a reader's handling of files it cannot open covers it."""


def option(
    default: object, doc: str, *, choices: Collection[object] | None = None, minimum: int | None = None
) -> typing.Any:
    """A documented option field: `doc` says what it means; `choices` limits the value (or, for a
    tuple option, each element) to a set; `minimum` bounds an integer from below."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum})


@dataclass(frozen=True)
class Options:
    """Options every format takes."""

    follow_symlinks: bool = option(
        False,
        "list files in symlinked folders under a folder or glob path too (only those that resolve inside "
        "the source root; each folder once); false: symlinked folders are not entered",
    )
    max_records_per_file: int | None = option(
        None, "read at most this many records from each input file (null: all of them)", minimum=1
    )
    max_record_bytes: int = option(
        16 << 20,
        "largest record read, in bytes (16 MiB): a JSON Lines line, an element of a JSON array, a tar "
        "member's text or JSON; a larger one is rejected as record_too_large and skipped unread; at most "
        f"{MAX_RECORD_BYTES}",
        minimum=1,
    )


@dataclass(frozen=True)
class ImageOptions(Options):
    """Options of the formats that carry images."""

    max_image_pixels: int = option(
        Image.MAX_IMAGE_PIXELS,
        "images with more pixels (width × height, from the header, before any decoding) are rejected "
        f"as image_too_large; at most {PILLOW_MAX_PIXELS}, where Pillow itself refuses",
        minimum=1,
    )
    max_image_bytes: int = option(
        64 << 20,
        "largest image, in bytes (64 MiB); a larger one is rejected as image_too_large (an image file from "
        "its size, before any byte is read, and never more than this + 1 bytes of it are read); at most "
        f"{MAX_IMAGE_BYTES}",
        minimum=1,
    )
    image_check: str = option(
        "full",
        "full: decode every image, which rejects truncated data, data the decoder refuses and JPEGs whose "
        "marker structure is damaged (stray markers inside the compressed data; restart markers missing, "
        "extra or out of order); compressed bytes that are corrupt but still decode (a flipped bit, a "
        "zeroed stretch between restart markers) pass, as Pillow decodes them without an error; "
        "header: read only the header (size and format), faster",
        choices=("full", "header"),
    )
    image_formats: tuple[str, ...] = option(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"),
        "container formats accepted (Pillow's names); anything else is unreadable_image, so that "
        "no other Pillow plugin (EPS, ...) ever parses corpus bytes; MPO (multi-picture JPEG) is read "
        "by the JPEG reader: JPEG accepts MPO files too, MPO alone accepts only them",
        choices=PILLOW_FORMATS,
    )


Row = dict[str, typing.Any]


@dataclass(frozen=True)
class SourceConfig:
    """One validated source. `path`, `root` and `images_root` are absolute local paths or URIs."""

    name: str
    format: str
    path: str
    root: str
    images_root: str
    options: Options


@dataclass(frozen=True)
class Format:
    """What a format module provides: its name, options class, the file suffixes a folder path
    selects, whether it reads image files from `images_root`, and its record reader; optionally
    `select_files`, which narrows the listed files to those to read (given the source) and raises
    `ConfigError` with a message starting with the key to change (`parse_source` calls it, so that
    such checks fail fast)."""

    name: str
    options: type[Options]
    suffixes: tuple[str, ...]
    uses_images_root: bool
    read_file: Callable[[SourceConfig, str], Generator[Row, None, None]]
    select_files: Callable[[SourceConfig, list[str]], list[str]] | None = None
    streamed: tuple[str, ...] = ()
    """Those of `suffixes` whose files are read from start to end as a stream: such a file may also
    be compressed (a suffix of `COMPRESSIONS` after it) or a member of a `.zip` archive."""

    def reads(self, name: str) -> bool:
        """Whether the format reads a file of this name: one of its suffixes, a streamed suffix
        compressed, or a `.zip` archive when it has streamed suffixes (members are checked when read)."""
        inner, compression = split_compression(name)
        if compression is not None:
            return inner.endswith(self.streamed)
        if name.endswith(".zip"):
            return bool(self.streamed)
        return name.endswith(self.suffixes)

    def listed_suffixes(self) -> tuple[str, ...]:
        """Every file name ending that `reads` accepts."""
        compressed = [suffix + ending for suffix in self.streamed for ending in COMPRESSIONS]
        tgz = [".tgz"] if ".tar" in self.streamed else []
        return (*self.suffixes, *compressed, *tgz, *([".zip"] if self.streamed else []))


def split_compression(name: str) -> tuple[str, str | None]:
    """(the name without its compression suffix, the compression) of a file name: `a.jsonl.gz` →
    (`a.jsonl`, gzip), `a.tgz` → (`a.tar`, gzip); (name, None) for a name without one."""
    if name.endswith(".tgz"):
        return name[: -len(".tgz")] + ".tar", "gzip"
    for suffix, compression in COMPRESSIONS.items():
        if name.endswith(suffix):
            return name[: -len(suffix)], compression
    return name, None


@dataclass
class Counts:
    """What reading some files gave: records read, samples, and rejects by reason code."""

    read: int = 0
    samples: int = 0
    rejected: dict[str, int] = field(default_factory=dict)

    def add(self, row: Row) -> None:
        """Count one row of `read_file`."""
        self.read += 1
        if is_reject(row):
            self.rejected[row["reason"]] = self.rejected.get(row["reason"], 0) + 1
        else:
            self.samples += 1

    def __add__(self, other: Counts) -> Counts:
        rejected = dict(self.rejected)
        for reason, count in other.rejected.items():
            rejected[reason] = rejected.get(reason, 0) + count
        return Counts(self.read + other.read, self.samples + other.samples, rejected)


@dataclass(frozen=True)
class Batch:
    """Consecutive rows of one file: samples and rejects as tables of exactly their schemas."""

    samples: pa.Table
    rejects: pa.Table
    counts: Counts


@dataclass(frozen=True)
class Reader:
    """A validated source bound to its format: picklable, cheap, no open files."""

    config: SourceConfig
    format: Format

    def files(self) -> list[str]:
        """The source's input files, relative to the source root, sorted: every file the path lists
        (those the format cannot read included, for `read_file` to reject), less the tools' sidecars."""
        files = list_files(self.config.path, None, follow_symlinks=self.config.options.follow_symlinks)
        names = set(files)
        outputs = self.format.listed_suffixes()
        files = [
            file
            for file in files
            if self.format.reads(file)
            or not (_sidecar(file, names, outputs) or (self.format.uses_images_root and _image_file(file)))
        ]
        if self.format.select_files is not None:
            files = self.format.select_files(self.config, files)
        return files

    def read_file(self, file: str) -> Iterator[Row]:
        """One sample or reject row per record of `file` (a name from `files()`), in file order,
        stopping after `max_records_per_file` rows; a file the format cannot read is one
        `unsupported_file` reject, a `.zip` archive is read member by member."""
        # Imported here: `containers` builds rows with `checks`, which imports this module.
        from pipeline.ingest import containers

        rows = containers.file_rows(self.config, self.format, file)
        limit = self.config.options.max_records_per_file
        try:
            for count, row in enumerate(rows, start=1):
                yield row
                if limit is not None and count >= limit:
                    return
        finally:
            rows.close()

    def batches(self, file: str, max_rows: int = 256, max_bytes: int = 64 << 20) -> Iterator[Batch]:
        """`read_file(file)` in batches of at most `max_rows` rows or about `max_bytes` of image bytes."""
        samples: list[Row] = []
        rejects: list[Row] = []
        counts = Counts()
        image_bytes = 0
        for row in self.read_file(file):
            counts.add(row)
            if is_reject(row):
                rejects.append(row)
            else:
                samples.append(row)
                image_bytes += sum(len(image["bytes"] or b"") for image in row["images"])
            if len(samples) + len(rejects) >= max_rows or image_bytes >= max_bytes:
                yield Batch(sample_schema.to_table(samples), reject_schema.to_table(rejects), counts)
                samples, rejects, counts, image_bytes = [], [], Counts(), 0
        if counts.read:
            yield Batch(sample_schema.to_table(samples), reject_schema.to_table(rejects), counts)


def _image_file(file: str) -> bool:
    """Whether `file` is named as an image file (by its extension, in any case)."""
    return file.lower().endswith(IMAGE_SUFFIXES)


def _sidecar(file: str, files: Collection[str], outputs: tuple[str, ...]) -> bool:
    """Whether `file` is a sidecar a tool writes next to its output (see the module docstring):
    `X_stats.json` next to `X` with one of the `outputs` suffixes, or `X.parquet` next to a shard `X.tar`."""
    if file.endswith("_stats.json"):
        stem = file[: -len("_stats.json")]
        return any(stem + suffix in files for suffix in outputs)
    if file.endswith(".parquet"):
        stem = file[: -len(".parquet")]
        return any(stem + suffix in files for suffix in SHARD_SUFFIXES)
    return False


def is_reject(row: Row) -> bool:
    """Whether a row of `read_file` is a reject row (else it is a sample row)."""
    return "reason" in row


def parse_source(
    mapping: object,
    formats: Mapping[str, Format],
    *,
    where: str = "source",
    base_dir: str | os.PathLike[str] | None = None,
    reserved: Collection[str] = (),
) -> SourceConfig:
    """Validate one source mapping completely and resolve its paths.

    `where` prefixes every error ("sources[2]"); relative paths resolve against `base_dir` (default:
    the working directory); `reserved` names keys the caller handles itself (they are allowed here
    and ignored). Checks that `path` exists (a glob must match, a folder must hold a file of the
    format) and that an explicit `images_root` is a folder.
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"{where}: must be a mapping with name, format and path, not {type(mapping).__name__}"
        )
    for key in ("name", "format", "path"):
        if mapping.get(key) is None:
            raise ConfigError(f"{where}.{key}: required")
        if not isinstance(mapping[key], str) or not mapping[key]:
            raise ConfigError(f"{where}.{key}: must be a non-empty string, not {mapping[key]!r}")
    name, format_name = mapping["name"], mapping["format"]
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{where}.name: {name!r} is not a valid source name; use letters, digits, '.', '_' and '-', "
            "starting with a letter or digit (it names output folders)"
        )
    if format_name not in formats:
        raise ConfigError(
            f"{where}.format: unknown format {format_name!r}; known: {', '.join(sorted(formats))}"
        )
    reader_format = formats[format_name]
    option_names = [option.name for option in dataclasses.fields(reader_format.options)]
    allowed = {"name", "format", "path", *option_names, *reserved}
    if reader_format.uses_images_root:
        allowed.add("images_root")
    for key in mapping:
        if key not in allowed:
            known = [k for k in (*SOURCE_KEYS, *option_names) if k in allowed]
            hint = (
                f"format {format_name!r} reads no image files, so images_root does not apply"
                if key == "images_root"
                else f"unknown option for format {format_name!r}; known: {', '.join(known)}"
            )
            raise ConfigError(f"{where}.{key}: {hint}")

    options = _parse_options(reader_format.options, mapping, where)
    path = _resolve(mapping["path"], base_dir)
    root = _existing_root(
        path, reader_format.listed_suffixes(), f"{where}.path", mapping["path"], options.follow_symlinks
    )
    images_root = root
    if mapping.get("images_root") is not None:
        value = mapping["images_root"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.images_root: must be a non-empty string, not {value!r}")
        images_root = _resolve(value, base_dir)
        if _info(images_root, f"{where}.images_root").type != pafs.FileType.Directory:
            raise ConfigError(f"{where}.images_root: {images_root} is not a folder (from {value!r})")
    config = SourceConfig(name, format_name, path, root, images_root, options)
    if reader_format.select_files is not None:
        try:
            reader_format.select_files(
                config, list_files(path, None, follow_symlinks=options.follow_symlinks)
            )
        except ConfigError as error:
            raise ConfigError(f"{where}.{error}") from None
    return config


def _parse_options(options_class: type[Options], mapping: Mapping, where: str) -> Options:
    hints = typing.get_type_hints(options_class)
    values = {}
    for option_field in dataclasses.fields(options_class):
        if option_field.name not in mapping:
            continue
        key = f"{where}.{option_field.name}"
        value = _coerce(mapping[option_field.name], hints[option_field.name], key)
        meta = option_field.metadata
        minimum = meta.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"{key}: must be at least {minimum}, not {value}")
        choices = meta.get("choices")
        if choices is not None:
            for item in value if isinstance(value, tuple) else (value,):
                if item not in choices:
                    raise ConfigError(f"{key}: {item!r} is not one of {', '.join(map(str, choices))}")
        values[option_field.name] = value
    if values.get("max_image_pixels", 0) > PILLOW_MAX_PIXELS:
        raise ConfigError(
            f"{where}.max_image_pixels: at most {PILLOW_MAX_PIXELS} (Pillow refuses larger images), "
            f"not {values['max_image_pixels']}"
        )
    if values.get("max_image_bytes", 0) > MAX_IMAGE_BYTES:
        raise ConfigError(
            f"{where}.max_image_bytes: at most {MAX_IMAGE_BYTES} (1 GiB), not {values['max_image_bytes']}"
        )
    if values.get("max_record_bytes", 0) > MAX_RECORD_BYTES:
        raise ConfigError(
            f"{where}.max_record_bytes: at most {MAX_RECORD_BYTES} (1 GiB), not {values['max_record_bytes']}"
        )
    return options_class(**values)


def _coerce(value: object, hint: object, key: str) -> object:
    """The YAML value checked against an option's type: bool, int, float, str, tuple[str, ...], or
    `X | None`."""
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: must be true or false, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: must be an integer, not {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, not {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key}: must be a non-empty string, not {value!r}")
        return value
    if typing.get_origin(hint) is not tuple:
        raise TypeError(f"{key}: options of type {hint} are not supported")
    if not isinstance(value, list | tuple) or not value or not all(isinstance(v, str) and v for v in value):
        raise ConfigError(f"{key}: must be a non-empty list of non-empty strings, not {value!r}")
    return tuple(value)


# ---- locations: local paths and pyarrow.fs URIs ----------------------------------------------------


def _is_uri(location: str) -> bool:
    """Whether a location is a URI (`scheme://...`) rather than a local path."""
    return re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", location) is not None


def _resolve(location: str, base_dir: str | os.PathLike[str] | None) -> str:
    if _is_uri(location):
        stripped = location.rstrip("/")
        return location if stripped.endswith(":") else stripped
    return os.path.normpath(os.path.join(base_dir if base_dir is not None else os.getcwd(), location))


@functools.lru_cache(maxsize=64)
def filesystem(location: str) -> tuple[pafs.FileSystem, str]:
    """The `pyarrow.fs` file system of a location and the location's path inside it (cached, so a
    URI's file system is made once per process)."""
    if _is_uri(location):
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), location


def open_input(location: str, relative: str, *, random_access: bool = False) -> pa.NativeFile:
    """Open `relative` (a posix path) under the folder `location` for reading, buffered for streams.

    On a local file system the file opened is the real path of `relative`, which must lie inside the
    real path of `location` (`OutsideRoot`) and be a regular file (`images.NotARegularFile`, checked
    before opening, so a FIFO never blocks the read); both are `OSError`s, as a missing file is."""
    fs, base = filesystem(location)
    path = posixpath.join(base, relative)
    if isinstance(fs, pafs.LocalFileSystem):
        path = real_path_inside(base, relative, "the source root")
        images.check_regular_file(path, relative)
    if random_access:
        return fs.open_input_file(path)
    # compression=None: pyarrow would otherwise decompress by the suffix, which `containers` does.
    return fs.open_input_stream(path, compression=None, buffer_size=1 << 20)


def real_path_inside(folder: str, relative: str, root_name: str) -> str:
    """The real path (symlinks resolved) of `relative` under the local folder `folder`, which must lie
    inside the real path of `folder`; `OutsideRoot` otherwise, naming `relative`, where it leads and the
    root (`root_name`, e.g. "images_root"). An absolute `relative` is taken as it is, so it passes only
    when it too resolves inside the root."""
    root = os.path.realpath(folder)
    real = os.path.realpath(os.path.join(folder, relative))
    if not _inside(real, root):
        raise OutsideRoot(f"{relative} resolves to {real}, outside {root_name} {root}")
    return real


def _inside(real: str, root: str) -> bool:
    """Whether the real path `real` is `root` or lies under it (both real, absolute paths)."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _info(location: str, key: str) -> pafs.FileInfo:
    try:
        fs, path = filesystem(location)
        return fs.get_file_info(path)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ConfigError(f"{key}: cannot access {location}: {error}") from error


def _split_glob(path: str) -> tuple[str, str | None]:
    """(root folder, pattern relative to it), or (path, None) when `path` has no wildcard."""
    prefix = ""
    rest = path
    if _is_uri(path):
        scheme, rest = path.split("://", 1)
        prefix = scheme + "://"
    parts = rest.split("/")
    first = next((i for i, part in enumerate(parts) if GLOB_CHARACTERS & set(part)), None)
    if first is None:
        return path, None
    root = "/".join(parts[:first]) or "/"
    return prefix + root, "/".join(parts[first:])


def _existing_root(path: str, suffixes: tuple[str, ...], key: str, given: str, follow_symlinks: bool) -> str:
    """The source root of `path`, after checking that `path` names at least one input file (and that a
    local file it names resolves inside its folder, the root)."""
    root, pattern = _split_glob(path)
    if pattern is None:
        info = _info(path, key)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{key}: {path} does not exist (from {given!r})")
        if info.type != pafs.FileType.Directory:
            fs, local = filesystem(path)
            if isinstance(fs, pafs.LocalFileSystem):
                try:
                    real_path_inside(os.path.dirname(local), os.path.basename(local), "its folder")
                except OutsideRoot as error:
                    raise ConfigError(
                        f"{key}: {error}; name the file it links to, or a folder or glob holding it"
                    ) from None
            return _parent(path)
        root = path
    try:
        found = list_files(path, suffixes, follow_symlinks=follow_symlinks)
    except (OSError, ValueError, pa.ArrowException) as error:
        raise ConfigError(f"{key}: cannot list {path}: {error}") from error
    if not found:
        wanted = "a file matching the pattern" if pattern else f"a file ending in {' or '.join(suffixes)}"
        raise ConfigError(f"{key}: {path} holds no input: expected {wanted} (from {given!r})")
    return root


def _parent(location: str) -> str:
    if _is_uri(location):
        return location.rsplit("/", 1)[0]
    return os.path.dirname(location)


def list_files(path: str, suffixes: tuple[str, ...] | None, *, follow_symlinks: bool = False) -> list[str]:
    """The input files `path` names, relative to its root, sorted (see the module docstring); in a
    folder only those whose names end with one of `suffixes` (None: every file). On a local
    file system FIFOs, devices and sockets are listed too (for the reader to reject), and symlinked
    folders are entered only with `follow_symlinks`."""
    root, pattern = _split_glob(path)
    fs, base = filesystem(root)
    if isinstance(fs, pafs.LocalFileSystem):
        return _list_local(base, None if pattern is None else pattern.split("/"), suffixes, follow_symlinks)
    if pattern is not None:
        return sorted(set(_glob(fs, base, "", pattern.split("/"))))
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.File:
        return [posixpath.basename(base)]
    if info.type != pafs.FileType.Directory:
        return []
    found = []
    for entry in fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        relative = posixpath.relpath(entry.path, base)
        if (
            entry.type == pafs.FileType.File
            and (suffixes is None or entry.base_name.endswith(suffixes))
            and not any(part.startswith((".", "_")) for part in relative.split("/"))
        ):
            found.append(relative)
    return sorted(found)


def _list_local(
    base: str, parts: list[str] | None, suffixes: tuple[str, ...] | None, follow_symlinks: bool
) -> list[str]:
    """`list_files` on the local file system: the files under the folder `base` that the pattern
    components `parts` match (None: the folder rule of the module docstring), or `base` itself when it
    is not a folder. Folders reached through no symlink are walked first, then symlinked ones (entered
    only with `follow_symlinks`, when they resolve inside `base` to a folder not walked yet) in name
    order; a folder is walked once per pattern position (a `**` walks a folder at two), and a file
    reached by several names is listed once, by the smallest name through no symlink, else the
    smallest name."""
    if parts is None:
        try:
            if not stat.S_ISDIR(os.stat(base).st_mode):
                return [os.path.basename(base)]
        except FileNotFoundError:
            return []
    root = os.path.realpath(base)
    names: dict[str, tuple[bool, str]] = {}  # real path of a file → (reached through a symlink, name)
    walked: set[tuple[str, int]] = set()  # (real path of a folder, pattern position)
    folders: set[str] = set()  # real paths of the folders walked
    # Folders to walk: (name relative to base, real path, pattern position, reached through a symlink).
    direct: list[tuple[str, str, int, bool]] = [("", root, 0, False)]
    linked: list[tuple[str, str, int, bool]] = []  # a heap: symlinked folders in name order
    while direct or linked:
        if direct:
            relative, real, position, through_link = direct.pop()
        else:
            relative, real, position, through_link = heapq.heappop(linked)
            if real in folders:  # a symlink to a folder walked already, by another path
                continue
        if (real, position) in walked:
            continue
        walked.add((real, position))
        folders.add(real)
        if parts is not None and parts[position] == "**" and position + 1 < len(parts):
            direct.append((relative, real, position + 1, through_link))  # "**" as zero folders
        try:
            with os.scandir(real) as scan:
                entries = sorted(scan, key=lambda entry: entry.name)
        except (FileNotFoundError, NotADirectoryError):  # a glob's root that is no folder, or one gone
            continue
        for entry in entries:
            descend, select = _walk_rule(parts, position, entry.name, suffixes)
            if descend is None and not select:
                continue
            name = posixpath.join(relative, entry.name) if relative else entry.name
            is_link = entry.is_symlink()
            if entry.is_dir():  # follows a symlink
                if descend is None:
                    continue
                if not is_link:
                    direct.append((name, os.path.join(real, entry.name), descend, through_link))
                elif follow_symlinks and _inside(target := os.path.realpath(entry.path), root):
                    heapq.heappush(linked, (name, target, descend, True))
            elif select and (not is_link or os.path.exists(entry.path)):  # a dangling link is no file
                file = os.path.realpath(entry.path) if is_link else os.path.join(real, entry.name)
                candidate = (through_link or is_link, name)
                names[file] = min(names.get(file, candidate), candidate)
    return sorted(name for _, name in names.values())


def _walk_rule(
    parts: list[str] | None, position: int, name: str, suffixes: tuple[str, ...] | None
) -> tuple[int | None, bool]:
    """For an entry `name` of a folder walked at pattern position `position`: (the position to walk it
    at if it is a folder, None not to enter it; whether it is listed if it is a file). `parts` None: the
    folder rule (no name starting with `.` or `_`, files by suffix); else glob rules as in `_glob`."""
    if parts is None:
        if name.startswith((".", "_")):
            return None, False
        return 0, suffixes is None or name.endswith(suffixes)
    part = parts[position]
    last = position == len(parts) - 1
    if name.startswith(".") and not part.startswith("."):
        return None, False
    if part == "**":
        return position, last
    if not fnmatch.fnmatchcase(name, part):
        return None, False
    return (None if last else position + 1), last


def _glob(fs: pafs.FileSystem, base: str, relative: str, parts: list[str]) -> Iterator[str]:
    """Files under `base/relative` matching the pattern components `parts`, relative to `base`. As in
    a shell, a wildcard matches a name starting with `.` only when the pattern's component does."""
    part, rest = parts[0], parts[1:]
    folder = posixpath.join(base, relative) if relative else base
    entries = [
        entry
        for entry in fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True))
        if part.startswith(".") or not entry.base_name.startswith(".")
    ]
    if part == "**":
        # Zero folders (the rest of the pattern matches here), or one more folder and "**" again.
        if rest:
            yield from _glob(fs, base, relative, rest)
        else:
            yield from (
                posixpath.join(relative, e.base_name) for e in entries if e.type == pafs.FileType.File
            )
        for entry in entries:
            if entry.type == pafs.FileType.Directory:
                yield from _glob(fs, base, posixpath.join(relative, entry.base_name), parts)
        return
    for entry in entries:
        if not fnmatch.fnmatchcase(entry.base_name, part):
            continue
        child = posixpath.join(relative, entry.base_name)
        if rest and entry.type == pafs.FileType.Directory:
            yield from _glob(fs, base, child, rest)
        elif not rest and entry.type == pafs.FileType.File:
            yield child

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

Paths: `path` is a file, a folder (every file under it, recursively, whose name ends with one of the
format's suffixes and none of whose path components starts with `.` or `_`) or a glob (`*`, `?`,
`[...]` within one path component, `**` for any number of folders; as in a shell, wildcards do not
match names starting with `.`). Relative paths resolve against `base_dir` (the job
config's folder). A path may also be a URI that `pyarrow.fs` understands (`file://`, `s3://`, `gs://`,
percent-encoded); every file access goes through `pyarrow.fs`. The source root is the folder of
`path` (the folder itself, or for a glob the folder before its first wildcard); keys and stored
paths are relative to it or to `images_root`, so rows never depend on where a corpus lives.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import math
import os
import posixpath
import re
import types
import typing
from collections.abc import Callable, Collection, Generator, Iterator, Mapping
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image

from schemas import reject as reject_schema
from schemas import sample as sample_schema

__all__ = [
    "Batch",
    "ConfigError",
    "Counts",
    "Format",
    "ImageOptions",
    "Options",
    "Reader",
    "SourceConfig",
    "filesystem",
    "is_reject",
    "list_files",
    "open_input",
    "option",
    "parse_source",
]

Image.init()
PILLOW_FORMATS = tuple(sorted(Image.OPEN))
"""Every container format the installed Pillow can open (names as Pillow spells them)."""

PILLOW_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""Pillow refuses to open images above this many pixels (DecompressionBombError)."""

SOURCE_KEYS = ("name", "format", "path", "images_root")
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
GLOB_CHARACTERS = frozenset("*?[")


class ConfigError(ValueError):
    """A source configuration that cannot work; the message names the key and what to change."""


def option(
    default: object, doc: str, *, choices: Collection[object] | None = None, minimum: int | None = None
) -> typing.Any:
    """A documented option field: `doc` says what it means; `choices` limits the value (or, for a
    tuple option, each element) to a set; `minimum` bounds an integer from below."""
    return field(default=default, metadata={"doc": doc, "choices": choices, "minimum": minimum})


@dataclass(frozen=True)
class Options:
    """Options every format takes."""

    max_records_per_file: int | None = option(
        None, "read at most this many records from each input file (null: all of them)", minimum=1
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
    image_check: str = option(
        "full",
        "full: decode every image (catches truncated and corrupt data); header: read only the header "
        "(size and format), faster",
        choices=("full", "header"),
    )
    image_formats: tuple[str, ...] = option(
        ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "MPO"),
        "container formats accepted (Pillow's names); anything else is unreadable_image, so that "
        "no other Pillow plugin (EPS, ...) ever parses corpus bytes",
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
        """The source's input files, relative to the source root, sorted."""
        files = list_files(self.config.path, self.format.suffixes)
        if self.format.select_files is not None:
            files = self.format.select_files(self.config, files)
        return files

    def read_file(self, file: str) -> Iterator[Row]:
        """One sample or reject row per record of `file` (a name from `files()`), in file order,
        stopping after `max_records_per_file` rows."""
        rows = self.format.read_file(self.config, file)
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

    path = _resolve(mapping["path"], base_dir)
    root = _existing_root(path, reader_format.suffixes, f"{where}.path", mapping["path"])
    images_root = root
    if mapping.get("images_root") is not None:
        value = mapping["images_root"]
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.images_root: must be a non-empty string, not {value!r}")
        images_root = _resolve(value, base_dir)
        if _info(images_root, f"{where}.images_root").type != pafs.FileType.Directory:
            raise ConfigError(f"{where}.images_root: {images_root} is not a folder (from {value!r})")
    options = _parse_options(reader_format.options, mapping, where)
    config = SourceConfig(name, format_name, path, root, images_root, options)
    if reader_format.select_files is not None:
        try:
            reader_format.select_files(config, list_files(path, reader_format.suffixes))
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
    return options_class(**values)


def _coerce(value: object, hint: object, key: str) -> object:
    """The YAML value checked against an option's type: int, float, str, tuple[str, ...], or `X | None`."""
    if isinstance(hint, types.UnionType):
        if value is None:
            return None
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
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
    """Open `relative` (a posix path) under the folder `location` for reading, buffered for streams."""
    fs, base = filesystem(location)
    path = posixpath.join(base, relative)
    if random_access:
        return fs.open_input_file(path)
    return fs.open_input_stream(path, buffer_size=1 << 20)


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


def _existing_root(path: str, suffixes: tuple[str, ...], key: str, given: str) -> str:
    """The source root of `path`, after checking that `path` names at least one input file."""
    root, pattern = _split_glob(path)
    if pattern is None:
        info = _info(path, key)
        if info.type == pafs.FileType.NotFound:
            raise ConfigError(f"{key}: {path} does not exist (from {given!r})")
        if info.type != pafs.FileType.Directory:
            return _parent(path)
        root = path
    try:
        found = list_files(path, suffixes)
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


def list_files(path: str, suffixes: tuple[str, ...]) -> list[str]:
    """The input files `path` names, relative to its root, sorted (see the module docstring)."""
    root, pattern = _split_glob(path)
    fs, base = filesystem(root)
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
            and entry.base_name.endswith(suffixes)
            and not any(part.startswith((".", "_")) for part in relative.split("/"))
        ):
            found.append(relative)
    return sorted(found)


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

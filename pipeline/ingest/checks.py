"""Record checks shared by the readers: rejects as exceptions, text, image and box checks, row builders.

A reader turns each record into a sample row (`sample_row`); any check that fails raises `Rejected`
(stage, reason code from `schemas.reject.REASONS`, detail), which the reader turns into that record's
reject row (`reject_row`). `FileUnreadable` says the rest of an input file cannot be read at all: it
becomes one reject row keyed by the file (`file_reject_row`).

An image file (`load_image`) is opened only when its real path (symlinks resolved) lies inside the real
`images_root` (`outside_root`) and it is a regular file (`missing_image` for a FIFO, device, socket or
folder, which are never opened); its size is checked against `max_image_bytes` before any byte is read
(`image_too_large`), and no more than `max_image_bytes` + 1 bytes are ever read.

Images are checked in this order, and nothing is decoded before the size is known to be allowed:
empty data (`empty_image`); more bytes than `max_image_bytes` (`image_too_large`); the header, in one
of the accepted formats (`unreadable_image` with "not an image of an accepted format", except
`zero_size_image` when a PNG, GIF, BMP or JPEG header declares a zero side, which Pillow refuses to
open); a zero side; width × height against `max_image_pixels` (`image_too_large`); then, with
`image_check: full`, the first frame is decoded (`truncated_image` when the data ends early,
`unreadable_image` for any other decoding failure; JPEGs at 1/8 scale, which reads every byte of the
compressed data like a full-size decode but skips most of the inverse DCT: the pixels are only
checked, never kept). Pillow's JPEG decoder passes over corrupt compressed data without an error
(libjpeg's warnings are silenced and not counted), so a JPEG is also checked for a damaged marker
structure (`unreadable_image`): markers that cannot occur inside the compressed data, restart markers
out of order, without a restart interval, or not as many as the image's MCUs need. Corrupt bytes that
still decode and break no marker (a flipped bit, a zeroed stretch between restart markers) pass.
Animated or multi-frame images are accepted: the first frame is what the official loader uses; their
frame counts go to the sample's meta (`n_frames`, one entry per image, only when some image has more
than one frame).
"""

from __future__ import annotations

import base64
import datetime
import functools
import io
import json
import math
import os
import posixpath
import re
import warnings
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline import images
from pipeline.ingest.base import (
    FORMAT_OPENERS,
    ImageOptions,
    OutsideRoot,
    Row,
    SourceConfig,
    filesystem,
    real_path_inside,
)
from schemas import reject as reject_schema
from schemas import sample as sample_schema

__all__ = [
    "CheckedImage",
    "FileUnreadable",
    "Rejected",
    "check_download",
    "check_image",
    "check_text",
    "clip_box",
    "declared_size",
    "file_reject_row",
    "image_path",
    "image_segment",
    "is_finite_number",
    "load_entry_image",
    "load_image",
    "meta_json",
    "record_rows",
    "reject_row",
    "sample_row",
    "text_segment",
]


class Rejected(Exception):
    """A record that cannot become a sample: where (stage), why (reason code) and what (detail)."""

    def __init__(self, stage: str, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.stage = stage
        self.reason = reason
        self.detail = detail


class FileUnreadable(Exception):
    """The rest of an input file cannot be read; `detail` says from where and why."""

    def __init__(self, detail: str, reason: str = "unreadable_file") -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason


def valid_text(value: str) -> str:
    """`value` as a string Arrow accepts: lone surrogates (undecodable bytes) become `\\udcxx` escapes."""
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def sample_row(
    config: SourceConfig,
    key: str,
    kind: str,
    content: list[dict],
    images: Sequence[CheckedImage] = (),
    *,
    regions: Iterable[dict] = (),
    meta: dict | None = None,
) -> Row:
    """A row of `schemas.sample`; `meta` gains `n_frames` when an image has several frames."""
    key = valid_text(key)
    meta = dict(meta or {})
    if any(image.n_frames > 1 for image in images):
        meta["n_frames"] = [image.n_frames for image in images]
    return {
        "sample_id": sample_schema.sample_id_for(config.name, key),
        "source": config.name,
        "key": key,
        "kind": kind,
        "content": content,
        "images": [image.row for image in images],
        "regions": list(regions),
        "meta": meta_json(meta),
    }


def reject_row(config: SourceConfig, key: str, rejected: Rejected) -> Row:
    """The reject row of the record `key`."""
    key = valid_text(key)
    return reject_schema.reject(
        config.name,
        key,
        rejected.stage,
        rejected.reason,
        valid_text(rejected.detail),
        sample_id=sample_schema.sample_id_for(config.name, key),
    )


def file_reject_row(config: SourceConfig, file: str, problem: FileUnreadable) -> Row:
    """The reject row standing for every record of `file` that could not be read (no sample id)."""
    return reject_schema.reject(
        config.name, valid_text(file), "read", problem.reason, valid_text(problem.detail)
    )


def record_rows(
    config: SourceConfig,
    file: str,
    records: Iterable[tuple[int, object]],
    sample: Callable[[str, object], Row],
) -> Generator[Row, None, None]:
    """One row per record of `file`, in order: `sample(key, record)` with the key `<file>#<index>`, or the
    reject row of the `Rejected` it raises (a stream yields a `Rejected` in place of a record it could not
    parse); a `FileUnreadable` while reading ends the file with one reject row standing for the rest."""
    try:
        for index, record in records:
            key = f"{file}#{index}"
            try:
                if isinstance(record, Rejected):
                    raise record
                row = sample(key, record)
            except Rejected as rejected:
                row = reject_row(config, key, rejected)
            yield row
    except FileUnreadable as problem:
        yield file_reject_row(config, file, problem)


def text_segment(text: str, *, turn: int = 0, role: str | None = None) -> dict:
    """A text segment of `content`."""
    return {"turn": turn, "role": role, "type": "text", "text": text, "image": None}


def image_segment(index: int, *, turn: int = 0, role: str | None = None) -> dict:
    """An image segment of `content`: `index` into the sample's images."""
    return {"turn": turn, "role": role, "type": "image", "text": None, "image": index}


def meta_json(meta: dict) -> str:
    """`meta` as a compact JSON object with sorted keys; values that JSON lacks are made plain
    (bytes as base64, non-finite floats as null, dates and the rest as strings). `bad_field` when it
    is nested too deeply to serialize or holds an integer too long to write out (over 4300 digits)."""
    try:
        return json.dumps(_plain(meta), sort_keys=True, separators=(",", ":"), allow_nan=False)
    except RecursionError:
        raise Rejected(
            "read", "bad_field", "the record's other fields are nested too deeply to keep"
        ) from None
    except ValueError as error:  # int → str refuses integers of more than 4300 digits
        raise Rejected("read", "bad_field", f"the record's other fields cannot be kept: {error}") from None


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, str):
        return valid_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def check_download(status: object, error_message: object) -> None:
    """`failed_download` when a downloader's record says it holds no download: an img2dataset `status`
    starting with "failed" (`failed_to_download`, `failed_to_resize`), with its `error_message`."""
    if isinstance(status, str) and status.startswith("failed"):
        message = valid_text(error_message) if isinstance(error_message, str) else "no error message"
        raise Rejected("read", "failed_download", f"status {valid_text(status)}: {message}")


def check_text(value: object, what: str) -> str:
    """`value` as usable text: present (`missing_field`), a string (`bad_field`), valid UTF-8 without
    NUL characters (`bad_text`), not blank (`empty_text`). Undecodable input bytes arrive here as lone
    surrogates (the readers decode with `surrogateescape`), so they fail the UTF-8 check."""
    text = text_field(value, what)
    if not text.strip():
        raise Rejected("sample", "empty_text", f"{what} is empty")
    return text


def text_field(value: object, what: str) -> str:
    """Like `check_text`, but blank text is allowed."""
    if value is None:
        raise Rejected("read", "missing_field", f"{what} is missing")
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise Rejected("sample", "bad_text", f"{what} is not valid UTF-8: {error}") from None
    if not isinstance(value, str):
        raise Rejected("read", "bad_field", f"{what} is {_type_name(value)}, not a string")
    if "\0" in value:
        raise Rejected("sample", "bad_text", f"{what} contains a NUL character at {value.index(chr(0))}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise Rejected(
            "sample", "bad_text", f"{what} is not valid UTF-8 (at character {error.start})"
        ) from None
    return value


def _type_name(value: object) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def image_path(value: object, what: str, *, absolute: bool = False) -> str:
    """A record's image path, normalized and checked to stay inside `images_root` (`bad_field` for a
    path leaving the folder, one that is not valid text, or an absolute path). With `absolute`, an
    absolute path is returned (normalized) for `load_image` to accept only when its real path lies
    inside `images_root`."""
    if value is None:
        raise Rejected("read", "missing_field", f"{what} is missing")
    if not isinstance(value, str) or not value:
        raise Rejected("read", "bad_field", f"{what} is {_type_name(value)}, not a path")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise Rejected("read", "bad_field", f"{what} is not valid UTF-8: {valid_text(value)!r}") from None
    normalized = posixpath.normpath(value)
    if absolute and normalized.startswith("/") and "\0" not in value:
        return "/" + normalized.lstrip("/")  # normpath keeps a leading "//"
    if "\0" in value or normalized.startswith(("/", "../")) or normalized in ("..", "."):
        raise Rejected(
            "read",
            "bad_field",
            f"{what} {valid_text(value)!r} must be a path inside images_root, relative to it",
        )
    return normalized


@dataclass(frozen=True)
class CheckedImage:
    """An image that passed the checks: its `schemas.sample.IMAGE` row and its frame count."""

    row: dict
    n_frames: int


def load_image(config: SourceConfig, path: str) -> CheckedImage:
    """Read and check the image file `path` (from `image_path`) under `images_root`: confined to it
    and bounded (see the module docstring). An absolute `path` (on a local file system only) is read
    when its real path lies inside the real `images_root` (`outside_root` otherwise); the row records
    it relative to `images_root`."""
    options = config.options
    assert isinstance(options, ImageOptions)
    fs, base = filesystem(config.images_root)
    limit = options.max_image_bytes
    if path.startswith("/") and not isinstance(fs, pafs.LocalFileSystem):
        detail = f"{path} is absolute: images on an object store are named relative to images_root"
        raise Rejected("read", "bad_field", detail)
    try:
        if isinstance(fs, pafs.LocalFileSystem):
            real = real_path_inside(base, path, "images_root")
            if path.startswith("/"):
                path = _relative_to_root(path, real, base)
            data = images.read_file(real, limit, name=path)
        else:  # an object store: no symlinks, no special files
            with fs.open_input_file(posixpath.join(base, path)) as file:
                size = file.size()
                if size > limit:
                    raise images.FileTooLarge(f"{path} is {size} bytes, over the limit of {limit}", size)
                data = file.read(limit + 1)
            if len(data) > limit:
                raise images.FileTooLarge(f"{path} grew past the limit of {limit} bytes", len(data))
    except OutsideRoot as error:
        raise Rejected("image", "outside_root", str(error)) from None
    except images.FileTooLarge as error:
        raise Rejected("image", "image_too_large", f"{error} (max_image_bytes)") from None
    except images.NotARegularFile as error:
        raise Rejected("image", "missing_image", str(error)) from None
    except FileNotFoundError:
        raise Rejected("image", "missing_image", f"{path} does not exist under images_root") from None
    except (OSError, pa.ArrowException) as error:
        raise Rejected("image", "missing_image", f"{path} cannot be read as a file: {error}") from None
    return check_image(data, path, options)


def _relative_to_root(path: str, real: str, root: str) -> str:
    """The name under the folder `root` of the absolute `path` whose real path `real` lies inside it:
    `path` relative to `root` when it is lexically under it, else `real` relative to the real `root`."""
    lexical = posixpath.relpath(path, posixpath.normpath(root))
    if not lexical.startswith("../") and lexical != "..":
        return lexical
    return posixpath.relpath(real, os.path.realpath(root))


def check_image(data: bytes, path: str | None, options: ImageOptions) -> CheckedImage:
    """Check encoded image bytes (see the module docstring); `path` is what the row records."""
    name = path if path is not None else "image"
    if not data:
        raise Rejected("image", "empty_image", f"{name} has 0 bytes")
    if len(data) > options.max_image_bytes:
        raise Rejected(
            "image",
            "image_too_large",
            f"{name} is {len(data)} bytes, over the limit of {options.max_image_bytes} (max_image_bytes)",
        )
    accepted = ", ".join(options.image_formats)
    # Pillow warns about what it tolerates (corrupt EXIF, large sizes): the checks below decide.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data), formats=_openers(options.image_formats))
        except Image.DecompressionBombError as error:
            raise Rejected("image", "image_too_large", f"{name}: {error}") from None
        except Exception as error:  # Pillow's parsers raise many types on hostile bytes.
            size = declared_size(data)
            if size is not None and min(size) == 0:  # Pillow refuses these without saying why
                raise Rejected(
                    "image", "zero_size_image", f"{name} declares {size[0]}×{size[1]} pixels"
                ) from None
            # No opener recognised the bytes: Pillow's message names only the in-memory file object.
            why = "" if isinstance(error, UnidentifiedImageError) else f": {type(error).__name__}: {error}"
            raise Rejected(
                "image", "unreadable_image", f"{name} is not an image of an accepted format ({accepted}){why}"
            ) from None
        with image:
            image_format = image.format or ""
            if image_format.upper() not in options.image_formats and (
                FORMAT_OPENERS.get(image_format.upper()) not in options.image_formats
            ):
                raise Rejected(
                    "image",
                    "unreadable_image",
                    f"{name} is {image_format}, not an image of an accepted format ({accepted})",
                )
            width, height = image.size
            if width < 1 or height < 1:
                raise Rejected("image", "zero_size_image", f"{name} is {width}×{height} pixels")
            if width * height > options.max_image_pixels:
                raise Rejected(
                    "image",
                    "image_too_large",
                    f"{name} is {width}×{height} = {width * height} pixels, over max_image_pixels "
                    f"{options.max_image_pixels}",
                )
            if options.image_check == "full" and ImageFile.LOAD_TRUNCATED_IMAGES:
                raise RuntimeError(
                    "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set in this process: Pillow would accept "
                    "truncated images, which image_check: full must reject"
                )
            try:
                n_frames = getattr(image, "n_frames", 1)
                if options.image_check == "full":
                    if image_format in ("JPEG", "MPO"):
                        # Decode at 1/8 scale: libjpeg still entropy-decodes all the data, so
                        # truncation and corruption show as in a full-size decode, at half the cost.
                        image.draft(None, (max(1, width // 8), max(1, height // 8)))
                    image.load()
            except Exception as error:  # as above: decoding failures come in many types
                message = f"{type(error).__name__}: {error}"
                truncated = isinstance(error, EOFError) or "truncated" in str(error).lower()
                reason = "truncated_image" if truncated else "unreadable_image"
                raise Rejected("image", reason, f"{name} cannot be decoded: {message}") from None
    if options.image_check == "full" and image_format in ("JPEG", "MPO"):
        damage = _jpeg_damage(data)
        if damage is not None:
            raise Rejected("image", "unreadable_image", f"{name} is a corrupt JPEG: {damage}")
    row = {"bytes": data, "path": path, "width": width, "height": height, "format": image_format}
    return CheckedImage(row, n_frames)


@functools.lru_cache(maxsize=16)
def _openers(formats: tuple[str, ...]) -> tuple[str, ...]:
    """The Pillow openers that read `formats` (MPO is read by JPEG's), each once, in order."""
    return tuple(dict.fromkeys(FORMAT_OPENERS[name] for name in formats))


def load_entry_image(config: SourceConfig, entry: dict, what: str, separator: str = ".") -> CheckedImage:
    """The checked image an annotation file's image entry names (`file_name` under `images_root`); its
    `width` and `height`, when given, must equal the file's (`bad_field` otherwise). `what` names the entry
    in messages; `separator` joins it to "file_name"."""
    image = load_image(config, image_path(entry.get("file_name"), f"{what}{separator}file_name"))
    declared = (entry.get("width"), entry.get("height"))
    actual = (image.row["width"], image.row["height"])
    if declared != (None, None) and declared != actual:
        raise Rejected(
            "image",
            "bad_field",
            f"{what} declares {declared[0]}×{declared[1]} pixels, the file is {actual[0]}×{actual[1]}",
        )
    return image


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) as a PNG, GIF, BMP or JPEG header declares it, or None for anything else;
    read without Pillow, which refuses to open images with a zero side."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and data[12:16] == b"IHDR" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data.startswith((b"GIF87a", b"GIF89a")) and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if data.startswith(b"BM") and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(
            int.from_bytes(data[22:26], "little", signed=True)
        )
    if data.startswith(b"\xff\xd8"):
        return _jpeg_size(data)
    return None


_JPEG_FRAME_MARKERS = frozenset(
    {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
)


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    """The size in the first start-of-frame segment of a JPEG, walking its segments."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if 0xD0 <= marker <= 0xD9 or marker == 0x01:  # markers without a length
            position += 2
            continue
        if marker in _JPEG_FRAME_MARKERS:
            if position + 9 > len(data):
                return None
            height = int.from_bytes(data[position + 5 : position + 7], "big")
            width = int.from_bytes(data[position + 7 : position + 9], "big")
            return width, height
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
    return None


_JPEG_MARKER = re.compile(rb"\xff[^\x00\xff]")
"""A marker: 0xFF then a code (0xFF 0x00 is a stuffed data byte; 0xFF 0xFF, fill before a marker)."""
_JPEG_NO_MCU_COUNT = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xCB, 0xCD, 0xCE, 0xCF})
"""Lossless and hierarchical frames, whose MCUs are not counted here."""


def _jpeg_damage(data: bytes) -> str | None:
    """What breaks the marker structure of the (first) JPEG image in `data`, or None.

    Walks the segments up to the end-of-image marker (stray bytes between segments are passed over, as
    libjpeg does; what follows the end-of-image marker, such as the other pictures of an MPO, is not
    read) and, in each scan's compressed data, finds what libjpeg would meet there: a marker that cannot
    occur there, or restart markers that are out of order, present without a restart interval, or not
    as many as the scan's MCUs need at that interval (a restart marker right before the scan's end, an
    empty last interval that some encoders write, is not counted). libjpeg only warns about these and
    fills the damaged stretch with grey or garbage; Pillow reports no error.
    """
    frame: bytes | None = None
    frame_marker = 0
    interval = 0
    scans = 0
    position = 2
    while True:
        # The next marker, past fill bytes; like libjpeg, past stray bytes between segments too (they
        # touch no pixel: libjpeg only warns about them).
        found = _JPEG_MARKER.search(data, position)
        if found is None:
            return "the data ends before the end-of-image marker"
        position = found.start()
        marker = data[position + 1]
        if marker == 0xD9:
            return None if scans else "no scan before the end-of-image marker"
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a segment, harmless here
            position += 2
            continue
        if marker < 0xC0 or marker == 0xD8:
            return f"byte {position}: invalid marker 0xff{marker:02x}"
        end = position + 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if end > len(data) or end < position + 4:
            return f"byte {position}: segment 0xff{marker:02x} runs past the end of the data"
        segment = data[position + 4 : end]
        if marker in _JPEG_FRAME_MARKERS and frame is None:
            frame, frame_marker = segment, marker
        elif marker == 0xDD and len(segment) >= 2:
            interval = int.from_bytes(segment[:2], "big")
        elif marker == 0xDA:
            scans += 1
            mcus = None if frame_marker in _JPEG_NO_MCU_COUNT else _scan_mcus(frame, segment)
            end, damage = _scan_damage(data, end, interval, mcus)
            if damage is not None:
                return f"scan {scans}: {damage}"
        position = end


def _scan_damage(data: bytes, start: int, interval: int, mcus: int | None) -> tuple[int, str | None]:
    """(Where the compressed data of the scan starting at `start` ends: the position of the marker after
    it; what is wrong with its restart markers, for `mcus` MCUs (None: unknown) at restart `interval`
    (0: none), or None)."""
    window = np.frombuffer(data, np.uint8, offset=min(start, len(data)))
    marks = np.flatnonzero(window[:-1] == 0xFF)  # each 0xFF byte, followed by a code
    codes = window[marks + 1]
    restarts = (codes >= 0xD0) & (codes <= 0xD7)
    ends = np.flatnonzero(~restarts & (codes != 0x00) & (codes != 0xFF))  # 0x00: a stuffed 0xFF byte
    if not len(ends):
        return len(data), "runs to the end of the data"
    stop = start + int(marks[ends[0]])
    found = codes[: ends[0]][restarts[: ends[0]]] - 0xD0  # RST numbers, in order
    tail = stop
    while tail > start and data[tail - 1] == 0xFF:
        tail -= 1
    if len(found) and data[tail - 2] == 0xFF and 0xD0 <= data[tail - 1] <= 0xD7:
        found = found[:-1]  # an empty last interval
    if len(found) and not interval:
        return stop, f"{len(found)} restart markers but no restart interval"
    wrong = np.flatnonzero(found != np.arange(len(found)) % 8)
    if len(wrong):
        index = int(wrong[0])
        return stop, f"restart marker {index} is RST{found[index]}, RST{index % 8} was due"
    if interval and mcus is not None and len(found) != math.ceil(mcus / interval) - 1:
        due = math.ceil(mcus / interval) - 1
        return stop, f"{len(found)} restart markers, {due} due for {mcus} MCUs at an interval of {interval}"
    return stop, None


def _scan_mcus(frame: bytes | None, scan: bytes) -> int | None:
    """The number of MCUs of a scan (header `scan`) of the frame whose header is `frame`, or None when
    the headers do not say (a height to come in a DNL segment, an unknown component, ...)."""
    if frame is None or len(frame) < 6 or not scan:
        return None
    height, width, count = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big"), frame[5]
    if len(frame) < 6 + 3 * count or not (height and width and count):
        return None
    sampling = {frame[6 + 3 * i]: (frame[7 + 3 * i] >> 4, frame[7 + 3 * i] & 15) for i in range(count)}
    most_h = max(h for h, _ in sampling.values())
    most_v = max(v for _, v in sampling.values())
    components = scan[1 : 1 + 2 * scan[0] : 2]
    if not (most_h and most_v and components) or any(c not in sampling for c in components):
        return None
    if len(components) == 1:  # a non-interleaved scan: one block per MCU
        h, v = sampling[components[0]]
        return math.ceil(math.ceil(width * h / most_h) / 8) * math.ceil(math.ceil(height * v / most_v) / 8)
    return math.ceil(width / (8 * most_h)) * math.ceil(height / (8 * most_v))


def is_finite_number(value: object) -> bool:
    """Whether `value` is an int or float (not a bool) that is finite as a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float
        return False


def clip_box(box: object, width: int, height: int, what: str = "box") -> list[float]:
    """A box `[x1, y1, x2, y2]` in pixels clipped to the `width` × `height` image.

    `bad_field` for anything but four finite numbers; `degenerate_box` when x2 ≤ x1 or y2 ≤ y1;
    `box_outside_image` when the box does not overlap the image (touching an edge is no overlap).
    """
    if not isinstance(box, list | tuple) or len(box) != 4 or not all(is_finite_number(v) for v in box):
        raise Rejected("read", "bad_field", f"{what} {box!r} is not four finite numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in box)
    if x2 <= x1 or y2 <= y1:
        raise Rejected("sample", "degenerate_box", f"{what} {[x1, y1, x2, y2]} has no area")
    clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
        raise Rejected(
            "sample", "box_outside_image", f"{what} {[x1, y1, x2, y2]} is outside the {width}×{height} image"
        )
    return clipped

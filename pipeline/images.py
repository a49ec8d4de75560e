"""Image headers and decoding: what an image is (size, format, mode) without decoding its pixels;
and reading image files safely.

A visual-token layout depends only on (width, height), so the pipeline reads headers to plan
sequences and decodes pixels only where they are needed (tiling, checks).

Files are opened only when they are regular files: `os.stat` is checked before `open` (a FIFO would
block the open, a device could have effects) and the open file is checked again. `read_file` also
bounds what it reads: the size is checked before any byte is read, and at most the limit + 1 bytes are
read, so a file that grows meanwhile cannot defeat the bound."""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

__all__ = [
    "FileTooLarge",
    "ImageError",
    "ImageHeader",
    "NotARegularFile",
    "check_regular_file",
    "decode",
    "read_file",
    "read_header",
]

ImageSource = bytes | str | os.PathLike[str]


class ImageError(ValueError):
    """An input that is not a readable image (unknown format, truncated, empty, zero-sized)."""


class NotARegularFile(OSError):
    """A path that is a folder, FIFO, device or socket: never opened (opening a FIFO blocks)."""


class FileTooLarge(OSError):
    """A file larger than the limit given to `read_file`: `size` is its size in bytes, or the limit + 1
    when it grew past the limit while read."""

    def __init__(self, message: str, size: int) -> None:
        super().__init__(message)
        self.size = size


@dataclass(frozen=True)
class ImageHeader:
    """What the file's header says: size in pixels, container format (JPEG, PNG, …), Pillow mode."""

    width: int
    height: int
    format: str
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels."""
        return (self.width, self.height)


def read_header(source: ImageSource) -> ImageHeader:
    """The header of an image given as encoded bytes or a path; no pixel is decoded.

    The size is the stored size, with no EXIF rotation applied, as the official loader sees it. A path
    must be a regular file (a FIFO or device is an ImageError, never opened).
    """
    try:
        with _as_file(source) as file, Image.open(file) as image:
            width, height = image.size
            header = ImageHeader(width=width, height=height, format=image.format or "", mode=image.mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from error
    if width < 1 or height < 1:
        raise ImageError(f"image has a zero-sized side: {width}×{height}")
    return header


def decode(source: ImageSource) -> Image.Image:
    """The fully decoded image (mode as stored); raises ImageError for unreadable or truncated data
    (and for a path that is not a regular file)."""
    try:
        with _as_file(source) as file, Image.open(file) as image:
            image.load()
        decoded = image  # leaving the block closes the file and keeps the decoded pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from error
    if decoded.width < 1 or decoded.height < 1:
        raise ImageError(f"image has a zero-sized side: {decoded.width}×{decoded.height}")
    return decoded


def _as_file(source: ImageSource) -> io.BytesIO | io.BufferedReader:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("empty data")
        return io.BytesIO(source)
    return io.BufferedReader(_open_regular(source, source))


def check_regular_file(path: str | os.PathLike[str], name: str | os.PathLike[str]) -> None:
    """`NotARegularFile` unless `path` (symlinks followed) is a regular file, `FileNotFoundError` when
    it does not exist; `name` is what the message calls it."""
    kind = _special_kind(os.stat(path).st_mode)
    if kind is not None:
        raise NotARegularFile(f"{name} is {kind}, not a regular file")


def read_file(path: str | os.PathLike[str], max_bytes: int, *, name: str | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `max_bytes` of them.

    `FileTooLarge` when its size is over `max_bytes` (checked before any byte is read) or when it grows
    past it while read (at most `max_bytes` + 1 bytes are ever read); `NotARegularFile` for a folder,
    FIFO, device or socket; other `OSError`s (missing, unreadable) as they come. `name` is what messages
    call the file (default: `path`).
    """
    shown = os.fspath(path) if name is None else name
    with _open_regular(path, shown) as file:
        size = os.fstat(file.fileno()).st_size
        if size > max_bytes:
            raise FileTooLarge(f"{shown} is {size} bytes, over the limit of {max_bytes}", size)
        chunks: list[bytes] = []
        read = 0
        while read <= max_bytes:
            # The expected size + 1 at first, so that the read after the last byte finds the end.
            chunk = file.read(min(max_bytes + 1, max(size + 1, read + (1 << 16))) - read)
            if not chunk:
                break
            chunks.append(chunk)
            read += len(chunk)
    if read > max_bytes:
        raise FileTooLarge(f"{shown} grew past the limit of {max_bytes} bytes while read", read)
    return b"".join(chunks)


def _open_regular(path: str | os.PathLike[str], name: str | os.PathLike[str]) -> io.FileIO:
    """`path` opened for reading after `check_regular_file`; opened without blocking and checked again,
    in case it was replaced by a FIFO in between."""
    check_regular_file(path, name)
    file = io.FileIO(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb")
    try:
        kind = _special_kind(os.fstat(file.fileno()).st_mode)
        if kind is not None:
            raise NotARegularFile(f"{name} is {kind}, not a regular file")
    except BaseException:
        file.close()
        raise
    return file


_SPECIAL_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _special_kind(mode: int) -> str | None:
    """None for a regular file, else what it is ("a FIFO", ...)."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _SPECIAL_KINDS if test(mode)), "a special file")

"""Image headers and decoding: what an image is (size, format, mode) without decoding its pixels.

A visual-token layout depends only on (width, height), so the pipeline reads headers to plan
sequences and decodes pixels only where they are needed (tiling, checks)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

__all__ = ["ImageError", "ImageHeader", "decode", "read_header"]

ImageSource = bytes | str | os.PathLike[str]


class ImageError(ValueError):
    """An input that is not a readable image (unknown format, truncated, empty, zero-sized)."""


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

    The size is the stored size, with no EXIF rotation applied, as the official loader sees it.
    """
    try:
        with Image.open(_as_file(source)) as image:
            width, height = image.size
            header = ImageHeader(width=width, height=height, format=image.format or "", mode=image.mode)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from error
    if width < 1 or height < 1:
        raise ImageError(f"image has a zero-sized side: {width}×{height}")
    return header


def decode(source: ImageSource) -> Image.Image:
    """The fully decoded image (mode as stored); raises ImageError for unreadable or truncated data."""
    try:
        with Image.open(_as_file(source)) as image:
            image.load()
        decoded = image  # leaving the block closes the file and keeps the decoded pixels
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from error
    if decoded.width < 1 or decoded.height < 1:
        raise ImageError(f"image has a zero-sized side: {decoded.width}×{decoded.height}")
    return decoded


def _as_file(source: ImageSource) -> io.BytesIO | str | os.PathLike[str]:
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise ImageError("not a readable image: empty data")
        return io.BytesIO(source)
    return source

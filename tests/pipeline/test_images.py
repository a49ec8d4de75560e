"""pipeline.images: headers without decoding, and unreadable input as a clear ImageError."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from pipeline import images


def encoded(fmt: str, size=(37, 21), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [("JPEG", "RGB"), ("PNG", "RGBA"), ("PNG", "P"), ("WEBP", "RGB"), ("GIF", "P"), ("TIFF", "CMYK")],
)
def test_header_reports_size_format_mode(fmt, mode):
    header = images.read_header(encoded(fmt, mode=mode))
    assert header.size == (37, 21) and header.format == fmt and header.mode == mode


def test_header_reads_paths(tmp_path):
    path = tmp_path / "x.png"
    path.write_bytes(encoded("PNG"))
    assert images.read_header(path).size == (37, 21)
    assert images.decode(str(path)).getpixel((0, 0)) == (90, 0, 0)


def test_decode_keeps_the_stored_mode():
    image = images.decode(encoded("PNG", mode="LA"))
    assert image.mode == "LA" and image.size == (37, 21)


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image", encoded("PNG")[:20]],
    ids=["empty", "text", "cut-header"],
)
def test_unreadable_headers(data):
    with pytest.raises(images.ImageError, match="not a readable image"):
        images.read_header(data)


def test_truncated_pixels_fail_on_decode_not_on_header():
    data = encoded("JPEG", size=(400, 300))
    cut = data[: len(data) // 2]
    assert images.read_header(cut).size == (400, 300)
    with pytest.raises(images.ImageError, match="truncated"):
        images.decode(cut)


def test_missing_file(tmp_path):
    with pytest.raises(images.ImageError):
        images.read_header(tmp_path / "absent.jpg")

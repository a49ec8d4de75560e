"""pipeline.images: headers without decoding, unreadable input as a clear ImageError, and file reads
that open only regular files and stay bounded."""

from __future__ import annotations

import io
import os

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


@pytest.mark.timeout(30)
def test_paths_that_are_not_regular_files_are_never_opened(tmp_path):
    os.mkfifo(tmp_path / "pipe.jpg")  # no writer: opening it for reading would block forever
    for path in (tmp_path / "pipe.jpg", tmp_path, "/dev/zero"):
        for read in (images.read_header, images.decode):
            with pytest.raises(images.ImageError, match="not a regular file"):
                read(path)
        with pytest.raises(images.NotARegularFile):
            images.read_file(path, 1 << 20)
    with pytest.raises(FileNotFoundError):
        images.read_file(tmp_path / "absent.jpg", 1 << 20)


@pytest.mark.timeout(30)
def test_read_file_is_bounded(tmp_path):
    data = encoded("PNG")
    (tmp_path / "x.png").write_bytes(data)
    assert images.read_file(tmp_path / "x.png", len(data)) == data
    with pytest.raises(images.FileTooLarge, match=rf"^y\.png is {len(data)} bytes, over the limit of 10$"):
        images.read_file(tmp_path / "x.png", 10, name="y.png")
    with open(tmp_path / "big.jpg", "wb") as big:  # 3 GiB, sparse: rejected from its size, unread
        big.truncate(3 << 30)
    with pytest.raises(images.FileTooLarge) as caught:
        images.read_file(tmp_path / "big.jpg", 64 << 20)
    assert caught.value.size == 3 << 30
    # A file longer than its size says, as one that grows while read: never more than the limit + 1 bytes.
    assert os.stat("/proc/self/maps").st_size == 0
    with pytest.raises(images.FileTooLarge, match="grew past the limit of 100 bytes") as caught:
        images.read_file("/proc/self/maps", 100)
    assert caught.value.size == 101

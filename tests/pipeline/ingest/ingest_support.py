"""Helpers shared by the ingest tests: small images made with Pillow, hostile image bytes, byte
corruption for fuzzing, and `read_source`, which reads every file of a source and checks the
invariants every reader owes (one row per record, exact schemas, unique keys, relative paths)."""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path

from hypothesis import strategies as st
from PIL import Image

from pipeline import ingest
from pipeline.ingest import Counts, Reader, is_reject
from schemas import reject as reject_schema
from schemas import sample as sample_schema


@functools.cache
def image_bytes(image_format: str = "JPEG", size: tuple[int, int] = (16, 12), color: int = 0) -> bytes:
    """A small encoded image: a gradient so that codecs have something to encode."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 13 + color) % 256, (y * 29) % 256, (x + y + color) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    buffer = io.BytesIO()
    image.save(buffer, image_format)
    return buffer.getvalue()


@functools.cache
def animated_gif(frames: int = 3) -> bytes:
    images = [Image.new("RGB", (10, 8), (60 * i, 20, 200 - 40 * i)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "GIF", save_all=True, append_images=images[1:], duration=40, loop=0)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares `width` × `height` but whose pixel data is a few zero bytes: a
    decompression bomb's header (decoding it would fail, so a size rejection proves nothing was decoded)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 8))
        + chunk(b"IEND", b"")
    )


def truncated(data: bytes) -> bytes:
    return data[: len(data) // 2]


BAD_IMAGES = {
    # name: (bytes, expected reason)
    "empty": (b"", "empty_image"),
    "truncated": (truncated(image_bytes("JPEG", (64, 48))), "truncated_image"),
    "corrupt": (b"this is not an image at all" * 4, "unreadable_image"),
    "zero_side": (png_header_only(0, 12), "zero_size_image"),
    "bomb": (png_header_only(100_000, 100_000), "image_too_large"),
}


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def reader(tmp_path: Path, **source: object) -> Reader:
    """The reader of a source mapping (paths relative to `tmp_path`), named "src" unless given."""
    source.setdefault("name", "src")
    return ingest.make_reader(source, base_dir=tmp_path)


def read_source(source: Reader) -> tuple[list[dict], list[dict], Counts]:
    """Every row of every file of `source`, checked, split into samples and rejects, with counts."""
    samples: list[dict] = []
    rejects: list[dict] = []
    counts = Counts()
    for file in source.files():
        for row in source.read_file(file):
            counts.add(row)
            (rejects if is_reject(row) else samples).append(row)
    check_rows(source, samples, rejects)
    assert counts.read == counts.samples + sum(counts.rejected.values()) == len(samples) + len(rejects)
    return samples, rejects, counts


def check_rows(source: Reader, samples: list[dict], rejects: list[dict]) -> None:
    """What every reader guarantees about its rows."""
    name = source.config.name
    sample_schema.to_table(samples).validate(full=True)
    reject_schema.to_table(rejects).validate(full=True)
    keys = [row["key"] for row in samples + rejects]
    assert len(keys) == len(set(keys)), "keys must be unique within a source"
    for row in samples:
        assert row["source"] == name
        assert row["sample_id"] == sample_schema.sample_id_for(name, row["key"])
        assert row["kind"] in sample_schema.KINDS
        image_refs = [segment["image"] for segment in row["content"] if segment["type"] == "image"]
        assert image_refs == list(range(len(row["images"]))), "every image once, in order"
        for image in row["images"]:
            assert image["path"] is None or not os.path.isabs(image["path"])
            assert image["width"] > 0 and image["height"] > 0 and image["bytes"]
    for row in rejects:
        assert row["source"] == name
        assert row["reason"] in reject_schema.REASONS and row["stage"] in reject_schema.STAGES
        assert row["detail"]
        if row["sample_id"] is not None:
            assert row["sample_id"] == sample_schema.sample_id_for(name, row["key"])


def reasons(rejects: Iterable[dict]) -> dict[str, str]:
    """key → reason of reject rows."""
    return {row["key"]: row["reason"] for row in rejects}


def texts(sample: dict) -> list[str]:
    return [segment["text"] for segment in sample["content"] if segment["type"] == "text"]


CORRUPTIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "cut", "insert", "delete", "zero"]),
        st.integers(0, 1 << 30),
        st.binary(min_size=1, max_size=16),
    ),
    min_size=1,
    max_size=4,
)
"""Edits to apply to a file's bytes with `corrupt`: bit flips, truncation, insertions, deletions."""


def corrupt(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    buffer = bytearray(data)
    for kind, where, payload in edits:
        position = where % (len(buffer) + 1)
        if kind == "flip" and position < len(buffer):
            buffer[position] ^= payload[0] or 0xFF
        elif kind == "cut":
            del buffer[position:]
        elif kind == "insert":
            buffer[position:position] = payload
        elif kind == "delete":
            del buffer[position : position + len(payload)]
        elif kind == "zero":
            buffer[position : position + len(payload)] = bytes(len(payload))
    return bytes(buffer)

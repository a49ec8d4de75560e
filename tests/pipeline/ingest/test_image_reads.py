"""Image reads: bounded by `max_image_bytes` before any byte is read, JPEGs corrupt mid-stream rejected
by `image_check: full`, and the accepted formats (MPO included) checked without Pillow's KeyError."""

from __future__ import annotations

import dataclasses
import io
import json
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ingest_support import image_bytes, read_source, reader, write
from PIL import Image, ImageFile

import pipeline.ingest
from pipeline.errors import ConfigError
from pipeline.ingest.base import MAX_IMAGE_BYTES, ImageOptions
from pipeline.ingest.checks import Rejected, check_image

OPTIONS = ImageOptions()


def llava_line(image: str) -> str:
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A cat."}]
    return json.dumps({"image": image, "conversations": turns}) + "\n"


@pytest.mark.timeout(120)
def test_a_3_gib_sparse_image_is_rejected_from_its_size_in_bounded_memory(tmp_path: Path):
    with open(tmp_path / "big.jpg", "wb") as big:
        big.write(image_bytes("JPEG", (64, 48)))
        big.truncate(3 << 30)  # sparse: no disk used, but a whole read would need 3 GiB of memory
    write(tmp_path / "chat.jsonl", llava_line("big.jpg"))
    # Read in a child whose address space is capped at 1 GiB: reading the file whole cannot succeed there.
    script = textwrap.dedent(
        f"""
        import json, resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from pipeline import ingest
        source = ingest.make_reader(
            {{"name": "s", "format": "llava", "path": "chat.jsonl"}}, base_dir={str(tmp_path)!r}
        )
        rows = [row for file in source.files() for row in source.read_file(file)]
        print(json.dumps([[row.get("reason"), row.get("detail")] for row in rows]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=100
    )
    assert done.returncode == 0, done.stderr[-2000:]
    ((reason, detail),) = json.loads(done.stdout)
    assert reason == "image_too_large"
    assert detail == f"big.jpg is {3 << 30} bytes, over the limit of {64 << 20} (max_image_bytes)"


def test_max_image_bytes_applies_to_files_and_embedded_bytes(tmp_path: Path):
    data = image_bytes("PNG", (40, 30))
    write(tmp_path / "imgs" / "a.png", data)
    write(tmp_path / "chat.jsonl", llava_line("a.png"))
    limit = len(data) - 1
    source = reader(tmp_path, format="llava", path="chat.jsonl", images_root="imgs", max_image_bytes=limit)
    (reject,) = read_source(source)[1]
    assert reject["reason"] == "image_too_large"
    assert f"a.png is {len(data)} bytes, over the limit of {limit}" in reject["detail"]
    (sample,), _, _ = read_source(
        reader(tmp_path, format="llava", path="chat.jsonl", images_root="imgs", max_image_bytes=len(data))
    )
    assert sample["images"][0]["bytes"] == data
    with pytest.raises(Rejected, match=r"image_too_large: x is \d+ bytes, over the limit of 99"):
        check_image(data, "x", dataclasses.replace(OPTIONS, max_image_bytes=99))
    assert OPTIONS.max_image_bytes == 64 << 20
    with pytest.raises(ConfigError, match=rf"source\.max_image_bytes: at most {MAX_IMAGE_BYTES} \(1 GiB\)"):
        reader(tmp_path, format="llava", path="chat.jsonl", max_image_bytes=MAX_IMAGE_BYTES + 1)
    with pytest.raises(ConfigError, match=r"source\.max_image_bytes: must be at least 1"):
        reader(tmp_path, format="llava", path="chat.jsonl", max_image_bytes=0)


def photo_jpeg(**save: object) -> bytes:
    """A 256×192 photo-like JPEG (quality 90), with Pillow's save options `save`."""
    image = Image.new("RGB", (256, 192))
    image.putdata([((x * 7 + y) % 256, (y * 3) % 256, (x * y) % 256) for y in range(192) for x in range(256)])
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def middle_of_scan(data: bytes) -> int:
    """A position in the middle of the compressed data of a JPEG's (single) scan."""
    sos = data.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(data[sos + 2 : sos + 4], "big")
    return (start + data.rindex(b"\xff\xd9")) // 2


def pillow_decodes(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
    except Exception:
        return False
    return True


def corruptions() -> dict[str, bytes]:
    """JPEGs damaged mid-stream in ways that Pillow decodes without an error (grey or garbage pixels)."""
    with_restarts = photo_jpeg(restart_marker_rows=1)  # a restart marker after every MCU row, as cameras do
    plain = photo_jpeg()
    middle, plain_middle = middle_of_scan(with_restarts), middle_of_scan(plain)
    return {
        "random bytes over 512": with_restarts[: middle - 256]
        + random.Random(0).randbytes(512)
        + with_restarts[middle + 256 :],
        "512 zeroed bytes": with_restarts[: middle - 256] + bytes(512) + with_restarts[middle + 256 :],
        "an end-of-image marker inserted": with_restarts[:middle] + b"\xff\xd9" + with_restarts[middle:],
        "a restart marker, no restart interval": plain[:plain_middle] + b"\xff\xd0" + plain[plain_middle:],
    }


@pytest.mark.parametrize("name", sorted(corruptions()))
def test_a_jpeg_corrupt_mid_stream_fails_the_full_check(name: str):
    data = corruptions()[name]
    assert pillow_decodes(data)  # Pillow alone lets it through: what the check adds
    message = r"unreadable_image: x\.jpg is a corrupt JPEG: scan 1: .*restart"
    with pytest.raises(Rejected, match=message) as caught:
        check_image(data, "x.jpg", OPTIONS)
    assert caught.value.stage == "image"
    # The header check does not decode; it reads the size only.
    assert check_image(data, "x.jpg", dataclasses.replace(OPTIONS, image_check="header")).row["width"] == 256


VALID_JPEGS = {
    "baseline": photo_jpeg(),
    "progressive": photo_jpeg(progressive=True),
    "restart every 3 MCUs": photo_jpeg(restart_marker_blocks=3),
    "progressive with restarts": photo_jpeg(progressive=True, restart_marker_blocks=1),
    "4:4:4 with restarts": photo_jpeg(subsampling=0, restart_marker_rows=2),
    "odd size": image_bytes("JPEG", (37, 21)),
}


@pytest.mark.parametrize("name", sorted(VALID_JPEGS))
def test_valid_jpegs_pass_the_full_check(name: str):
    data = VALID_JPEGS[name]
    assert check_image(data, "x.jpg", OPTIONS).row["format"] == "JPEG"
    for mode in ("L", "CMYK"):
        buffer = io.BytesIO()
        Image.open(io.BytesIO(data)).convert(mode).save(buffer, "JPEG", restart_marker_blocks=2)
        assert check_image(buffer.getvalue(), "x.jpg", OPTIONS).row["format"] == "JPEG", mode


def test_truncated_images_are_never_tolerated(monkeypatch: pytest.MonkeyPatch):
    assert pipeline.ingest and ImageFile.LOAD_TRUNCATED_IMAGES is False  # nothing the readers import sets it
    cut = photo_jpeg()[:-600]
    with pytest.raises(Rejected, match="truncated_image"):
        check_image(cut, "x.jpg", OPTIONS)
    # Set by other code in the process, Pillow would fill the missing part grey: the full check refuses.
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES is set"):
        check_image(cut, "x.jpg", OPTIONS)


def mpo(frames: int = 2) -> bytes:
    images = [Image.new("RGB", (32, 24), (60 * i, 90, 200 - 50 * i)) for i in range(frames)]
    buffer = io.BytesIO()
    images[0].save(buffer, "MPO", save_all=True, append_images=images[1:])
    return buffer.getvalue()


def test_mpo_is_read_by_the_jpeg_opener(tmp_path: Path):
    assert "MPO" in OPTIONS.image_formats
    image = check_image(mpo(), "cam.jpg", OPTIONS)
    assert (image.row["format"], image.n_frames) == ("MPO", 2)
    only_mpo = dataclasses.replace(OPTIONS, image_formats=("MPO",))
    assert check_image(mpo(), "cam.jpg", only_mpo).row["format"] == "MPO"
    message = r"unreadable_image: x\.jpg is JPEG, not an image of an accepted format \(MPO\)"
    with pytest.raises(Rejected, match=message):
        check_image(image_bytes("JPEG"), "x.jpg", only_mpo)
    # JPEG accepts MPO files, as they are JPEGs with more pictures after the first.
    assert check_image(mpo(), "cam.jpg", dataclasses.replace(OPTIONS, image_formats=("JPEG",))).n_frames == 2
    # Before: "image_formats: [MPO]" was refused, as Pillow 13 has no MPO opener of its own.
    write(tmp_path / "chat.jsonl", llava_line("cam.jpg"))
    write(tmp_path / "cam.jpg", mpo(3))
    source = reader(tmp_path, format="llava", path="chat.jsonl", image_formats=["MPO"])
    (sample,), _, _ = read_source(source)
    assert json.loads(sample["meta"])["n_frames"] == [3]


@pytest.mark.parametrize(
    ("data", "formats"),
    [
        (b"this is not an image at all" * 4, ImageOptions().image_formats),
        (image_bytes("PNG"), ("JPEG", "MPO")),
        (image_bytes("JPEG")[:40], ("JPEG", "MPO")),
    ],
    ids=["text", "png-not-accepted", "cut-jpeg-header"],
)
def test_a_non_image_is_rejected_with_a_plain_detail(data: bytes, formats: tuple[str, ...]):
    options = dataclasses.replace(OPTIONS, image_formats=formats)
    details = set()
    for _ in range(2):
        with pytest.raises(Rejected) as caught:
            check_image(data, "x.bin", options)
        assert caught.value.reason == "unreadable_image"
        details.add(caught.value.detail)
    (detail,) = details  # the same each time: no object address in it
    assert detail.startswith(f"x.bin is not an image of an accepted format ({', '.join(formats)})")
    assert "KeyError" not in detail and " at 0x" not in detail

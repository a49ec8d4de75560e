"""pipeline.ingest.webdataset: img2dataset-style tar shards, read without extracting anything."""

from __future__ import annotations

import gzip
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from ingest_support import (
    BAD_IMAGES,
    CORRUPTIONS,
    corrupt,
    image_bytes,
    read_source,
    reader,
    reasons,
    texts,
    write,
)
from memory_support import read_in_subprocess

JPEG = image_bytes("JPEG")


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    return (name, data, kind, link)


def tar_bytes(members: list[tuple]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, link in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buffer.getvalue()


def sample_members(
    key: str, caption: str = "a caption", image: bytes = JPEG, ext: str = "jpg"
) -> list[tuple]:
    meta = {"url": f"http://example.com/{key}.jpg", "key": key, "status": "success", "caption": caption}
    return [
        member(f"{key}.{ext}", image),
        member(f"{key}.txt", caption.encode()),
        member(f"{key}.json", json.dumps(meta).encode()),
    ]


def test_shards_grouped_by_key(tmp_path: Path):
    shard0 = [
        *sample_members("00000/000000000"),
        member("00000/000000001.PNG", image_bytes("PNG")),
        member("00000/000000001.json", b'{"text": "from json", "w": 3}'),
        member("00000/000000002.webp", image_bytes("WEBP")),
        member("00000/000000002.txt", "caf\u00e9".encode()),
        member("00000/000000002.cls", b"3"),
    ]
    write(tmp_path / "shards" / "00000.tar", tar_bytes(shard0))
    write(tmp_path / "shards" / "00001.tar", tar_bytes(sample_members("00001/000010000", "second shard")))
    write(tmp_path / "shards" / "00000_stats.json", "{}")
    source = reader(tmp_path, format="webdataset", path="shards/*.tar")
    assert source.files() == ["00000.tar", "00001.tar"]
    samples, rejects, _ = read_source(source)
    assert rejects == []
    assert [s["key"] for s in samples] == [
        "00000.tar#00000/000000000",
        "00000.tar#00000/000000001",
        "00000.tar#00000/000000002",
        "00001.tar#00001/000010000",
    ]
    assert [texts(s) for s in samples] == [["a caption"], ["from json"], ["caf\u00e9"], ["second shard"]]
    assert [s["images"][0]["format"] for s in samples] == ["JPEG", "PNG", "WEBP", "JPEG"]
    assert [s["images"][0]["path"] for s in samples][:2] == ["00000/000000000.jpg", "00000/000000001.PNG"]
    assert json.loads(samples[0]["meta"]) == {
        "key": "00000/000000000",
        "status": "success",
        "url": "http://example.com/00000/000000000.jpg",
    }
    assert json.loads(samples[1]["meta"]) == {"w": 3}


def test_bad_groups(tmp_path: Path):
    members = [
        member("a.txt", b"no image"),
        member("b.jpg", JPEG),
        *[member("c.jpg", JPEG), member("c.txt", b"")],
        *[member("d.jpg", JPEG), member("d.txt", b"\xff\xfe bad")],
        *[member("e.jpg", JPEG), member("e.json", b"{broken")],
        *[member("f.jpg", JPEG), member("f.json", b"[1, 2]")],
        *[member("h.jpg", JPEG), member("h.txt", b"one"), member("i.jpg", JPEG), member("i.txt", b"two")],
        member("h.txt", b"again"),
        *[member("j.jpg", JPEG), member("j.txt", b"one"), member("j.txt", b"two")],
    ]
    write(tmp_path / "shard.tar", tar_bytes(members))
    samples, rejects, _ = read_source(reader(tmp_path, format="webdataset", path="shard.tar"))
    assert [s["key"] for s in samples] == ["shard.tar#h", "shard.tar#i"]
    assert reasons(rejects) == {
        "shard.tar#a": "missing_field",
        "shard.tar#b": "missing_field",
        "shard.tar#c": "empty_text",
        "shard.tar#d": "bad_text",
        "shard.tar#e": "malformed_record",
        "shard.tar#f": "malformed_record",
        "shard.tar#h#2": "bad_field",
        "shard.tar#j": "bad_field",
    }


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_images(tmp_path: Path, name: str):
    write(
        tmp_path / "shard.tar", tar_bytes([member("k.jpg", BAD_IMAGES[name][0]), member("k.txt", b"caption")])
    )
    _, rejects, _ = read_source(reader(tmp_path, format="webdataset", path="shard.tar"))
    assert reasons(rejects) == {"shard.tar#k": BAD_IMAGES[name][1]}


def test_unsafe_members_are_rejected_and_nothing_is_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    members = [
        *sample_members("ok"),
        *[member("/abs/x.jpg", JPEG), member("/abs/x.txt", b"c")],
        *[member("../up.jpg", JPEG), member("../up.txt", b"c")],
        *[member("s.jpg", kind=tarfile.SYMTYPE, link="/etc/passwd"), member("s.txt", b"c")],
        *[member("l.jpg", kind=tarfile.LNKTYPE, link="ok.jpg"), member("l.txt", b"c")],
        *[member("dev.jpg", kind=tarfile.CHRTYPE), member("dev.txt", b"c")],
        *[member("fifo.jpg", kind=tarfile.FIFOTYPE), member("fifo.txt", b"c")],
        member("dir/..", kind=tarfile.DIRTYPE),
        member("folder", kind=tarfile.DIRTYPE),
        *sample_members("folder/ok2"),
    ]
    write(tmp_path / "data" / "shard.tar", tar_bytes(members))
    empty = tmp_path / "cwd"
    empty.mkdir()
    monkeypatch.chdir(empty)
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    samples, rejects, _ = read_source(reader(tmp_path, format="webdataset", path="data/shard.tar"))
    assert list(empty.iterdir()) == []
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    assert not Path("/abs/x.jpg").exists()
    assert [s["key"] for s in samples] == ["shard.tar#ok", "shard.tar#folder/ok2"]
    assert reasons(rejects) == {
        f"shard.tar#{key}": "unsafe_member" for key in ("/abs/x", "../up", "s", "l", "dev", "fifo", "dir/")
    }


def test_truncated_and_corrupt_tars(tmp_path: Path):
    data = tar_bytes(sample_members("a") + sample_members("b") + sample_members("c"))
    cases = {
        "inside_data": data[: data.index(b"b.txt") + 700],
        "no_end_marker": data[: data.rindex(b"c.json") - 512 + 1536],  # after c.json's data, no marker
        "corrupt_header": data[: data.index(b"b.txt")] + b"\x01" * 10 + data[data.index(b"b.txt") + 10 :],
    }
    for name, broken in cases.items():
        write(tmp_path / f"{name}.tar", broken)
    source = reader(tmp_path, format="webdataset", path="*.tar")
    samples, rejects, _ = read_source(source)
    keys = {s["key"] for s in samples}
    assert {"inside_data.tar#a", "no_end_marker.tar#a", "no_end_marker.tar#b", "corrupt_header.tar#a"} <= keys
    assert reasons(rejects) == {
        "corrupt_header.tar#b": "unreadable_file",
        "inside_data.tar#b": "unreadable_file",
        "no_end_marker.tar#c": "unreadable_file",
    }


@pytest.mark.parametrize(
    "data",
    [b"", b"not a tar at all" * 64, gzip.compress(tar_bytes(sample_members("a")))],
    ids=["empty", "text", "gzip"],
)
def test_unreadable_tar_is_one_reject(tmp_path: Path, data: bytes):
    write(tmp_path / "shard.tar", data)
    samples, (reject,), _ = read_source(reader(tmp_path, format="webdataset", path="shard.tar"))
    assert samples == [] and (reject["key"], reject["reason"]) == ("shard.tar", "unreadable_file")


def test_empty_tar_has_no_records(tmp_path: Path):
    write(tmp_path / "shard.tar", tar_bytes([]))
    assert read_source(reader(tmp_path, format="webdataset", path="shard.tar"))[2].read == 0


def test_images_root_does_not_apply(tmp_path: Path):
    write(tmp_path / "shard.tar", tar_bytes([]))
    with pytest.raises(ValueError, match=r"source\.images_root: .*webdataset"):
        reader(tmp_path, format="webdataset", path="shard.tar", images_root=".")


@given(edits=CORRUPTIONS)
def test_fuzzed_tar_never_escapes_and_writes_nothing(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    members = sample_members("a") + sample_members("b", image=image_bytes("PNG")) + [member("c.jpg", JPEG)]
    write(tmp_path / "shard.tar", corrupt(tar_bytes(members), edits))
    cwd = os.getcwd()
    _, _, counts = read_source(reader(tmp_path, format="webdataset", path="shard.tar"))
    assert os.getcwd() == cwd and sorted(p.name for p in tmp_path.iterdir()) == ["shard.tar"]
    assert counts.read <= 3 + len(edits) * 16


def test_members_over_their_limits_are_rejected_from_the_header(tmp_path: Path):
    big_jpeg = image_bytes("JPEG", (64, 48))
    members = [
        *[member("a.jpg", JPEG), member("a.txt", b"x" * 65)],
        *[member("b.jpg", JPEG), member("b.json", json.dumps({"caption": "y" * 60}).encode())],
        *[member("c.jpg", big_jpeg), member("c.txt", b"fits")],
        *[member("d.jpg", JPEG), member("d.txt", b"x" * 64), member("d.cls", b"z" * 1000)],
    ]
    write(tmp_path / "shard.tar", tar_bytes(members))
    options = {"max_record_bytes": 64, "max_image_bytes": len(JPEG)}
    samples, rejects, _ = read_source(reader(tmp_path, format="webdataset", path="shard.tar", **options))
    assert [s["key"] for s in samples] == ["shard.tar#d"]  # other members are never limited: not read
    assert reasons(rejects) == {
        "shard.tar#a": "record_too_large",
        "shard.tar#b": "record_too_large",
        "shard.tar#c": "image_too_large",
    }
    details = {row["key"]: row["detail"] for row in rejects}
    assert details["shard.tar#a"] == "member 'a.txt' declares 65 bytes, over max_record_bytes 64; not read"
    assert f"declares {len(big_jpeg)} bytes, over max_image_bytes {len(JPEG)}" in details["shard.tar#c"]


def sparse_tar(path: Path, header: tarfile.TarInfo, header_format: int, after: bytes) -> None:
    """A tar whose first member is `header` with `header.size` bytes of data that take no disk (a hole),
    then the archive `after`."""
    with open(path, "wb") as file:
        file.write(header.tobuf(header_format))
        file.seek(-(-header.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE, os.SEEK_CUR)
        file.write(after)


@pytest.mark.timeout(120)
def test_a_member_declaring_10_gib_is_skipped_unread(tmp_path: Path):
    huge = tarfile.TarInfo("huge.jpg")
    huge.size = 10 << 30
    sparse_tar(tmp_path / "shard.tar", huge, tarfile.PAX_FORMAT, tar_bytes(sample_members("small")))
    source = {"name": "src", "format": "webdataset", "path": str(tmp_path / "shard.tar")}
    rows, growth = read_in_subprocess(source)
    assert [(key, reason) for key, reason, _ in rows] == [
        ("shard.tar#huge", "image_too_large"),
        ("shard.tar#small", None),
    ]
    assert growth < 64 << 20


@pytest.mark.timeout(120)
def test_a_header_declaring_a_5_gib_name_is_not_read_into_memory(tmp_path: Path):
    long_name = tarfile.TarInfo("././@LongLink")
    long_name.type = tarfile.GNUTYPE_LONGNAME
    long_name.size = 5 << 30
    sparse_tar(tmp_path / "shard.tar", long_name, tarfile.GNU_FORMAT, tar_bytes(sample_members("next")))
    source = {"name": "src", "format": "webdataset", "path": str(tmp_path / "shard.tar")}
    rows, growth = read_in_subprocess(source)
    ((key, reason, detail),) = rows
    assert (key, reason) == ("shard.tar", "unreadable_file")
    assert f"a read of {5 << 30} bytes asked for, more than the {64 << 20} allowed" in detail
    assert growth < 64 << 20

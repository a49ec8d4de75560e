"""pipeline.ingest on corpora in the layouts their tools and authors publish them: the messages layout of
conversations (JSON and Hugging Face Parquet), compressed JSON Lines and text in folders, `.zip`
members, plain `.txt`, absolute image paths inside `images_root`, and files no format reads."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ingest_support import CORRUPTIONS, corrupt, image_bytes, read_source, reader, reasons, texts, write

from pipeline.ingest import containers

JPEG = image_bytes("JPEG")
PNG = image_bytes("PNG", (20, 10), 50)


def jsonl(records: list[object]) -> str:
    return "".join(json.dumps(record) + "\n" for record in records)


def zstd(data: bytes) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, "zstd") as stream:
        stream.write(data)
    return sink.getvalue().to_pybytes()


COMPRESS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress, ".zst": zstd}


def structure(sample: dict) -> list[tuple]:
    return [(s["turn"], s["role"], s["type"], s["text"], s["image"]) for s in sample["content"]]


# ---- conversations: the messages layout ----------------------------------------------------------


def test_llama_factory_messages_and_sharegpt_in_one_file(tmp_path: Path):
    """LLaMA-Factory's mllm_demo.json layout (messages + images), next to a ShareGPT record with
    `images`, an OpenAI record with content parts, and a record with a system message."""
    write(tmp_path / "mllm_demo_data" / "1.jpg", JPEG)
    write(tmp_path / "mllm_demo_data" / "2.png", PNG)
    records = [
        {
            "messages": [
                {"content": "<image>Who are they?", "role": "user"},
                {"content": "They're Kane and Gretzka from Bayern Munich.", "role": "assistant"},
                {"content": "What are they doing?<image>", "role": "user"},
                {"content": "They are celebrating on the soccer field.", "role": "assistant"},
            ],
            "images": ["mllm_demo_data/1.jpg", "mllm_demo_data/2.png"],
        },
        {
            "conversations": [{"from": "human", "value": "<image>Describe."}, {"from": "gpt", "value": "A."}],
            "images": ["mllm_demo_data/1.jpg"],
            "system": "kept in meta",
        },
        {
            "messages": [
                {"role": "system", "content": "Be brief."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Compare "},
                        {"type": "image"},
                        {"type": "text", "text": " and "},
                        {"type": "image"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Same."}]},
            ],
            "images": [{"path": "mllm_demo_data/2.png"}, "mllm_demo_data/1.jpg"],
        },
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
    ]
    write(tmp_path / "mllm_demo.json", json.dumps(records, indent=2))
    samples, rejects, counts = read_source(reader(tmp_path, format="llava", path="mllm_demo.json"))
    assert rejects == [] and counts.samples == 4
    first, second, third, fourth = samples
    assert structure(first) == [
        (0, "user", "image", None, 0),
        (0, "user", "text", "Who are they?", None),
        (1, "assistant", "text", "They're Kane and Gretzka from Bayern Munich.", None),
        (2, "user", "text", "What are they doing?", None),
        (2, "user", "image", None, 1),
        (3, "assistant", "text", "They are celebrating on the soccer field.", None),
    ]
    assert [image["path"] for image in first["images"]] == ["mllm_demo_data/1.jpg", "mllm_demo_data/2.png"]
    assert json.loads(first["meta"]) == {}
    assert structure(second)[0] == (0, "user", "image", None, 0)
    assert json.loads(second["meta"]) == {"system": "kept in meta"}
    assert structure(third) == [
        (0, "system", "text", "Be brief.", None),
        (1, "user", "text", "Compare ", None),
        (1, "user", "image", None, 0),
        (1, "user", "text", " and ", None),
        (1, "user", "image", None, 1),
        (2, "assistant", "text", "Same.", None),
    ]
    assert [image["bytes"] for image in third["images"]] == [PNG, JPEG]
    assert texts(fourth) == ["Hi", "Hello"] and fourth["images"] == []


def test_hugging_face_parquet_with_embedded_images(tmp_path: Path):
    """`datasets` writes `messages: list<struct<role, content>>` and `images: list<struct<bytes, path>>`."""
    messages = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
    images = pa.list_(pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    table = pa.table(
        {
            "messages": pa.array(
                [
                    [{"role": "user", "content": "<image>What?"}, {"role": "assistant", "content": "A cat."}],
                    [
                        {"role": "user", "content": "Two: <image><image>"},
                        {"role": "assistant", "content": "B"},
                    ],
                    [{"role": "robot", "content": "x"}],
                ],
                messages,
            ),
            "images": pa.array(
                [
                    [{"bytes": JPEG, "path": "1.jpg"}],
                    [{"bytes": PNG, "path": "/root/.cache/x.png"}, {"bytes": JPEG, "path": None}],
                    [],
                ],
                images,
            ),
        }
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    samples, rejects, counts = read_source(reader(tmp_path, format="llava", path="."))
    assert counts.read == 3 and counts.samples == 2
    assert reasons(rejects) == {"train-00000-of-00001.parquet#2": "bad_field"}
    one, two = samples
    assert one["key"] == "train-00000-of-00001.parquet#0"
    assert texts(one) == ["What?", "A cat."] and one["images"][0]["bytes"] == JPEG
    assert one["images"][0]["path"] == "1.jpg"
    assert [image["path"] for image in two["images"]] == [None, None]  # an absolute cache path is not kept
    assert [image["format"] for image in two["images"]] == ["PNG", "JPEG"]


def test_field_names_can_be_set(tmp_path: Path):
    write(tmp_path / "a.jpg", JPEG)
    record = {
        "dialog": [{"speaker": "user", "text": "Q"}, {"speaker": "assistant", "text": "A"}],
        "pic": "a.jpg",
    }
    write(tmp_path / "chat.jsonl", jsonl([record, {"dialog": [{"from": "human", "value": "x"}]}]))
    source = reader(
        tmp_path,
        format="llava",
        path="chat.jsonl",
        conversations_field="dialog",
        role_field="speaker",
        content_field="text",
        image_field="pic",
    )
    samples, rejects, _ = read_source(source)
    assert structure(samples[0]) == [
        (0, "user", "image", None, 0),
        (0, "user", "text", "\nQ", None),
        (1, "assistant", "text", "A", None),
    ]
    assert reasons(rejects) == {"chat.jsonl#1": "missing_field"}
    assert "dialog[0].speaker is missing" in rejects[0]["detail"]


BAD_MESSAGES = {
    "neither turns field": ({"text": "hi"}, "missing_field", "conversations or messages is missing"),
    "role missing": ({"messages": [{"content": "hi"}]}, "missing_field", "messages[0].role is missing"),
    "content missing": ({"messages": [{"role": "user"}]}, "missing_field", "messages[0].content is missing"),
    "tool role": (
        {"messages": [{"role": "tool", "content": "x"}]},
        "bad_field",
        "messages[0].role is 'tool'",
    ),
    "image_url part": (
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
        "bad_field",
        "messages[0].content[0] must be",
    ),
    "part text not a string": (
        {"messages": [{"role": "user", "content": [{"type": "text", "text": 3}]}]},
        "bad_field",
        "messages[0].content[0].text is a number",
    ),
    "image and images": (
        {"messages": [{"role": "user", "content": "hi"}], "image": "a.jpg", "images": ["a.jpg"]},
        "bad_field",
        "both image and images",
    ),
    "image part and images list": (
        {
            "messages": [{"role": "user", "content": [{"type": "image", "image": "a.jpg"}]}],
            "images": ["a.jpg"],
        },
        "bad_field",
        "images both in images and in content parts",
    ),
    "image parts without images": (
        {
            "messages": [{"role": "user", "content": [{"type": "image"}, {"type": "image"}]}],
            "images": ["a.jpg"],
        },
        "placeholder_mismatch",
        "2 <image> placeholder(s) for 1 image(s)",
    ),
    "image bytes not bytes": (
        {"messages": [{"role": "user", "content": "hi"}], "images": [{"bytes": "abc"}]},
        "bad_field",
        "images[0].bytes is str",
    ),
    "image entry without bytes or path": (
        {"messages": [{"role": "user", "content": "hi"}], "images": [{}]},
        "missing_field",
        "images[0] has neither bytes nor path",
    ),
}


def test_bad_messages_are_rejected_with_the_field_named(tmp_path: Path):
    write(tmp_path / "a.jpg", JPEG)
    good = {
        "messages": [
            {
                "role": "user",
                "content": [{"type": "image", "image": "a.jpg"}, {"type": "text", "text": "What?"}],
            },
            {"role": "assistant", "content": "A cat."},
        ]
    }
    write(tmp_path / "chat.jsonl", jsonl([record for record, *_ in BAD_MESSAGES.values()] + [good]))
    samples, rejects, _ = read_source(reader(tmp_path, format="llava", path="chat.jsonl"))
    found = {row["key"]: (row["reason"], row["detail"]) for row in rejects}
    for index, (name, (_, reason, detail)) in enumerate(BAD_MESSAGES.items()):
        assert found[f"chat.jsonl#{index}"][0] == reason, name
        assert detail in found[f"chat.jsonl#{index}"][1], name
    (sample,) = samples
    assert structure(sample)[:2] == [(0, "user", "image", None, 0), (0, "user", "text", "What?", None)]


# ---- images: absolute paths inside images_root -----------------------------------------------------


def test_absolute_image_paths_inside_images_root_are_read(tmp_path: Path):
    """What `datasets` `to_parquet()` writes for images it did not embed: `{bytes: null, path: /abs}`."""
    images = tmp_path / "export" / "images"
    write(images / "a.jpg", JPEG)
    write(tmp_path / "elsewhere" / "b.jpg", JPEG)
    os.symlink(tmp_path / "elsewhere" / "b.jpg", images / "link.jpg")
    os.symlink(images, tmp_path / "alias")
    inside = images / "a.jpg"
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    paths = [
        str(inside),  # read: inside images_root
        str(tmp_path / "alias" / "a.jpg"),  # read: a symlinked folder whose real path is inside
        str(images / "sub" / ".." / "a.jpg"),  # read: normalized
        str(images / "link.jpg"),  # rejected: its real path leaves images_root
        str(tmp_path / "elsewhere" / "b.jpg"),  # rejected: outside
    ]
    table = pa.table(
        {
            "image": pa.array([{"bytes": None, "path": p} for p in paths], struct),
            "text": [f"caption {i}" for i in range(len(paths))],
        }
    )
    pq.write_table(table, tmp_path / "export" / "data.parquet")
    source = reader(tmp_path, format="parquet", path="export/data.parquet", images_root="export/images")
    samples, rejects, _ = read_source(source)
    assert [s["key"] for s in samples] == ["data.parquet#0", "data.parquet#1", "data.parquet#2"]
    assert [s["images"][0]["path"] for s in samples] == ["a.jpg", "a.jpg", "a.jpg"]
    assert reasons(rejects) == {"data.parquet#3": "outside_root", "data.parquet#4": "outside_root"}


def test_absolute_paths_in_conversations_and_ocr(tmp_path: Path):
    write(tmp_path / "img" / "a.jpg", JPEG)
    absolute = str(tmp_path / "img" / "a.jpg")
    write(
        tmp_path / "chat.jsonl",
        jsonl([{"messages": [{"role": "user", "content": "Q"}], "images": [absolute]}]),
    )
    (sample,), _, _ = read_source(reader(tmp_path, format="llava", path="chat.jsonl", images_root="img"))
    assert sample["images"][0]["path"] == "a.jpg"
    write(tmp_path / "ocr.jsonl", jsonl([{"image": absolute, "text": "hello"}]))
    (sample,), _, _ = read_source(reader(tmp_path, format="ocr_jsonl", path="ocr.jsonl", images_root="img"))
    assert sample["images"][0]["path"] == "a.jpg"


# ---- compression, folders and files no format reads ------------------------------------------------


def test_a_folder_of_plain_and_compressed_json_lines(tmp_path: Path):
    """Dolma and C4 ship `.json.gz` / `.jsonl.gz` (and `.zst`): every document is read."""
    documents = [{"id": str(i), "text": f"document {i}"} for i in range(30)]
    write(tmp_path / "corpus" / "plain.jsonl", jsonl(documents[:10]))
    write(
        tmp_path / "corpus" / "c4-train.00000-of-01024.json.gz",
        gzip.compress(jsonl(documents[10:14]).encode()),
    )
    for offset, (suffix, compress) in enumerate(COMPRESS.items()):
        part = documents[14 + 4 * offset : 18 + 4 * offset]
        write(tmp_path / "corpus" / "dolma" / f"part.jsonl{suffix}", compress(jsonl(part).encode()))
    samples, rejects, counts = read_source(reader(tmp_path, format="text", path="corpus", meta_fields=["id"]))
    assert rejects == [] and counts.read == 30
    assert sorted(texts(s)[0] for s in samples) == sorted(d["text"] for d in documents)
    assert {s["key"] for s in samples} >= {"dolma/part.jsonl.xz#3", "c4-train.00000-of-01024.json.gz#0"}


def test_compressed_files_in_a_glob_and_as_the_path(tmp_path: Path):
    record = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    write(tmp_path / "d" / "a.jsonl.gz", gzip.compress(jsonl([record] * 2).encode()))
    write(tmp_path / "d" / "b.json.bz2", bz2.compress(json.dumps([record] * 3).encode()))
    samples, rejects, _ = read_source(reader(tmp_path, format="llava", path="d/*"))
    assert rejects == [] and len(samples) == 5
    samples, _, _ = read_source(reader(tmp_path, format="llava", path="d/b.json.bz2"))
    assert [s["key"] for s in samples] == ["b.json.bz2#0", "b.json.bz2#1", "b.json.bz2#2"]


@pytest.mark.parametrize("suffix", list(COMPRESS))
def test_corrupt_and_truncated_compressed_files_end_in_one_file_reject(tmp_path: Path, suffix: str):
    lines = jsonl([{"text": f"line {i} " + "x" * 50} for i in range(2000)]).encode()
    data = COMPRESS[suffix](lines)
    write(tmp_path / "d" / f"cut.jsonl{suffix}", data[: len(data) // 2])
    write(tmp_path / "d" / f"garbage.jsonl{suffix}", b"not compressed at all\n")
    samples, rejects, counts = read_source(reader(tmp_path, format="text", path="d"))
    assert counts.read == len(samples) + len(rejects)
    assert reasons(rejects)[f"cut.jsonl{suffix}"] == "unreadable_file"
    assert reasons(rejects)[f"garbage.jsonl{suffix}"] == "unreadable_file"
    assert all(s["key"].startswith(f"cut.jsonl{suffix}#") for s in samples)
    assert len(samples) < 2000


@pytest.mark.timeout(120)
def test_a_decompression_bomb_is_streamed_line_by_line(tmp_path: Path):
    """256 MiB of one line compressed into a few hundred KiB: rejected as too large, never held."""
    import resource
    import subprocess
    import sys
    import textwrap

    sink = tmp_path / "d" / "bomb.jsonl.gz"
    sink.parent.mkdir()
    with gzip.open(sink, "wb", compresslevel=9) as out:
        chunk = b"x" * (1 << 20)
        out.write(b'{"text": "')
        for _ in range(256):
            out.write(chunk)
        out.write(b'"}\n{"text": "after"}\n')
    assert sink.stat().st_size < 2 << 20
    script = textwrap.dedent(
        f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (1 << 31, 1 << 31))
        from pipeline import ingest
        source = ingest.make_reader({{"name": "s", "format": "text", "path": {str(sink)!r}}})
        rows = list(source.read_file("bomb.jsonl.gz"))
        print([(row["key"], row.get("reason")) for row in rows])
        """
    )
    del resource  # the limit is set in the child, where the reading happens
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=Path(__file__).parents[3],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[('bomb.jsonl.gz#0', 'record_too_large'), ('bomb.jsonl.gz#1', None)]"


def test_files_the_format_cannot_read_are_one_reject_each(tmp_path: Path):
    record = {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}
    write(tmp_path / "d" / "chat.jsonl", jsonl([record]))
    write(tmp_path / "d" / "shard.tar", b"")
    write(tmp_path / "d" / "README.md", "# about")
    write(tmp_path / "d" / "images.tar.gz", b"")
    write(tmp_path / "d" / ".DS_Store", b"")
    write(tmp_path / "d" / "_meta.json", "{}")
    samples, rejects, counts = read_source(reader(tmp_path, format="llava", path="d"))
    assert len(samples) == 1 and counts.read == 4
    assert reasons(rejects) == {
        "README.md": "unsupported_file",
        "images.tar.gz": "unsupported_file",
        "shard.tar": "unsupported_file",
    }
    detail = {row["key"]: row["detail"] for row in rejects}
    assert "format webdataset reads this file" in detail["shard.tar"]
    assert "no format reads this file" in detail["README.md"]
    # COCO annotations are read whole: a compressed one is named, with what to do.
    write(tmp_path / "coco" / "captions.json", json.dumps({"images": [], "annotations": []}))
    write(tmp_path / "coco" / "captions_val.json.gz", gzip.compress(b"{}"))
    _, rejects, _ = read_source(reader(tmp_path, format="coco_captions", path="coco"))
    assert reasons(rejects) == {"captions_val.json.gz": "unsupported_file"}
    assert "format coco_captions reads files ending in .json" in rejects[0]["detail"]
    assert "decompress it (gzip)" in rejects[0]["detail"]
    # Named as the path, one compressed annotation file is read whole, as it was before.
    write(tmp_path / "images" / "1.jpg", JPEG)
    annotations = {
        "images": [{"id": 1, "file_name": "1.jpg", "width": 16, "height": 12}],
        "annotations": [{"id": 5, "image_id": 1, "caption": "a gradient"}],
    }
    write(tmp_path / "coco" / "captions_val.json.xz", lzma.compress(json.dumps(annotations).encode()))
    source = reader(tmp_path, format="coco_captions", path="coco/captions_val.json.xz", images_root="images")
    (sample,), rejects, _ = read_source(source)
    assert rejects == [] and texts(sample) == ["a gradient"]


def test_img2dataset_sidecars_are_ignored_by_rule(tmp_path: Path):
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00001_stats.json", "other.parquet"):
        write(tmp_path / "shards" / name, b"")
    source = reader(tmp_path, format="webdataset", path="shards")
    # 00001_stats.json has no shard beside it and other.parquet no tar: both are named, not skipped.
    assert source.files() == ["00000.tar", "00001_stats.json", "other.parquet"]


# ---- .zip members ----------------------------------------------------------------------------------


def test_mmc4_shard_as_distributed_in_a_zip(tmp_path: Path):
    write(tmp_path / "images" / "a.jpg", JPEG)
    documents = [
        {
            "url": f"u{i}",
            "text_list": ["One.", "Two."],
            "image_info": [
                {"image_name": "a.jpg", "raw_url": "x", "matched_text_index": 1, "matched_sim": 0.3}
            ],
        }
        for i in range(20)
    ]
    with zipfile.ZipFile(tmp_path / "docs_shard_0_v3.jsonl.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("docs_shard_0_v3.jsonl", jsonl(documents))
        archive.writestr("__MACOSX/._docs_shard_0_v3.jsonl", b"\0\5\x16\7")
        archive.writestr("notes.md", "about the shard")
        archive.writestr("extra/part.jsonl.gz", gzip.compress(jsonl(documents[:2]).encode()))
        archive.writestr("inner.zip", b"PK")
    source = reader(tmp_path, format="mmc4", path=".", images_root="images")
    samples, rejects, counts = read_source(source)
    assert counts.read == 24 and len(samples) == 22
    assert samples[0]["key"] == "docs_shard_0_v3.jsonl.zip/docs_shard_0_v3.jsonl#0"
    assert samples[-1]["key"] == "docs_shard_0_v3.jsonl.zip/extra/part.jsonl.gz#1"
    assert reasons(rejects) == {
        "docs_shard_0_v3.jsonl.zip/notes.md": "unsupported_file",
        "docs_shard_0_v3.jsonl.zip/inner.zip": "unsupported_file",
    }


def test_broken_zips(tmp_path: Path):
    documents = [{"text": f"document {i}"} for i in range(200)]
    (tmp_path / "d").mkdir()
    with zipfile.ZipFile(tmp_path / "d" / "ok.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.jsonl", jsonl(documents))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("a.jsonl", jsonl(documents[:2]))  # the same name twice: the last one is read
    write(tmp_path / "d" / "not.zip", b"PK\3\4 but nothing else")
    # Found by the fuzz test below: a zeroed name length in the central directory, a member named "".
    data = bytearray(_zipped(b""))
    data[5757026 % (len(data) + 1)] = 0
    write(tmp_path / "d" / "nameless.zip", bytes(data))
    with zipfile.ZipFile(tmp_path / "crc.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a.jsonl", jsonl(documents))
    data = (tmp_path / "crc.zip").read_bytes()
    # The member's compressed data damaged: an inflate or CRC error part-way.
    write(tmp_path / "d" / "crc.zip", data[:80] + bytes(b ^ 0x5A for b in data[80:120]) + data[120:])
    samples, rejects, counts = read_source(reader(tmp_path, format="text", path="d"))
    assert counts.read == len(samples) + len(rejects)
    found = reasons(rejects)
    assert found["not.zip"] == "unreadable_file"
    assert found["nameless.zip/"] == "unsupported_file"
    assert found["ok.zip/a.jsonl"] == "bad_field"
    assert "stored 2 times" in next(r["detail"] for r in rejects if r["key"] == "ok.zip/a.jsonl")
    assert [key for key in (s["key"] for s in samples) if key.startswith("ok.zip/")] == [
        "ok.zip/a.jsonl#0",
        "ok.zip/a.jsonl#1",
    ]
    assert found["crc.zip/a.jsonl"] == "unreadable_file"


def test_split_member():
    assert containers.split_member("a/b.jsonl.zip/c/d.jsonl") == ("a/b.jsonl.zip", "c/d.jsonl")
    assert containers.split_member("a/b.jsonl.zip") == ("a/b.jsonl.zip", None)


# ---- plain text ------------------------------------------------------------------------------------


def test_plain_text_one_document_per_line_or_per_file(tmp_path: Path):
    lines = [f"Document {i}: some text." for i in range(30)]
    write(
        tmp_path / "wiki_demo.txt",
        "\ufeff" + "\n".join(lines[:10]) + "\n\n  \r\n" + "\r\n".join(lines[10:]) + "\n",
    )
    samples, rejects, counts = read_source(reader(tmp_path, format="text", path="wiki_demo.txt"))
    assert rejects == [] and counts.read == 30
    assert [texts(s)[0] for s in samples] == lines
    assert samples[29]["key"] == "wiki_demo.txt#29"
    write(tmp_path / "books" / "a.txt", "Chapter 1\n\nIt was a dark night.\n")
    write(tmp_path / "books" / "b.txt.gz", gzip.compress("caf\xe9\n".encode()))
    write(tmp_path / "books" / "c.txt", b"bad \xff byte\n")
    samples, rejects, _ = read_source(reader(tmp_path, format="text", path="books", text_format="document"))
    assert [(s["key"], texts(s)[0]) for s in samples] == [
        ("a.txt#0", "Chapter 1\n\nIt was a dark night.\n"),
        ("b.txt.gz#0", "caf\xe9\n"),
    ]
    assert reasons(rejects) == {"c.txt#0": "bad_text"}
    source = reader(tmp_path, format="text", path="books/a.txt", text_format="document", max_record_bytes=8)
    _, (reject,), _ = read_source(source)
    assert reject["reason"] == "record_too_large" and "32 bytes" in reject["detail"]


# ---- WebDataset shards compressed, img2dataset's failed downloads -----------------------------------


def tar_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def img2dataset_json(key: str, status: str = "success", error: str | None = None) -> bytes:
    record = {
        "url": f"http://x/{key}.jpg",
        "caption": f"caption {key}",
        "key": key,
        "status": status,
        "error_message": error,
        "width": 16,
        "height": 12,
        "original_width": 160,
        "original_height": 120,
    }
    return json.dumps(record).encode()


def img2dataset_shard() -> bytes:
    members = []
    for number in range(3):
        key = f"00000{number:04d}"
        members += [
            (f"{key}.jpg", JPEG),
            (f"{key}.txt", f"caption {key}".encode()),
            (f"{key}.json", img2dataset_json(key)),
        ]
    members.append(("000000003.json", img2dataset_json("000000003", "failed_to_download", "HTTP Error 404")))
    members += [("000000004.cls", b"7"), ("000000004.jpg", JPEG), ("000000004.json", b'{"caption": "c"}')]
    return tar_bytes(members)


@pytest.mark.parametrize("name", ["00000.tgz", "00000.tar.gz", "00000.tar.xz", "00000.tar.zst"])
def test_compressed_webdataset_shards(tmp_path: Path, name: str):
    compress = {".tgz": gzip.compress, ".gz": gzip.compress, ".xz": lzma.compress, ".zst": zstd}
    write(tmp_path / "shards" / name, compress[Path(name).suffix](img2dataset_shard()))
    write(tmp_path / "shards" / "00000.parquet", b"img2dataset's table of the shard")
    write(tmp_path / "shards" / "00000_stats.json", b"{}")
    source = reader(tmp_path, format="webdataset", path="shards")
    assert source.files() == [name]
    samples, rejects, counts = read_source(source)
    assert counts.read == 5 and len(samples) == 4
    assert [s["key"] for s in samples] == [f"{name}#00000000{n}" for n in (0, 1, 2, 4)]
    meta = json.loads(samples[0]["meta"])
    assert (meta["width"], meta["height"], meta["url"]) == (16, 12, "http://x/000000000.jpg")
    (reject,) = rejects
    assert (reject["key"], reject["reason"]) == (f"{name}#000000003", "failed_download")
    assert "failed_to_download" in reject["detail"] and "HTTP Error 404" in reject["detail"]


def test_plain_and_compressed_shards_give_the_same_rows(tmp_path: Path):
    shard = img2dataset_shard()
    write(tmp_path / "a" / "s.tar", shard)
    write(tmp_path / "b" / "s.tar", gzip.compress(shard))  # renamed below: same name, other bytes
    (tmp_path / "b" / "s.tar").rename(tmp_path / "b" / "s.tgz")
    plain, _, _ = read_source(reader(tmp_path, format="webdataset", path="a"))
    packed, _, _ = read_source(reader(tmp_path, format="webdataset", path="b"))
    assert [(s["content"], s["images"], s["meta"]) for s in plain] == [
        (s["content"], s["images"], s["meta"]) for s in packed
    ]


def test_a_truncated_or_corrupt_compressed_shard(tmp_path: Path):
    data = gzip.compress(img2dataset_shard())
    write(tmp_path / "d" / "cut.tgz", data[: len(data) * 2 // 3])
    write(tmp_path / "d" / "junk.tgz", b"\x1f\x8b\x08\x00 not really gzip")
    samples, rejects, counts = read_source(reader(tmp_path, format="webdataset", path="d"))
    assert counts.read == len(samples) + len(rejects)
    found = reasons(rejects)
    assert found["junk.tgz"] == "unreadable_file"
    assert any(key.startswith("cut.tgz#") and reason == "unreadable_file" for key, reason in found.items())


def test_img2dataset_parquet_output_with_failed_rows(tmp_path: Path):
    table = pa.table(
        {
            "url": ["http://x/0.jpg", "http://x/1.jpg", "http://x/2.jpg"],
            "caption": ["a cat", "a dog", "a bird"],
            "key": ["000000000", "000000001", "000000002"],
            "status": ["success", "failed_to_download", "failed_to_resize"],
            "error_message": [
                None,
                "<urlopen error [Errno -2] Name or service not known>",
                "image too small",
            ],
            "jpg": pa.array([JPEG, None, None], pa.binary()),
        }
    )
    pq.write_table(table, tmp_path / "00000.parquet")
    write(tmp_path / "00000_stats.json", "{}")
    source = reader(
        tmp_path,
        format="parquet",
        path=".",
        image_column="jpg",
        text_column="caption",
        meta_columns=["url", "key"],
    )
    assert source.files() == ["00000.parquet"]
    samples, rejects, _ = read_source(source)
    assert [s["key"] for s in samples] == ["00000.parquet#0"]
    assert json.loads(samples[0]["meta"]) == {"url": "http://x/0.jpg", "key": "000000000"}
    assert reasons(rejects) == {"00000.parquet#1": "failed_download", "00000.parquet#2": "failed_download"}
    assert "Name or service not known" in rejects[0]["detail"] and "failed_to_resize" in rejects[1]["detail"]


# ---- OCR JSON Lines from other tools ---------------------------------------------------------------


def test_wildreceipt_and_mmocr_layouts(tmp_path: Path):
    write(tmp_path / "image_files" / "r.jpeg", image_bytes("JPEG", (100, 50)))
    receipt = {
        "file_name": "image_files/r.jpeg",
        "height": 50,
        "width": 100,
        "annotations": [
            {"box": [10, 5, 40, 5, 40, 15, 10, 15], "text": "SAFEWAY", "label": 1},
            {"box": [50, 20, 95, 22, 94, 30, 49, 28], "text": "", "label": 0},
            {"box": [[5, 35], [30, 33], [31, 45], [4, 46]], "text": "TOTAL", "label": 25},
        ],
    }
    write(tmp_path / "wildreceipt.jsonl", jsonl([receipt]) + "\n\n")
    source = reader(
        tmp_path,
        format="ocr_jsonl",
        path="wildreceipt.jsonl",
        image_field="file_name",
        lines_field="annotations",
        box_field="box",
    )
    (sample,), rejects, counts = read_source(source)
    assert rejects == [] and counts.read == 1
    assert texts(sample) == ["SAFEWAY\nTOTAL"]
    assert [(r["phrase"], r["boxes"], r["start"], r["end"]) for r in sample["regions"]] == [
        ("SAFEWAY", [[10.0, 5.0, 40.0, 15.0]], 0, 7),
        ("TOTAL", [[4.0, 33.0, 31.0, 46.0]], 8, 13),
    ]
    meta = json.loads(sample["meta"])
    assert meta["blank_lines"] == 1 and meta["width"] == 100
    # mmocr's text recognition labels: {"filename", "text"}.
    write(tmp_path / "crops" / "w.png", PNG)
    write(
        tmp_path / "rec.jsonl",
        jsonl([{"filename": "crops/w.png", "text": "WORD"}, {"filename": "crops/w.png"}]),
    )
    samples, rejects, _ = read_source(
        reader(tmp_path, format="ocr_jsonl", path="rec.jsonl", image_field="filename")
    )
    assert texts(samples[0]) == ["WORD"] and reasons(rejects) == {"rec.jsonl#1": "missing_field"}


def test_xywh_boxes_and_bad_polygons(tmp_path: Path):
    write(tmp_path / "p.png", image_bytes("PNG", (40, 20)))
    records = [
        {"image": "p.png", "text": "ab", "lines": [{"text": "a", "bbox": [2, 3, 10, 5]}]},
        {"image": "p.png", "text": "ab", "lines": [{"text": "a", "bbox": [1, 2, 3, 4, 5]}]},
        {"image": "p.png", "text": "ab", "lines": [{"text": "a", "bbox": [[1, 2], [3, "x"], [5, 6]]}]},
        {"image": "p.png", "text": "ab", "lines": [{"text": "a", "bbox": [1, 1, 5, 1, 9, 1]}]},
    ]
    write(tmp_path / "o.jsonl", jsonl(records))
    samples, rejects, _ = read_source(reader(tmp_path, format="ocr_jsonl", path="o.jsonl", box_format="xywh"))
    assert samples[0]["regions"][0]["boxes"] == [[2.0, 3.0, 12.0, 8.0]]
    assert reasons(rejects) == {
        "o.jsonl#1": "bad_field",
        "o.jsonl#2": "bad_field",
        "o.jsonl#3": "degenerate_box",
    }


# ---- fuzzing: whatever the bytes, every record ends as a sample or a reject -------------------------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.text(max_size=6)
    | st.sampled_from(["<image>", "a.jpg"]),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(
            st.sampled_from(
                ["role", "content", "from", "value", "type", "text", "image", "images", "bytes", "path"]
            ),
            children,
            max_size=3,
        )
    ),
    max_leaves=12,
)
RECORDS = st.dictionaries(
    st.sampled_from(["messages", "conversations", "images", "image", "text", "lines", "status"]),
    JSON_VALUES,
    max_size=3,
)
CONTAINERS = {
    "plain": lambda data: data,
    "gz": gzip.compress,
    "xz": lzma.compress,
    "zip": lambda data: _zipped(data),
}


def _zipped(data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("part.jsonl", data)
    return buffer.getvalue()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    records=st.lists(RECORDS, max_size=4),
    container=st.sampled_from(sorted(CONTAINERS)),
    edits=st.one_of(st.none(), CORRUPTIONS),
    reader_format=st.sampled_from(["llava", "text", "ocr_jsonl", "mmc4", "webdataset"]),
)
def test_fuzzed_files_never_escape_and_counts_reconcile(
    tmp_path_factory, records, container, edits, reader_format
):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    write(tmp_path / "a.jpg", JPEG)
    data = CONTAINERS[container](jsonl(records).encode())
    if edits is not None:
        data = corrupt(data, edits)
    name = {"plain": "d.jsonl", "gz": "d.jsonl.gz", "xz": "d.jsonl.xz", "zip": "d.jsonl.zip"}[container]
    write(tmp_path / "corpus" / name, data)
    write(tmp_path / "corpus" / "t.tgz", gzip.compress(tar_bytes([("k.jpg", JPEG), ("k.json", data[:200])])))
    images = {} if reader_format in ("text", "webdataset") else {"images_root": "."}
    source = reader(tmp_path, format=reader_format, path="corpus", **images)
    samples, rejects, _ = read_source(source)  # checks every row, unique keys, read = samples + rejects
    assert len(source.files()) == 2
    if edits is None and reader_format != "webdataset":
        # An intact file: one row per record (blank JSON lines are none), plus the other file's rows.
        keys = [row["key"] for row in samples + rejects if not row["key"].startswith("t.tgz")]
        assert len(keys) == len(records) or all(row["reason"] == "unsupported_file" for row in rejects)

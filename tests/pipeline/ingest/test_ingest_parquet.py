"""pipeline.ingest.parquet: image–text Parquet files (binary, Hugging Face struct or path images)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
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

from pipeline.ingest.streams import MAX_ROWS_PER_BYTE, PARQUET_BATCH_ROWS

JPEG = image_bytes("JPEG")
HF_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def parquet_file(path: Path, columns: dict[str, pa.Array], row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def test_binary_images_in_several_batches(tmp_path: Path):
    rows = PARQUET_BATCH_ROWS + 6
    images = [image_bytes("JPEG", color=i % 3) for i in range(rows)]
    parquet_file(
        tmp_path / "data" / "part-0.parquet",
        {
            "image": pa.array(images, pa.binary()),
            "text": pa.array([f"caption {i}" for i in range(rows)]),
            "url": pa.array([f"http://x/{i}" for i in range(rows)]),
            "score": pa.array([0.5] * (rows - 1) + [float("nan")]),
        },
        row_group_size=40,
    )
    source = reader(tmp_path, format="parquet", path="data", meta_columns=["url", "score"])
    samples, rejects, counts = read_source(source)
    assert rejects == [] and counts.read == rows
    assert [s["key"] for s in samples] == [f"part-0.parquet#{i}" for i in range(rows)]
    assert texts(samples[-1]) == [f"caption {rows - 1}"]
    assert samples[3]["images"][0] == {
        "bytes": images[3],
        "path": None,
        "width": 16,
        "height": 12,
        "format": "JPEG",
    }
    assert json.loads(samples[0]["meta"]) == {"score": 0.5, "url": "http://x/0"}
    assert json.loads(samples[-1]["meta"])["score"] is None


def test_hugging_face_struct_and_path_columns(tmp_path: Path):
    write(tmp_path / "images" / "b.png", image_bytes("PNG"))
    structs = [
        {"bytes": JPEG, "path": "a.jpg"},
        {"bytes": JPEG, "path": "/root/.cache/huggingface/a.jpg"},
        {"bytes": None, "path": "b.png"},
        {"bytes": None, "path": "missing.png"},
        {"bytes": None, "path": None},
        None,
    ]
    parquet_file(
        tmp_path / "hf.parquet",
        {
            "img": pa.array(structs, HF_IMAGE),
            "caption": pa.array([b"bytes caption", "t", "t", "t", "t", "t"], pa.binary()),
        },
    )
    source = reader(
        tmp_path,
        format="parquet",
        path="hf.parquet",
        image_column="img",
        text_column="caption",
        images_root="images",
    )
    samples, rejects, _ = read_source(source)
    assert [s["images"][0]["path"] for s in samples] == ["a.jpg", None, "b.png"]
    assert texts(samples[0]) == ["bytes caption"]
    assert reasons(rejects) == {
        "hf.parquet#3": "missing_image",
        "hf.parquet#4": "missing_field",
        "hf.parquet#5": "missing_field",
    }

    parquet_file(tmp_path / "paths" / "p.parquet", {"image": ["b.png", "../b.png"], "text": ["one", "two"]})
    samples, rejects, _ = read_source(reader(tmp_path, format="parquet", path="paths", images_root="images"))
    assert [s["images"][0]["path"] for s in samples] == ["b.png"]
    assert reasons(rejects) == {"p.parquet#1": "bad_field"}


def test_bad_rows(tmp_path: Path):
    bad_images = sorted(BAD_IMAGES)
    images = [BAD_IMAGES[name][0] for name in bad_images] + [JPEG, JPEG, JPEG, None]
    captions = ["c"] * len(bad_images) + ["", "a\x00b", None, "c"]
    parquet_file(
        tmp_path / "bad.parquet", {"image": pa.array(images, pa.binary()), "text": pa.array(captions)}
    )
    samples, rejects, _ = read_source(reader(tmp_path, format="parquet", path="bad.parquet"))
    expected = {f"bad.parquet#{i}": BAD_IMAGES[name][1] for i, name in enumerate(bad_images)}
    n = len(bad_images)
    expected |= {f"bad.parquet#{n}": "empty_text", f"bad.parquet#{n + 1}": "bad_text"}
    expected |= {f"bad.parquet#{n + 2}": "missing_field", f"bad.parquet#{n + 3}": "missing_field"}
    assert samples == [] and reasons(rejects) == expected


def test_non_utf8_binary_caption(tmp_path: Path):
    parquet_file(
        tmp_path / "t.parquet",
        {"image": pa.array([JPEG], pa.binary()), "text": pa.array([b"caf\xe9"], pa.binary())},
    )
    _, rejects, _ = read_source(reader(tmp_path, format="parquet", path="t.parquet"))
    assert reasons(rejects) == {"t.parquet#0": "bad_text"}


def test_string_columns_that_are_not_utf8(tmp_path: Path):
    # Parquet writers need not validate UTF-8: view bytes as strings to write such a file.
    text = pa.array([b"caf\xe9", b"ok", b"ok"], pa.binary()).view(pa.string())
    paths = pa.array([b"a.jpg", b"\xff.jpg", b"a.jpg"], pa.binary()).view(pa.string())
    image = pa.StructArray.from_arrays([pa.array([JPEG, None, JPEG], pa.binary()), paths], ["bytes", "path"])
    parquet_file(tmp_path / "t.parquet", {"image": image, "text": text})
    samples, rejects, _ = read_source(reader(tmp_path, format="parquet", path="t.parquet"))
    assert [s["key"] for s in samples] == ["t.parquet#2"]
    assert reasons(rejects) == {"t.parquet#0": "bad_text", "t.parquet#1": "bad_field"}


def test_column_problems_reject_each_row_and_only_unopenable_files_are_one_reject(tmp_path: Path):
    good = {"image": pa.array([JPEG], pa.binary()), "text": pa.array(["fine"])}
    parquet_file(tmp_path / "d" / "0-good.parquet", good)
    parquet_file(tmp_path / "d" / "1-no-text.parquet", {"image": pa.array([JPEG, JPEG], pa.binary())})
    parquet_file(tmp_path / "d" / "2-int-image.parquet", {"image": [1, 2], "text": ["a", "b"]})
    parquet_file(
        tmp_path / "d" / "3-list-text.parquet", {"image": pa.array([JPEG], pa.binary()), "text": [["a"]]}
    )
    write(tmp_path / "d" / "4-not-parquet.parquet", b"PAR1 but not really")
    full = io.BytesIO()
    pq.write_table(pa.table(good), full)
    write(tmp_path / "d" / "5-truncated.parquet", full.getvalue()[:-20])
    samples, rejects, counts = read_source(reader(tmp_path, format="parquet", path="d"))
    assert [s["key"] for s in samples] == ["0-good.parquet#0"]
    assert reasons(rejects) == {
        "1-no-text.parquet#0": "missing_field",
        "1-no-text.parquet#1": "missing_field",
        "2-int-image.parquet#0": "bad_field",
        "2-int-image.parquet#1": "bad_field",
        "3-list-text.parquet#0": "bad_field",
        "4-not-parquet.parquet": "unreadable_file",
        "5-truncated.parquet": "unreadable_file",
    }
    assert counts.read == 1 + 2 + 2 + 1 + 1 + 1
    details = {row["key"]: row["detail"] for row in rejects}
    assert details["1-no-text.parquet#1"] == "the file has no column 'text' (columns: image)"
    assert details["2-int-image.parquet#0"].startswith("column 'image' has type int64, not binary")
    assert details["3-list-text.parquet#0"].startswith("column 'text' has type list<element: string>")
    assert all(r["sample_id"] is None for r in rejects if "#" not in r["key"])


def test_a_row_group_that_cannot_be_decoded_rejects_its_rows_and_the_next_groups_are_read(tmp_path: Path):
    texts_ = [f"caption {i}" for i in range(6)]
    path = parquet_file(
        tmp_path / "groups.parquet",
        {"image": pa.array([JPEG] * 6, pa.binary()), "text": texts_},
        row_group_size=2,
    )
    chunk = pq.ParquetFile(path).metadata.row_group(1).column(1)  # the text column of rows 2 and 3
    data = bytearray(path.read_bytes())
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    data[start : start + chunk.total_compressed_size] = b"\xff" * chunk.total_compressed_size
    write(path, bytes(data))
    samples, rejects, counts = read_source(reader(tmp_path, format="parquet", path="groups.parquet"))
    assert [s["key"] for s in samples] == [f"groups.parquet#{i}" for i in (0, 1, 4, 5)]
    assert reasons(rejects) == {"groups.parquet#2": "unreadable_file", "groups.parquet#3": "unreadable_file"}
    assert rejects[0]["detail"].startswith("rows 2 to 3 (row group 1) cannot be decoded")
    assert counts.read == 6


@given(edits=CORRUPTIONS)
def test_fuzzed_file_never_escapes(tmp_path_factory, edits):
    tmp_path = tmp_path_factory.mktemp("fuzz")
    buffer = io.BytesIO()
    table = pa.table(
        {"image": pa.array([JPEG, image_bytes("PNG"), b"x"], pa.binary()), "text": ["a", "b", "c"]}
    )
    pq.write_table(table, buffer, row_group_size=2, compression="none")
    data = corrupt(buffer.getvalue(), edits)
    write(tmp_path / "f.parquet", data)
    _, rejects, counts = read_source(reader(tmp_path, format="parquet", path="f.parquet"))
    # Rows the (possibly corrupted) footer declares, each once, unless it declares an implausible count.
    assert counts.read <= max(4, MAX_ROWS_PER_BYTE * len(data))
    assert sum(r["sample_id"] is None for r in rejects) <= 1


@pytest.mark.parametrize("check", ["full", "header"])
def test_batches_are_tables_with_counts(tmp_path: Path, check: str):
    parquet_file(
        tmp_path / "b.parquet", {"image": pa.array([JPEG] * 5 + [b""], pa.binary()), "text": ["t"] * 6}
    )
    source = reader(tmp_path, format="parquet", path="b.parquet", image_check=check)
    batches = list(source.batches("b.parquet", max_rows=4))
    assert [(b.samples.num_rows, b.rejects.num_rows) for b in batches] == [(4, 0), (1, 1)]
    total = batches[0].counts + batches[1].counts
    assert (total.read, total.samples, total.rejected) == (6, 5, {"empty_image": 1})

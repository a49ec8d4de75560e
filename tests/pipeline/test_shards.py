"""pipeline.shards: deterministic size-targeted shards named by their partition, checksums, atomic writes,
URIs, where an output folder may live."""

from __future__ import annotations

import hashlib
import math
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline import shards

SCHEMA = pa.schema([pa.field("sample_id", pa.string(), nullable=False), pa.field("payload", pa.binary())])


def rows(count: int, start: int = 0) -> pa.Table:
    ids = [f"{i:08x}" for i in range(start, start + count)]
    payload = [hashlib.sha256(i.encode()).digest() * (1 + int(i, 16) % 7) for i in ids]
    return pa.table({"sample_id": ids, "payload": payload}, schema=SCHEMA)


def write_all(location, batches, target=20_000, group=64, prefix="00007"):
    out = shards.OutputDir(str(location))
    writer = shards.ShardWriter(
        out, "shards/src", SCHEMA, target_bytes=target, row_group_rows=group, prefix=prefix
    )
    for batch in batches:
        writer.write(batch)
    return out, writer.close()


def test_shards_are_checksummed_size_targeted_and_complete(tmp_path):
    table = rows(1000)
    out, infos = write_all(tmp_path, [table])
    assert len(infos) > 1
    assert [info.path for info in infos] == [
        f"shards/src/part-00007-{i:03d}.parquet" for i in range(len(infos))
    ]
    assert sum(info.rows for info in infos) == 1000
    for info in infos:
        data = (tmp_path / info.path).read_bytes()
        assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
        assert info.bytes >= 20_000 or info is infos[-1]
    back = pa.concat_tables(pq.read_table(tmp_path / info.path) for info in infos)
    assert back.equals(table)
    assert infos[0].first_sample_id == "00000000" and infos[-1].last_sample_id == f"{999:08x}"
    # Files are written in place: nothing goes through a staging folder.
    assert out.list_files(shards.STAGING) == []
    assert shards.shard_name("rejects", "12345", 1000) == "rejects/part-12345-1000.parquet"


def test_a_subfolder_keeps_its_filesystem(tmp_path):
    uri = shards.OutputDir(f"file://{tmp_path}/out").subfolder("stats")
    assert uri.location == f"file://{tmp_path}/out/stats" and uri.root == f"{tmp_path}/out/stats"
    assert shards.OutputDir(str(tmp_path)).subfolder("stats").location == f"{tmp_path}/stats"


def test_delete_file_and_remove_empty_folders_touch_nothing_else(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("x")
    out = shards.OutputDir(str(tmp_path))
    assert not out.delete_file("a") and (tmp_path / "a").is_dir()
    assert not out.delete_file("missing")
    out.remove_empty_folders(["a", "a/b", "c", "missing"])
    assert not (tmp_path / "a").exists() and (tmp_path / "c" / "keep.txt").is_file()
    assert out.delete_file("c/keep.txt") and not (tmp_path / "c" / "keep.txt").exists()


@given(st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_bytes_do_not_depend_on_batching(tmp_path_factory, cuts):
    table = rows(700)
    reference_dir = tmp_path_factory.mktemp("whole")
    _, reference = write_all(reference_dir, [table])
    batches, start = [], 0
    for cut in cuts:
        batches.append(table.slice(start, cut))
        start += cut
    batches.append(table.slice(start))
    _, split = write_all(tmp_path_factory.mktemp("split"), batches)
    assert [(i.path, i.sha256, i.rows) for i in split] == [(i.path, i.sha256, i.rows) for i in reference]


def test_file_uri_and_atomic_json(tmp_path):
    out = shards.OutputDir(f"file://{tmp_path}/out")
    out.write_json("manifest.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "out" / "manifest.json").read_text() == '{\n "a": [\n  1,\n  2\n ],\n "b": 1\n}\n'
    assert out.read_json("manifest.json") == {"a": [1, 2], "b": 1}
    assert not (tmp_path / "out" / "manifest.json.tmp").exists()
    out.write_table("_staging/x.parquet", rows(3))
    assert out.read_table("_staging/x.parquet").num_rows == 3
    assert out.list_files("_staging") == ["_staging/x.parquet"]
    out.delete("_staging")
    assert not out.exists("_staging") and out.list_files("_staging") == []


def test_empty_writer_writes_nothing(tmp_path):
    _, infos = write_all(tmp_path, [])
    assert infos == []


@pytest.mark.parametrize(
    ("text", "size"),
    [(4096, 4096), ("4096", 4096), ("256MiB", 256 * 2**20), ("1.5 GB", 1_500_000_000), ("64kib", 65536)],
)
def test_parse_size(text, size):
    assert shards.parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["", "12 parsecs", "-5MB", 0, True, "MB", "1e400", "-1e400", "1e300GiB", math.inf, math.nan, -1.0, "nan",
     "1.2.3MB", "inf"],
)  # fmt: skip
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        shards.parse_size(text)


@pytest.mark.parametrize("value", [10**30, "1e30", "65GiB", 2**36 + 1])
def test_parse_size_has_a_ceiling(value):
    with pytest.raises(ValueError, match="more than the largest size allowed"):
        shards.parse_size(value, maximum=shards.MAX_SHARD_BYTES)
    assert shards.parse_size("64GiB", maximum=shards.MAX_SHARD_BYTES) == shards.MAX_SHARD_BYTES


def test_size_messages_quote_little_of_the_value():
    with pytest.raises(ValueError) as error:
        shards.parse_size("9" * 100_000 + "parsecs")
    assert len(str(error.value)) < 200


def test_output_locations_that_no_job_may_own(tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "images").mkdir(parents=True)
    (tmp_path / "link").symlink_to(corpus / "images")
    (tmp_path / "file.txt").write_text("x")
    inputs = [("sources[0].path", str(corpus))]
    refused = {
        str(corpus): "is the input folder",
        str(corpus / "out"): "lies inside the input folder",
        str(tmp_path): "holds the input folder",
        str(tmp_path / "link" / "out"): "(really " + str(corpus / "images" / "out") + ") lies inside",
        f"file://{corpus}/out": "lies inside the input folder",
        str(tmp_path / "file.txt"): "exists and is not a folder",
        "/": "is the root folder",
        os.path.expanduser("~"): "is a home folder",
        "/proc": "is the root of a file system",
    }
    for location, reason in refused.items():
        with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
            shards.check_output_location(location, inputs)
    shards.check_output_location(str(tmp_path / "out"), inputs)
    shards.check_output_location(str(tmp_path / "corpus-out"), inputs)  # a shared prefix is no overlap


def test_object_store_locations_compare_by_bucket_and_key():
    inputs = [("sources[1].images_root", "s3://bucket/data/images")]
    for location, reason in {
        "s3://bucket": "the root of a bucket",
        "s3://bucket/": "the root of a bucket",
        "s3://bucket/data": "holds the input folder s3://bucket/data/images \\(sources\\[1\\].images_root\\)",
        "s3://bucket/data/images/../images/out": "lies inside",
    }.items():
        with pytest.raises(ValueError, match=reason):
            shards.check_output_location(location, inputs)
    for location in ("s3://bucket/out", "s3://other/data/images", "gs://bucket/data/images/out"):
        shards.check_output_location(location, inputs)

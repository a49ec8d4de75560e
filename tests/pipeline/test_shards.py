"""pipeline.shards: deterministic size-targeted shards, checksums, atomic writes, URIs."""

from __future__ import annotations

import hashlib

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


def write_all(location, batches, target=20_000, group=64):
    out = shards.OutputDir(str(location))
    writer = shards.ShardWriter(out, "shards/src", SCHEMA, target_bytes=target, row_group_rows=group)
    for batch in batches:
        writer.write(batch)
    return out, writer.close()


def test_shards_are_checksummed_size_targeted_and_complete(tmp_path):
    table = rows(1000)
    out, infos = write_all(tmp_path, [table])
    assert len(infos) > 1
    assert [info.path for info in infos] == [f"shards/src/part-{i:05d}.parquet" for i in range(len(infos))]
    assert sum(info.rows for info in infos) == 1000
    for info in infos:
        data = (tmp_path / info.path).read_bytes()
        assert len(data) == info.bytes and hashlib.sha256(data).hexdigest() == info.sha256
        assert info.bytes >= 20_000 or info is infos[-1]
    back = pa.concat_tables(pq.read_table(tmp_path / info.path) for info in infos)
    assert back.equals(table)
    assert infos[0].first_sample_id == "00000000" and infos[-1].last_sample_id == f"{999:08x}"
    assert out.list_files(shards.STAGING) == []


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


@pytest.mark.parametrize("text", ["", "12 parsecs", "-5MB", 0, True, "MB"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        shards.parse_size(text)

"""One partition's work without Ray (`pipeline.partition`): final files written in place, the same bytes
whatever the batch size, counts that reconcile, dedup keys independent of batching."""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs.config import load_config
from jobs.pretokenize import make_worker
from pipeline.partition import Partition, PartitionWorker
from tests.jobs.test_pretokenize import file_hashes

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "jobs" / "examples"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    folder = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLES / "corpus", folder / "corpus")
    text = (EXAMPLES / "pretokenize.yaml").read_text().replace("../../out/example", "out")
    (folder / "job.yaml").write_text(text)
    return load_config(folder / "job.yaml")


def partitions(config):
    found = [(source, file) for source in config.sources for file in source.reader.files()]
    return [Partition(source.index, source.name, file, order) for order, (source, file) in enumerate(found)]


def worker_into(config, folder: Path, batch_rows: int) -> PartitionWorker:
    worker = make_worker(
        dataclasses.replace(config, output=dataclasses.replace(config.output, dir=str(folder)))
    )
    worker.batch_rows = batch_rows
    return worker


def test_partitions_write_the_same_files_whatever_the_batch_size(example, tmp_path):
    records = {}
    for batch_rows in (256, 3):
        worker = worker_into(example, tmp_path / str(batch_rows), batch_rows)
        records[batch_rows] = [worker.write(p).to_dict() for p in partitions(example)]
        for record in records[batch_rows]:
            record.pop("seconds")
    assert records[256] == records[3]
    assert file_hashes(tmp_path / "256") == file_hashes(tmp_path / "3")
    folder = tmp_path / "256"
    names = set(file_hashes(folder))
    for record in records[256]:
        totals = record["totals"]
        assert totals["read"] == totals["written"] + totals["rejected_total"] > 0
        assert sum(entry["rows"] for entry in record["shards"]) == totals["rows"]
        assert sum(entry["rows"] for entry in record["rejects"]) == totals["rejected_total"]
        prefix = f"part-{record['order']:05d}-"
        for entry in record["shards"] + record["rejects"] + record["measurements"]:
            assert entry["path"] in names and Path(entry["path"]).name.startswith(prefix)
            assert pq.read_metadata(folder / entry["path"]).num_rows == entry["rows"]
            assert hashlib.sha256((folder / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
    assert {entry["source"] for record in records[256] for entry in record["shards"]} == {
        source.name for source in example.sources
    }


def test_dedup_keys_do_not_depend_on_batching(example, tmp_path):
    keyed = [p for p in partitions(example) if example.sources[p.source_index].dedup is not None]
    assert keyed
    small = worker_into(example, tmp_path, 2)
    large = worker_into(example, tmp_path, 256)
    for partition in keyed:
        by_small, by_large = small.keys(partition), large.keys(partition)
        assert by_small.num_rows > 0 and by_small.equals(by_large)
        assert by_small["row"].to_pylist() == sorted(by_small["row"].to_pylist())
    assert not (tmp_path / "shards").exists()  # the key pass writes nothing

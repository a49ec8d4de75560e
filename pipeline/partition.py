"""One partition of the pretokenize job, start to finish, as plain functions (no Ray needed to test them).

A partition is one input file of one source, with its global `order` (config order, then file order).
`PartitionWorker` holds what is expensive to make (the tokenizer and the sequence builders) and turns a
partition into its final files, one record batch at a time, so that its memory is bounded by a batch
whatever the size of the file:

    reader batches → the source's filters → decontamination → sequences → the tile budget of packing
        → duplicates dropped → rows (or packed rows) → shards/<source>/part-<order>-<k>.parquet
        → reject rows → rejects/part-<order>-<k>.parquet
        → filter measurements → filters/part-<order>-<k>.parquet

`write` returns a `schemas.manifest.PartitionRecord`: the counts and the files written with their sizes
and sha256, all a driver needs for the manifest. `keys` is the first pass of deduplication: the same walk,
writing nothing but the dedup keys of the samples that would be written (`pipeline.dedup.sample_keys`,
their `row` counted across the whole partition, so that the keys do not depend on batching).

Everything here is a pure function of the config, the partition and the duplicates decided for it: the
same inputs give byte-identical files wherever and however often they are written.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from model_shapes import ModelShape
from pipeline import dedup, filters, packing, shards
from pipeline.dedup import DedupOptions
from pipeline.filters import Filters
from pipeline.ingest import Reader
from pipeline.sequence import SequenceBuilder, SequenceOptions
from pipeline.tokenizer import Tokenizer
from schemas import reject as reject_schema
from schemas import shard as shard_schema
from schemas.manifest import FileEntry, PartitionRecord, SourceTotals

__all__ = ["SHARD_ROW_GROUP_ROWS", "OutputPlan", "Partition", "PartitionWorker", "SourcePlan"]

SHARD_ROW_GROUP_ROWS = 64
"""Rows per Parquet row group of a shard: a row carries its images (about 100 KB for a web photo) and up to
max_seq_len ids, so a group is a few MB. The writer holds one group and the worker one reader batch of
`batch_rows` records, which is what bounds a worker's memory: a big input file costs no more than many
small ones (`bench/job.py`). Small groups also suit a training reader's random access."""


@dataclass(frozen=True)
class SourcePlan:
    """Everything the job knows about one configured source: its reader and how its samples are curated
    and built."""

    index: int
    name: str
    reader: Reader
    sequence: SequenceOptions
    filters: Filters
    dedup: DedupOptions | None


@dataclass(frozen=True)
class OutputPlan:
    """Where and how final files are written."""

    dir: str
    shard_target_bytes: int
    compression: str


@dataclass(frozen=True)
class Partition:
    """One input file of one source: the unit of parallel work and of resume."""

    source_index: int
    source: str
    file: str
    order: int  # position among all partitions (config, then file order): what "first copy" means

    @property
    def prefix(self) -> str:
        """The partition's part of its files' names: `part-<prefix>-<k>.parquet`."""
        return f"{self.order:05d}"


@dataclass
class _Step:
    """What one reader batch became."""

    samples: pa.Table  # the samples that became rows
    rows: pa.Table
    rejects: pa.Table
    measurements: pa.Table | None
    counts: SourceTotals
    decontaminated: dict[str, int]


class PartitionWorker:
    """Turns partitions into final files; cheap to make around a loaded tokenizer (the job makes one per
    Ray task, the tokenizer kept by the worker process)."""

    def __init__(
        self,
        sources: tuple[SourcePlan, ...],
        shape: ModelShape,
        tokenizer: Tokenizer,
        output: OutputPlan,
        packing_options: packing.PackingOptions | None,
        max_seq_len: int,
        pad_id: int,
        eval_index: Any = None,  # a `pipeline.decontam.EvalIndex`, or None
        batch_rows: int = 64,
    ) -> None:
        self.sources = sources
        self.shape = shape
        self.tokenizer = tokenizer
        self.output = output
        self.packing = packing_options
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.eval_index = eval_index
        self.batch_rows = batch_rows  # records per reader batch: with the row group, what bounds memory
        self.builders = [SequenceBuilder(tokenizer, shape, source.sequence) for source in sources]

    # --------------------------------------------------------------------------------------------
    # the two passes

    def keys(self, partition: Partition) -> pa.Table:
        """The dedup key rows (`pipeline.dedup.KEY_SCHEMA`) of the samples `write` would write (before
        duplicates are dropped); empty when the source does not dedup."""
        options = self.sources[partition.source_index].dedup
        if options is None:
            return dedup.KEY_SCHEMA.empty_table()
        tables, offset = [], 0
        for step in self._steps(partition):
            keys = dedup.sample_keys(step.samples, options, partition.order)
            if offset:
                at = keys.schema.get_field_index("row")
                keys = keys.set_column(at, keys.schema.field(at), pc.add(keys["row"], offset))
            tables.append(keys)
            offset += step.samples.num_rows
        return pa.concat_tables(tables) if tables else dedup.KEY_SCHEMA.empty_table()

    def write(self, partition: Partition, duplicates: pa.Table | None = None) -> PartitionRecord:
        """Write the partition's final files; `duplicates` (`pipeline.dedup.DUPLICATE_SCHEMA` rows of this
        partition) are dropped and rejected. Returns the partition's record."""
        started = time.perf_counter()
        source = self.sources[partition.source_index]
        out = shards.OutputDir(self.output.dir)
        folder = "shards/packed" if self.packing is not None else f"shards/{source.name}"
        row_writer = self._writer(out, folder, shard_schema.SCHEMA, partition, SHARD_ROW_GROUP_ROWS)
        reject_writer = self._writer(out, "rejects", reject_schema.SCHEMA, partition)
        measure_writer = (
            self._writer(out, "filters", filters.MEASUREMENT_SCHEMA, partition) if source.filters else None
        )
        packer = (
            packing.Packer(
                self.max_seq_len, self.pad_id, self.packing.buffer, max_tiles=self.packing.max_tiles
            )
            if self.packing is not None
            else None
        )
        dropped_keys = duplicates["key"] if duplicates is not None and duplicates.num_rows else None
        totals = SourceTotals()
        decontaminated: dict[str, int] = {}
        for step in self._steps(partition):
            rows = step.rows
            if dropped_keys is not None:
                rows = rows.filter(pc.invert(pc.fill_null(pc.is_in(rows["key"], dropped_keys), False)))
            step.counts.rows = rows.num_rows
            step.counts.tokens = _column_sum(rows, "seq_len")
            step.counts.image_tokens = _column_sum(rows, "num_image_tokens")
            step.counts.loss_tokens = _column_sum(rows, "num_loss_tokens")
            totals.add(step.counts)
            for name, count in step.decontaminated.items():
                decontaminated[name] = decontaminated.get(name, 0) + count
            reject_writer.write(step.rejects)
            if measure_writer is not None and step.measurements is not None:
                measure_writer.write(step.measurements)
            if packer is None:
                row_writer.write(rows)
            else:
                for row in rows.to_pylist():
                    made = packer.add(row)
                    if made:
                        row_writer.write(shard_schema.to_table(made))
        if dropped_keys is not None:
            duplicate_rejects = dedup.reject_rows(duplicates)
            reject_writer.write(duplicate_rejects)
            totals.written -= duplicate_rejects.num_rows
            totals.reject(duplicate_rejects["reason"].to_pylist())
        if packer is not None:
            row_writer.write(shard_schema.to_table(packer.flush()))
        return PartitionRecord(
            order=partition.order,
            source=source.name,
            file=partition.file,
            totals=totals,
            shards=[
                _entry(info, "packed" if packer is not None else source.name) for info in row_writer.close()
            ],
            rejects=[_entry(info) for info in reject_writer.close()],
            measurements=[_entry(info) for info in measure_writer.close()] if measure_writer else [],
            packing=packer.stats.to_dict() if packer is not None else None,
            decontamination=decontaminated,
            seconds=time.perf_counter() - started,
        )

    # --------------------------------------------------------------------------------------------
    # one batch at a time

    def _steps(self, partition: Partition) -> Iterator[_Step]:
        source = self.sources[partition.source_index]
        builder = self.builders[partition.source_index]
        for batch in source.reader.batches(partition.file, max_rows=self.batch_rows):
            counts = SourceTotals(read=batch.counts.read)
            samples = batch.samples
            rejects = [batch.rejects]
            measurements = None
            if source.filters:
                measured = filters.measure(samples, source.filters.quantities, self.shape, self.tokenizer)
                dropped = filters.dropped_by(source.filters, measured)
                rejects.append(filters.reject_rows(source.filters, samples, measured, dropped, source.name))
                measurements = filters.measurement_table(samples, measured, dropped)
                samples = samples.filter(pc.is_null(dropped))
            decontaminated: dict[str, int] = {}
            if self.eval_index is not None and samples.num_rows:
                samples, overlaps = self.eval_index.check(samples)
                rejects.append(overlaps)
                decontaminated = self.eval_index.counts(overlaps)
            rows, built_rejects = builder.build_table(samples)
            rejects.append(built_rejects)
            if self.packing is not None and self.packing.max_tiles is not None and rows.num_rows:
                rows, over_budget = packing.tile_budget_rejects(rows, self.packing.max_tiles)
                rejects.append(over_budget)
                built_rejects = pa.concat_tables([built_rejects, over_budget])
            if built_rejects.num_rows:
                failed = pc.is_in(samples["sample_id"], built_rejects["sample_id"])
                samples = samples.filter(pc.invert(pc.fill_null(failed, False)))
            rejected = pa.concat_tables(rejects)
            counts.reject(rejected["reason"].to_pylist())
            counts.written = counts.read - counts.rejected_total
            yield _Step(samples, rows, rejected, measurements, counts, decontaminated)

    def _writer(
        self,
        out: shards.OutputDir,
        folder: str,
        schema: pa.Schema,
        partition: Partition,
        row_group_rows: int = 1024,
    ) -> shards.ShardWriter:
        return shards.ShardWriter(
            out,
            folder,
            schema,
            self.output.shard_target_bytes,
            self.output.compression,
            row_group_rows=row_group_rows,
            prefix=partition.prefix,
        )


def _entry(info: shards.ShardInfo, source: str | None = None) -> FileEntry:
    return FileEntry(**info.to_dict(), source=source)


def _column_sum(table: pa.Table, column: str) -> int:
    return int(pc.sum(table.column(column)).as_py() or 0) if table.num_rows else 0

"""Output storage: an output folder on any `pyarrow.fs` filesystem, atomic writes, size-targeted
Parquet shards with checksums, and the manifest that commits them.

A job's output folder holds work in progress under `_staging/` (never trusted by a reader),
finished files, and `manifest.json`, written last and atomically: a reader trusts only files the
manifest lists, with their sizes and sha256. Writes are deterministic: the same rows in the same
order give byte-identical shard files (fixed row-group size, no timestamps, no absolute paths).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = ["MANIFEST", "STAGING", "OutputDir", "ShardInfo", "ShardWriter", "parse_size"]

MANIFEST = "manifest.json"
STAGING = "_staging"
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(value: int | str) -> int:
    """Bytes from an int or a string such as "256MiB", "1.5 GB", "4096"; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        number, unit = value, ""
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        number, unit = (float(digits) if digits else -1.0), text[len(digits) :]
        if unit not in _UNITS:
            raise ValueError(
                f"not a size: {value!r} (use bytes or a unit: {', '.join(u for u in _UNITS if u)})"
            )
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise ValueError(f"a size must be positive, got {value!r}")
    return size


class OutputDir:
    """A folder on a local path or a `pyarrow.fs` URI (file://, s3://, gs://), addressed by
    relative POSIX paths."""

    def __init__(self, location: str) -> None:
        self.location = location
        if "://" in location:
            self.fs, self.root = pafs.FileSystem.from_uri(location)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), posixpath.abspath(location)
        self.root = self.root.rstrip("/") or "/"

    def path(self, relative: str) -> str:
        """The filesystem path of `relative` inside the folder."""
        return posixpath.join(self.root, relative)

    def exists(self, relative: str) -> bool:
        """Whether a file or folder exists at `relative`."""
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def read_bytes(self, relative: str) -> bytes:
        """The whole content of a file."""
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file atomically: to a temporary name beside it, then moved into place."""
        self.fs.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        temporary = self.path(relative + ".tmp")
        with self.fs.open_output_stream(temporary) as stream:
            stream.write(data)
        self.fs.move(temporary, self.path(relative))

    def write_json(self, relative: str, value: Any) -> None:
        """Write canonical JSON (sorted keys, fixed indentation) atomically."""
        self.write_bytes(relative, canonical_json(value))

    def read_json(self, relative: str) -> Any:
        """Parse a JSON file."""
        return json.loads(self.read_bytes(relative))

    def write_table(self, relative: str, table: pa.Table, compression: str = "zstd") -> None:
        """Write one Parquet file atomically (used for staged partition outputs)."""
        self.fs.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        temporary = self.path(relative + ".tmp")
        pq.write_table(table, temporary, filesystem=self.fs, compression=compression)
        self.fs.move(temporary, self.path(relative))

    def read_table(self, relative: str) -> pa.Table:
        """Read one Parquet file."""
        return pq.read_table(self.path(relative), filesystem=self.fs)

    def list_files(self, relative: str) -> list[str]:
        """Relative paths of the files below `relative`, sorted; empty when it does not exist."""
        if not self.exists(relative):
            return []
        selector = pafs.FileSelector(self.path(relative), recursive=True)
        found = [
            posixpath.relpath(info.path, self.root)
            for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File
        ]
        return sorted(found)

    def delete(self, relative: str) -> None:
        """Remove a file or a whole folder if it exists."""
        info = self.fs.get_file_info(self.path(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(relative))


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and one-space indentation, ending in a newline."""
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


@dataclass(frozen=True)
class ShardInfo:
    """A finished shard as the manifest lists it."""

    path: str  # relative to the output folder, POSIX separators
    rows: int
    bytes: int
    sha256: str
    first_sample_id: str | None
    last_sample_id: str | None

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry."""
        return asdict(self)


class _HashingSink:
    """A write-only file object that forwards to a pyarrow stream and hashes and counts the bytes."""

    def __init__(self, stream: pa.NativeFile) -> None:
        self._stream = stream
        self.digest = hashlib.sha256()
        self.size = 0
        self.closed = False

    def write(self, data: bytes | memoryview) -> int:
        self.digest.update(data)
        self.size += len(data)
        self._stream.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self._stream.flush()

    def close(self) -> None:
        if not self.closed:
            self._stream.close()
            self.closed = True


class ShardWriter:
    """Writes rows of one schema into `folder/part-NNNNN.parquet` files of about `target_bytes`.

    Rows are grouped into row groups of exactly `row_group_rows` rows (the last may be shorter),
    and a file is closed once its size reaches the target, so file boundaries and bytes depend
    only on the rows and their order, never on how they were batched on the way in. Files go to
    `_staging/<folder>/` first and are moved into place by `close()`, which returns their
    manifest entries.
    """

    def __init__(
        self,
        out: OutputDir,
        folder: str,
        schema: pa.Schema,
        target_bytes: int,
        compression: str = "zstd",
        row_group_rows: int = 1024,
    ) -> None:
        self.out = out
        self.folder = folder
        self.schema = schema
        self.target_bytes = target_bytes
        self.compression = compression
        self.row_group_rows = row_group_rows
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink: _HashingSink | None = None
        self._rows = 0
        self._first: str | None = None
        self._last: str | None = None
        self._staged: list[ShardInfo] = []

    def write(self, rows: pa.Table | pa.RecordBatch | Iterable[pa.RecordBatch]) -> None:
        """Append rows (in order)."""
        batches = (
            rows.to_batches()
            if isinstance(rows, pa.Table)
            else [rows]
            if isinstance(rows, pa.RecordBatch)
            else rows
        )
        for batch in batches:
            if batch.num_rows == 0:
                continue
            if not batch.schema.equals(self.schema):
                batch = pa.Table.from_batches([batch]).cast(self.schema).to_batches()[0]
            self._pending.append(batch)
            self._pending_rows += batch.num_rows
            while self._pending_rows >= self.row_group_rows:
                self._write_group(self.row_group_rows)

    def close(self) -> list[ShardInfo]:
        """Flush, move the files into place and return their manifest entries, in order."""
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._finish_file()
        for info in self._staged:
            self.out.fs.create_dir(posixpath.dirname(self.out.path(info.path)), recursive=True)
            self.out.fs.move(self.out.path(posixpath.join(STAGING, info.path)), self.out.path(info.path))
        return list(self._staged)

    def _write_group(self, rows: int) -> None:
        table = pa.Table.from_batches(self._pending, schema=self.schema)
        group, rest = table.slice(0, rows), table.slice(rows)
        self._pending = rest.combine_chunks().to_batches() if rest.num_rows else []
        self._pending_rows = rest.num_rows
        if self._writer is None:
            self._open_file()
        assert self._writer is not None
        self._writer.write_table(group.combine_chunks(), row_group_size=rows)
        self._rows += group.num_rows
        if "sample_id" in self.schema.names:
            ids = group.column("sample_id")
            self._first = self._first if self._first is not None else ids[0].as_py()
            self._last = ids[-1].as_py()
        if self._sink is not None and self._sink.size >= self.target_bytes:
            self._finish_file()

    def _open_file(self) -> None:
        relative = posixpath.join(STAGING, self._current_name())
        self.out.fs.create_dir(posixpath.dirname(self.out.path(relative)), recursive=True)
        self._sink = _HashingSink(self.out.fs.open_output_stream(self.out.path(relative)))
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)

    def _finish_file(self) -> None:
        if self._writer is None or self._sink is None:
            return
        self._writer.close()
        self._sink.close()
        self._staged.append(
            ShardInfo(
                path=self._current_name(),
                rows=self._rows,
                bytes=self._sink.size,
                sha256=self._sink.digest.hexdigest(),
                first_sample_id=self._first,
                last_sample_id=self._last,
            )
        )
        self._writer, self._sink = None, None
        self._rows, self._first, self._last = 0, None, None

    def _current_name(self) -> str:
        return posixpath.join(self.folder, f"part-{len(self._staged):05d}.parquet")

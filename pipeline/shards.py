"""Output storage: an output folder on any `pyarrow.fs` filesystem, atomic writes, size-targeted
Parquet shards with checksums, the manifest that commits them, where an output folder may live, and
the lease that gives one job at a time the folder.

A job's output folder holds work in progress under `_staging/` (never trusted by a reader),
finished files, and `manifest.json`, written last and atomically: a reader trusts only files the
manifest lists, with their sizes and sha256. Writes are deterministic: the same rows in the same
order give byte-identical shard files (fixed row-group size, no timestamps, no absolute paths).

Ownership: a job deletes only files it wrote. Shard files are written in place under names fixed by
their partition (`ShardWriter`'s `prefix`), so that whoever owns the partition's staged record can tell
which files it may remove, and nothing else (`jobs.pretokenize`).
`check_output_location` refuses folders that no job may own (`/`, a home folder, a filesystem root,
an input folder or one that holds or lies inside an input).

The lease (`OutputLease`, the file `_lease.json` in the output folder) holds the owner (host, process id
and its start, the job's start time, a random id) and a heartbeat timestamp that a background thread
renews every `LEASE_TIMEOUT / 8` seconds. A second job on the folder fails at once naming the owner
(`LeaseHeld`). A lease whose heartbeat is older than `LEASE_TIMEOUT` (2 minutes), or whose process is
gone (same host, same kernel boot and pid namespace), is stale and is taken over. Locally the lease file
is created with `O_CREAT | O_EXCL`, and the heartbeat is rewritten in place through a descriptor opened
without `O_CREAT`, so that a lease removed by a takeover is never recreated by its old owner. Object
stores (`s3://`, `gs://`) have no exclusive create in `pyarrow.fs`: there the lease is written, read
back after `LEASE_SETTLE` seconds and kept only if it still holds this job's random id, and every
renewal reads it back first. Two jobs starting within the settle time can both pass that check; the
later write wins, and the other job finds a foreign id at its next renewal or at `check()`, which the job
calls before it commits, and stops (`LeaseLost`). Hosts that share a folder need clocks that agree to
well within `LEASE_TIMEOUT`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import pwd
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "LEASE",
    "LEASE_TIMEOUT",
    "MANIFEST",
    "MAX_SHARD_BYTES",
    "STAGING",
    "LeaseError",
    "LeaseHeld",
    "LeaseLost",
    "OutputDir",
    "OutputLease",
    "ShardInfo",
    "ShardWriter",
    "check_output_location",
    "parse_size",
    "shard_name",
]

MANIFEST = "manifest.json"
STAGING = "_staging"
MAX_SHARD_BYTES = 64 * 2**30
"""The largest `shard_target_bytes` accepted: beyond it a value is a mistake, not a shard size."""
_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(value: int | float | str, maximum: int | None = None) -> int:
    """Bytes from a number or a string such as "256MiB", "1.5 GB", "4096"; ValueError otherwise, also for
    values that are not finite (1e400, inf, nan), not positive, or above `maximum`."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {_short(value)}")
    units = ", ".join(u for u in _UNITS if u)
    if isinstance(value, int | float):
        number, unit = value, ""
    else:
        text = str(value).strip().lower().replace(" ", "")
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyz")
        unit = text[len(digits) :]
        if unit not in _UNITS:
            raise ValueError(f"not a size: {_short(value)} (use bytes or a unit: {units})")
        try:
            number = float(digits) if digits else -1.0
        except ValueError:
            raise ValueError(f"not a size: {_short(value)} (use bytes or a unit: {units})") from None
    scaled = number * _UNITS[unit]
    if isinstance(scaled, float) and not math.isfinite(scaled):
        raise ValueError(f"not a finite size: {_short(value)}")
    size = int(scaled)
    if size <= 0:
        raise ValueError(f"a size must be positive, got {_short(value)}")
    if maximum is not None and size > maximum:
        raise ValueError(f"{_short(value)} is more than the largest size allowed, {maximum} bytes")
    return size


def _short(value: object, limit: int = 60) -> str:
    """`repr(value)`, cut to `limit` characters: messages quote what the user wrote, not megabytes of it."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


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

    def subfolder(self, relative: str) -> OutputDir:
        """The folder `relative` inside this one, on the same filesystem (a URI stays a URI)."""
        return OutputDir(posixpath.join(self.location.rstrip("/"), relative))

    def exists(self, relative: str) -> bool:
        """Whether a file or folder exists at `relative`."""
        return self.fs.get_file_info(self.path(relative)).type != pafs.FileType.NotFound

    def read_bytes(self, relative: str) -> bytes:
        """The whole content of a file."""
        with self.fs.open_input_stream(self.path(relative)) as stream:
            return stream.read()

    def write_bytes(self, relative: str, data: bytes) -> None:
        """Write a file atomically: locally to a temporary name beside it, then moved into place; on an
        object store directly (a PUT is atomic there, and a move would copy)."""
        self.fs.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        if not self.is_local:
            with self.fs.open_output_stream(self.path(relative)) as stream:
                stream.write(data)
            return
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
        """Write one Parquet file atomically, as `write_bytes` does (used for staged dedup keys)."""
        self.fs.create_dir(posixpath.dirname(self.path(relative)), recursive=True)
        if not self.is_local:
            pq.write_table(table, self.path(relative), filesystem=self.fs, compression=compression)
            return
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
        """Remove a file or a whole folder if it exists (only for folders the caller owns entirely)."""
        info = self.fs.get_file_info(self.path(relative))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(relative))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(relative))

    def delete_file(self, relative: str) -> bool:
        """Remove one file if it exists (never a folder); whether there was one."""
        if self.fs.get_file_info(self.path(relative)).type != pafs.FileType.File:
            return False
        self.fs.delete_file(self.path(relative))
        return True

    def remove_empty_folders(self, relatives: Iterable[str]) -> None:
        """Remove each of these folders that exists and holds nothing, deepest first."""
        for relative in sorted(set(relatives), key=lambda r: (-r.count("/"), r)):
            path = self.path(relative)
            if self.fs.get_file_info(path).type != pafs.FileType.Directory:
                continue
            if not self.fs.get_file_info(pafs.FileSelector(path, recursive=False)):
                self.fs.delete_dir(path)

    @property
    def is_local(self) -> bool:
        """Whether the folder is on this machine's file system (a path or a file:// URI)."""
        return isinstance(self.fs, pafs.LocalFileSystem)


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON with sorted keys and one-space indentation, ending in a newline."""
    return (json.dumps(value, sort_keys=True, indent=1, ensure_ascii=False) + "\n").encode()


def config_identity(config: Any, tokenizer_sha256: str, shape_fingerprint: str) -> str:
    """A job's identity, its manifest's `config_sha256`: sha256 of the config as written (canonical JSON)
    with the identities of the tokenizer and model shape it resolved to (`tokenizer: default` names
    another file for another shape)."""
    resolved = {
        "config": config,
        "tokenizer_sha256": tokenizer_sha256,
        "shape_fingerprint": shape_fingerprint,
    }
    return hashlib.sha256(canonical_json(resolved)).hexdigest()


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


def shard_name(folder: str, prefix: str, index: int) -> str:
    """The relative path of a writer's `index`-th file: `folder/part-<prefix>-<index:03d>.parquet`."""
    return posixpath.join(folder, f"part-{prefix}-{index:03d}.parquet")


class ShardWriter:
    """Writes rows of one schema into `folder/part-<prefix>-NNN.parquet` files of about `target_bytes`.

    Rows are grouped into row groups of exactly `row_group_rows` rows (the last may be shorter),
    and a file is closed once its size reaches the target, so file boundaries and bytes depend
    only on the rows and their order, never on how they were batched on the way in. Files are written
    in place, streamed (one row group in memory), and hashed as they are written; `close()` returns
    their manifest entries. A file is only trusted once a manifest lists it with its size and sha256.
    """

    def __init__(
        self,
        out: OutputDir,
        folder: str,
        schema: pa.Schema,
        target_bytes: int,
        compression: str = "zstd",
        row_group_rows: int = 1024,
        prefix: str = "00000",
    ) -> None:
        self.out = out
        self.folder = folder
        self.schema = schema
        self.target_bytes = target_bytes
        self.compression = compression
        self.row_group_rows = row_group_rows
        self.prefix = prefix
        self._pending: list[pa.RecordBatch] = []
        self._pending_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._sink: _HashingSink | None = None
        self._rows = 0
        self._first: str | None = None
        self._last: str | None = None
        self._finished: list[ShardInfo] = []

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
        """Flush and finish the last file; returns the manifest entries of every file, in order."""
        if self._pending_rows:
            self._write_group(self._pending_rows)
        self._finish_file()
        return list(self._finished)

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
        path = self.out.path(self._current_name())
        self.out.fs.create_dir(posixpath.dirname(path), recursive=True)
        self._sink = _HashingSink(self.out.fs.open_output_stream(path))
        self._writer = pq.ParquetWriter(self._sink, self.schema, compression=self.compression)

    def _finish_file(self) -> None:
        if self._writer is None or self._sink is None:
            return
        self._writer.close()
        self._sink.close()
        self._finished.append(
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
        return shard_name(self.folder, self.prefix, len(self._finished))


# ------------------------------------------------------------------------------------------------
# where an output folder may live


def check_output_location(location: str, inputs: Iterable[tuple[str, str]] = ()) -> None:
    """Raise ValueError saying why `location` (an absolute local path or a URI) cannot be a job's output
    folder: `/`, a home folder, the root of a file system (a mount point) or of a bucket, an existing file,
    or a folder that is, holds or lies inside one of `inputs`, (label, location) pairs such as
    ("sources[0].path", its root). Local paths (and file:// URIs) are compared as real paths, symlinks
    resolved; other URIs by scheme, bucket and normalized key."""
    scope, parts = _place(location)
    shown = location
    if scope == "":
        real = "/" + "/".join(parts)
        if real != location:
            shown = f"{location} (really {real})"
        if not parts:
            raise ValueError(f"{shown} is the root folder: choose a folder of the job's own")
        if real in _home_folders():
            raise ValueError(f"{shown} is a home folder: choose a folder of the job's own inside it")
        if os.path.ismount(real):
            raise ValueError(
                f"{shown} is the root of a file system (a mount point): choose a folder inside it"
            )
        if os.path.exists(real) and not os.path.isdir(real):
            raise ValueError(f"{shown} exists and is not a folder")
    elif len(parts) <= 1:
        raise ValueError(f"{location} is the root of a bucket: choose a folder (a prefix) inside it")
    for label, where in inputs:
        other_scope, other = _place(where)
        if other_scope != scope:
            continue
        if other == parts:
            relation = "is"
        elif parts[: len(other)] == other:
            relation = "lies inside"
        elif other[: len(parts)] == parts:
            relation = "holds"
        else:
            continue
        raise ValueError(
            f"{shown} {relation} the input folder {where} ({label}): the job owns every file it lists in "
            "its output folder, so the two must not overlap; choose a folder outside every input"
        )


def _place(location: str) -> tuple[str, tuple[str, ...]]:
    """(scheme, path components) of a location: ("", real path components) for local paths and file://."""
    if "://" in location:
        split = urlsplit(location)
        if split.scheme != "file":
            key = posixpath.normpath("/" + unquote(split.netloc) + "/" + unquote(split.path))
            return f"{split.scheme}://", tuple(part for part in key.split("/") if part)
        location = unquote(split.path)
    return "", tuple(part for part in os.path.realpath(location).split("/") if part)


def _home_folders() -> set[str]:
    """The real paths of this user's home and of every home folder the user database lists."""
    homes = {os.path.expanduser("~"), *(entry.pw_dir for entry in pwd.getpwall())}
    return {os.path.realpath(home) for home in homes if home}


# ------------------------------------------------------------------------------------------------
# the lease: one job at a time on an output folder

LEASE = "_lease.json"
LEASE_TIMEOUT = 120.0
"""Seconds after its last heartbeat when a lease is stale and may be taken over."""
LEASE_SETTLE = 1.0
"""Seconds an object-store lease waits before reading itself back (no exclusive create there)."""
_LEASE_BYTES = 1024
"""A lease record is padded to a fixed length, so that rewriting it in place never leaves a shorter record
followed by the end of the longer one."""


class LeaseError(RuntimeError):
    """The output folder's lease: another job holds it, or this job lost it; the message names the owner."""


class LeaseHeld(LeaseError):
    """Another job that is still alive holds the output folder."""


class LeaseLost(LeaseError):
    """The lease was taken over or removed while the job ran: it must not commit."""


class OutputLease:
    """An exclusive lease on an output folder (see the module docstring): acquired on `with` entry
    (`LeaseHeld` when a live job holds it; a stale one is taken over and `took_over` says why), renewed
    by a daemon thread every `renew_every` seconds, confirmed by `check()` before a commit, and released
    on exit, also after an error. `exclusive_create` (default: whether the folder is local) chooses
    between `O_CREAT | O_EXCL` and the object-store write-and-read-back; `clock` gives the timestamps."""

    def __init__(
        self,
        out: OutputDir,
        timeout: float = LEASE_TIMEOUT,
        renew_every: float | None = None,
        settle: float = LEASE_SETTLE,
        exclusive_create: bool | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.out = out
        self.path = out.path(LEASE)
        self.timeout = timeout
        self.renew_every = timeout / 8 if renew_every is None else renew_every
        self.settle = settle
        self.exclusive_create = out.is_local if exclusive_create is None else exclusive_create
        self.clock = clock
        self.took_over: str | None = None
        self.renewed = threading.Event()  # set by the heartbeat thread after each renewal
        now = clock()
        self.owner: dict[str, Any] = {
            "vl2prep_lease": 1,
            "id": uuid.uuid4().hex,
            "host": socket.gethostname(),
            "machine": _machine_id(),
            "pid": os.getpid(),
            "process_start": _process_stat(os.getpid())[0],
            "started": now,
            "heartbeat": now,
        }
        self._size = _LEASE_BYTES
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lost: str | None = None
        self._held = False

    def __enter__(self) -> OutputLease:
        self.acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lease, or raise `LeaseHeld` naming the live owner; start the heartbeat thread."""
        self.out.fs.create_dir(self.out.root, recursive=True)
        for _ in range(3):
            if self._create():
                break
            raw, age = self._read()
            if raw is None:
                continue  # removed since the create failed: try again
            record = _parse_lease(raw)
            stale = self._stale(record, age)
            if stale is None:
                raise LeaseHeld(self._held_message(record, age))
            self._take_over(raw)
            owner = _describe(record, self.clock()) if record is not None else "an unknown job"
            self.took_over = f"took over the stale lease of {owner}: {stale}"
        else:
            raise LeaseHeld(
                f"{self.out.location}: other jobs are taking the lease of this output folder at the same "
                "time; run one job at a time"
            )
        self._held = True
        self._thread = threading.Thread(target=self._heartbeat, name="vl2prep-lease", daemon=True)
        self._thread.start()

    def renew(self) -> None:
        """Write a new heartbeat, after checking that the lease file still names this job (`LeaseLost`
        otherwise). Locally the file is rewritten in place through a descriptor opened without O_CREAT."""
        with self._lock:
            now = self.clock()
            data = self._encode({**self.owner, "heartbeat": now})
            if self.exclusive_create:
                try:
                    fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise LeaseLost(self._lost_message(None)) from None
                try:
                    self._confirm(os.pread(fd, 1 << 16, 0))
                    os.pwrite(fd, data, 0)
                finally:
                    os.close(fd)
            else:
                raw, _ = self._read()
                self._confirm(raw)
                with self.out.fs.open_output_stream(self.path) as stream:
                    stream.write(data)
            self.owner["heartbeat"] = now

    def check(self) -> None:
        """Before a commit: `LeaseLost` if the heartbeat thread found the lease gone, else renew it now."""
        if self._lost is not None:
            raise LeaseLost(self._lost)
        self.renew()

    def release(self) -> None:
        """Stop the heartbeat and remove the lease file if it still names this job."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self._held:
            return
        self._held = False
        # Release runs on the way out of errors too: a storage error here must not hide the first one, and
        # a lease left behind only waits to become stale.
        try:
            raw, _ = self._read()
            if raw is not None and (_parse_lease(raw) or {}).get("id") == self.owner["id"]:
                self.out.fs.delete_file(self.path)
        except OSError:
            pass

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew()
            except LeaseLost as error:
                self._lost = str(error)
                return
            except OSError:
                continue  # storage trouble may pass; check() reads the lease again before any commit
            self.renewed.set()

    def _encode(self, record: dict[str, Any]) -> bytes:
        data = json.dumps(record, sort_keys=True).encode()
        self._size = max(self._size, -(-(len(data) + 64) // _LEASE_BYTES) * _LEASE_BYTES)
        return data.ljust(self._size)

    def _create(self) -> bool:
        """Create the lease file with this job's record; False when one exists (or, on an object store,
        when another job's record replaced this one's before the read-back)."""
        data = self._encode(self.owner)
        if self.exclusive_create:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                return False
            try:
                os.write(fd, data)
                os.fsync(fd)
            except BaseException:
                os.close(fd)
                os.unlink(self.path)
                raise
            os.close(fd)
            return True
        if self.out.exists(LEASE):
            return False
        with self.out.fs.open_output_stream(self.path) as stream:
            stream.write(data)
        time.sleep(self.settle)  # a concurrent writer's record lands within this time, then wins or loses
        raw, _ = self._read()
        return raw is not None and (_parse_lease(raw) or {}).get("id") == self.owner["id"]

    def _read(self) -> tuple[bytes | None, float]:
        """(the lease file's bytes, seconds since it was modified), or (None, 0) when there is none."""
        if self.exclusive_create:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except FileNotFoundError:
                return None, 0.0
            try:
                return os.read(fd, 1 << 16), time.time() - os.fstat(fd).st_mtime
            finally:
                os.close(fd)
        info = self.out.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None, 0.0
        age = time.time() - info.mtime.timestamp() if info.mtime is not None else 0.0
        with self.out.fs.open_input_stream(self.path) as stream:
            return stream.read(1 << 16), age

    def _stale(self, record: dict[str, Any] | None, age: float) -> str | None:
        """Why a lease is stale, or None while its owner may be alive."""
        if record is None:
            if age > self.timeout:
                return f"its file is unreadable and was last written {age:.0f} s ago"
            return None
        silent = self.clock() - record["heartbeat"]
        if silent > self.timeout:
            return f"its last heartbeat was {silent:.0f} s ago (a lease is stale after {self.timeout:.0f} s)"
        if self._process_gone(record):
            return f"its process {record.get('pid')} on {record.get('host')} is no longer running"
        return None

    def _process_gone(self, record: dict[str, Any]) -> bool:
        """Whether the owner ran on this host (same kernel boot and pid namespace) and its process has
        ended (or its pid now belongs to another process)."""
        if record.get("host") != self.owner["host"] or record.get("machine") is None:
            return False
        if record.get("machine") != self.owner["machine"] or not isinstance(record.get("pid"), int):
            return False
        try:
            os.kill(record["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            pass  # another user's live process
        start, state = _process_stat(record["pid"])
        if state == "Z":
            return True
        return record.get("process_start") is not None and start != record["process_start"]

    def _take_over(self, judged: bytes) -> None:
        """Remove the stale lease whose bytes were `judged`, unless it changed meanwhile (a live owner
        renewed it, or another job took it over first): then put it back and raise `LeaseHeld`."""
        if not self.exclusive_create:
            raw, _ = self._read()
            if raw == judged:
                self.out.fs.delete_file(self.path)
            return
        aside = f"{self.path}.stale-{self.owner['id']}"
        try:
            os.rename(self.path, aside)  # atomic: of several jobs taking over, one moves it
        except FileNotFoundError:
            return
        with open(aside, "rb") as moved_file:
            moved = moved_file.read(1 << 16)
        if moved == judged:
            os.unlink(aside)
            return
        try:
            os.link(aside, self.path)  # back in place, unless a third job created one meanwhile
        except FileExistsError:
            pass  # its owner finds a foreign id at its next renewal and stops before committing
        os.unlink(aside)
        raise LeaseHeld(self._held_message(_parse_lease(moved), 0.0))

    def _confirm(self, raw: bytes | None) -> None:
        record = _parse_lease(raw) if raw is not None else None
        if record is None or record.get("id") != self.owner["id"]:
            raise LeaseLost(self._lost_message(record))

    def _held_message(self, record: dict[str, Any] | None, age: float) -> str:
        owner = (
            _describe(record, self.clock())
            if record is not None
            else f"an unknown job (its lease file is unreadable, last written {age:.0f} s ago)"
        )
        return (
            f"{self.out.location} is in use by {owner}; its lease ({LEASE}) becomes stale, and another job "
            f"may take it over, {self.timeout:.0f} s after its last heartbeat"
        )

    def _lost_message(self, record: dict[str, Any] | None) -> str:
        now = (
            f"now names {_describe(record, self.clock())}"
            if record is not None
            else "was removed or replaced"
        )
        return (
            f"{self.out.location}: this job lost its lease on the output folder ({LEASE} {now}); it stops "
            "without committing: rerun once the other job is done"
        )


def _parse_lease(raw: bytes) -> dict[str, Any] | None:
    """The lease record, or None when the bytes are not one (being written, or not a vl2prep lease)."""
    try:
        record = json.loads(raw.decode())
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        return None
    if not isinstance(record.get("heartbeat"), int | float) or isinstance(record.get("heartbeat"), bool):
        return None
    return record


def _describe(record: dict[str, Any], now: float) -> str:
    started = record.get("started")
    when = (
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(started))
        if isinstance(started, int | float)
        else "at an unknown time"
    )
    return (
        f"the job of host {record.get('host')}, pid {record.get('pid')}, started {when} "
        f"(id {str(record.get('id'))[:8]}, last heartbeat {now - record['heartbeat']:.0f} s ago)"
    )


def _machine_id() -> str | None:
    """This kernel boot and pid namespace (None where /proc does not tell): pids compare only within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as boot:
            return f"{boot.read().strip()}:{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:
        return None


def _process_stat(pid: int) -> tuple[int | None, str | None]:
    """(start time in clock ticks since boot, state letter) of a process from /proc, or (None, None)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None, None
    try:
        return int(fields[19]), fields[0].decode()
    except (IndexError, ValueError):
        return None, None

"""The output's manifest and the partition records it is made of: typed, versioned, checked when read.

`OUT/manifest.json` commits an output: a reader trusts only the files it lists, with their sizes and
sha256. It is written last, atomically, by the job's driver from the small records its workers return
(`PartitionRecord`, one per input file): no row and no image byte passes through the driver.

`MANIFEST_VERSION` history:
- 2: `config_sha256` covers the config alone;
- 3: it covers the tokenizer and model shape the config resolved to;
- 4: workers write the final files, named by partition (`shards/<source>/part-<partition>-<k>.parquet`,
  `rejects/…`, `filters/…`); packing is per partition and its statistics are per source
  (`packing.sources`); optional `decontamination` counts.

Readers of older versions (`verify`, the loader, stats) only need `shards`, `rejects`, `sources` and the
identity fields, which keep their meaning in every version.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "MANIFEST_VERSION",
    "OUTPUT_FILE",
    "FileEntry",
    "Manifest",
    "PartitionRecord",
    "SourceTotals",
    "check_manifest",
]

MANIFEST_VERSION = 4
OUTPUT_FILE = re.compile(
    r"(shards/[A-Za-z0-9][A-Za-z0-9._-]*|rejects|filters)/part-[0-9]{5,}(-[0-9]{3,})?\.parquet"
)
"""The only paths a manifest may list: shards, rejects, measurements (`part-NNNNN.parquet` up to version 3,
`part-<partition>-<k>.parquet` from version 4)."""


@dataclass(frozen=True)
class FileEntry:
    """A finished Parquet file as the manifest lists it (`source` only for shards)."""

    path: str
    bytes: int
    rows: int = 0
    sha256: str = ""  # checked by `vl2prep verify`; absent only in entries this code never writes
    first_sample_id: str | None = None
    last_sample_id: str | None = None
    source: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The manifest entry (shards carry their source first, as earlier versions wrote it)."""
        entry = asdict(self)
        source = entry.pop("source")
        return {"source": source, **entry} if source is not None else entry

    @classmethod
    def from_dict(cls, entry: object) -> FileEntry:
        """An entry read back; ValueError naming what is wrong."""
        if not isinstance(entry, dict):
            raise ValueError(f"a file entry must be a mapping, not {type(entry).__name__}")
        path = entry.get("path")
        if not isinstance(path, str) or not OUTPUT_FILE.fullmatch(path):
            raise ValueError(f"it lists {str(path)[:200]!r}, not a file vl2prep writes")
        if not isinstance(entry.get("bytes"), int) or not isinstance(entry.get("rows", 0), int):
            raise ValueError(f"its entry of {path} has no size in bytes")
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in entry.items() if key in known})


@dataclass
class SourceTotals:
    """What one source gave: records read, samples written, rows, rejects by reason, tokens.

    `read == written + sum(rejected.values())` holds for every source of a finished job."""

    read: int = 0
    written: int = 0
    rows: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    tokens: int = 0
    image_tokens: int = 0
    loss_tokens: int = 0

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def reject(self, reasons: list[str]) -> None:
        """Count reject rows by reason."""
        for reason in reasons:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def add(self, other: SourceTotals) -> None:
        """Add another partition's totals."""
        self.read += other.read
        self.written += other.written
        self.rows += other.rows
        self.tokens += other.tokens
        self.image_tokens += other.image_tokens
        self.loss_tokens += other.loss_tokens
        for reason, count in other.rejected.items():
            self.rejected[reason] = self.rejected.get(reason, 0) + count

    def check(self, source: str) -> None:
        """RuntimeError when the counts do not reconcile: a record lost or counted twice is a bug."""
        if self.read != self.written + self.rejected_total:
            raise RuntimeError(
                f"source {source}: counts do not reconcile: read {self.read} != written {self.written} "
                f"+ rejected {self.rejected_total}"
            )

    def to_dict(self) -> dict[str, Any]:
        """The manifest's `sources.<name>` entry."""
        return {
            "read": self.read,
            "written": self.written,
            "rows": self.rows,
            "rejected": dict(sorted(self.rejected.items())),
            "rejected_total": self.rejected_total,
            "tokens": self.tokens,
            "image_tokens": self.image_tokens,
            "loss_tokens": self.loss_tokens,
        }

    @classmethod
    def from_dict(cls, entry: dict[str, Any]) -> SourceTotals:
        return cls(
            read=entry["read"],
            written=entry["written"],
            rows=entry["rows"],
            rejected=dict(entry["rejected"]),
            tokens=entry["tokens"],
            image_tokens=entry["image_tokens"],
            loss_tokens=entry["loss_tokens"],
        )


@dataclass
class PartitionRecord:
    """What a worker did with one partition (one input file): its totals and the files it wrote, in order.

    Small (a few hundred bytes plus one entry per file): it is the worker's return value and, staged as
    `_staging/done/<partition>.json`, the mark that the partition is finished."""

    order: int
    source: str
    file: str
    totals: SourceTotals
    shards: list[FileEntry]
    rejects: list[FileEntry]
    measurements: list[FileEntry]
    packing: dict[str, Any] | None = None  # `pipeline.packing.PackingStats.to_dict()` with packing on
    decontamination: dict[str, int] = field(default_factory=dict)  # overlaps per evaluation set
    seconds: float = 0.0  # worker time (not in the manifest: it varies)
    node: str = ""  # the Ray node that wrote it (not in the manifest: it varies)
    peak_rss_mib: float = 0.0  # the writing process's peak resident memory so far (not in the manifest)

    def to_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "source": self.source,
            "file": self.file,
            "totals": self.totals.to_dict(),
            "shards": [entry.to_dict() for entry in self.shards],
            "rejects": [entry.to_dict() for entry in self.rejects],
            "measurements": [entry.to_dict() for entry in self.measurements],
            "packing": self.packing,
            "decontamination": self.decontamination,
            "seconds": self.seconds,
            "node": self.node,
            "peak_rss_mib": self.peak_rss_mib,
        }

    @classmethod
    def from_dict(cls, record: dict[str, Any]) -> PartitionRecord:
        return cls(
            order=record["order"],
            source=record["source"],
            file=record["file"],
            totals=SourceTotals.from_dict(record["totals"]),
            shards=[FileEntry.from_dict(entry) for entry in record["shards"]],
            rejects=[FileEntry.from_dict(entry) for entry in record["rejects"]],
            measurements=[FileEntry.from_dict(entry) for entry in record["measurements"]],
            packing=record.get("packing"),
            decontamination=dict(record.get("decontamination") or {}),
            seconds=record.get("seconds", 0.0),
            node=record.get("node", ""),
            peak_rss_mib=record.get("peak_rss_mib", 0.0),
        )


@dataclass
class Manifest:
    """`OUT/manifest.json` (module docstring)."""

    schema_versions: dict[str, int]
    code: dict[str, str]
    config: Any
    config_sha256: str
    model_shape: dict[str, str]
    tokenizer: dict[str, Any]
    max_seq_len: int
    packing: dict[str, Any] | None
    shards: list[FileEntry]
    rejects: list[FileEntry]
    filters: dict[str, Any]  # {"thresholds": {source: {...}}, "measurements": [FileEntry, ...]}
    dedup: dict[str, Any] | None
    sources: dict[str, SourceTotals]
    decontamination: dict[str, int] | None = None
    version: int = MANIFEST_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "vl2prep_manifest": self.version,
            "schema_versions": self.schema_versions,
            "code": self.code,
            "config": self.config,
            "config_sha256": self.config_sha256,
            "model_shape": self.model_shape,
            "tokenizer": self.tokenizer,
            "max_seq_len": self.max_seq_len,
            "packing": self.packing,
            "shards": [entry.to_dict() for entry in self.shards],
            "rejects": [entry.to_dict() for entry in self.rejects],
            "filters": {
                "thresholds": self.filters["thresholds"],
                "measurements": [entry.to_dict() for entry in self.filters["measurements"]],
            },
            "dedup": self.dedup,
            "decontamination": self.decontamination,
            "sources": {name: totals.to_dict() for name, totals in self.sources.items()},
        }

    def files(self) -> list[FileEntry]:
        return [*self.shards, *self.rejects, *self.filters["measurements"]]


def check_manifest(manifest: object) -> list[FileEntry]:
    """The file entries of a manifest read back as JSON (any version), in order; ValueError saying what is
    wrong when it is not a vl2prep manifest whose entries are all files vl2prep writes."""
    if not isinstance(manifest, dict) or "vl2prep_manifest" not in manifest:
        raise ValueError("it is not a vl2prep manifest (no vl2prep_manifest key)")
    filters_section = manifest.get("filters") or {}
    groups = [manifest.get("shards"), manifest.get("rejects"), filters_section.get("measurements", [])]
    entries = []
    for group in groups:
        if not isinstance(group, list):
            raise ValueError("its shards, rejects and filters.measurements must be lists")
        entries += [FileEntry.from_dict(entry) for entry in group]
    return entries

"""Exact deduplication of samples: hashed keys per sample, duplicates found per hash bucket.

A source that sets `dedup` drops every sample whose content, images or normalized text an earlier
sample already had. The work splits the way a job can spread it: every partition (one input file,
with a global index in config and file order) computes key rows for its samples (`sample_keys`);
the key rows are hash-partitioned into buckets (`bucket_of`); each bucket finds its duplicates on
its own (`find_duplicates`); the duplicates are grouped by partition again, reduced to one per
sample (`one_per_sample`) and turned into reject rows (`reject_rows`).

Key kinds, in the fixed order of `KINDS`:

- `sample`: the exact content: the sample's `kind`; every content segment's turn, role, type and
  text exactly, each image segment by its image's identity (below); every region's phrase, image
  index and boxes; all of it as one compact JSON document. Not `source`, `key`, `meta` or
  `sample_id`: two records with the same content are duplicates wherever they come from.
- `image`: the ordered list of the sample's image identities. A sample without images has no
  image key.
- `text`: the sample's text segments in order, each normalized by `normalize_text` (Unicode NFKC,
  casefold, whitespace runs collapsed to one space, stripped), with its role (`user`, `assistant`,
  `system`; empty for documents), so that the same words said by another speaker differ. Segments
  that normalize to nothing are left out; a sample with no text left has no text key. Segments
  stay apart (text split around an image is not rejoined).

An image's identity depends on `image_hash`:

- `"bytes"` (the default): `bytes:` + sha256 of the encoded file exactly as read.
- `"pixels"`: `pixels:` + sha256 of the image as the tiler sees it: `to_rgb(Image.open(bytes))`,
  its width and height (4 bytes each, big-endian) followed by its RGB bytes. The same picture saved
  again with other metadata or another PNG compression level has the same identity. Bytes that do
  not decode fall back to their `bytes:` identity.
- An image whose bytes are null is identified by its stored path: `path:` + path (empty when null),
  in both modes; it never matches an image that has bytes.

Identities carry their mode, so sources that hash images differently never match each other on
`image` or `sample` keys.

Key hash: BLAKE2b with a 16-byte digest over the UTF-8 of the kind and the key's parts (the JSON
document; the image identities; role and normalized text of each segment), each part escaped (a backslash
doubled, a NUL written as backslash zero) and the parts joined by NUL. No part can contain the separator, so
the encoding is unambiguous: equal hashes mean equal keys (up to a 2^-128 collision).

Scope: with `across_sources` (the default) a key's scope is `""`: it is compared with the keys of
every source that dedups on the same kind with `across_sources` too. Otherwise the scope is the
source's name and keys are compared within that source only.

Order and the kept copy: each key row carries `(partition, row)`, the partition's global index and
the sample's row in its partition's sample table. In a group of equal `(kind, scope, hash)` the row
with the smallest `(partition, row)` is kept and all the others are duplicates of it. A sample is
dropped when any of its keys is not the first of its group, even if that first holder is itself
dropped for another kind: every decision depends on the key rows alone, not on how they were
partitioned or bucketed, so the result is deterministic. A dropped sample is reported once, for the
first of its duplicate kinds in `KINDS` order, naming the first holder of that key as the kept copy.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from pipeline.errors import ConfigError
from pipeline.tiling import to_rgb
from schemas import reject as reject_schema

__all__ = [
    "DUPLICATE_SCHEMA",
    "IMAGE_HASHES",
    "KEY_SCHEMA",
    "KINDS",
    "DedupOptions",
    "bucket_of",
    "find_duplicates",
    "normalize_text",
    "one_per_sample",
    "parse_dedup",
    "reject_rows",
    "sample_keys",
]

KINDS = ("sample", "image", "text")
"""The key kinds, in the order in which a dropped sample's reason is chosen."""

IMAGE_HASHES = ("bytes", "pixels")

HASH_BYTES = 16

KEY_SCHEMA = pa.schema(
    [
        pa.field("kind", pa.string(), nullable=False),  # one of KINDS
        pa.field("scope", pa.string(), nullable=False),  # "" across sources, else the source name
        pa.field("hash", pa.binary(HASH_BYTES), nullable=False),  # BLAKE2b-128 of the key (module docstring)
        pa.field("partition", pa.int64(), nullable=False),  # global index of the sample's partition
        pa.field("row", pa.int64(), nullable=False),  # the sample's row in its partition's sample table
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
    ]
)

DUPLICATE_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int64(), nullable=False),  # the duplicate's partition and row
        pa.field("row", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # the key kind it duplicates
        pa.field("kept_source", pa.string(), nullable=False),  # the first holder of that key
        pa.field("kept_key", pa.string(), nullable=False),
        pa.field("kept_sample_id", pa.string(), nullable=False),
    ]
)

_JSON = json.JSONEncoder(separators=(",", ":"))

_DETAIL_NOUN = {"sample": "content", "image": "image", "text": "text"}


@dataclass(frozen=True)
class DedupOptions:
    """A source's `dedup` setting: the key kinds to drop duplicates by, the scope, the image identity."""

    by: tuple[str, ...]
    across_sources: bool = True
    image_hash: str = "bytes"

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.by if kind not in KINDS]
        if unknown or not self.by:
            raise ValueError(f"DedupOptions.by must list some of {', '.join(KINDS)}, not {self.by!r}")
        if self.image_hash not in IMAGE_HASHES:
            raise ValueError(f"DedupOptions.image_hash must be one of {', '.join(IMAGE_HASHES)}")


def parse_dedup(value: object, where: str) -> DedupOptions | None:
    """A source's `dedup` value as options, or None when it asks for nothing (absent, null, `[]`).

    The value is a list of kinds (shorthand for `{by: [...]}`) or a mapping with `by` (required),
    `across_sources` (true or false, default true) and `image_hash` (`bytes` or `pixels`, default
    `bytes`). `where` is the key path of the value (`sources[1].dedup`); a `ConfigError` names the
    key to change first.
    """
    if value is None:
        return None
    if isinstance(value, list | tuple):
        value = {"by": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: must be a list of kinds ({', '.join(KINDS)}) or a mapping with "
            f"by, across_sources, image_hash; not {value!r}"
        )
    known = ("by", "across_sources", "image_hash")
    for name in value:
        if name not in known:
            raise ConfigError(f"{where}.{name}: unknown option; known: {', '.join(known)}")
    if "by" not in value:
        raise ConfigError(f"{where}.by: required (a list of {', '.join(KINDS)})")
    by = value["by"]
    if not isinstance(by, list | tuple):
        raise ConfigError(f"{where}.by: must be a list of {', '.join(KINDS)}, not {by!r}")
    for position, kind in enumerate(by):
        if kind not in KINDS:
            raise ConfigError(f"{where}.by: {kind!r} is not one of {', '.join(KINDS)}")
        if kind in by[:position]:
            raise ConfigError(f"{where}.by: {kind!r} is listed twice")
    if not by:
        return None
    across_sources = value.get("across_sources", True)
    if not isinstance(across_sources, bool):
        raise ConfigError(f"{where}.across_sources: must be true or false, not {across_sources!r}")
    image_hash = value.get("image_hash", "bytes")
    if image_hash not in IMAGE_HASHES:
        raise ConfigError(f"{where}.image_hash: {image_hash!r} is not one of {', '.join(IMAGE_HASHES)}")
    return DedupOptions(
        by=tuple(kind for kind in KINDS if kind in by), across_sources=across_sources, image_hash=image_hash
    )


def normalize_text(text: str) -> str:
    """Text as the `text` key compares it: NFKC, casefolded, whitespace runs as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def sample_keys(samples: pa.Table, options: DedupOptions, partition: int) -> pa.Table:
    """The key rows (`KEY_SCHEMA`) of a partition's samples, in (row, `KINDS` order).

    One row per sample and kind in `options.by` for which the sample has a key; `row` is the
    sample's index in `samples`, `partition` the partition's global index.
    """
    content = _Flat(samples["content"])
    image_offsets, identities = [0] * (samples.num_rows + 1), []
    if "sample" in options.by or "image" in options.by:
        images = _Flat(samples["images"])
        image_offsets = images.offsets
        identities = _image_identities(images.fields[0], images.fields[1], options.image_hash)
    rows: list[int] = []
    kinds: list[str] = []
    hashes: list[bytes] = []
    for kind in KINDS:
        if kind not in options.by:
            continue
        if kind == "sample":
            found = _sample_hashes(samples, content, image_offsets, identities)
        elif kind == "image":
            found = _image_hashes(image_offsets, identities)
        else:
            found = _text_hashes(content)
        rows += found[0]
        hashes += found[1]
        kinds += [kind] * len(found[0])
    # Kinds were added in KINDS order, so a stable sort by row gives (row, kind order).
    order = pa.array(np.argsort(np.array(rows, np.int64), kind="stable"))
    indices = pa.array(rows, pa.int64()).take(order)
    return pa.table(
        [
            pa.array(kinds, pa.string()).take(order),
            pa.array([""] * len(rows), pa.string())
            if options.across_sources
            else pc.take(samples["source"], indices),
            pa.array(hashes, pa.binary(HASH_BYTES)).take(order),
            pa.array(np.full(len(rows), partition, np.int64)),
            indices,
            pc.take(samples["source"], indices),
            pc.take(samples["key"], indices),
            pc.take(samples["sample_id"], indices),
        ],
        schema=KEY_SCHEMA,
    )


def bucket_of(keys: pa.Table, buckets: int) -> pa.Array:
    """The bucket (int32 in [0, buckets)) of each key row: its hash's first 4 bytes, big-endian, mod
    `buckets`. Equal keys always share a bucket."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    leading = _hash_matrix(keys["hash"])[:, :4]
    values = leading.astype(np.uint32) << np.array([24, 16, 8, 0], np.uint32)
    return pa.array((values.sum(axis=1, dtype=np.uint32) % np.uint32(buckets)).astype(np.int32))


def find_duplicates(keys: pa.Table) -> pa.Table:
    """Every key row that is not the first of its `(kind, scope, hash)` group, with the group's first
    row (smallest `(partition, row)`) as the kept copy, as a table of `DUPLICATE_SCHEMA`.

    `keys` may be any set of key rows in any order that holds whole groups (one bucket, or all).
    """
    if keys.num_rows == 0:
        return DUPLICATE_SCHEMA.empty_table()
    # Groups only need to be contiguous and in (partition, row) order inside: the hash goes first, as it
    # is the most selective column and the cheapest to compare.
    order = pc.sort_indices(
        keys, sort_keys=[(name, "ascending") for name in ("hash", "kind", "scope", "partition", "row")]
    ).to_numpy()
    hashes = _hash_matrix(keys["hash"])[order]
    candidates = np.flatnonzero((hashes[1:] == hashes[:-1]).all(axis=1))
    same = np.zeros(len(order) - 1, bool)
    same[candidates] = True
    for name in ("kind", "scope"):
        column = keys[name]
        equal = pc.equal(column.take(order[candidates]), column.take(order[candidates + 1]))
        same[candidates] &= equal.to_numpy(zero_copy_only=False)
    first = np.ones(len(order), bool)
    first[1:] = ~same
    positions = np.arange(len(order))
    group_first = np.maximum.accumulate(np.where(first, positions, 0))
    duplicate = positions[~first]
    copies = keys.select(["partition", "row", "source", "key", "sample_id", "kind"]).take(order[duplicate])
    kept = keys.select(["source", "key", "sample_id"]).take(order[group_first[duplicate]])
    return pa.Table.from_arrays(copies.columns + kept.columns, schema=DUPLICATE_SCHEMA)


def one_per_sample(duplicates: pa.Table) -> pa.Table:
    """One duplicate row per `(partition, row)`: the one of the first kind in `KINDS` order; sorted
    by `(partition, row)`."""
    if duplicates.num_rows == 0:
        return DUPLICATE_SCHEMA.empty_table()
    rank = pc.index_in(duplicates["kind"], value_set=pa.array(KINDS))
    order = pc.sort_indices(
        duplicates.append_column("_rank", rank),
        sort_keys=[("partition", "ascending"), ("row", "ascending"), ("_rank", "ascending")],
    )
    ordered = duplicates.take(order)
    partitions = ordered["partition"].to_numpy()
    rows = ordered["row"].to_numpy()
    first = np.ones(ordered.num_rows, bool)
    first[1:] = (partitions[1:] != partitions[:-1]) | (rows[1:] != rows[:-1])
    return ordered.filter(pa.array(first))


def reject_rows(duplicates: pa.Table) -> pa.Table:
    """The reject rows (`schemas.reject.SCHEMA`, stage `dedup`, reason `duplicate_<kind>`) of
    duplicate rows, in their order; the detail names the kept copy."""
    rows = [
        reject_schema.reject(
            entry["source"],
            entry["key"],
            "dedup",
            f"duplicate_{entry['kind']}",
            f"same {_DETAIL_NOUN[entry['kind']]} as sample {entry['kept_sample_id']} "
            f"({entry['kept_source']}: {entry['kept_key']})",
            sample_id=entry["sample_id"],
        )
        for entry in duplicates.to_pylist()
    ]
    return reject_schema.to_table(rows)


class _Flat:
    """A list<struct> column flattened: `offsets` (from 0, one more than rows) into `fields`, one
    Python list per struct field, so that per-sample loops index plain lists."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        lists = column.combine_chunks()
        offsets = np.asarray(lists.offsets, dtype=np.int64)
        self.offsets: list[int] = (offsets - offsets[0]).tolist()
        self.fields: list[list] = [field.to_pylist() for field in lists.flatten().flatten()]


def _sample_hashes(
    samples: pa.Table, content: _Flat, image_offsets: list[int], identities: list[str]
) -> tuple[list[int], list[bytes]]:
    """(rows, key hashes) of the `sample` keys: every sample has one."""
    sample_kinds = samples["kind"].to_pylist()
    regions = _Flat(samples["regions"])
    phrases, region_images, boxes = regions.fields[:3]
    turns, roles, types, texts, image_refs = content.fields
    hashes = []
    for row, sample_kind in enumerate(sample_kinds):
        sample_images = identities[image_offsets[row] : image_offsets[row + 1]]
        segments = [
            [
                turns[i],
                roles[i],
                types[i],
                texts[i],
                None if image_refs[i] is None else sample_images[image_refs[i]],
            ]
            for i in range(content.offsets[row], content.offsets[row + 1])
        ]
        grounding = [
            [phrases[i], region_images[i], boxes[i]]
            for i in range(regions.offsets[row], regions.offsets[row + 1])
        ]
        hashes.append(_digest("sample\0" + _escape(_JSON.encode([sample_kind, segments, grounding]))))
    return list(range(len(sample_kinds))), hashes


def _image_hashes(image_offsets: list[int], identities: list[str]) -> tuple[list[int], list[bytes]]:
    """(rows, key hashes) of the `image` keys: samples with at least one image."""
    rows, hashes = [], []
    for row, (first, last) in enumerate(itertools.pairwise(image_offsets)):
        if last > first:
            rows.append(row)
            hashes.append(_digest("image\0" + "\0".join(identities[first:last])))
    return rows, hashes


def _text_hashes(content: _Flat) -> tuple[list[int], list[bytes]]:
    """(rows, key hashes) of the `text` keys: samples with some text left after normalization."""
    _, roles, types, texts, _ = content.fields
    # Each segment's two parts, role and normalized text, escaped and joined; None without text.
    segments = []
    for role, kind, text in zip(roles, types, texts, strict=True):
        normalized = normalize_text(text) if kind == "text" and text else ""
        segments.append(f"{_escape(role or '')}\0{_escape(normalized)}" if normalized else None)
    rows, hashes = [], []
    for row, (first, last) in enumerate(itertools.pairwise(content.offsets)):
        parts = [segment for segment in segments[first:last] if segment is not None]
        if parts:
            rows.append(row)
            hashes.append(_digest("text\0" + "\0".join(parts)))
    return rows, hashes


def _image_identities(encoded: list[bytes | None], paths: list[str | None], image_hash: str) -> list[str]:
    """The identity of each image (see the module docstring), escaped as a key part."""
    identities = []
    for data, path in zip(encoded, paths, strict=True):
        if data is None:
            identities.append(_escape(f"path:{path or ''}"))
        elif image_hash == "pixels":
            identities.append(_pixels_identity(data))
        else:
            identities.append("bytes:" + hashlib.sha256(data).hexdigest())
    return identities


def _pixels_identity(data: bytes) -> str:
    """`pixels:` + sha256 of width, height and RGB bytes as the tiler sees them; `bytes:` + sha256 of
    the file when it does not decode."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = to_rgb(image)
            digest = hashlib.sha256(rgb.width.to_bytes(4, "big") + rgb.height.to_bytes(4, "big"))
            digest.update(rgb.tobytes())
    except (OSError, ValueError, Image.DecompressionBombError):
        return "bytes:" + hashlib.sha256(data).hexdigest()
    return "pixels:" + digest.hexdigest()


def _escape(part: str) -> str:
    """A key part that cannot contain the NUL separator: backslash doubled, NUL as backslash zero."""
    return part.replace("\\", "\\\\").replace("\0", "\\0")


def _digest(encoded: str) -> bytes:
    """The 16-byte BLAKE2b digest of a key's encoding (kind and escaped parts, NUL-separated)."""
    return hashlib.blake2b(encoded.encode(), digest_size=HASH_BYTES).digest()


def _hash_matrix(column: pa.ChunkedArray) -> np.ndarray:
    """A fixed_size_binary(16) column as a uint8 [n, 16] array (zero-copy for one unsliced chunk)."""
    array = column.combine_chunks()
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset * HASH_BYTES
    return data[start : start + len(array) * HASH_BYTES].reshape(-1, HASH_BYTES)

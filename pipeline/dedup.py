"""Deduplication of samples: exact hashed keys and near-duplicate images, duplicates found per bucket.

A source that sets `dedup` drops every sample whose content, images or normalized text an earlier
sample already had. The work splits the way a job can spread it: every partition (one input file,
with a global index in config and file order) computes key rows for its samples (`sample_keys`);
the key rows are hash-partitioned into buckets (`bucket_of`); each bucket finds its duplicates on
its own (`find_duplicates`); the duplicates are grouped by partition again, reduced to one per
sample (`one_per_sample`) and turned into reject rows (`reject_rows`). Near-duplicate images
(`image_near`, below) take a second road through the same buckets.

Key kinds, in the fixed order of `KINDS` (the first three are exact, `EXACT_KINDS`):

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
- `image_near`: one key row per image of the sample whose bytes decode, carrying the image's index in
  the sample (`image`), its 64-bit DCT pHash (`phash`, `pipeline.phash`) and the source's `near_distance`
  D. Images without bytes or that do not decode have none.

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

Near-duplicate images (`image_near`). The rule, like the exact one, looks at earlier samples only and
not at what became of them: a sample is dropped when one of its images is within Hamming distance D (the
dropped sample's source's `near_distance`) of an image of an earlier sample in the same scope, whether that
earlier sample was kept or not. A chain A, B, C where only neighbours are within D therefore keeps A alone.
This rule decides every sample from pairs of images, so it distributes and is deterministic; the
alternative, "within D of an earlier *kept* image", must walk each chain in order on one machine. Images of
the same sample never count against each other. The reject names the nearest earlier image's sample
(smallest distance, then smallest (partition, row, image)) and `value` is that distance.

Pairs are found without a global table by multi-index hashing: the 64 bits are cut into the bands of
`NEAR_BANDS` (6 bands of 11, 11, 11, 11, 10 and 10 bits). Two hashes within D bits agree within
r = D // 6 bits on at least one band (pigeonhole), so every image sends one *index* row per band (its
band value) and *probe* rows for every value within r bits of it (`band_rows`; with the default D = 10,
r = 1: 70 rows per image). Band rows are shuffled by (scope, band, value) (`band_bucket_of`); in a bucket
every probe meets the index rows of earlier samples with its band value, and each candidate is confirmed
by its full distance (`nearest_earlier`). Images with an identical hash are collapsed to their first copy
before the search, so a flood of equal hashes (blank images) costs linear work. Per image the nearest
earlier candidate wins (`near_duplicates`), and its distance also goes into a histogram of 65 counts; its
bins above D only count candidates that happened to share a band, so they show where the threshold cuts,
not every pair. An image identical (same pHash) to an earlier image of its own sample is left out of it.
"""

from __future__ import annotations

import functools
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

from pipeline import phash
from pipeline.errors import ConfigError
from pipeline.tiling import to_rgb
from schemas import reject as reject_schema

__all__ = [
    "BAND_SCHEMA",
    "DEFAULT_NEAR_DISTANCE",
    "DUPLICATE_SCHEMA",
    "EXACT_KINDS",
    "IMAGE_HASHES",
    "KEY_SCHEMA",
    "KINDS",
    "MAX_NEAR_DISTANCE",
    "NEAREST_SCHEMA",
    "NEAR_BANDS",
    "DedupOptions",
    "band_bucket_of",
    "band_rows",
    "bucket_of",
    "find_duplicates",
    "near_duplicates",
    "nearest_earlier",
    "normalize_text",
    "one_per_sample",
    "parse_dedup",
    "reject_rows",
    "sample_keys",
]

KINDS = ("sample", "image", "text", "image_near")
"""The key kinds, in the order in which a dropped sample's reason is chosen."""

EXACT_KINDS = KINDS[:3]
"""The kinds found by equal hashes (`find_duplicates`); `image_near` goes through `band_rows`."""

DEFAULT_NEAR_DISTANCE = 10
"""`near_distance` when not set, chosen from `bench/dedup.py` (see bench/RESULTS.md): re-encodes, 0.5-0.9x
resizes and ±10% brightness of real photos stay within it, distinct photos were farther apart."""

MAX_NEAR_DISTANCE = 16
"""The largest `near_distance` accepted: beyond it unrelated photos match (they differ in ~32 of 64 bits)
and the probes per band grow quickly."""

NEAR_BANDS = (11, 11, 11, 11, 10, 10)
"""Widths of the bands (most significant first) that multi-index hashing cuts a pHash into."""

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
        pa.field("image", pa.int32()),  # image_near: the image's index in the sample, else null
        pa.field("phash", pa.uint64()),  # image_near: the image's pHash, else null
        pa.field("near_distance", pa.int32()),  # image_near: the source's near_distance, else null
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
        pa.field("distance", pa.int32()),  # image_near: Hamming distance to the kept copy's image, else null
    ]
)

BAND_SCHEMA = pa.schema(
    [
        pa.field("scope", pa.string(), nullable=False),
        pa.field("band", pa.int8(), nullable=False),  # index into NEAR_BANDS
        pa.field(
            "value", pa.int32(), nullable=False
        ),  # the band's bits (probe: within r bits of the image's)
        pa.field("index", pa.bool_(), nullable=False),  # the image's own band value (also a probe)
        pa.field("phash", pa.uint64(), nullable=False),
        pa.field("partition", pa.int64(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("image", pa.int32(), nullable=False),
        pa.field("source", pa.string()),  # index rows only: the sample's names, for the kept copy
        pa.field("key", pa.string()),
        pa.field("sample_id", pa.string()),
    ]
)
"""The rows `image_near` keys are shuffled as (see the module docstring)."""

NEAREST_SCHEMA = pa.schema(
    [
        pa.field("partition", pa.int64(), nullable=False),  # the later image
        pa.field("row", pa.int64(), nullable=False),
        pa.field("image", pa.int32(), nullable=False),
        pa.field("distance", pa.int32(), nullable=False),  # Hamming distance to the candidate
        pa.field("kept_partition", pa.int64(), nullable=False),  # the nearest earlier candidate
        pa.field("kept_row", pa.int64(), nullable=False),
        pa.field("kept_image", pa.int32(), nullable=False),
        pa.field("kept_source", pa.string(), nullable=False),
        pa.field("kept_key", pa.string(), nullable=False),
        pa.field("kept_sample_id", pa.string(), nullable=False),
    ]
)
"""An image's nearest earlier candidate (any distance) as one bucket saw it."""

_JSON = json.JSONEncoder(separators=(",", ":"))

_DETAIL_NOUN = {"sample": "content", "image": "image", "text": "text"}

_ROW_BITS = 32  # (partition, row) as one sortable int64: partition << 32 | row


@dataclass(frozen=True)
class DedupOptions:
    """A source's `dedup` setting: the key kinds to drop duplicates by, the scope, the image identity and
    the Hamming distance (bits of the pHash) within which `image_near` finds two images the same."""

    by: tuple[str, ...]
    across_sources: bool = True
    image_hash: str = "bytes"
    near_distance: int = DEFAULT_NEAR_DISTANCE

    def __post_init__(self) -> None:
        unknown = [kind for kind in self.by if kind not in KINDS]
        if unknown or not self.by:
            raise ValueError(f"DedupOptions.by must list some of {', '.join(KINDS)}, not {self.by!r}")
        if self.image_hash not in IMAGE_HASHES:
            raise ValueError(f"DedupOptions.image_hash must be one of {', '.join(IMAGE_HASHES)}")
        if not 0 <= self.near_distance <= MAX_NEAR_DISTANCE:
            raise ValueError(f"DedupOptions.near_distance must be from 0 to {MAX_NEAR_DISTANCE}")


def parse_dedup(value: object, where: str) -> DedupOptions | None:
    """A source's `dedup` value as options, or None when it asks for nothing (absent, null, `[]`).

    The value is a list of kinds (shorthand for `{by: [...]}`) or a mapping with `by` (required),
    `across_sources` (true or false, default true), `image_hash` (`bytes` or `pixels`, default
    `bytes`) and `near_distance` (an integer from 0 to `MAX_NEAR_DISTANCE`, default
    `DEFAULT_NEAR_DISTANCE`; only with `image_near` in `by`). `where` is the key path of the value
    (`sources[1].dedup`); a `ConfigError` names the key to change first.
    """
    if value is None:
        return None
    if isinstance(value, list | tuple):
        value = {"by": value}
    if not isinstance(value, dict):
        raise ConfigError(
            f"{where}: must be a list of kinds ({', '.join(KINDS)}) or a mapping with "
            f"by, across_sources, image_hash, near_distance; not {value!r}"
        )
    known = ("by", "across_sources", "image_hash", "near_distance")
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
    near_distance = value.get("near_distance", DEFAULT_NEAR_DISTANCE)
    if "near_distance" in value and "image_near" not in by:
        raise ConfigError(f"{where}.near_distance: only used with image_near in {where}.by")
    if (
        isinstance(near_distance, bool)
        or not isinstance(near_distance, int)
        or not 0 <= near_distance <= MAX_NEAR_DISTANCE
    ):
        raise ConfigError(
            f"{where}.near_distance: must be an integer from 0 to {MAX_NEAR_DISTANCE} (bits of a 64-bit "
            f"pHash), not {near_distance!r}"
        )
    return DedupOptions(
        by=tuple(kind for kind in KINDS if kind in by),
        across_sources=across_sources,
        image_hash=image_hash,
        near_distance=near_distance,
    )


def normalize_text(text: str) -> str:
    """Text as the `text` key compares it: NFKC, casefolded, whitespace runs as one space, stripped."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def sample_keys(samples: pa.Table, options: DedupOptions, partition: int) -> pa.Table:
    """The key rows (`KEY_SCHEMA`) of a partition's samples, in (row, `KINDS` order).

    One row per sample and exact kind in `options.by` for which the sample has a key, and with
    `image_near` one per image with a pHash, in image order; `row` is the sample's index in `samples`,
    `partition` the partition's global index.
    """
    content = _Flat(samples["content"])
    image_offsets, identities, encoded = [0] * (samples.num_rows + 1), [], []
    if {"sample", "image", "image_near"} & set(options.by):
        images = _Flat(samples["images"])
        image_offsets, encoded = images.offsets, images.fields[0]
    if "sample" in options.by or "image" in options.by:
        identities = _image_identities(images.fields[0], images.fields[1], options.image_hash)
    rows: list[int] = []
    kinds: list[str] = []
    hashes: list[bytes] = []
    image_numbers: list[int | None] = []
    phashes: list[int | None] = []
    for kind in KINDS:
        if kind not in options.by:
            continue
        if kind == "sample":
            found = _sample_hashes(samples, content, image_offsets, identities)
        elif kind == "image":
            found = _image_hashes(image_offsets, identities)
        elif kind == "text":
            found = _text_hashes(content)
        else:
            found, near_images, near_hashes = _near_hashes(image_offsets, encoded)
            image_numbers += near_images
            phashes += near_hashes
        rows += found[0]
        hashes += found[1]
        kinds += [kind] * len(found[0])
        if kind != "image_near":
            image_numbers += [None] * len(found[0])
            phashes += [None] * len(found[0])
    # Kinds were added in KINDS order (images in order within a sample), so a stable sort by row gives
    # (row, kind order, image).
    order = pa.array(np.argsort(np.array(rows, np.int64), kind="stable"))
    indices = pa.array(rows, pa.int64()).take(order)
    near = pa.array(phashes, pa.uint64()).take(order)
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
            pa.array(image_numbers, pa.int32()).take(order),
            near,
            pc.if_else(
                pc.is_null(near), pa.scalar(None, pa.int32()), pa.scalar(options.near_distance, pa.int32())
            ),
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

    `keys` may be any set of key rows in any order that holds whole groups (one bucket, or all); its
    `image_near` rows are left out (they go through `band_rows`).
    """
    near = pc.equal(keys["kind"], "image_near")
    if pc.any(near).as_py():
        keys = keys.filter(pc.invert(near))
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
    distance = pa.nulls(len(duplicate), pa.int32())
    return pa.Table.from_arrays(copies.columns + kept.columns + [distance], schema=DUPLICATE_SCHEMA)


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
    """The reject rows (`schemas.reject.SCHEMA`, stage `dedup`) of duplicate rows, in their order: reason
    `duplicate_<kind>` for the exact kinds, `near_duplicate_image` (value: the distance) for `image_near`;
    the detail names the kept copy."""
    rows = []
    for entry in duplicates.to_pylist():
        kept = f"sample {entry['kept_sample_id']} ({entry['kept_source']}: {entry['kept_key']})"
        if entry["kind"] == "image_near":
            reason = "near_duplicate_image"
            detail = f"an image {entry['distance']} bits (pHash) from an image of {kept}"
        else:
            reason = f"duplicate_{entry['kind']}"
            detail = f"same {_DETAIL_NOUN[entry['kind']]} as {kept}"
        rows.append(
            reject_schema.reject(
                entry["source"],
                entry["key"],
                "dedup",
                reason,
                detail,
                sample_id=entry["sample_id"],
                value=None if entry["distance"] is None else float(entry["distance"]),
            )
        )
    return reject_schema.to_table(rows)


def band_rows(keys: pa.Table) -> pa.Table:
    """The band rows (`BAND_SCHEMA`) of the `image_near` rows among `keys` (other kinds are left out): per
    image and band of `NEAR_BANDS`, one index row with the image's band value and one probe row for every
    other value within r = near_distance // len(NEAR_BANDS) bits of it."""
    near = keys.filter(pc.equal(keys["kind"], "image_near")).combine_chunks()
    if near.num_rows == 0:
        return BAND_SCHEMA.empty_table()
    hashes = near["phash"].to_numpy()
    radii = near["near_distance"].to_numpy() // len(NEAR_BANDS)
    everyone = np.arange(near.num_rows)
    tables = []
    shift = phash.BITS
    for band, width in enumerate(NEAR_BANDS):
        shift -= width
        values = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        tables.append(_band_table(near, band, values, everyone, index=True))
        for radius in sorted(set(radii.tolist()) - {0}):
            masks = _flip_masks(width, radius)
            chosen = np.flatnonzero(radii == radius)
            probes = (values[chosen, None] ^ masks[None, :]).ravel()
            tables.append(_band_table(near, band, probes, np.repeat(chosen, len(masks)), index=False))
    return pa.concat_tables(tables)


def band_bucket_of(bands: pa.Table, buckets: int) -> pa.Array:
    """The bucket (int32 in [0, buckets)) of each band row, a hash of (scope, band, value): the index and
    probe rows that can meet always share a bucket."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    if bands.num_rows == 0:
        return pa.array([], pa.int32())
    scopes = pc.dictionary_encode(bands["scope"]).combine_chunks()
    scope_hashes = np.array(
        [
            int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
            for name in scopes.dictionary.to_pylist()
        ],
        np.uint64,
    )
    mixed = scope_hashes[scopes.indices.to_numpy()]
    mixed ^= bands["band"].to_numpy().astype(np.uint64) << np.uint64(32)
    mixed ^= bands["value"].to_numpy().astype(np.uint64)
    mixed *= np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the high bits depend on every input bit
    return pa.array(((mixed >> np.uint64(32)) % np.uint64(buckets)).astype(np.int32))


def nearest_earlier(bands: pa.Table) -> pa.Table:
    """For every image that has a candidate among `bands` (band rows holding whole (scope, band, value)
    groups: one bucket, or all), its nearest earlier candidate (`NEAREST_SCHEMA`): the image of an earlier
    sample in its scope sharing a band value within the probe radius, at the smallest Hamming distance,
    then the smallest (partition, row, image). Images with the same pHash in the same scope are collapsed
    to their first copy first; the later copies (in later samples) get that first copy at distance 0."""
    if bands.num_rows == 0:
        return NEAREST_SCHEMA.empty_table()
    bands = bands.combine_chunks()
    scope = pc.dictionary_encode(bands["scope"]).combine_chunks().indices.to_numpy().astype(np.int64)
    band = bands["band"].to_numpy().astype(np.int64)
    value = bands["value"].to_numpy().astype(np.int64)
    index = bands["index"].to_numpy(zero_copy_only=False)
    hashes = bands["phash"].to_numpy()
    position = (bands["partition"].to_numpy() << _ROW_BITS) | bands["row"].to_numpy()
    image = bands["image"].to_numpy().astype(np.int64)

    # Identical hashes: all copies of a (scope, pHash) send the same rows to the same buckets, so each
    # (scope, pHash, band, value, index) group here holds every copy; only its first copy searches.
    order = np.lexsort((image, position, index, value, band, hashes, scope))
    ordered = [column[order] for column in (scope, hashes, band, value, index)]
    first = np.ones(len(order), bool)
    first[1:] = ~np.logical_and.reduce([column[1:] == column[:-1] for column in ordered])
    group_first = order[np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))]
    # A copy after another copy in its own sample is left out (as an image of the first copy's sample).
    repeated = np.zeros(len(order), bool)
    repeated[1:] = ~first[1:] & (position[order][1:] == position[order][:-1])
    copies, originals = order[~first & ~repeated], group_first[~first & ~repeated]
    # Reported once (band 0's index row).
    reported = index[copies] & (band[copies] == 0)
    # Every image's rank in (partition, row, image) order (shared by all its rows): a candidate's score is
    # distance << 40 | its rank, so the nearest-then-earliest candidate of a probe is a plain minimum.
    by_image = np.lexsort((image, position))
    changes = np.r_[
        True,
        (position[by_image][1:] != position[by_image][:-1]) | (image[by_image][1:] != image[by_image][:-1]),
    ]
    rank = np.empty(len(order), np.int64)
    rank[by_image] = np.cumsum(changes) - 1
    later, scores = [copies[reported]], [rank[originals[reported]]]

    searching = order[first]
    indexed = searching[index[searching]]
    group = (scope << 14) | (band << 11) | value  # band values have at most 11 bits, bands are < 8
    indexed = indexed[np.argsort(group[indexed], kind="stable")]
    starts = np.searchsorted(group[indexed], group[searching], "left")
    counts = np.searchsorted(group[indexed], group[searching], "right") - starts
    # Candidate pairs are expanded a slice of probes at a time, so memory stays bounded by _PAIRS.
    bounds = np.searchsorted(np.cumsum(counts), np.arange(0, counts.sum(), _PAIRS), "right")
    for low, high in itertools.pairwise([*bounds.tolist(), len(searching)]):
        if low >= high:
            continue
        repeat = counts[low:high]
        probe = np.repeat(searching[low:high], repeat)
        step = np.arange(repeat.sum()) - np.repeat(np.cumsum(repeat) - repeat, repeat)
        candidate = indexed[np.repeat(starts[low:high], repeat) + step]
        before = position[candidate] < position[probe]
        probe, candidate = probe[before], candidate[before]
        if len(probe) == 0:
            continue
        score = (phash.hamming_many(hashes[probe], hashes[candidate]) << 40) | rank[candidate]
        # A probe's pairs are contiguous: its best is the minimum of its run.
        runs = np.flatnonzero(np.r_[True, probe[1:] != probe[:-1]])
        later.append(probe[runs])
        scores.append(np.minimum.reduceat(score, runs))
    later_rows, best_scores = np.concatenate(later), np.concatenate(scores)
    if len(later_rows) == 0:
        return NEAREST_SCHEMA.empty_table()
    # One row per later image: the smallest score over its probe rows.
    chosen = np.lexsort((best_scores, rank[later_rows]))
    later_rows, best_scores = later_rows[chosen], best_scores[chosen]
    keep = np.r_[True, rank[later_rows][1:] != rank[later_rows][:-1]]
    later_rows, best_scores = later_rows[keep], best_scores[keep]
    named = np.flatnonzero(index)  # candidates are index rows, which carry the names
    row_of_rank = np.zeros(rank.max() + 1, np.int64)
    row_of_rank[rank[named]] = named
    earlier_rows = row_of_rank[best_scores & ((1 << 40) - 1)]
    distances = best_scores >> 40
    copies = bands.select(["partition", "row", "image"]).take(later_rows)
    kept = bands.select(["partition", "row", "image", "source", "key", "sample_id"]).take(earlier_rows)
    return pa.Table.from_arrays(
        [*copies.columns[:3], pa.array(distances.astype(np.int32)), *kept.columns],
        schema=NEAREST_SCHEMA,
    )


def near_duplicates(nearest: pa.Table, keys: pa.Table) -> tuple[pa.Table, list[int]]:
    """The near duplicates among `nearest` (rows of `NEAREST_SCHEMA` from any buckets, several per image
    allowed) and the histogram of distances. `keys` holds the `image_near` key rows of the images in
    `nearest` (other rows are ignored): their names and `near_distance`.

    Per image the nearest candidate wins (smallest distance, then (partition, row, image)); its
    distance is counted in the histogram (65 counts, index = distance). A sample is a near duplicate when
    one of its images' nearest distance is within its `near_distance`; it gets one `DUPLICATE_SCHEMA` row
    (kind `image_near`) for its nearest such image, sorted by (partition, row).
    """
    if nearest.num_rows == 0:
        return DUPLICATE_SCHEMA.empty_table(), [0] * (phash.BITS + 1)
    order = ["partition", "row", "image", "distance", "kept_partition", "kept_row", "kept_image"]
    best = _first_of(nearest, order, ["partition", "row", "image"])
    histogram = np.bincount(best["distance"].to_numpy(), minlength=phash.BITS + 1).tolist()
    near_keys = keys.filter(pc.equal(keys["kind"], "image_near")).select(
        ["partition", "row", "image", "source", "key", "sample_id", "near_distance"]
    )
    joined = best.join(near_keys, keys=["partition", "row", "image"], join_type="inner")
    close = joined.filter(pc.less_equal(joined["distance"], joined["near_distance"]))
    by_sample = ["partition", "row", "distance", "kept_partition", "kept_row", "kept_image", "image"]
    chosen = _first_of(close, by_sample, ["partition", "row"])
    columns = [
        chosen["partition"],
        chosen["row"],
        chosen["source"],
        chosen["key"],
        chosen["sample_id"],
        pa.array(["image_near"] * chosen.num_rows, pa.string()),
        chosen["kept_source"],
        chosen["kept_key"],
        chosen["kept_sample_id"],
        chosen["distance"],
    ]
    return pa.Table.from_arrays(columns, schema=DUPLICATE_SCHEMA), histogram


_PAIRS = 1 << 22
"""Candidate pairs `nearest_earlier` expands at once (~100 MiB of index arrays)."""


def _first_of(table: pa.Table, sort_by: list[str], group_by: list[str]) -> pa.Table:
    """The first row of each `group_by` group of `table` sorted by `sort_by` (starting with `group_by`)."""
    ordered = table.take(pc.sort_indices(table, sort_keys=[(name, "ascending") for name in sort_by]))
    first = np.ones(ordered.num_rows, bool)
    if ordered.num_rows:
        first[1:] = np.logical_or.reduce(
            [(column[1:] != column[:-1]) for column in (ordered[name].to_numpy() for name in group_by)]
        )
    return ordered.filter(pa.array(first))


def _band_table(near: pa.Table, band: int, values: np.ndarray, which: np.ndarray, index: bool) -> pa.Table:
    """Band rows of band `band` with `values` for the key rows `which` of `near`; names on index rows only."""
    taken = near.take(pa.array(which, pa.int64())).combine_chunks()
    count = len(which)
    names = (
        [taken[name] for name in ("source", "key", "sample_id")]
        if index
        else [pa.nulls(count, pa.string())] * 3
    )
    return pa.Table.from_arrays(
        [
            taken["scope"],
            pa.array(np.full(count, band, np.int8)),
            pa.array(values.astype(np.int32)),
            pa.array(np.full(count, index)),
            taken["phash"],
            taken["partition"],
            taken["row"],
            taken["image"],
            *names,
        ],
        schema=BAND_SCHEMA,
    )


@functools.cache
def _flip_masks(width: int, radius: int) -> np.ndarray:
    """Every nonzero mask of at most `radius` bits within `width` bits (int64)."""
    masks = [
        sum(1 << bit for bit in bits)
        for flipped in range(1, radius + 1)
        for bits in itertools.combinations(range(width), flipped)
    ]
    return np.array(masks, np.int64)


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


def _near_hashes(
    image_offsets: list[int], encoded: list[bytes | None]
) -> tuple[tuple[list[int], list[bytes]], list[int], list[int]]:
    """((rows, key hashes), image indices, pHashes) of the `image_near` keys: one per image that decodes.
    The key hash is the digest of the pHash, so equal pHashes have equal `hash`."""
    rows, hashes, numbers, values = [], [], [], []
    for row, (first, last) in enumerate(itertools.pairwise(image_offsets)):
        for number, data in enumerate(encoded[first:last]):
            value = None if data is None else phash.phash_bytes(data)
            if value is not None:
                rows.append(row)
                hashes.append(_digest("image_near\0" + phash.to_hex(value)))
                numbers.append(number)
                values.append(value)
    return (rows, hashes), numbers, values


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

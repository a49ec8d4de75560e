"""Packing (optional): shard rows packed into rows of exactly `max_seq_len` tokens, and at most `max_tiles`
tiles when a vision budget is set.

A tile is what the vision tower encodes once: the global view or one local tile, so an image of grid w×h
is 1 + w·h tiles (`row_tiles`). With a budget, a row whose images alone need more than `max_tiles` tiles
cannot be packed; `tile_budget_rejects` turns its record into a reject row (`too_many_tiles`) first.

Rows are gathered into a bounded buffer (`buffer_size` rows); when it is full (and at the end) its rows are
placed best-fit decreasing on one size: the tokens, or with a budget the combined normalized size
tokens/max_seq_len + tiles/max_tiles (integers scaled by max_seq_len·max_tiles, so ties are exact). Largest
first (ties by `sample_id`), each row goes into the open bin that holds it on both axes and has the least
combined room left, the earliest such bin on a tie, else into a new bin. On a caption + grounding +
interleaved mix (`bench/packing.py`) this rule filled rows as well as the others tried (best fit on the larger
normalized side or on the L2 norm, bin-centric dot product) and as a 4× larger buffer, within 0.2 points of
token fill. The result depends only on the input order, never on timing.

A packed row concatenates its documents (in input order) and pads the rest with the pad id (labels -100);
`position_ids` restart at 0 at each document and at the pad tail, and `cu_seqlens` mark the boundaries (the
pad tail is the last segment), so attention can stay within documents. Each document's first label (its bos,
which an unpacked row keeps as the official processor does) becomes -100, so that no loss crosses a document
boundary. Columns are those of `schemas.shard`; as in `pipeline.sequence`, `input_ids`, `labels`,
`position_ids` and `cu_seqlens` are numpy int32 arrays.

`sequence.packing` in a job config is `parse_packing`'s value: false, true (tokens only) or
`{max_tiles: N, buffer: K}`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import ConfigError
from schemas import reject as reject_schema
from schemas.shard import IGNORE_INDEX

__all__ = [
    "DEFAULT_BUFFER",
    "Packer",
    "PackingOptions",
    "PackingStats",
    "pack",
    "pack_rows",
    "parse_packing",
    "row_tiles",
    "tile_budget_rejects",
]

DEFAULT_BUFFER = 1024
"""Rows a packer holds at a time when the config names no `buffer`."""


@dataclass(frozen=True)
class PackingOptions:
    """`sequence.packing` when on: the tile budget of a packed row (None: tokens only) and the buffer."""

    max_tiles: int | None = None
    buffer: int = DEFAULT_BUFFER

    def __post_init__(self) -> None:
        for name in ("max_tiles", "buffer"):
            value = getattr(self, name)
            if not (value is None and name == "max_tiles") and not _positive_int(value):
                raise ValueError(f"PackingOptions.{name} must be a positive integer, not {value!r}")


def parse_packing(value: object, where: str) -> PackingOptions | None:
    """`sequence.packing` as options, or None when packing is off (false or absent: None).

    `true` packs by tokens only; a mapping takes `max_tiles` (a positive integer: at most that many tiles in a
    packed row) and `buffer` (a positive integer, default 1024: rows held at a time), both optional. `where`
    is the key path of the value (`sequence.packing`); a `ConfigError` names the key to change.
    """
    if value is None or value is False:
        return None
    if value is True:
        return PackingOptions()
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: must be true, false or a mapping with max_tiles, buffer; not {value!r}")
    known = ("max_tiles", "buffer")
    for name, option in value.items():
        if name not in known:
            raise ConfigError(f"{where}.{name}: unknown option; known: {', '.join(known)}")
        if not _positive_int(option):
            raise ConfigError(f"{where}.{name}: must be a positive integer, not {option!r}")
    return PackingOptions(max_tiles=value.get("max_tiles"), buffer=value.get("buffer", DEFAULT_BUFFER))


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def row_tiles(rows: pa.Table) -> np.ndarray:
    """int64 tiles per row of a `schemas.shard` table: 1 + w·h per image of grid [w, h] (the global view and
    each local tile), summed over the row's `images_spatial_crop`."""
    crops = rows.column("images_spatial_crop").combine_chunks()
    sides = np.asarray(pc.list_flatten(pc.list_flatten(crops)), dtype=np.int64).reshape(-1, 2)
    parents = np.asarray(pc.list_parent_indices(crops), dtype=np.int64)
    per_image = 1 + sides[:, 0] * sides[:, 1]
    tiles = np.zeros(rows.num_rows, dtype=np.int64)
    np.add.at(tiles, parents, per_image)
    return tiles


def tile_budget_rejects(rows: pa.Table, max_tiles: int) -> tuple[pa.Table, pa.Table]:
    """(the rows within the budget, the reject rows of the others) for rows of `schemas.shard`, unpacked.

    A record is kept or rejected whole: when any of its rows (a part, under `overflow: split`) needs more than
    `max_tiles` tiles, all its rows leave and one reject row stands for it (stage `sequence`, reason
    `too_many_tiles`, value: the most tiles of its rows; the detail names the row, its tiles and the budget).
    Kept rows and rejects keep their input order.
    """
    tiles = row_tiles(rows)
    over = tiles > max_tiles
    if not over.any():
        return rows, reject_schema.to_table([])
    sources, keys = rows.column("source").to_pylist(), rows.column("key").to_pylist()
    worst: dict[tuple[str, str], int] = {}  # record → its first row with the most tiles, in input order
    for index in np.flatnonzero(over).tolist():
        record = (sources[index], keys[index])
        if record not in worst or tiles[index] > tiles[worst[record]]:
            worst[record] = index
    leaving = np.fromiter(((s, k) in worst for s, k in zip(sources, keys, strict=True)), bool, len(keys))
    sample_ids, parts = rows.column("sample_id").to_pylist(), rows.column("part").to_pylist()
    rejects = []
    for (source, key), index in worst.items():
        sample_id, part = sample_ids[index], parts[index]
        where = f"part {part} ({sample_id}) needs " if part else ""
        rejects.append(
            reject_schema.reject(
                source,
                key,
                "sequence",
                "too_many_tiles",
                f"{where}{int(tiles[index])} tiles > max_tiles {max_tiles}",
                # part k of a split sample is "{sample_id}-{k}" (pipeline.sequence): the record's own id
                sample_id=sample_id.removesuffix(f"-{part}") if part else sample_id,
                value=float(tiles[index]),
            )
        )
    return rows.filter(pa.array(~leaving)), reject_schema.to_table(rejects)


@dataclass
class PackingStats:
    """What a packer produced: documents in, packed rows out, document tokens and tiles, and the share of the
    rows' slots that documents fill: `efficiency` for tokens (1.0 means no padding), `tile_fill` for tiles
    when a budget (`max_tiles`) is set. Stats of packers with the same budget add up (`+`, `merge`)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    capacity: int = 0
    tiles: int = 0
    tile_capacity: int = 0
    max_tiles: int | None = None

    @property
    def efficiency(self) -> float:
        """Document tokens / (rows · max_seq_len); 0.0 before any row."""
        return self.tokens / self.capacity if self.capacity else 0.0

    @property
    def tile_fill(self) -> float:
        """Document tiles / (rows · max_tiles); 0.0 before any row or without a budget."""
        return self.tiles / self.tile_capacity if self.tile_capacity else 0.0

    def __add__(self, other: PackingStats) -> PackingStats:
        if not isinstance(other, PackingStats):
            return NotImplemented
        budgets = {part.max_tiles for part in (self, other) if part.documents}
        if len(budgets) > 1:
            raise ValueError(f"cannot add packing stats of different max_tiles: {sorted(budgets, key=str)}")
        # An empty side (no documents, e.g. `PackingStats()` as a start) takes the other's budget.
        if not budgets:
            budgets = {other.max_tiles if self.max_tiles is None else self.max_tiles}
        budget = budgets.pop()
        return PackingStats(
            documents=self.documents + other.documents,
            rows=self.rows + other.rows,
            tokens=self.tokens + other.tokens,
            capacity=self.capacity + other.capacity,
            tiles=self.tiles + other.tiles,
            tile_capacity=self.tile_capacity + other.tile_capacity,
            max_tiles=budget,
        )

    @classmethod
    def merge(cls, parts: Iterable[PackingStats]) -> PackingStats:
        """The sum of `parts` (e.g. one per partition); empty stats for none."""
        total = cls()
        for part in parts:
            total += part
        return total

    def to_dict(self) -> dict[str, Any]:
        """For the manifest and the summary: rows, documents, tokens, token_fill, and with a tile budget
        tiles and tile_fill."""
        summary: dict[str, Any] = {
            "rows": self.rows,
            "documents": self.documents,
            "tokens": self.tokens,
            "token_fill": self.efficiency,
        }
        if self.max_tiles is not None:
            summary |= {"tiles": self.tiles, "tile_fill": self.tile_fill}
        return summary


class Packer:
    """Streaming best-fit-decreasing packer: `add` rows, keep the packed rows returned, `flush` at the end.

    With `max_tiles`, every packed row also holds at most that many tiles, and a row that alone needs more
    is a ValueError (reject such rows first: `tile_budget_rejects`)."""

    def __init__(
        self, max_seq_len: int, pad_id: int, buffer_size: int = DEFAULT_BUFFER, max_tiles: int | None = None
    ) -> None:
        if max_seq_len < 1 or buffer_size < 1 or (max_tiles is not None and max_tiles < 1):
            raise ValueError(
                f"max_seq_len ({max_seq_len}), buffer_size ({buffer_size}) and max_tiles ({max_tiles}) "
                "must be positive"
            )
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.buffer_size = buffer_size
        self.max_tiles = max_tiles
        self.stats = PackingStats(max_tiles=max_tiles)
        self._buffer: list[dict[str, Any]] = []
        self._tiles: list[int] = []

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Buffer one unpacked row; returns the packed rows made when the buffer fills (else [])."""
        if row["documents"] is not None:
            raise ValueError(f"row {row['sample_id']} is packed already")
        if row["seq_len"] > self.max_seq_len:
            raise ValueError(
                f"row {row['sample_id']} has {row['seq_len']} tokens > max_seq_len {self.max_seq_len}"
            )
        tiles = sum(1 + w * h for w, h in row["images_spatial_crop"])
        if self.max_tiles is not None and tiles > self.max_tiles:
            raise ValueError(
                f"row {row['sample_id']} has {tiles} tiles > max_tiles {self.max_tiles} "
                "(tile_budget_rejects turns such rows into rejects)"
            )
        self._buffer.append(row)
        self._tiles.append(tiles)
        return self._drain() if len(self._buffer) >= self.buffer_size else []

    def flush(self) -> list[dict[str, Any]]:
        """Pack whatever is buffered."""
        return self._drain()

    def _drain(self) -> list[dict[str, Any]]:
        rows, self._buffer = self._buffer, []
        tiles, self._tiles = np.array(self._tiles, dtype=np.int64), []
        tokens = np.array([row["seq_len"] for row in rows], dtype=np.int64)
        length, budget = self.max_seq_len, self.max_tiles
        # Sizes and rooms on one integer scale: tokens·max_tiles + tiles·max_seq_len is the combined
        # normalized size times max_seq_len·max_tiles; without a budget, tokens alone.
        size = tokens if budget is None else tokens * budget + tiles * length
        order = sorted(range(len(rows)), key=lambda i: (-int(size[i]), rows[i]["sample_id"]))
        room_tokens = np.zeros(len(rows), dtype=np.int64)
        room_tiles = np.zeros(len(rows), dtype=np.int64)
        bins: list[list[int]] = []
        for i in order:
            opened = len(bins)
            fits = room_tokens[:opened] >= tokens[i]
            if budget is not None:
                fits &= room_tiles[:opened] >= tiles[i]
            candidates = np.flatnonzero(fits)
            if len(candidates):
                room = room_tokens[candidates]
                if budget is not None:
                    room = room * budget + room_tiles[candidates] * length
                b = int(candidates[np.argmin(room)])  # the least room; the earliest bin on a tie
            else:
                b = opened
                bins.append([])
                room_tokens[b], room_tiles[b] = length, budget or 0
            bins[b].append(i)
            room_tokens[b] -= tokens[i]
            room_tiles[b] -= tiles[i]
        packed = [pack_rows([rows[i] for i in sorted(members)], length, self.pad_id) for members in bins]
        self.stats.documents += len(rows)
        self.stats.rows += len(packed)
        self.stats.tokens += int(tokens.sum())
        self.stats.capacity += len(packed) * length
        self.stats.tiles += int(tiles.sum())
        self.stats.tile_capacity += len(packed) * (budget or 0)
        return packed


def pack(
    rows: Iterable[dict[str, Any]],
    max_seq_len: int,
    pad_id: int,
    buffer_size: int = DEFAULT_BUFFER,
    max_tiles: int | None = None,
) -> Iterator[dict[str, Any]]:
    """Packed rows of `rows` (see :class:`Packer`), streamed."""
    packer = Packer(max_seq_len, pad_id, buffer_size, max_tiles)
    for row in rows:
        yield from packer.add(row)
    yield from packer.flush()


def pack_rows(rows: Sequence[dict[str, Any]], max_seq_len: int, pad_id: int) -> dict[str, Any]:
    """One packed row of exactly `max_seq_len` tokens holding `rows` in order."""
    total = sum(row["seq_len"] for row in rows)
    if not rows or total > max_seq_len:
        raise ValueError(f"{len(rows)} rows of {total} tokens do not make one row of {max_seq_len}")
    identities = {(row["tokenizer_sha256"], row["shape_fingerprint"]) for row in rows}
    if len(identities) > 1:
        raise ValueError("rows made with different tokenizers or model shapes cannot be packed together")
    pad = max_seq_len - total
    lengths = [row["seq_len"] for row in rows]
    input_ids = np.full(max_seq_len, pad_id, dtype=np.int32)
    labels = np.full(max_seq_len, IGNORE_INDEX, dtype=np.int32)
    position_ids = np.concatenate([np.arange(n, dtype=np.int32) for n in [*lengths, pad]])
    cu_seqlens = np.cumsum([0, *lengths, *([pad] if pad else [])], dtype=np.int32)
    images: list[dict[str, Any]] = []
    crops: list[list[int]] = []
    offsets: list[int] = []
    regions: list[dict[str, Any]] = []
    for row, start in zip(rows, cu_seqlens, strict=False):
        first_image = len(images)
        input_ids[start : start + row["seq_len"]] = row["input_ids"]
        labels[start : start + row["seq_len"]] = row["labels"]
        labels[start] = IGNORE_INDEX  # the document's bos: no target across the boundary before it
        images += row["images"]
        crops += row["images_spatial_crop"]
        offsets += [offset + int(start) for offset in row["image_token_offsets"]]
        regions += [{**region, "image": region["image"] + first_image} for region in row["regions"]]
    ids = "\0".join(row["sample_id"] for row in rows)
    tokenizer_sha256, shape_fingerprint = identities.pop()
    return {
        "sample_id": hashlib.sha256(ids.encode()).hexdigest()[:32],
        "source": "packed",
        "key": None,
        "kind": "packed",
        "part": 0,
        "input_ids": input_ids,
        "labels": labels,
        "images": images,
        "images_spatial_crop": crops,
        "image_token_offsets": offsets,
        "regions": regions,
        "num_image_tokens": sum(row["num_image_tokens"] for row in rows),
        "num_text_tokens": sum(row["num_text_tokens"] for row in rows),
        "num_loss_tokens": sum(row["num_loss_tokens"] for row in rows),
        "seq_len": max_seq_len,
        "truncated": any(row["truncated"] for row in rows),
        "special_strings_as_text": sum(row["special_strings_as_text"] for row in rows),
        "tokenizer_sha256": tokenizer_sha256,
        "shape_fingerprint": shape_fingerprint,
        "position_ids": position_ids,
        "cu_seqlens": cu_seqlens,
        "documents": [
            {
                "sample_id": row["sample_id"],
                "source": row["source"],
                "kind": row["kind"],
                "part": row["part"],
                "seq_len": row["seq_len"],
                "special_strings_as_text": row["special_strings_as_text"],
            }
            for row in rows
        ],
    }

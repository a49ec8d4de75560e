"""Packing (optional): shard rows packed into rows of exactly `max_seq_len` tokens.

Rows are gathered into a bounded buffer; when it is full (and at the end) its rows are placed best-fit
decreasing: longest first (ties by `sample_id`), each into the open bin with the least room that still holds
it, else into a new bin. The result depends only on the input order, never on timing. A packed row
concatenates its documents (in input order) and pads the rest with the pad id (labels -100); `position_ids`
restart at 0 at each document and at the pad tail, and `cu_seqlens` mark the boundaries (the pad tail is the
last segment), so attention can stay within documents. Each document's first label (its bos, which an unpacked
row keeps as the official processor does) becomes -100, so that no loss crosses a document boundary.
Columns are those of `schemas.shard`; as in `pipeline.sequence`, `input_ids`, `labels`, `position_ids` and
`cu_seqlens` are numpy int32 arrays.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas.shard import IGNORE_INDEX

__all__ = ["Packer", "PackingStats", "pack", "pack_rows"]


@dataclass
class PackingStats:
    """What a packer produced: documents in, packed rows out, document tokens, and the share of the rows'
    token slots that documents fill (`efficiency`; 1.0 means no padding)."""

    documents: int = 0
    rows: int = 0
    tokens: int = 0
    capacity: int = 0

    @property
    def efficiency(self) -> float:
        """Document tokens / (rows · max_seq_len); 0.0 before any row."""
        return self.tokens / self.capacity if self.capacity else 0.0


class Packer:
    """Streaming best-fit-decreasing packer: `add` rows, keep the packed rows returned, `flush` at the end."""

    def __init__(self, max_seq_len: int, pad_id: int, buffer_size: int = 1024) -> None:
        if max_seq_len < 1 or buffer_size < 1:
            raise ValueError(f"max_seq_len ({max_seq_len}) and buffer_size ({buffer_size}) must be positive")
        self.max_seq_len = max_seq_len
        self.pad_id = pad_id
        self.buffer_size = buffer_size
        self.stats = PackingStats()
        self._buffer: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> list[dict[str, Any]]:
        """Buffer one unpacked row; returns the packed rows made when the buffer fills (else [])."""
        if row["documents"] is not None:
            raise ValueError(f"row {row['sample_id']} is packed already")
        if row["seq_len"] > self.max_seq_len:
            raise ValueError(
                f"row {row['sample_id']} has {row['seq_len']} tokens > max_seq_len {self.max_seq_len}"
            )
        self._buffer.append(row)
        return self._drain() if len(self._buffer) >= self.buffer_size else []

    def flush(self) -> list[dict[str, Any]]:
        """Pack whatever is buffered."""
        return self._drain()

    def _drain(self) -> list[dict[str, Any]]:
        rows, self._buffer = self._buffer, []
        order = sorted(range(len(rows)), key=lambda i: (-rows[i]["seq_len"], rows[i]["sample_id"]))
        bins: list[list[int]] = []
        room: list[tuple[int, int]] = []  # (room left, bin index), sorted
        for i in order:
            length = rows[i]["seq_len"]
            at = bisect.bisect_left(room, (length, -1))
            if at < len(room):
                left, b = room.pop(at)
            else:
                left, b = self.max_seq_len, len(bins)
                bins.append([])
            bins[b].append(i)
            bisect.insort(room, (left - length, b))
        packed = [
            pack_rows([rows[i] for i in sorted(members)], self.max_seq_len, self.pad_id) for members in bins
        ]
        self.stats.documents += len(rows)
        self.stats.rows += len(packed)
        self.stats.tokens += sum(row["seq_len"] for row in rows)
        self.stats.capacity += len(packed) * self.max_seq_len
        return packed


def pack(
    rows: Iterable[dict[str, Any]], max_seq_len: int, pad_id: int, buffer_size: int = 1024
) -> Iterator[dict[str, Any]]:
    """Packed rows of `rows` (see :class:`Packer`), streamed."""
    packer = Packer(max_seq_len, pad_id, buffer_size)
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

"""Shared helpers for the verify, inspect, loader and validate tests: toy sample rows, small outputs written
without Ray, and a consistent rewrite of one row (not a test module)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
from PIL import Image

import model_shapes
from pipeline import tokenizer, verify
from pipeline.sequence import SequenceOptions, build
from pipeline.shards import OutputDir, ShardWriter
from schemas import reject as reject_schema
from schemas import shard
from schemas.sample import sample_id_for

TOY = model_shapes.load("toy")
TOK = tokenizer.load("default", TOY)
IMG = TOY.special_tokens.image
EXPECTED = verify.Expected(TOY, TOK.identity, TOY.fingerprint(), 4096)


def png(width: int, height: int) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buffer, format="PNG")
    return {
        "bytes": buffer.getvalue(),
        "path": f"{width}x{height}.png",
        "width": width,
        "height": height,
        "format": "PNG",
    }


def sample_of(source: str, key: str, kind: str, content: list[dict], images: list[dict] = ()) -> dict:
    """A `schemas.sample` row without regions or meta."""
    return {
        "sample_id": sample_id_for(source, key),
        "source": source,
        "key": key,
        "kind": kind,
        "content": content,
        "images": list(images),
        "regions": [],
        "meta": "{}",
    }


def row_of(source: str, key: str, kind: str, content: list[dict], images: list[dict] = ()) -> dict:
    sample = sample_of(source, key, kind, content, images)
    built = build(sample, TOK, options=SequenceOptions())
    assert built.reject is None, built.reject
    return built.rows[0]


def text(value: str, turn: int = 0, role: str | None = None) -> dict:
    return {"turn": turn, "role": role, "type": "text", "text": value, "image": None}


def image(index: int) -> dict:
    return {"turn": 0, "role": None, "type": "image", "text": None, "image": index}


def write_output(folder: Path, rows: dict[str, list[dict]], rejects: list[dict] = ()) -> Path:
    """A finished output of `rows` per source, as the pretokenize job lays it out (4-row row groups)."""
    out = OutputDir(str(folder))
    listed = []
    for name, source_rows in rows.items():
        writer = ShardWriter(out, f"shards/{name}", shard.SCHEMA, 10**9, row_group_rows=4)
        writer.write(shard.to_table(source_rows))
        listed += [{"source": name, **info.to_dict()} for info in writer.close()]
    writer = ShardWriter(out, "rejects", reject_schema.SCHEMA, 10**9)
    writer.write(reject_schema.to_table(list(rejects)))
    reject_files = [info.to_dict() for info in writer.close()]
    sources = {}
    for name, source_rows in rows.items():
        reasons: dict[str, int] = {}
        for entry in rejects:
            if entry["source"] == name:
                reasons[entry["reason"]] = reasons.get(entry["reason"], 0) + 1
        sources[name] = {
            "read": len(source_rows) + sum(reasons.values()),
            "written": len(source_rows),
            "rows": len(source_rows),
            "rejected": reasons,
            "rejected_total": sum(reasons.values()),
            "tokens": sum(r["seq_len"] for r in source_rows),
        }
    out.write_json(
        "manifest.json",
        {
            "config": {"tokenizer": "default"},
            "model_shape": {"name": "toy", "fingerprint": TOY.fingerprint()},
            "tokenizer": {"sha256": TOK.identity},
            "max_seq_len": 4096,
            "shards": listed,
            "rejects": reject_files,
            "sources": sources,
        },
    )
    return folder


def small_output(folder: Path) -> Path:
    captions = [
        row_of("pics", f"p{i}", "caption", [image(0), text(f"Picture number {i}.")], [png(200 + i, 150)])
        for i in range(3)
    ]
    chats = [row_of("chat", f"c{i}", "text", [text(f"Plain document {i} here.")]) for i in range(5)]
    rejected = [reject_schema.reject("chat", "c9", "sample", "empty_text", "empty")]
    return write_output(folder, {"pics": captions, "chat": chats}, rejected)


# ----------------------------------------------------------------------------------------------------
# one row


def rewrite_row(out: Path, relative: str, index: int, change) -> str:
    """Rewrite one row of a shard and fix its manifest entry, so that only the row's invariants can tell."""
    table = pq.read_table(out / relative)
    rows = table.to_pylist()
    change(rows[index])
    pq.write_table(shard.to_table(rows), out / relative)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        if entry["path"] == relative:
            entry["bytes"], entry["sha256"] = (
                (out / relative).stat().st_size,
                tokenizer.file_sha256(out / relative),
            )
    (out / "manifest.json").write_text(json.dumps(manifest))
    return rows[index]["sample_id"]

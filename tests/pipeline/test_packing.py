"""pipeline.packing: best-fit decreasing into rows of exactly max_seq_len (and at most max_tiles tiles),
per-document positions, the tile budget's rejects, the stats and the `sequence.packing` option."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from synthetic_rows import mixed_rows, synthetic_row

import model_shapes
from pipeline import tokenizer
from pipeline.errors import ConfigError
from pipeline.packing import (
    Packer,
    PackingOptions,
    PackingStats,
    pack,
    pack_rows,
    parse_packing,
    row_tiles,
    tile_budget_rejects,
)
from pipeline.sequence import SequenceOptions, build
from schemas import reject as reject_schema
from schemas import shard
from schemas.sample import sample_id_for

TOY = model_shapes.load("toy")
TOK = tokenizer.load("default", TOY)
PAD = TOY.special_tokens.pad


def row(length, name=None, images=0):
    """A shard row of `length` tokens (bos, text, eos) with `images` 1×1 images of 421 tokens after bos."""
    text = "word " * length
    content = [{"turn": 0, "role": None, "type": "image", "text": None, "image": i} for i in range(images)]
    content.append({"turn": 0, "role": None, "type": "text", "text": text, "image": None})
    image = {"bytes": b"x", "path": "a.png", "width": 384, "height": 384, "format": "PNG"}
    box = {"phrase": "w", "boxes": [[1.0, 2.0, 3.0, 4.0]], "segment": None, "start": None, "end": None}
    regions = [{**box, "image": i} for i in range(images)]
    s = {
        "sample_id": sample_id_for("src", name or str(length)),
        "source": "src",
        "key": name or str(length),
        "kind": "interleaved",
        "content": content,
        "images": [image] * images,
        "regions": regions,
        "meta": "{}",
    }
    (made,) = build(s, TOK, options=SequenceOptions(max_seq_len=10**5)).rows
    # Trim to the exact length wanted, keeping the eos (tests need exact sizes).
    keep = length - 1
    ids = np.append(made["input_ids"][:keep], made["input_ids"][-1])
    labels = np.append(made["labels"][:keep], made["labels"][-1])
    return {
        **made,
        "input_ids": ids,
        "labels": labels,
        "seq_len": length,
        "num_text_tokens": length - made["num_image_tokens"],
        "num_loss_tokens": int((labels != -100).sum()),
    }


def test_pack_rows_concatenates_and_pads():
    a, b = row(5, "a"), row(430, "b", images=1)
    packed = pack_rows([a, b], 512, PAD)
    assert packed["seq_len"] == len(packed["input_ids"]) == len(packed["labels"]) == 512
    assert packed["input_ids"].tolist() == [*a["input_ids"], *b["input_ids"], *[PAD] * 77]
    # Each document's bos label becomes -100 in the packed row: no loss across a document boundary.
    assert a["labels"][0] == b["labels"][0] == 0
    assert packed["labels"].tolist() == [-100, *a["labels"][1:], -100, *b["labels"][1:], *[-100] * 77]
    assert packed["position_ids"].tolist() == [*range(5), *range(430), *range(77)]
    assert packed["cu_seqlens"].tolist() == [0, 5, 435, 512]
    assert packed["image_token_offsets"] == [5 + b["image_token_offsets"][0]]
    assert packed["images_spatial_crop"] == [[1, 1]] and packed["regions"][0]["image"] == 0
    assert packed["documents"] == [
        {
            "sample_id": a["sample_id"],
            "source": "src",
            "kind": "interleaved",
            "part": 0,
            "seq_len": 5,
            "special_strings_as_text": 0,
        },
        {
            "sample_id": b["sample_id"],
            "source": "src",
            "kind": "interleaved",
            "part": 0,
            "seq_len": 430,
            "special_strings_as_text": 0,
        },
    ]
    assert (packed["source"], packed["kind"], packed["key"]) == ("packed", "packed", None)
    assert packed["num_image_tokens"] == 421 and packed["num_text_tokens"] == 435 - 421
    assert shard.to_table([packed]).num_rows == 1
    full = pack_rows([row(300, "c"), row(212, "d")], 512, PAD)
    assert full["cu_seqlens"].tolist() == [0, 300, 512] and full["input_ids"][-1] == 1  # ends with eos


def test_regions_follow_their_images():
    packed = pack_rows([row(430, "a", images=1), row(860, "b", images=2)], 2048, PAD)
    assert [r["image"] for r in packed["regions"]] == [0, 1, 2]
    assert packed["image_token_offsets"] == [1, 431, 431 + 421]


def test_best_fit_decreasing_by_hand():
    # Lengths 60, 50, 40, 30, 20 into 100: 60 → bin 0; 50 → bin 1; 40 → bin 0 (room 40, exact);
    # 30 → bin 1 (room 50 → 20); 20 → bin 1 (room 20, exact).
    rows = [row(n, f"r{n}") for n in (20, 60, 30, 50, 40)]
    packer = Packer(100, PAD, buffer_size=10)
    assert all(packer.add(r) == [] for r in rows)
    first, second = packer.flush()
    assert [d["seq_len"] for d in first["documents"]] == [60, 40]  # documents keep their input order
    assert [d["seq_len"] for d in second["documents"]] == [20, 30, 50]
    assert packer.stats.rows == 2 and packer.stats.documents == 5 and packer.stats.efficiency == 1.0


def test_buffer_bounds_the_lookahead():
    rows = [row(n, f"b{i}") for i, n in enumerate([60, 60, 40, 40])]
    packer = Packer(100, PAD, buffer_size=2)
    out = (
        packer.add(rows[0]) + packer.add(rows[1]) + packer.add(rows[2]) + packer.add(rows[3]) + packer.flush()
    )
    # The two 60s are packed before the 40s arrive: three rows (60, 60, 40 + 40), not two (60 + 40 twice).
    assert [[d["seq_len"] for d in p["documents"]] for p in out] == [[60], [60], [40, 40]]
    assert packer.stats.efficiency == pytest.approx(200 / 300)
    assert len(list(pack(rows, 100, PAD, buffer_size=4))) == 2


LENGTHS = {n: row(n, f"len{n}") for n in range(2, 301)}


@given(st.lists(st.integers(2, 300), min_size=1, max_size=40), st.integers(1, 16))
def test_packing_is_exact_complete_and_deterministic(lengths, buffer_size):
    rows = [LENGTHS[n] for n in lengths]
    packed = list(pack(rows, 300, PAD, buffer_size))
    assert shard.to_table(packed).equals(shard.to_table(list(pack(rows, 300, PAD, buffer_size))))
    assert all(p["seq_len"] == len(p["input_ids"]) == len(p["position_ids"]) == 300 for p in packed)
    documents = [d["sample_id"] for p in packed for d in p["documents"]]
    assert sorted(documents) == sorted(r["sample_id"] for r in rows)
    for p in packed:
        bounds = p["cu_seqlens"].tolist()
        assert bounds[0] == 0 and bounds[-1] == 300 and bounds == sorted(bounds)
        for start, end in itertools.pairwise(bounds):
            assert p["position_ids"][start:end].tolist() == list(range(end - start))
        used = sum(d["seq_len"] for d in p["documents"])
        assert (p["input_ids"][used:] == PAD).all() and (p["labels"][used:] == -100).all()


def test_errors():
    packer = Packer(100, PAD)
    with pytest.raises(ValueError, match="101 tokens > max_seq_len 100"):
        packer.add(row(101))
    with pytest.raises(ValueError, match="packed already"):
        packer.add(pack_rows([row(10)], 100, PAD))
    with pytest.raises(ValueError, match="different tokenizers"):
        pack_rows([row(10), {**row(11), "tokenizer_sha256": "0" * 64}], 100, PAD)
    with pytest.raises(ValueError, match="do not make one row"):
        pack_rows([row(60), row(50)], 100, PAD)
    with pytest.raises(ValueError, match="must be positive"):
        Packer(0, PAD)


def tiles_of(packed_row: dict) -> int:
    return sum(1 + w * h for w, h in packed_row["images_spatial_crop"])


def test_parse_packing():
    assert parse_packing(False, "sequence.packing") is None
    assert parse_packing(None, "sequence.packing") is None
    assert parse_packing(True, "sequence.packing") == PackingOptions(max_tiles=None, buffer=1024)
    assert parse_packing({}, "sequence.packing") == PackingOptions()
    assert parse_packing({"max_tiles": 24, "buffer": 64}, "sequence.packing") == PackingOptions(24, 64)
    assert parse_packing({"buffer": 8}, "s.p") == PackingOptions(max_tiles=None, buffer=8)
    bad = [
        ("yes", r"^sequence\.packing: must be true, false or a mapping"),
        (1, r"^sequence\.packing: must be true"),
        ({"max_tile": 3}, r"^sequence\.packing\.max_tile: unknown option; known: max_tiles, buffer"),
        ({"max_tiles": 0}, r"^sequence\.packing\.max_tiles: must be a positive integer, not 0"),
        ({"max_tiles": -4}, r"^sequence\.packing\.max_tiles: must be a positive integer"),
        ({"max_tiles": True}, r"^sequence\.packing\.max_tiles: must be a positive integer, not True"),
        ({"max_tiles": 2.5}, r"^sequence\.packing\.max_tiles: must be a positive integer"),
        ({"max_tiles": None}, r"^sequence\.packing\.max_tiles: must be a positive integer, not None"),
        ({"max_tiles": 8, "buffer": False}, r"^sequence\.packing\.buffer: must be a positive integer"),
        ({"buffer": "64"}, r"^sequence\.packing\.buffer: must be a positive integer"),
    ]
    for value, message in bad:
        with pytest.raises(ConfigError, match=message):
            parse_packing(value, "sequence.packing")
    with pytest.raises(ValueError, match="max_tiles must be a positive integer"):
        PackingOptions(max_tiles=0)


def test_row_tiles_counts_the_global_view_and_every_local_tile():
    rows = [
        synthetic_row("s", "a", 1100, [(2, 2)]),
        synthetic_row("s", "b", 20),
        synthetic_row("s", "c", 3000, [(1, 1), (3, 3)]),
        synthetic_row("s", "d", 1100, [(4, 1)]),
    ]
    table = shard.to_table(rows)
    assert row_tiles(table).tolist() == [5, 0, 2 + 10, 5]
    assert row_tiles(table.slice(1, 2)).tolist() == [0, 12]
    assert row_tiles(shard.to_table([])).tolist() == []
    assert row_tiles(pa.concat_tables([table.slice(0, 1), table.slice(2, 1)])).tolist() == [5, 12]


def test_tile_budget_rejects_whole_records():
    rows = [
        synthetic_row("s", "small", 1100, [(2, 2)]),  # 5 tiles
        synthetic_row("s", "big", 3000, [(1, 1), (3, 3)]),  # 12 tiles
        synthetic_row("t", "text", 30),
        # A split sample: part 2 alone is over the budget, so the whole record goes, once.
        synthetic_row("t", "split", 500, [(1, 1)], part=1),
        synthetic_row("t", "split", 2100, [(3, 3)], part=2),
        synthetic_row("t", "split", 2500, [(3, 3), (1, 1)], part=3),
        synthetic_row("s", "edge", 2100, [(3, 3)]),  # exactly 10: kept
    ]
    kept, rejects = tile_budget_rejects(shard.to_table(rows), 10)
    assert kept.schema == shard.SCHEMA and rejects.schema == reject_schema.SCHEMA
    assert kept.column("key").to_pylist() == ["small", "text", "edge"]
    assert rejects.to_pylist() == [
        {
            "source": "s",
            "key": "big",
            "sample_id": sample_id_for("s", "big"),
            "stage": "sequence",
            "reason": "too_many_tiles",
            "detail": "12 tiles > max_tiles 10",
            "value": 12.0,
        },
        {
            "source": "t",
            "key": "split",
            "sample_id": sample_id_for("t", "split"),
            "stage": "sequence",
            "reason": "too_many_tiles",
            "detail": f"part 3 ({sample_id_for('t', 'split')}-3) needs 12 tiles > max_tiles 10",
            "value": 12.0,
        },
    ]
    within, none = tile_budget_rejects(shard.to_table(rows), 12)
    assert within.num_rows == len(rows) and none.num_rows == 0 and none.schema == reject_schema.SCHEMA


def with_grids(row: dict, *grids: tuple[int, int]) -> dict:
    """`row` with other image grids (the packer reads only the grids, not the spans)."""
    return {**row, "images_spatial_crop": [list(grid) for grid in grids]}


def test_tile_budget_by_hand():
    a = with_grids(synthetic_row("s", "a", 60), (1, 5))  # 60 tokens, 6 tiles
    b = with_grids(synthetic_row("s", "b", 45), (1, 3), (1, 2))  # 45 tokens, 4 + 3 tiles
    c = with_grids(synthetic_row("s", "c", 35), (2, 2))  # 35 tokens, 5 tiles
    d = synthetic_row("s", "d", 5)  # no tiles
    # Tokens alone (100 a row): a + c + d fill a row exactly, with 11 tiles.
    token_only = list(pack([a, b, c, d], 100, PAD, buffer_size=8))
    assert [[doc["seq_len"] for doc in p["documents"]] for p in token_only] == [[60, 35, 5], [45]]
    assert [tiles_of(p) for p in token_only] == [11, 7]
    # With 10 tiles a row: sizes (tokens/100 + tiles/10) a 1.2, b 1.15, c 0.85, d 0.05; b misses a's tokens,
    # c misses both rows' tiles, d goes where the least combined room is left (a's row: 0.4 + 0.4).
    packer = Packer(100, PAD, buffer_size=8, max_tiles=10)
    assert all(packer.add(r) == [] for r in (a, b, c, d))
    budgeted = packer.flush()
    assert [[doc["seq_len"] for doc in p["documents"]] for p in budgeted] == [[60, 5], [45], [35]]
    assert [tiles_of(p) for p in budgeted] == [6, 7, 5]
    assert (packer.stats.tiles, packer.stats.tile_capacity, packer.stats.tile_fill) == (18, 30, 0.6)
    assert packer.stats.efficiency == pytest.approx(145 / 300)
    with pytest.raises(ValueError, match="has 11 tiles > max_tiles 10"):
        packer.add(with_grids(synthetic_row("s", "e", 50), (1, 1), (2, 4)))
    with pytest.raises(ValueError, match="must be positive"):
        Packer(100, PAD, max_tiles=0)


def budget_rows():
    """(tokens, grids) rows of every kind of mix: text only, one image, several."""
    grid = st.sampled_from([(1, 1), (2, 1), (1, 2), (2, 2), (3, 2), (3, 3)])
    return st.lists(st.tuples(st.integers(2, 250), st.lists(grid, max_size=2)), min_size=1, max_size=40)


@given(budget_rows(), st.integers(1, 16), st.integers(10, 30))
def test_budgeted_packing_is_within_both_budgets_complete_and_deterministic(made, buffer_size, max_tiles):
    rows = []
    for index, (tokens, grids) in enumerate(made):
        fitting = grids if sum(1 + w * h for w, h in grids) <= max_tiles else []
        rows.append(with_grids(synthetic_row("s", f"k{index}", tokens), *fitting))
    packed = list(pack(rows, 300, PAD, buffer_size, max_tiles))
    again = list(pack(rows, 300, PAD, buffer_size, max_tiles))
    assert shard.to_table(packed).equals(shard.to_table(again))
    assert all(p["seq_len"] == 300 and tiles_of(p) <= max_tiles for p in packed)
    documents = [d["sample_id"] for p in packed for d in p["documents"]]
    assert sorted(documents) == sorted(r["sample_id"] for r in rows)
    assert sum(tiles_of(p) for p in packed) == sum(tiles_of(r) for r in rows)


@pytest.mark.timeout(120)
def test_a_mixed_corpus_fills_both_axes():
    # 1500 captions, grounding and interleaved documents (COCO-like and web grids), max_seq_len 4096: with a
    # budget of 18 tiles no row is over it and tokens still fill ≥ 95% of the rows; token-only packing of the
    # same rows puts more than 18 tiles in some rows.
    rows = mixed_rows(1500)
    assert {(1, 1), (2, 2), (3, 3)} <= {tuple(g) for r in rows for g in r["images_spatial_crop"]}
    kept, rejects = tile_budget_rejects(shard.to_table(rows), 18)
    assert rejects.num_rows < 0.01 * len(rows)
    packer = Packer(4096, PAD, max_tiles=18)
    packed = [made for row in kept.to_pylist() for made in packer.add(row)] + packer.flush()
    tiles = [tiles_of(p) for p in packed]
    assert max(tiles) <= 18 and packer.stats.tiles == sum(tiles)
    assert packer.stats.efficiency >= 0.95 and packer.stats.tile_fill >= 0.7
    token_only = Packer(4096, PAD)
    unbudgeted = [made for row in rows for made in token_only.add(row)] + token_only.flush()
    assert max(tiles_of(p) for p in unbudgeted) > 18
    assert token_only.stats.to_dict().keys() == {"rows", "documents", "tokens", "token_fill"}


def test_stats_add_up_per_partition():
    first = PackingStats(
        documents=3, rows=2, tokens=150, capacity=200, tiles=9, tile_capacity=20, max_tiles=10
    )
    second = PackingStats(
        documents=1, rows=1, tokens=80, capacity=100, tiles=4, tile_capacity=10, max_tiles=10
    )
    total = first + second
    assert total == PackingStats(
        documents=4, rows=3, tokens=230, capacity=300, tiles=13, tile_capacity=30, max_tiles=10
    )
    assert PackingStats.merge([first, second]) == total == PackingStats() + first + second
    assert PackingStats.merge([]) == PackingStats()
    assert PackingStats.merge([PackingStats(max_tiles=10), PackingStats()]).max_tiles == 10
    assert total.to_dict() == {
        "rows": 3,
        "documents": 4,
        "tokens": 230,
        "token_fill": pytest.approx(230 / 300),
        "tiles": 13,
        "tile_fill": pytest.approx(13 / 30),
    }
    tokens_only = PackingStats(documents=2, rows=1, tokens=90, capacity=100, tiles=7)
    assert tokens_only.to_dict() == {"rows": 1, "documents": 2, "tokens": 90, "token_fill": 0.9}
    assert tokens_only.tile_fill == 0.0
    with pytest.raises(ValueError, match="different max_tiles"):
        first + tokens_only
    # Stats of packers that ran on partitions sum to the stats of one packer over all the rows' buffers.
    rows = mixed_rows(60, seed=3)
    whole = Packer(4096, PAD, buffer_size=20, max_tiles=24)
    parts = [Packer(4096, PAD, buffer_size=20, max_tiles=24) for _ in range(3)]
    for index, row in enumerate(rows):
        whole.add(row)
        parts[index // 20].add(row)
    whole.flush()
    assert PackingStats.merge(p.stats for p in parts) == whole.stats

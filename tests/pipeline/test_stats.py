"""pipeline.stats: exact numbers against a direct numpy/pyarrow recomputation, percentiles against numpy,
merging in any order, packed rows, and outputs with an empty or an all-rejected source."""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

import model_shapes
from pipeline import layout, packing, stats, tiling
from pipeline import tokenizer as tokenizers
from schemas import reject as reject_schema
from schemas import shard as shard_schema

SHAPE = tokenizers.load("default", model_shapes.load("tiny")).shape
SPECIAL = SHAPE.special_tokens
BYTE_IDS = tuple(range(3, 259))
CONTEXT = stats.context_for(SHAPE, 4096, BYTE_IDS)


def synthetic_rows(seed: int, n: int, source: str = "web") -> list[dict]:
    """Structurally valid shard rows: images with their official grids and spans, boxes, random text ids."""
    rng = np.random.default_rng(seed)
    rows = []
    for index in range(n):
        n_images = int(rng.choice([0, 1, 1, 2, 3]))
        sizes = [(int(rng.integers(8, 3000)), int(rng.integers(8, 3000))) for _ in range(n_images)]
        grids = [tiling.best_grid(size, SHAPE, cropping=n_images <= 2) for size in sizes]
        ids, offsets = [SPECIAL.bos], []
        for grid in grids:
            ids += rng.integers(3, 600, int(rng.integers(0, 5))).tolist()
            offsets.append(len(ids))
            ids += [SPECIAL.image] * layout.image_token_count(grid, SHAPE)
        ids += [SPECIAL.user, *rng.integers(3, 4000, int(rng.integers(1, 60))).tolist(), SPECIAL.eos]
        regions = [
            {"phrase": "thing", "image": i, "boxes": [[0.0, 0.0, w / (b + 1), h / 2] for b in range(i + 1)]}
            for i, (w, h) in enumerate(sizes)
            if rng.random() < 0.5
        ]
        image_tokens = ids.count(SPECIAL.image)
        loss = int(rng.integers(1, len(ids) - image_tokens + 1))
        rows.append(
            {
                "sample_id": f"{source}-{seed}-{index}",
                "source": source,
                "key": f"k{index}",
                "kind": "caption" if n_images else "text",
                "part": int(rng.choice([0, 0, 1, 2])),
                "input_ids": ids,
                "labels": [-100] * (len(ids) - loss) + ids[-loss:],
                "images": [
                    {"bytes": None, "path": "x.jpg", "format": "JPEG", "width_px": w, "height_px": h}
                    for w, h in sizes
                ],
                "images_spatial_crop": [list(g) for g in grids],
                "image_token_offsets": offsets,
                "regions": regions,
                "num_image_tokens": image_tokens,
                "num_text_tokens": len(ids) - image_tokens,
                "num_loss_tokens": loss,
                "seq_len": len(ids),
                "truncated": bool(rng.random() < 0.2),
                "special_strings_as_text": int(rng.choice([0, 0, 0, 1, 3])),
                "tokenizer_sha256": "t",
                "shape_fingerprint": "f",
                "position_ids": None,
                "cu_seqlens": None,
                "documents": None,
            }
        )
    return rows


def manifest_for(tables: dict[str, pa.Table], rejects: pa.Table | None = None) -> dict:
    names = sorted({*tables, *(rejects.column("source").to_pylist() if rejects is not None else [])})
    return {
        "model_shape": {"name": "tiny", "fingerprint": "f"},
        "tokenizer": {"sha256": "t"},
        "max_seq_len": 4096,
        "packing": None,
        "sources": {name: {"read": 0, "written": 0} for name in names},
        "shards": [
            {
                "source": name,
                "path": f"shards/{name}/part-00000.parquet",
                "rows": t.num_rows,
                "bytes": 100 + i,
            }
            for i, (name, t) in enumerate(tables.items())
        ],
        "rejects": [],
    }


def whole(table: pa.Table, manifest: dict, rejects: pa.Table | None = None) -> dict:
    partial = stats.shard_partial(table, CONTEXT, decode=lambda ids: "x" * len(ids))
    if rejects is not None:
        partial = stats.merge(partial, stats.reject_partial(rejects))
    return stats.finalize(partial, CONTEXT, manifest)


def nearest_rank(values: np.ndarray) -> dict:
    return {f"p{p}": int(np.percentile(values, p, method="inverted_cdf")) for p in (50, 90, 99)}


@given(st.lists(st.integers(-50, 10**6), min_size=1, max_size=200))
def test_percentiles_match_numpy_inverted_cdf(values):
    dist = stats.distribution(Counter(values))
    array = np.array(values)
    assert dist == {
        "count": len(values),
        "sum": int(array.sum()),
        "mean": pytest.approx(array.mean()),
        "min": int(array.min()),
        **nearest_rank(array),
        "max": int(array.max()),
    }


def test_every_number_matches_a_direct_recomputation():
    table = shard_schema.to_table(synthetic_rows(1, 60))
    result = whole(table, manifest_for({"web": table}))
    group = result["overall"]
    assert result["sources"]["web"]["rows"] == group["rows"] == table.num_rows

    for name, column in (
        ("text", "num_text_tokens"),
        ("image", "num_image_tokens"),
        ("loss", "num_loss_tokens"),
    ):
        values = table.column(column).to_numpy()
        assert group["tokens"][name]["sum"] == values.sum()
        assert {k: group["tokens"][name][k] for k in ("p50", "p90", "p99")} == nearest_rank(values)
    seq_len = table.column("seq_len").to_numpy()
    assert group["tokens"]["total"]["max"] == seq_len.max()
    assert sum(group["seq_len"]["histogram"]["counts"]) == table.num_rows
    expected_bins = np.histogram(seq_len, bins=group["seq_len"]["histogram"]["bin_edges"])[0]
    assert group["seq_len"]["histogram"]["counts"] == expected_bins.tolist()
    assert group["truncated"] == sum(table.column("truncated").to_pylist())
    assert group["samples"] == sum(p <= 1 for p in table.column("part").to_pylist())

    rows = table.to_pylist()
    images = [
        (image, grid, len(row["images"]))
        for row in rows
        for image, grid in zip(row["images"], row["images_spatial_crop"], strict=True)
    ]
    found = group["images"]
    assert (
        found["count"] == len(images) == sum(found["per_sequence"][k] * int(k) for k in found["per_sequence"])
    )
    assert sum(found["per_sequence"].values()) == table.num_rows
    assert found["grids"] == dict(sorted(Counter(f"{g[0]}x{g[1]}" for _, g, _ in images).items()))
    assert found["no_tiling"] == sum(n > 2 for _, _, n in images)
    assert found["tokens_per_image"]["sum"] == group["tokens"]["image"]["sum"]
    assert sum(map(sum, found["size_histogram"]["counts"])) == len(images)
    assert sum(found["aspect_ratio"]["counts"]) == len(images)
    padding = canvas = 0
    waste_bins = Counter()
    for image, grid, _ in images:
        box = (grid[0] * SHAPE.image_size, grid[1] * SHAPE.image_size)
        fit = tiling.contain_size((image["width_px"], image["height_px"]), box)
        padding += box[0] * box[1] - fit[0] * fit[1]
        canvas += box[0] * box[1]
        waste_bins[(box[0] * box[1] - fit[0] * fit[1]) * 100 // (box[0] * box[1])] += 1
    assert found["padding_waste"]["share"] == padding / canvas
    assert found["padding_waste"]["histogram"]["counts"] == [waste_bins[i] for i in range(100)]

    boxes = [len(region["boxes"]) for row in rows for region in row["regions"]]
    grounding = group["grounding"]
    assert grounding["boxes"] == sum(boxes) == sum(grounding["box_area_share"]["counts"])
    assert sum(grounding["refs_per_sequence"].values()) == table.num_rows
    assert grounding["sequences_with_regions"] == sum(bool(row["regions"]) for row in rows)

    ids = np.concatenate([np.array(row["input_ids"]) for row in rows])
    ordinary = ids[~np.isin(ids, CONTEXT.special_ids)]
    text = group["text"]
    assert text["tokens"] == ordinary.size
    assert text["byte_fallback_share"] == np.isin(ordinary, BYTE_IDS).sum() / ordinary.size
    counted = Counter(ordinary.tolist())
    assert [t["count"] for t in text["top_tokens"]] == sorted(counted.values(), reverse=True)[:20]
    literal = [row["special_strings_as_text"] for row in rows]
    assert text["special_strings_as_text"] == {
        "sequences": sum(n > 0 for n in literal),
        "occurrences": sum(literal),
    }
    sampled = [row for i, row in enumerate(rows) if i % 16 == 0]
    assert text["chars_sample"]["rows"] == len(sampled) and text["chars_per_token"] == 1.0

    kinds = Counter(table.column("kind").to_pylist())
    assert {k: g["rows"] for k, g in result["kinds"].items()} == kinds
    mixture = result["mixture"]
    assert mixture["vl_tokens"] == sum(r["seq_len"] for r in rows if r["images"])
    assert mixture["text_only_tokens"] == sum(r["seq_len"] for r in rows if not r["images"])
    assert result["shards"]["bytes"]["sum"] == 100 and result["shards"]["count"] == 1


@given(st.lists(st.integers(0, 59), max_size=6, unique=True), st.randoms(use_true_random=False))
def test_merging_in_any_order_gives_the_same_result(cuts, random):
    table = shard_schema.to_table(synthetic_rows(2, 60) + synthetic_rows(3, 20, source="other"))
    rejects = reject_schema.to_table(
        [
            reject_schema.reject("web", f"r{i}", "sample", ("empty_text", "bad_text")[i % 2], "d")
            for i in range(9)
        ]
    )
    manifest = manifest_for({"web": table}, rejects)
    expected = whole(table, manifest, rejects)
    bounds = [0, *sorted(cuts), table.num_rows]
    partials = [
        stats.shard_partial(table.slice(a, b - a), CONTEXT, lambda ids: "x" * len(ids), a)
        for a, b in itertools.pairwise(bounds)
    ]
    partials += [stats.reject_partial(rejects.slice(0, 4)), stats.reject_partial(rejects.slice(4))]
    random.shuffle(partials)
    while len(partials) > 1:  # merge random neighbours: any tree shape, any order
        i = random.randrange(len(partials) - 1)
        first, second = partials[i], partials[i + 1]
        partials[i : i + 2] = [
            stats.merge(second, first) if random.random() < 0.5 else stats.merge(first, second)
        ]
    assert stats.finalize(partials[0], CONTEXT, manifest) == expected


def test_packed_rows_count_documents():
    rows = [row for row in synthetic_rows(4, 12) if row["seq_len"] <= 4096]
    for row in rows:
        row["input_ids"] = np.array(row["input_ids"], dtype=np.int32)
        row["labels"] = np.array(row["labels"], dtype=np.int32)
    packer = packing.Packer(4096, SPECIAL.pad)
    packed = [made for row in rows for made in packer.add(row)] + packer.flush()
    table = shard_schema.to_table(packed)
    result = whole(table, manifest_for({"packed": table}))
    group = result["overall"]
    assert group["packing"]["documents"] == packer.stats.documents == len(rows)
    assert group["packing"]["efficiency"] == pytest.approx(packer.stats.efficiency)
    assert group["samples"] == sum(row["part"] <= 1 for row in rows)
    literal = [row["special_strings_as_text"] for row in rows]
    assert group["text"]["special_strings_as_text"] == {
        "sequences": sum(n > 0 for n in literal),
        "occurrences": sum(literal),
    }
    assert group["images"]["per_sequence"] == {
        str(k): v for k, v in sorted(Counter(len(row["images"]) for row in rows).items())
    }
    assert group["images"]["no_tiling"] == sum(len(r["images"]) for r in rows if len(r["images"]) > 2)
    assert result["mixture"]["per_source"]["web"]["tokens"] == sum(row["seq_len"] for row in rows)
    assert list(result["sources"]) == ["packed"]


def test_empty_and_all_rejected_sources_give_a_valid_result():
    rejects = reject_schema.to_table(
        [
            reject_schema.reject("broken", "b", "read", "malformed_record", "d"),
            reject_schema.reject("broken", "a", "read", "malformed_record", "d"),
        ]
    )
    manifest = manifest_for({}, rejects)
    manifest["sources"]["empty"] = {"read": 0, "written": 0}
    result = stats.finalize(stats.reject_partial(rejects), CONTEXT, manifest)
    assert result["sources"]["broken"]["rejected"] == 2 and result["sources"]["broken"]["rows"] == 0
    assert result["rejects"]["by_reason"] == {"malformed_record": {"count": 2, "example_key": "a"}}
    assert result["sources"]["empty"]["tokens"]["total"] == stats.distribution(Counter())
    assert result["overall"]["tokens"]["image_share"] is None
    assert result["mixture"]["vl_to_text_only"] is None


def measurement_rows(seed: int, n: int) -> pa.Table:
    """Filter measurements of two sources: image sides, padding shares and text lengths, some null, some
    dropped by the filter on their quantity or by another one."""
    from pipeline.filters import MEASUREMENT_SCHEMA

    rng = np.random.default_rng(seed)
    side = rng.integers(1, 5000, n)
    share = rng.random(n)
    chars = rng.integers(0, 2000, n)
    dropped = np.where(side < 32, "min_image_side", np.where(chars > 1500, "max_text_chars", None))
    columns = {
        "source": [f"s{i % 2}" for i in range(n)],
        "key": [f"k{i}" for i in range(n)],
        "sample_id": [f"{i:08x}" for i in range(n)],
        "image_min_side": pa.array(side, mask=rng.random(n) < 0.1),
        "padding_share": pa.array(share),
        "text_chars": pa.array(chars),
        "dropped_by": pa.array(dropped.tolist(), pa.string()),
    }
    return pa.Table.from_pydict(
        {
            name: columns.get(name, pa.nulls(n, field.type))
            for name, field in zip(MEASUREMENT_SCHEMA.names, MEASUREMENT_SCHEMA, strict=True)
        },
        schema=MEASUREMENT_SCHEMA,
    )


def test_filtered_distributions_match_a_direct_recomputation_in_any_merge_order():
    table = measurement_rows(7, 500)
    manifest = {"filters": {"thresholds": {"s0": {"min_image_side": 32, "max_text_chars": 1500}}}}
    whole = stats.finalize(stats.filter_partial(table), CONTEXT, manifest)["filters"]
    pieces = [stats.filter_partial(table.slice(start, 60)) for start in range(0, 500, 60)]
    merged = stats.Partial()
    for piece in reversed(pieces):
        merged = stats.merge(piece, merged)
    assert stats.finalize(merged, CONTEXT, manifest)["filters"] == whole

    rows = table.to_pylist()
    side = whole["s0"]["image_min_side"]
    values = [r["image_min_side"] for r in rows if r["source"] == "s0" and r["image_min_side"] is not None]
    assert side["filters"] == {"min_image_side": 32}
    assert (side["measured"], side["min"], side["max"]) == (len(values), min(values), max(values))
    assert side["cut"] == sum(v < 32 for v in values)
    assert side["dropped_other"] == sum(
        r["dropped_by"] == "max_text_chars"
        for r in rows
        if r["source"] == "s0" and r["image_min_side"] is not None
    )
    edges = side["histogram"]["bin_edges"]
    expected = np.histogram(np.clip(values, 1, edges[-1] - 1e-9), bins=edges)[0].tolist()
    assert side["histogram"]["counts"] == expected
    assert sum(side["histogram"]["cut_counts"][: edges.index(32.0)]) == side["cut"]
    # Source s1 has no thresholds: its quantities are still plotted, nothing counts as cut.
    assert whole["s1"]["text_chars"]["filters"] == {} and whole["s1"]["text_chars"]["cut"] == 0
    share = whole["s0"]["padding_share"]["histogram"]
    assert len(share["counts"]) == 100 and sum(share["counts"]) == 250
    assert stats.filter_bins("padding_share", np.array([0.0, 0.005, 0.01, 0.999, 1.0])).tolist() == [
        0,
        0,
        1,
        99,
        99,
    ]


# ------------------------------------------------------------------------------------------------
# damaged rows: counted where harmless, never an exception


def test_impossible_values_are_counted_where_harmless():
    """Ids outside the vocabulary, grids and sizes that are not positive, an offset outside its row, a
    region naming no image of its row and a non-finite box: once a ValueError (bincount of a negative
    position), an IndexError (the region's image) or RuntimeWarnings; now counted as the docstring says."""
    sound = synthetic_rows(5, 40)
    rows = copy.deepcopy(sound)
    text_row = next(r for r in rows if not r["images"])
    text_row["input_ids"] += [-7, 2**31 - 1, -(2**31)]
    pictured = [r for r in rows if r["images"]]
    assert len(pictured) >= 6
    pictured[0]["images_spatial_crop"][0] = [0, 0]
    pictured[1]["images_spatial_crop"][0] = [50, 1]
    pictured[2]["image_token_offsets"][0] = -50
    pictured[3]["images"][0]["width_px"] = 0
    pictured[4]["regions"].append({"phrase": "x", "image": 9, "boxes": [[0.0, 0.0, 1.0, 1.0]] * 2})
    pictured[5]["regions"].append({"phrase": "y", "image": 0, "boxes": [[0.0, 0.0, float("nan"), 1.0]]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        damaged = whole(shard_schema.to_table(rows), manifest_for({}))["overall"]
    expected = whole(shard_schema.to_table(sound), manifest_for({}))["overall"]

    text, images = damaged["text"], damaged["images"]
    assert text["ids_outside_vocabulary"] == 3 and expected["text"]["ids_outside_vocabulary"] == 0
    assert text["tokens"] == expected["text"]["tokens"] + 3
    assert text["distinct_tokens"] == expected["text"]["distinct_tokens"] + 3
    assert images["count"] == expected["images"]["count"]
    assert images["per_sequence"] == expected["images"]["per_sequence"]  # the offset stays in its row
    assert images["grids"]["0x0"] == 1 and images["grids"]["50x1"] == 1
    assert images["tokens_per_image"]["count"] == images["count"] - 2
    assert sum(images["aspect_ratio"]["counts"]) == images["count"] - 1
    assert sum(images["padding_waste"]["histogram"]["counts"]) == images["count"] - 2
    grounding = damaged["grounding"]
    assert grounding["boxes"] == expected["grounding"]["boxes"] + 3
    assert sum(grounding["box_area_share"]["counts"]) == expected["grounding"]["boxes"]


def test_the_text_sample_decodes_only_ids_the_tokenizer_knows():
    """Before, every ordinary id went to the decoder, which raises on an id it does not know (sentencepiece:
    IndexError; the Hugging Face backend: OverflowError on a negative id)."""
    known = 1000
    context = stats.context_for(SHAPE, 4096, BYTE_IDS, piece_count=known)
    rows = synthetic_rows(6, 20)
    rows[0]["input_ids"] += [-5, known, 10**6]

    def strict_decode(ids: list[int]) -> str:
        assert all(0 <= i < known for i in ids), ids
        return "x" * len(ids)

    cells = stats.shard_partial(shard_schema.to_table(rows), context, strict_decode).cells.values()
    ordinary = [
        i for row in rows[::16] for i in row["input_ids"] if i not in context.special_ids and 0 <= i < known
    ]
    assert sum(c.sampled_tokens for c in cells) == sum(c.sampled_chars for c in cells) == len(ordinary)


def test_files_left_out_are_listed_as_problems():
    a = stats.Partial(problems={"shards/b.parquet": "cannot be read: truncated"})
    b = stats.Partial(problems={"rejects/a.parquet": "cannot be read: missing"})
    merged = stats.merge(a, b)
    assert stats.merge(b, a) == merged
    assert stats.finalize(merged, CONTEXT, manifest_for({}))["problems"] == [
        {"path": "rejects/a.parquet", "message": "cannot be read: missing"},
        {"path": "shards/b.parquet", "message": "cannot be read: truncated"},
    ]
    assert stats.finalize(stats.Partial(), CONTEXT, manifest_for({}))["problems"] == []


# ------------------------------------------------------------------------------------------------
# merging in place, token counts as arrays


def test_token_counts_are_an_array_merged_in_place_without_sharing():
    """A merge used to copy the whole token Counter of everything merged so far (quadratic over files)."""
    first = stats.shard_partial(shard_schema.to_table(synthetic_rows(8, 20)), CONTEXT)
    second = stats.shard_partial(shard_schema.to_table(synthetic_rows(9, 20)), CONTEXT)
    key = ("web", "caption")
    assert first.cells[key].token_ids.shape == (SHAPE.language.vocab_size,)
    expected = stats.merge(first, second)
    kept = copy.deepcopy(second)

    merged = stats.Partial().add(first)
    array = merged.cells[key].token_ids
    assert array is not first.cells[key].token_ids  # adopted as a copy: `first` stays its own
    assert merged.add(second) is merged and merged.cells[key].token_ids is array  # added in place
    assert merged == expected and second == kept and first != merged

    # Partials come back from Ray tasks pickled (sparse: a few KB, not the vocabulary) and read-only.
    received = pickle.loads(pickle.dumps(second))
    assert received == second and len(pickle.dumps(second)) < 64 * 1024
    for cell in received.cells.values():
        cell.token_ids.flags.writeable = False
    assert stats.Partial().add(first).add(received) == expected
    assert stats.Partial().add(received).add(first) == expected


def test_packed_rows_count_tokens_and_tiles_per_row():
    rows = [row for row in synthetic_rows(10, 16) if row["seq_len"] <= 4096]
    for row in rows:
        row["input_ids"] = np.array(row["input_ids"], dtype=np.int32)
        row["labels"] = np.array(row["labels"], dtype=np.int32)
    packer = packing.Packer(4096, SPECIAL.pad)
    packed = [made for row in rows for made in packer.add(row)] + packer.flush()
    table = shard_schema.to_table(packed)
    group = whole(table, manifest_for({"packed": table}))["overall"]["packing"]
    tokens = [sum(d["seq_len"] for d in row["documents"]) for row in table.to_pylist()]
    tiles = [sum(1 + w * h for w, h in row["images_spatial_crop"]) for row in table.to_pylist()]
    assert group["tokens_per_row"]["sum"] == sum(tokens) == group["document_tokens"]
    assert (group["tokens_per_row"]["min"], group["tokens_per_row"]["max"]) == (min(tokens), max(tokens))
    assert group["tiles_per_row"]["sum"] == sum(tiles) and group["tiles_per_row"]["max"] == max(tiles)
    for name, values in (("tokens_per_row", tokens), ("tiles_per_row", tiles)):
        histogram = group[name]["histogram"]
        assert histogram["counts"] == np.histogram(values, bins=histogram["bin_edges"])[0].tolist()
    assert len(group["tiles_per_row"]["histogram"]["counts"]) <= stats.COUNT_BINS
    assert whole(table, manifest_for({"packed": table}))["sources"]["packed"]["packing"] == group


def test_image_sizes_on_a_log_grid_and_tokens_per_image_by_value():
    table = shard_schema.to_table(synthetic_rows(11, 40))
    result = whole(table, manifest_for({"web": table}))
    images = [image for row in table.to_pylist() for image in row["images"]]
    grids = [g for row in table.to_pylist() for g in row["images_spatial_crop"]]
    for group in (result["overall"], result["sources"]["web"]):  # per source as overall
        cells = Counter()
        for image in images:
            cells[
                (
                    int(np.floor(4 * np.log2(image["width_px"]))),
                    int(np.floor(4 * np.log2(image["height_px"]))),
                )
            ] += 1
        assert group["images"]["size_log_histogram"] == {
            "bins_per_octave": 4,
            "cells": [[i, j, n] for (i, j), n in sorted(cells.items())],
        }
        tokens = Counter(layout.image_token_count(tuple(g), SHAPE) for g in grids)
        assert group["images"]["tokens_per_image_counts"] == {str(k): tokens[k] for k in sorted(tokens)}


def test_the_manifest_packing_dedup_and_decontamination_records():
    base = manifest_for({})
    flat = {**base, "packing": {"rows": 3, "documents": 9, "efficiency": 0.5}}
    assert stats.finalize(stats.Partial(), CONTEXT, flat)["packing"] == {
        "total": {"rows": 3, "documents": 9, "token_fill": 0.5, "tile_fill": None},
        "sources": {},
    }
    nested = {
        **base,
        "packing": {
            "total": {"rows": 3, "documents": 9, "token_fill": 0.9, "tile_fill": 0.8},
            "per_source": {"b": {"rows": 1}, "a": {"rows": 2, "documents": 4, "token_fill": 1.0}},
        },
    }
    found = stats.finalize(stats.Partial(), CONTEXT, nested)["packing"]
    assert list(found["sources"]) == ["a", "b"] and found["total"]["tile_fill"] == 0.8
    assert found["sources"]["b"] == {"rows": 1, "documents": None, "token_fill": None, "tile_fill": None}
    for broken in ([1] * 64, "many", None):
        dedup = {**base, "dedup": {"duplicates": 2, "near_distance_histogram": broken, "near_distance": 5}}
        assert stats.finalize(stats.Partial(), CONTEXT, dedup)["dedup"] == {
            "duplicates": 2,
            "near_distance_histogram": None,
            "near_distance": {"": 5},
        }
    nothing = stats.finalize(stats.Partial(), CONTEXT, base)
    assert (nothing["packing"], nothing["dedup"], nothing["decontamination"]) == (None, None, None)
    counts = {**base, "decontamination": {"z": 1, "a": {"images": 2}}}
    assert list(stats.finalize(stats.Partial(), CONTEXT, counts)["decontamination"]) == ["a", "z"]

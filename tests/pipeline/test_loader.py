"""pipeline.loader: the collated batch against one built here from the spec, rank × worker splits,
determinism, resume, sampling weights, checksums, packed rows and the balanced order."""

from __future__ import annotations

import io
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from shard_support import TOY, image, png, row_of, text, write_output
from synthetic_rows import mixed_rows

from model_shapes import masks
from pipeline import layout, loader
from pipeline.cost import CostModel
from pipeline.packing import pack_rows


def official_pixels(data: bytes, grid: list[int]) -> torch.Tensor:
    """The tiles of one image as the spec (§1) describes the official processor: pad, cut row-major, scale."""
    picture = Image.open(io.BytesIO(data)).convert("RGB")
    fill = (127, 127, 127)
    views = [ImageOps.pad(picture, (384, 384), color=fill)]
    canvas = ImageOps.pad(picture, (grid[0] * 384, grid[1] * 384), color=fill)
    views += [
        canvas.crop((x * 384, y * 384, x * 384 + 384, y * 384 + 384))
        for y in range(grid[1])
        for x in range(grid[0])
    ]
    tiles = torch.stack([torch.from_numpy(np.asarray(v).copy()).permute(2, 0, 1) for v in views])
    return tiles.float().div(255).sub(0.5).div(0.5)


def official_batch(rows: list[dict]) -> dict[str, torch.Tensor]:
    length = max(len(r["input_ids"]) for r in rows)
    tiles = [
        torch.cat(
            [
                official_pixels(i["bytes"], g)
                for i, g in zip(r["images"], r["images_spatial_crop"], strict=True)
            ]
        )
        if r["images"]
        else torch.zeros(1, 3, 384, 384)
        for r in rows
    ]
    most_images = max(1, max(len(r["images"]) for r in rows))
    batch = {
        "input_ids": torch.full((len(rows), length), 2),
        "labels": torch.full((len(rows), length), -100),
        "attention_mask": torch.zeros(len(rows), length, dtype=torch.long),
        "images": torch.zeros(len(rows), max(len(t) for t in tiles), 3, 384, 384),
        "images_seq_mask": torch.zeros(len(rows), length, dtype=torch.bool),
        "images_spatial_crop": torch.zeros(len(rows), most_images, 2, dtype=torch.long),
    }
    for b, r in enumerate(rows):
        n = len(r["input_ids"])
        batch["input_ids"][b, length - n :] = torch.tensor(r["input_ids"].tolist())
        batch["labels"][b, length - n :] = torch.tensor(r["labels"].tolist())
        batch["attention_mask"][b, length - n :] = 1
        batch["images_seq_mask"][b, length - n :] = (
            torch.tensor(r["input_ids"].tolist()) == TOY.special_tokens.image
        )
        batch["images"][b, : len(tiles[b])] = tiles[b]
        for k, grid in enumerate(r["images_spatial_crop"]):
            batch["images_spatial_crop"][b, k] = torch.tensor(grid)
    return batch


def test_collate_is_the_official_batch():
    rows = [
        row_of("s", "a", "caption", [image(0), text("A red wide picture.")], [png(640, 300)]),
        row_of(
            "s",
            "b",
            "interleaved",
            [image(0), text("x"), image(1), image(2)],
            [png(500, 90), png(20, 30), png(90, 20)],
        ),
        row_of("s", "c", "text", [text("Only text.")]),
    ]
    batch = loader.collate(rows, TOY)
    expected = official_batch(rows)
    assert batch.keys() == expected.keys()
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype and torch.equal(batch[key], value), key
    for b, row in enumerate(rows):
        counts = sum(layout.image_token_count(tuple(g), TOY) for g in row["images_spatial_crop"])
        assert int(batch["images_seq_mask"][b].sum()) == counts
    assert batch["images_spatial_crop"][2].tolist() == [[0, 0]] * 3 and not batch["images"][2].any()


def test_packed_rows_carry_positions_and_boundaries():
    docs = [row_of("s", str(i), "text", [text("word " * (i + 1))]) for i in range(3)]
    rows = [pack_rows(docs[:2], 40, 2), pack_rows(docs[2:], 30, 2)]
    batch = loader.collate(rows, TOY)
    cu = batch["cu_seqlens"]
    assert cu.dtype == torch.int32 and cu[0] == 0 and cu[-1] == 80 and 40 in cu.tolist()
    masks.document_ids(cu, 2, 40)  # a well-formed varlen layout: every row start is a boundary
    assert torch.equal(batch["position_ids"], masks.default_position_ids(2, 40, torch.device("cpu"), cu))


def text_output(folder, counts: dict[str, int]):
    rows = {
        name: [row_of(name, f"{name}{i}", "text", [text(f"Row {i} of {name}.")]) for i in range(n)]
        for name, n in counts.items()
    }
    return str(write_output(folder, rows))


def sample_ids(dataset: loader.ShardDataset, monkeypatch, workers: int = 1) -> list[list[list[str]]]:
    """Each worker's batches, as lists of sample_ids."""
    monkeypatch.setattr(loader, "collate", lambda rows, shape: [r["sample_id"] for r in rows])
    found = []
    for worker in range(workers):
        monkeypatch.setattr(
            loader, "get_worker_info", lambda w=worker: SimpleNamespace(id=w, num_workers=workers)
        )
        found.append(list(dataset))
    return found


def test_ranks_and_workers_cover_every_row_once(tmp_path, monkeypatch):
    location = text_output(tmp_path, {"a": 13, "b": 6})
    everything = sorted(
        r
        for [batches] in [sample_ids(loader.ShardDataset(location, 4), monkeypatch)]
        for b in batches
        for r in b
    )
    assert len(everything) == 19 == len(set(everything))
    for world in (1, 2, 3):
        for workers in (1, 2, 3):
            seen = [
                r
                for rank in range(world)
                for batches in sample_ids(
                    loader.ShardDataset(location, 2, rank=rank, world_size=world, seed=5),
                    monkeypatch,
                    workers,
                )
                for b in batches
                for r in b
            ]
            assert sorted(seen) == everything, (world, workers)
    dropped = [
        len(batches)
        for rank in range(3)
        for batches in sample_ids(
            loader.ShardDataset(location, 2, rank=rank, world_size=3, drop_last=True), monkeypatch
        )
    ]
    assert dropped == [3, 3, 3]


def test_order_is_deterministic_by_seed_and_epoch(tmp_path):
    location = text_output(tmp_path, {"a": 30})
    dataset = loader.ShardDataset(location, 4, seed=1)
    assert np.array_equal(dataset.order(0), loader.ShardDataset(location, 4, seed=1).order(0))
    assert not np.array_equal(dataset.order(0), dataset.order(1))
    assert not np.array_equal(dataset.order(0), loader.ShardDataset(location, 4, seed=2).order(0))
    assert np.array_equal(loader.ShardDataset(location, 4, shuffle=False).order(3), np.arange(30))


def test_resume_from_a_saved_position(tmp_path):
    location = text_output(tmp_path, {"a": 10, "b": 5})
    make = lambda: loader.ShardLoader(loader.ShardDataset(location, 3, seed=7))  # noqa: E731
    whole = make()
    uninterrupted = [b["input_ids"] for _ in range(2) for b in whole]
    first = make()
    seen = []
    for batch in first:
        seen.append(batch["input_ids"])
        if len(seen) == 2:
            break
    state = first.state_dict()
    assert (state["epoch"], state["batches"]) == (0, 2)
    resumed = make()
    resumed.load_state_dict(state)
    seen += [b["input_ids"] for b in resumed] + [b["input_ids"] for b in resumed]
    assert len(seen) == len(uninterrupted) == 10
    assert all(torch.equal(x, y) for x, y in zip(seen, uninterrupted, strict=True))
    with pytest.raises(ValueError, match="seed"):
        loader.ShardLoader(loader.ShardDataset(location, 3, seed=8)).load_state_dict(state)


def test_workers_deliver_the_same_batches(tmp_path):
    location = text_output(tmp_path, {"a": 9})
    in_process = [b["input_ids"] for b in loader.ShardLoader(loader.ShardDataset(location, 2))]
    two = [b["input_ids"] for b in loader.ShardLoader(loader.ShardDataset(location, 2), num_workers=2)]
    assert len(two) == 5 and all(torch.equal(x, y) for x, y in zip(in_process, two, strict=True))


def test_sampling_weights(tmp_path):
    location = text_output(tmp_path, {"vl": 20, "text": 5, "unused": 3})
    dataset = loader.ShardDataset(
        location, 8, weights={"vl": 0.7, "text": 0.3, "unused": 0}, samples_per_epoch=20000
    )
    order = dataset.order(0)
    sources = np.array(dataset.sources)[dataset._source_of_row[order]]
    assert len(order) == 20000 and "unused" not in sources
    assert abs((sources == "vl").mean() - 0.7) < 0.015
    assert abs((sources == "text").mean() - 0.3) < 0.015
    # a source is used up before any of its rows repeats
    text_rows = order[sources == "text"]
    assert len(set(text_rows[:5].tolist())) == 5
    with pytest.raises(ValueError, match="not in this output"):
        loader.ShardDataset(location, 8, weights={"nope": 1.0})
    with pytest.raises(ValueError, match=r"no weight for sources \['unused'\]"):
        loader.ShardDataset(location, 8, weights={"vl": 0.7, "text": 0.3})


def test_checksums_are_verified_on_request(tmp_path):
    location = text_output(tmp_path, {"a": 4})
    path = tmp_path / loader.ShardDataset(location, 2).files[0]["path"]  # the name the manifest lists
    data = bytearray(path.read_bytes())
    data[-20] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 differs"):
        list(loader.ShardDataset(location, 2, verify_checksums=True))


WORLD = 8
ROWS = 2000


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[str, np.ndarray, np.ndarray, list[str]]:
    """An output of 2000 caption, grounding and interleaved rows in two sources, with each row's tiles,
    tokens and sample_id (rows numbered in manifest order)."""
    rows = mixed_rows(ROWS, seed=11)
    by_source = {"web": rows[:1200], "coco": rows[1200:]}
    by_source["coco"] = [{**r, "source": "coco"} for r in by_source["coco"]]
    location = str(write_output(tmp_path_factory.mktemp("mixed"), by_source))
    ordered = [r for name in by_source for r in by_source[name]]
    tiles = np.array([sum(1 + w * h for w, h in r["images_spatial_crop"]) for r in ordered])
    tokens = np.array([r["seq_len"] for r in ordered])
    return location, tiles, tokens, [r["sample_id"] for r in ordered]


def micro_batches(location: str, batch_size: int, epoch: int = 0, **options) -> list[list[np.ndarray]]:
    """Per rank, its micro-batches (arrays of row indices) of the epoch's full steps."""
    per_rank = [
        loader.ShardDataset(location, batch_size, rank=r, world_size=WORLD, **options).rank_rows(epoch)
        for r in range(WORLD)
    ]
    steps = min(len(rows) for rows in per_rank) // batch_size
    return [[rows[k * batch_size : (k + 1) * batch_size] for k in range(steps)] for rows in per_rank]


def imbalance(batches: list[list[np.ndarray]], amount: np.ndarray) -> np.ndarray:
    """Per step: the largest rank's `amount` over the mean over ranks (1.0 for a step with none)."""
    per_step = np.array([[amount[b].sum() for b in rank] for rank in batches], dtype=np.float64).T
    mean = per_step.mean(axis=1)
    return np.where(mean > 0, per_step.max(axis=1) / np.where(mean > 0, mean, 1), 1.0)


@pytest.mark.timeout(120)
def test_balanced_steps_carry_the_same_tiles_on_every_rank(mixed):
    location, tiles, tokens, _ = mixed
    for batch_size in (1, 2, 4):
        plain = imbalance(micro_batches(location, batch_size, seed=3), tiles)
        balanced_batches = micro_batches(location, batch_size, seed=3, balance="tiles")
        balanced = imbalance(balanced_batches, tiles)
        assert len(balanced) == len(plain) == ROWS // (WORLD * batch_size)
        assert np.percentile(plain, 99) > 1.3, batch_size
        if batch_size == 1:
            # One row a rank: a step can only hold rows of equal tiles, and the few steps where one tile
            # count runs out and the next begins mix them (250 steps here).
            assert np.median(balanced) == 1.0 and (balanced <= 1.10).mean() >= 0.9, np.sort(balanced)[-8:]
        else:
            assert np.percentile(balanced, 99) <= 1.10, (batch_size, np.sort(balanced)[-5:])
        assert np.percentile(imbalance(balanced_batches, tokens), 50) <= 1.10
    costs = CostModel.for_shape(TOY).total(tiles, tokens)
    by_cost = micro_batches(location, 2, seed=3, balance="cost")
    assert np.percentile(imbalance(by_cost, costs), 99) <= 1.10
    assert np.percentile(imbalance(micro_batches(location, 2, seed=3), costs), 99) > 1.2


def test_balanced_order_has_every_row_once_and_depends_on_seed_and_epoch(mixed):
    location, *_ = mixed
    for batch_size in (1, 3):
        make = lambda seed=0, size=batch_size: loader.ShardDataset(  # noqa: E731
            location, size, world_size=WORLD, seed=seed, balance="tiles"
        )
        order = make().order(0)
        assert sorted(order.tolist()) == list(range(ROWS))
        assert np.array_equal(order, make().order(0))
        assert not np.array_equal(order, make().order(1))
        assert not np.array_equal(order, make(seed=1).order(0))
        # The rows of the last partial step keep their drawn order, at the end.
        tail = ROWS % (WORLD * batch_size)
        drawn = loader.ShardDataset(location, batch_size, world_size=WORLD).order(0)
        assert np.array_equal(order[ROWS - tail :], drawn[ROWS - tail :])
        ranks = [
            loader.ShardDataset(
                location, batch_size, rank=r, world_size=WORLD, balance="tiles", drop_last=True
            ).rank_rows(0)
            for r in range(WORLD)
        ]
        assert len({len(rows) for rows in ranks}) == 1 and len(ranks[0]) % batch_size == 0
        assert len(set(np.concatenate(ranks).tolist())) == sum(map(len, ranks)) == ROWS - tail
    unshuffled = loader.ShardDataset(location, 2, world_size=WORLD, shuffle=False, balance="tiles")
    assert sorted(unshuffled.order(0).tolist()) == list(range(ROWS))
    weighted = loader.ShardDataset(
        location, 2, world_size=WORLD, balance="tiles", weights={"web": 1, "coco": 1}, samples_per_epoch=900
    )
    assert len(weighted.order(0)) == 900
    drawn = weighted._drawn_order(np.random.default_rng([0, 0]))
    assert np.array_equal(np.sort(weighted.order(0)), np.sort(drawn))


def test_without_balance_the_order_is_the_drawn_permutation(mixed):
    location, *_ = mixed
    dataset = loader.ShardDataset(location, 2, rank=3, world_size=WORLD, seed=9)
    expected = np.random.default_rng([9, 4]).permutation(ROWS)
    assert np.array_equal(dataset.order(4), expected)
    assert np.array_equal(dataset.rank_rows(4), expected[3::WORLD])


def test_balanced_reading_resumes_and_splits_over_workers(tmp_path, monkeypatch):
    rows = mixed_rows(100, seed=5)
    location, ids = str(write_output(tmp_path, {"mix": rows})), [r["sample_id"] for r in rows]
    make = lambda balance="tiles": loader.ShardDataset(  # noqa: E731
        location, 2, rank=5, world_size=WORLD, seed=4, balance=balance
    )
    batches = sample_ids(make(), monkeypatch)[0]
    expected = make().rank_rows(0)
    assert len(batches) == len(make()) == -(-len(expected) // 2)
    assert [r for b in batches for r in b] == [ids[i] for i in expected]
    split = sample_ids(make(), monkeypatch, workers=3)
    assert sorted(r for worker in split for b in worker for r in b) == sorted(r for b in batches for r in b)
    monkeypatch.setattr(loader, "get_worker_info", lambda: None)
    first = loader.ShardLoader(make())
    seen = []
    for batch in first:
        seen.append(batch)
        if len(seen) == 4:
            break
    state = first.state_dict()
    assert state["balance"] == "tiles"
    resumed = loader.ShardLoader(make())
    resumed.load_state_dict(state)
    assert seen + list(resumed) == batches
    with pytest.raises(ValueError, match="balance"):
        loader.ShardLoader(make(balance=None)).load_state_dict(state)
    with pytest.raises(ValueError, match="balance must be one of None, 'tiles', 'cost'"):
        make(balance="tokens")

"""The training reader: batches of a finished output, exactly as the official DeepSeek-VL2 processor batches.

`ShardDataset` is a torch `IterableDataset` of whole batches over the files a manifest lists (and nothing
else). Each epoch has one order, a function of (seed, epoch) alone: a permutation of every row, or, with
per-source `weights`, a mixture that draws each position's source with probability ∝ its weight and takes that
source's rows in a shuffled order, reshuffled whenever the source runs out. Rank r of `world_size` takes
positions r, r + world_size, ... of that order; its samples are cut into batches of `batch_size`, and batch j
goes to DataLoader worker j mod num_workers, so a DataLoader (which takes batches from its workers in turn)
delivers the same batches in the same order with any number of workers, and every row is read by exactly one
rank and worker. `ShardLoader` wraps the DataLoader and counts delivered batches, so that training resumes
from `state_dict()` with the very next batch.

`balance` rearranges that order so that at every step (the world_size micro-batches of batch_size rows that
the ranks take at once) the ranks carry nearly the same work, so that no rank waits for a straggler:
`"tiles"` balances tiles (the vision tower's work, `pipeline.packing.row_tiles`), tokens (`seq_len`) breaking
ties; `"cost"` balances the FLOPs of both towers (`pipeline.cost.CostModel`). The epoch's order is cut into
its full steps (a last partial step keeps its rows, in order, at the end); those rows, sorted by work
(heaviest first, ties by position), are dealt into the epoch's world_size·steps micro-batches in serpentine
rounds (one row to each micro-batch per round, alternating direction), so that each micro-batch mixes heavy
and light rows; the micro-batches, sorted by their work, are then grouped world_size at a time into steps of
near-equal micro-batches. The steps' order and the rank that takes each micro-batch of a step are drawn from
the epoch's generator (kept as sorted with `shuffle=False`). So the order stays a function of (seed, epoch)
and every row keeps its one place in it: workers, resume and `drop_last` behave as without balancing. With
batch_size 1 a step holds rows of near-equal work. `balance=None` leaves the order untouched.

`collate` builds the official batch from shard rows (see `schemas.shard`): left padding with the shape's
pad id, labels padded with -100, `images` [B, max_tiles, 3, S, S] of normalized tiles made from the stored
bytes by `pipeline.tiling` (zeros after a sample's last tile; one zero tile and a [0, 0] crop row for a sample
without images), `images_seq_mask`, `images_spatial_crop` [B, max_images, 2] ending in [0, 0] rows, and for
packed rows `position_ids` [B, L] and `cu_seqlens` over the flattened batch (every row start a boundary, left
padding a segment of its own).

Rows whose images are stored by reference (`sequence.embed_images: false`) carry no bytes to tile; the reader
raises ValueError for them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from model_shapes import ModelShape
from pipeline import images as image_io
from pipeline import tiling
from pipeline.cost import CostModel
from pipeline.packing import row_tiles
from pipeline.shards import MANIFEST, OutputDir
from pipeline.verify import file_digest, shape_for
from schemas.shard import IGNORE_INDEX

__all__ = ["BALANCES", "ShardDataset", "ShardLoader", "collate"]

BALANCES = (None, "tiles", "cost")


def collate(rows: Sequence[Mapping[str, Any]], shape: ModelShape) -> dict[str, torch.Tensor]:
    """The official processor's batch of `rows` (shard rows as dicts); see the module docstring."""
    special = shape.special_tokens
    assert special is not None, "the shape needs special token ids"
    size = shape.vision.image_size
    batch = len(rows)
    length = max(len(row["input_ids"]) for row in rows)
    tiles = [sum(1 + w * h for w, h in row["images_spatial_crop"]) for row in rows]
    max_images = max(1, *(len(row["images_spatial_crop"]) for row in rows))
    input_ids = torch.full((batch, length), special.pad, dtype=torch.long)
    labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch, length), dtype=torch.long)
    images = torch.zeros((batch, max(1, *tiles), 3, size, size), dtype=torch.float32)
    spatial_crop = torch.zeros((batch, max_images, 2), dtype=torch.long)
    pixels = images.numpy()
    for b, row in enumerate(rows):
        ids = torch.as_tensor(np.asarray(row["input_ids"], dtype=np.int64))
        start = length - len(ids)
        input_ids[b, start:] = ids
        labels[b, start:] = torch.as_tensor(np.asarray(row["labels"], dtype=np.int64))
        attention_mask[b, start:] = 1
        slot = 0
        for index, (image, grid) in enumerate(zip(row["images"], row["images_spatial_crop"], strict=True)):
            made = _tiles(row, index, image, tuple(grid), shape)
            tiling.normalize(made, shape.image_mean, shape.image_std, out=pixels[b, slot : slot + len(made)])
            spatial_crop[b, index] = torch.as_tensor(grid)
            slot += len(made)
    result = {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": attention_mask,
        "images": images,
        "images_seq_mask": input_ids == special.image,
        "images_spatial_crop": spatial_crop,
    }
    if any(row.get("cu_seqlens") is not None for row in rows):
        result["position_ids"], result["cu_seqlens"] = _packing(rows, length)
    return result


def _tiles(
    row: Mapping[str, Any], index: int, image: Mapping[str, Any], grid: tuple[int, int], shape: ModelShape
):
    """uint8 [1 + w·h, S, S, 3] tiles of one stored image, checked against its stored grid."""
    if image["bytes"] is None:
        raise ValueError(
            f"sample {row['sample_id']}: image {index} ({image['path']}) is stored by reference; "
            "the reader needs outputs made with sequence.embed_images: true"
        )
    made = tiling.tile_image(image_io.decode(image["bytes"]), shape, cropping=grid != (1, 1))
    if made.grid != grid:
        raise ValueError(
            f"sample {row['sample_id']}: image {index} tiles to {made.grid}, the row says {grid}"
        )
    return made.stacked()


def _packing(rows: Sequence[Mapping[str, Any]], length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids [B, L] and cu_seqlens over the flattened [B·L] stream; a row's left padding (and a row
    without cu_seqlens) is one segment with positions counting from 0."""
    position_ids = torch.zeros((len(rows), length), dtype=torch.long)
    bounds = [0]
    for b, row in enumerate(rows):
        base, pad = b * length, length - len(row["input_ids"])
        position_ids[b, :pad] = torch.arange(pad)
        if pad:
            bounds.append(base + pad)
        if row.get("cu_seqlens") is None:
            position_ids[b, pad:] = torch.arange(length - pad)
            bounds.append(base + length)
        else:
            position_ids[b, pad:] = torch.as_tensor(np.asarray(row["position_ids"], dtype=np.int64))
            bounds += [base + pad + int(c) for c in row["cu_seqlens"][1:]]
    return position_ids, torch.tensor(bounds, dtype=torch.int32)


class ShardDataset(IterableDataset):
    """Batches (dicts of tensors, see `collate`) of the output at `location`, for one rank.

    - `weights`: per-source sampling weights, one for every source of the output (0: not read); None: every
      row once per epoch.
    - `samples_per_epoch`: with weights, the epoch's length over all ranks (default: the rows of the weighted
      sources).
    - `drop_last`: every rank gets the same number of full batches (the remainder is left out).
    - `verify_checksums`: each worker hashes a file before it first reads it and raises on a mismatch.
    - `cached_row_groups`: row groups each worker keeps decoded (rows are read by row group).
    - `balance`: None, `"tiles"` or `"cost"`: each step's micro-batches carry nearly the same work across
      ranks (module docstring); the tiles and tokens of every row are read once, here.
    Set the position with `set_position(epoch, batch)` (`ShardLoader` does it).
    """

    def __init__(
        self,
        location: str,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        weights: Mapping[str, float] | None = None,
        samples_per_epoch: int | None = None,
        drop_last: bool = False,
        verify_checksums: bool = False,
        shape: ModelShape | str | None = None,
        cached_row_groups: int = 4,
        balance: str | None = None,
    ) -> None:
        super().__init__()
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need batch_size ≥ 1 and 0 ≤ rank < world_size, got {batch_size}, {rank}, {world_size}"
            )
        if balance not in BALANCES:
            raise ValueError(f"balance must be one of {', '.join(map(repr, BALANCES))}, not {balance!r}")
        self.location = location
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.seed, self.shuffle, self.drop_last = seed, shuffle, drop_last
        self.verify_checksums, self.cached_row_groups = verify_checksums, cached_row_groups
        self.manifest = OutputDir(location).read_json(MANIFEST)
        self.shape = shape_for(self.manifest, shape)
        if self.shape.fingerprint() != self.manifest["model_shape"]["fingerprint"]:
            raise ValueError(f"model shape {self.shape.name} is not the shape this output was made for")
        self.files = list(self.manifest["shards"])
        counts = np.array([entry["rows"] for entry in self.files], dtype=np.int64)
        self._file_of_row = np.repeat(np.arange(len(self.files)), counts)
        self._row_in_file = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        self.sources = sorted({entry["source"] for entry in self.files})
        source_of_file = np.array(
            [self.sources.index(entry["source"]) for entry in self.files], dtype=np.int64
        )
        self._source_of_row = source_of_file[self._file_of_row]
        self.weights = self._checked_weights(weights)
        if self.weights is None and samples_per_epoch is not None:
            raise ValueError("samples_per_epoch needs weights (without them an epoch is every row once)")
        rows = len(self._file_of_row)
        self.samples_per_epoch = rows if self.weights is None else samples_per_epoch or self._weighted_rows()
        self.epoch, self.start_batch = 0, 0
        self.balance = balance
        self._work = None if balance is None else self._row_work(balance)

    def _row_work(self, balance: str) -> np.ndarray:
        """Each row's work as `balance` weighs it: tiles·(batch_size·most tokens + 1) + tokens for "tiles"
        (so that sums over a micro-batch compare by tiles first, then tokens), FLOPs for "cost"."""
        out = OutputDir(self.location)
        tiles, tokens = [], []
        for entry in self.files:
            with out.fs.open_input_file(out.path(entry["path"])) as handle:
                table = pq.read_table(handle, columns=["images_spatial_crop", "seq_len"])
            if table.num_rows != entry["rows"]:
                raise ValueError(f"{entry['path']}: {table.num_rows} rows, the manifest says {entry['rows']}")
            tiles.append(row_tiles(table))
            tokens.append(table.column("seq_len").to_numpy().astype(np.int64))
        row_tile_counts = np.concatenate([np.zeros(0, np.int64), *tiles])
        row_tokens = np.concatenate([np.zeros(0, np.int64), *tokens])
        if balance == "cost":
            return CostModel.for_shape(self.shape).total(row_tile_counts, row_tokens)
        most = int(row_tokens.max(initial=0))
        return row_tile_counts * (self.batch_size * most + 1) + row_tokens

    def _checked_weights(self, weights: Mapping[str, float] | None) -> np.ndarray | None:
        if weights is None:
            return None
        unknown = set(weights) - set(self.sources)
        if unknown:
            raise ValueError(
                f"weights for sources {sorted(unknown)} not in this output ({', '.join(self.sources)})"
            )
        missing = [name for name in self.sources if name not in weights]
        if missing:
            raise ValueError(
                f"weights name no weight for sources {missing} of this output: give every source a weight "
                "(0 leaves a source out)"
            )
        values = np.array([float(weights[name]) for name in self.sources])
        if (values < 0).any() or values.sum() <= 0:
            raise ValueError(f"weights must be ≥ 0 with a positive sum, got {dict(weights)}")
        return values / values.sum()

    def _weighted_rows(self) -> int:
        assert self.weights is not None
        return int(np.isin(self._source_of_row, np.flatnonzero(self.weights > 0)).sum())

    def set_position(self, epoch: int, batch: int = 0) -> None:
        """Start the next iteration at batch `batch` of epoch `epoch`."""
        self.epoch, self.start_batch = epoch, batch

    def order(self, epoch: int) -> np.ndarray:
        """The epoch's row indices over all ranks (rows numbered in manifest file order), balanced when
        `balance` is set."""
        rng = np.random.default_rng([self.seed, epoch])
        order = self._drawn_order(rng)
        if self._work is None:
            return order
        return _balanced(order, self._work, self.world_size, self.batch_size, rng if self.shuffle else None)

    def _drawn_order(self, rng: np.random.Generator) -> np.ndarray:
        rows = len(self._file_of_row)
        if self.weights is None:
            return rng.permutation(rows) if self.shuffle else np.arange(rows)
        drawn = rng.choice(len(self.sources), size=self.samples_per_epoch, p=self.weights)
        order = np.empty(self.samples_per_epoch, dtype=np.int64)
        for source in np.flatnonzero(self.weights > 0):
            slots = np.flatnonzero(drawn == source)
            members = np.flatnonzero(self._source_of_row == source)
            cycles = -(-len(slots) // len(members))
            shuffled = (rng.permutation(members) if self.shuffle else members for _ in range(cycles))
            order[slots] = np.concatenate([members[:0], *shuffled])[: len(slots)]
        return order

    def rank_rows(self, epoch: int) -> np.ndarray:
        """This rank's row indices for the epoch, in order: each batch_size consecutive ones are its
        micro-batch of one step."""
        order = self.order(epoch)
        if self.drop_last:
            per_rank = len(order) // (self.world_size * self.batch_size) * self.batch_size
            order = order[: per_rank * self.world_size]
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        """Batches per epoch on this rank."""
        return -(-len(self.rank_rows(self.epoch)) // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        rows = self.rank_rows(self.epoch)
        reader = _RowReader(
            OutputDir(self.location), self.files, self.verify_checksums, self.cached_row_groups
        )
        for batch in range(self.start_batch, -(-len(rows) // self.batch_size)):
            if (batch - self.start_batch) % workers != worker:
                continue
            chosen = rows[batch * self.batch_size : (batch + 1) * self.batch_size]
            yield collate(
                [reader.row(int(self._file_of_row[i]), int(self._row_in_file[i])) for i in chosen], self.shape
            )


def _balanced(
    order: np.ndarray, work: np.ndarray, world_size: int, batch_size: int, rng: np.random.Generator | None
) -> np.ndarray:
    """`order` rearranged so that each full step's micro-batches carry nearly equal `work` (see the module
    docstring); rank r takes positions r, r + world_size, ... of each step's world_size·batch_size."""
    per_step = world_size * batch_size
    steps = len(order) // per_step
    head = order[: steps * per_step]
    bins = steps * world_size
    # Heaviest first, ties by position; round k deals rows k·bins ... (k + 1)·bins - 1, alternating direction.
    ranked = head[np.lexsort((np.arange(len(head)), -work[head]))]
    dealt = np.arange(len(head))
    rounds, place = dealt // bins, dealt % bins
    bin_of = np.where(rounds % 2 == 0, place, bins - 1 - place)
    load = np.zeros(bins, dtype=work.dtype)
    np.add.at(load, bin_of, work[ranked])
    by_load = np.empty(bins, dtype=np.int64)
    by_load[np.lexsort((np.arange(bins), -load))] = np.arange(bins)
    step, slot = by_load // world_size, by_load % world_size
    if rng is not None:
        step = rng.permutation(steps)[step]
        slot = np.argsort(rng.random((steps, world_size)), axis=1)[by_load // world_size, slot]
    balanced = order.copy()
    balanced[step[bin_of] * per_step + slot[bin_of] + rounds * world_size] = ranked
    return balanced


class _RowReader:
    """Rows by (file, row), a few decoded row groups cached; a file's checksum checked on first use."""

    def __init__(self, out: OutputDir, files: Sequence[Mapping[str, Any]], verify: bool, cached: int) -> None:
        self.out, self.files, self.verify, self.cached = out, files, verify, max(1, cached)
        self._group_starts: dict[int, np.ndarray] = {}
        self._groups: OrderedDict[tuple[int, int], Any] = OrderedDict()

    def row(self, file: int, row: int) -> dict[str, Any]:
        starts = self._starts(file)
        group = int(np.searchsorted(starts, row, side="right")) - 1
        key = (file, group)
        if key not in self._groups:
            with self.out.fs.open_input_file(self.out.path(self.files[file]["path"])) as handle:
                self._groups[key] = pq.ParquetFile(handle).read_row_group(group)
            if len(self._groups) > self.cached:
                self._groups.popitem(last=False)
        self._groups.move_to_end(key)
        return self._groups[key].slice(row - int(starts[group]), 1).to_pylist()[0]

    def _starts(self, file: int) -> np.ndarray:
        if file not in self._group_starts:
            entry = self.files[file]
            if self.verify and file_digest(self.out, entry["path"]) != (entry["bytes"], entry["sha256"]):
                raise ValueError(
                    f"{entry['path']}: size or sha256 differs from the manifest; run vl2prep verify"
                )
            with self.out.fs.open_input_file(self.out.path(entry["path"])) as handle:
                metadata = pq.ParquetFile(handle).metadata
            sizes = [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)]
            self._group_starts[file] = np.cumsum([0, *sizes])[:-1]
        return self._group_starts[file]


class ShardLoader:
    """A resumable iterable of batches: a DataLoader over `dataset` (`num_workers` processes, batches in the
    dataset's order) that counts the batches it delivers. `state_dict()` after any batch, then
    `load_state_dict(state)` on a loader over the same output and settings, continues with the next batch.
    An epoch ends when its batches are exhausted; the next iteration starts the next epoch."""

    def __init__(self, dataset: ShardDataset, num_workers: int = 0, **dataloader_options: Any) -> None:
        self.dataset, self.num_workers, self.dataloader_options = dataset, num_workers, dataloader_options
        self.epoch, self.batches = 0, 0

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.dataset.set_position(self.epoch, self.batches)
        loader = DataLoader(
            self.dataset, batch_size=None, num_workers=self.num_workers, **self.dataloader_options
        )
        for batch in loader:
            self.batches += 1
            yield batch
        self.epoch, self.batches = self.epoch + 1, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def _settings(self) -> dict[str, Any]:
        d = self.dataset
        return {
            "seed": d.seed,
            "batch_size": d.batch_size,
            "rank": d.rank,
            "world_size": d.world_size,
            "shuffle": d.shuffle,
            "drop_last": d.drop_last,
            "samples_per_epoch": d.samples_per_epoch,
            "weights": None if d.weights is None else dict(zip(d.sources, d.weights.tolist(), strict=True)),
            "balance": d.balance,
        }

    def state_dict(self) -> dict[str, Any]:
        """The position (epoch, batches delivered in it) and the settings it is valid for."""
        return {"epoch": self.epoch, "batches": self.batches, **self._settings()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from a saved position; ValueError if it was saved with other settings."""
        differing = sorted(key for key, value in self._settings().items() if state.get(key) != value)
        if differing:
            raise ValueError(f"the saved position was made with other settings: {', '.join(differing)}")
        self.epoch, self.batches = int(state["epoch"]), int(state["batches"])

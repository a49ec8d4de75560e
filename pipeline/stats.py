"""Dataset statistics as exact, mergeable partial aggregates over shard and reject rows.

A `Partial` is computed from one batch of rows (`shard_partial`, `reject_partial`), partials are combined with
`merge` (associative and commutative: every field is an integer, a `Counter` of integer keys, an array of
counts, or the least example key), and `finalize` turns the merged partial and the output's manifest into
the `stats.json` dict. No step needs all rows at once, and nothing is approximated: every distribution is a
`Counter` of exact values (token counts, widths, grids) or of fixed integer bins (aspect ratios, padding
waste, box areas), and token ids are counted in an array over the vocabulary, so merging in any order gives
the same numbers.
`Partial.add` merges in place at the cost of the partial added alone, so a pass over n files is O(n).

Rows are aggregated per *cell* = (row source, row kind) and the cells are merged into `overall`, one group
per source and one per kind in `finalize`. A packed row has source and kind "packed"; its documents (with
their own source and kind) count in `mixture` and in the per-sequence distributions. A *sequence* is one
unpacked row or one document of a packed row.

Damaged rows are data, not a crash: `vl2prep verify` names what is wrong with a row, the statistics count what
they can of it. Token ids outside [0, vocabulary size) (negative, huge) are counted as they are in the token
counts and top tokens (they are never used as array indices, so a huge id costs nothing) and in
`text.ids_outside_vocabulary`; the characters-per-token sample decodes only ids the tokenizer knows (ordinary
ids in [0, its piece count)), and a top token the tokenizer does not know has null text. An image whose width
or height is not positive is left out of the aspect ratios and the padding waste, one whose grid is not
positive out of the padding waste, and one whose grid is none of the shape's tile grids (nor 1x1) out of
`tokens_per_image`; an image offset outside its row is taken as the row's nearest position; a box whose image
index is not one of its row's images, whose coordinates are not finite or whose image has no area is left out
of `box_area_share`. All of them are still counted everywhere else. Rows whose values cannot be counted at all
(list columns of disagreeing lengths, ...) and files that cannot be read are the job's business
(`jobs.stats`): such a file's statistics are left out whole and it is listed under `problems`.

Percentiles (`p50`, `p90`, `p99`) are nearest-rank: the smallest value v such that at least ⌈p·n/100⌉ of the
n values are ≤ v (numpy's `percentile(..., method="inverted_cdf")`).

Keys of `stats.json` (a `DIST` is {count, sum, mean, min, p50, p90, p99, max}; with count 0 the others are 0
and mean/min/percentiles/max are null; a `HIST` is {bin_edges, counts} with len(counts) == len(bin_edges) - 1,
bin i holding values in [bin_edges[i], bin_edges[i + 1]), the last bin closed):

- `vl2prep_stats`: the format version (2; 1 had `dropped` as one number, too_long rejects).
- `run`: {version: the vl2prep version that made the output, source_sha256: its code's sha256, config_sha256,
  config: the config as written} from the manifest (null where the manifest has none).
- `output`: {model_shape, shape_fingerprint, tokenizer_sha256, max_seq_len, packing (bool)} from the manifest.
- `overall`, `sources.<name>`, `kinds.<kind>`: a GROUP, below. Each `sources.<name>` also has `read` and
  `written` (records, from the manifest: shards do not know what was read) and `rejected` (reject rows).
- GROUP:
  - `rows`: shard rows; `samples`: sequences that start a sample (part 0 or 1); `truncated`: rows whose text
    was cut to fit (`truncated`); `dropped` (sources and overall; null for kinds, which rejects do not
    have): the sound samples left out on purpose, a subset of the rejects: {over_budget: rejects too_long
    and too_many_tiles, filtered: stage filter, duplicates: stage dedup, contaminated: stage decontaminate,
    total} (`DROPPED`).
  - `tokens`: {text, image, loss, total: DIST over rows of num_text_tokens (every position that is no
    image token and no pad: bos, text, special tokens, eos), num_image_tokens, num_loss_tokens, seq_len (all
    positions); `image_share`: image / total token sums (null when no tokens)}. Not to be confused with
    `text.tokens`, which counts ordinary text tokens only (special ids left out).
  - `seq_len`: {max_seq_len, over_max (rows longer than max_seq_len), histogram: HIST over rows, 32 equal
    integer bins from 0 to max_seq_len}.
  - `packing`: null without packed rows, else {rows, documents, document_tokens, slots (sum of seq_len of the
    packed rows), efficiency = document_tokens / slots, tokens_per_row: DIST + {histogram: HIST, 32 bins from
    0 to max_seq_len} of the document tokens of each packed row, tiles_per_row: DIST + {histogram: HIST of
    at most 40 integer bins from 0} of the tiles of each packed row: per image 1 + w·h of its grid (the
    global view and the local tiles; a 1x1 grid without cropping is 2, its local tile repeating the global
    view)}.
  - `images`: {count; per_sequence: {n images: sequences}; width_px, height_px: DIST; size_histogram:
    {bin_px: 128, max_px: 4096, counts: [[images with width bin i and height bin j]]}, sizes ≥ 4096 in the
    last bin; size_log_histogram: {bins_per_octave: 4, cells: [[i, j, images with width in
    [2^(i/4), 2^((i+1)/4)) px and height bin j]] for the non-empty cells, by (i, j)} (positive sizes only),
    for a plot scaled to the data; aspect_ratio: HIST of log2(width / height) in steps of 0.25 from -3 to
    3, outside values clamped to the end bins; grids: {"WxH": images} with W, H = tiles across and down;
    tokens_per_image: DIST; tokens_per_image_counts: {tokens: images}; no_tiling: images in sequences of
    more than 2 images (their grid is 1x1 by the official rule);
    padding_waste: {share: padded pixels / canvas pixels over all images (exact integers), histogram: HIST in
    percent, 1 % bins 0..100}}. A canvas is grid · tile size; the fit is `pipeline.tiling.contain_size`.
  - `grounding` (unpacked rows; a packed row's regions are not split by document): {sequences_with_regions,
    refs_per_sequence: {n: sequences}, boxes: total,
    boxes_per_sequence: {n: sequences}, box_area_share: HIST in percent of the image's area, 1 % bins}.
  - `text`: {tokens: ordinary (non-special) text tokens, distinct_tokens, top_tokens: the 20 most frequent
    [{id, text (null without a tokenizer, or for an id it does not know), count}], ties by id;
    byte_fallback_share: share of `<0xNN>` tokens among them (null when the tokenizer is unavailable);
    chars_per_token: characters of the decoded ordinary tokens / their count on a deterministic sample, every
    16th row of each shard file (decoding every row would cost more than the rest of the pass), over the ids
    the tokenizer knows, null without a tokenizer; chars_sample: {rows, tokens, chars} of that sample;
    special_strings_as_text: {sequences: sequences whose text spells
    special-token strings that were kept as ordinary text (`<|User|>`, `<｜end▁of▁sentence｜>`, ...; see
    `schemas.shard`), occurrences: how many such strings in all}; ids_outside_vocabulary: token ids (all,
    special positions included) below 0 or at least the model's vocabulary size, which only a damaged file
    holds}.
- `rejects`: {total, by_reason: {reason: {count, example_key}}, by_stage: {stage: count}}; example_key is the
  least key (string order) among that reason's rejects, so it does not depend on the order of work. Each
  `sources.<name>` has the same under `rejects`.
- `mixture`: {per_source: {source: {sequences, tokens, token_share}} over sequences (documents of packed rows
  counted under their own source), vl_tokens / text_only_tokens: tokens of sequences with / without images,
  vl_to_text_only: their ratio (null when there is no text-only token)}.
- `shards`: {count, bytes: DIST, rows: DIST, per_source: {source: {count, bytes, rows}}, rejects: {count,
  bytes, rows}} from the manifest's file lists.
- `candidate_grids`: the shape's candidate tile grids [W, H], for the heat map.
- `filters`: {source: {quantity: FILTERED}} for every quantity a configured filter of `pipeline.filters`
  measured (from the output's `filters/` files: one row per sample that reached the filters, with its measured
  values and the filter that dropped it). FILTERED = {filters: {filter name: threshold}, measured: samples
  with a value, cut: samples a filter on this quantity dropped, dropped_other: samples another filter dropped,
  min, max, histogram: HIST of all measured values plus `cut_counts`, the cut samples per bin}. Bins are fixed
  per quantity (`FILTER_SCALES`): 1 % steps for `padding_share`, else steps of a fraction of an octave from 1
  (values below 1 in the first bin, values past the last edge in the last bin).
- `packing`: null unless the manifest records packing, else {total: FILL, sources: {source: FILL}} with
  FILL = {rows, documents, token_fill, tile_fill} as the manifest gives them (a flat manifest entry is the
  total; `efficiency` stands for token_fill; null where absent).
- `dedup`: null unless the manifest records deduplication, else {duplicates, near_distance_histogram: HIST
  of the Hamming distances 0..64 between near-duplicate candidate images (bin i = distance i; null when
  the manifest has no list of 65 counts), near_distance: {source: threshold} of the configured
  `dedup.near_distance` values (key "" for one the manifest records itself)}.
- `decontamination`: null, or the manifest's counts per evaluation set as recorded.
- `gallery`: source → up to 2 entries made from the first rows of its first shard, added by `jobs.stats`
  (fields: `pipeline.report.gallery_entry`).
- `problems`: [{path, message}] by path: files of the manifest whose statistics are left out because they
  cannot be read (truncated, not Parquet, missing) or hold rows that cannot be counted; empty for a sound
  output.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from model_shapes import ModelShape
from pipeline import layout, tiling

__all__ = [
    "REJECT_COLUMNS",
    "SHARD_COLUMNS",
    "Cell",
    "Context",
    "Partial",
    "context_for",
    "distribution",
    "filter_bin_edges",
    "filter_bins",
    "filter_partial",
    "finalize",
    "merge",
    "percentile",
    "reject_partial",
    "shard_partial",
]

STATS_VERSION = 2
SHARD_COLUMNS = (
    "source",
    "kind",
    "part",
    "input_ids",
    "images.list.element.width_px",
    "images.list.element.height_px",
    "images_spatial_crop",
    "image_token_offsets",
    "regions.list.element.image",
    "regions.list.element.boxes",
    "num_image_tokens",
    "num_text_tokens",
    "num_loss_tokens",
    "seq_len",
    "truncated",
    "special_strings_as_text",
    "cu_seqlens",
    "documents.list.element.source",
    "documents.list.element.kind",
    "documents.list.element.part",
    "documents.list.element.seq_len",
    "documents.list.element.special_strings_as_text",
)
"""The shard columns the statistics read (Parquet column paths: image bytes and token labels stay on disk).
Outputs of shard schema 1 lack `special_strings_as_text`: read without it, it counts as 0."""
REJECT_COLUMNS = ("source", "key", "stage", "reason")
FILTER_SCALES: dict[str, tuple[int, int]] = {
    "image_min_side": (4, 14),
    "image_max_aspect_ratio": (8, 7),
    "image_max_pixels": (2, 30),
    "text_chars": (4, 20),
    "text_tokens": (4, 18),
    "padding_share": (0, 100),
    "box_min_area": (2, 28),
}
"""Histogram bins of each filtered quantity: (bins per octave, octaves) from 1 up, or (0, n): n equal bins
over [0, 1]."""

SEQ_LEN_BINS = 32
SIZE_BIN_PX = 128
SIZE_MAX_PX = 4096
SIZE_BINS_PER_OCTAVE = 4
ASPECT_STEP = 0.25
ASPECT_LIMIT = 3.0
TOP_TOKENS = 20
TEXT_SAMPLE_EVERY = 16
NO_TILING_ABOVE = 2
PERCENTILES = (50, 90, 99)
COUNT_BINS = 40
HAMMING_BITS = 64
DROPPED: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "over_budget": ((), ("too_long", "too_many_tiles")),
    "filtered": (("filter",), ()),
    "duplicates": (("dedup",), ()),
    "contaminated": (("decontaminate",), ()),
}
"""The `dropped` counts: name → (reject stages, reject reasons) it counts. Samples that were sound but left
out on purpose: over the sequence budget, cut by a filter, duplicates, overlapping an evaluation set."""

Grid = tuple[int, int]


@dataclass(frozen=True)
class Context:
    """What the statistics need to know about the model and tokenizer: small and picklable."""

    max_seq_len: int
    tile_px: int
    special_ids: tuple[int, ...]
    image_tokens_by_grid: Mapping[Grid, int]
    candidate_grids: tuple[Grid, ...]
    byte_fallback_ids: tuple[int, ...] | None = None
    vocab_size: int | None = None
    """The model's vocabulary size: ids outside [0, vocab_size) are counted as outside (None: not counted)."""
    piece_count: int | None = None
    """Ids the tokenizer can decode, [0, piece_count) (None: those below `vocab_size`)."""


def context_for(
    shape: ModelShape,
    max_seq_len: int,
    byte_fallback_ids: Iterable[int] | None,
    piece_count: int | None = None,
) -> Context:
    """The context for rows made with `shape` (special ids filled in) and a tokenizer whose byte-fallback
    pieces are `byte_fallback_ids` (None when the tokenizer is unavailable) and that knows the ids below
    `piece_count`."""
    assert shape.special_tokens is not None
    special = shape.special_tokens
    tile = shape.image_size
    grids = tuple((w // tile, h // tile) for w, h in tiling.candidate_resolutions(shape))
    return Context(
        max_seq_len=max_seq_len,
        tile_px=tile,
        special_ids=tuple(sorted(getattr(special, f.name) for f in fields(special))),
        image_tokens_by_grid={g: layout.image_token_count(g, shape) for g in {(1, 1), *grids}},
        candidate_grids=grids,
        byte_fallback_ids=None if byte_fallback_ids is None else tuple(sorted(byte_fallback_ids)),
        vocab_size=shape.language.vocab_size,
        piece_count=piece_count,
    )


@dataclass(eq=False)
class Cell:
    """Exact aggregates of the rows of one (source, kind); every field merges by addition (`add`).

    Token counts are an array indexed by id over the model's vocabulary (`token_ids[i]`: occurrences of id
    i), so that merging costs one vector addition whatever the number of distinct ids; ids outside it (only a
    damaged file has them) are counted in `other_token_ids`. An empty array counts nothing."""

    rows: int = 0
    samples: int = 0
    truncated: int = 0
    text_tokens: Counter = field(default_factory=Counter)
    image_tokens: Counter = field(default_factory=Counter)
    loss_tokens: Counter = field(default_factory=Counter)
    seq_len: Counter = field(default_factory=Counter)
    packed_rows: int = 0
    packed_documents: int = 0
    packed_document_tokens: int = 0
    packed_slots: int = 0
    packed_row_tokens: Counter = field(default_factory=Counter)
    packed_row_tiles: Counter = field(default_factory=Counter)
    images_per_sequence: Counter = field(default_factory=Counter)
    width_px: Counter = field(default_factory=Counter)
    height_px: Counter = field(default_factory=Counter)
    size_bins: Counter = field(default_factory=Counter)
    size_log_bins: Counter = field(default_factory=Counter)
    aspect_bins: Counter = field(default_factory=Counter)
    grids: Counter = field(default_factory=Counter)
    tokens_per_image: Counter = field(default_factory=Counter)
    no_tiling: int = 0
    padding_px: int = 0
    canvas_px: int = 0
    padding_bins: Counter = field(default_factory=Counter)
    refs_per_sequence: Counter = field(default_factory=Counter)
    boxes_per_sequence: Counter = field(default_factory=Counter)
    box_area_bins: Counter = field(default_factory=Counter)
    token_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    other_token_ids: Counter = field(default_factory=Counter)
    sampled_rows: int = 0
    sampled_tokens: int = 0
    sampled_chars: int = 0
    special_string_sequences: int = 0
    special_strings: int = 0
    ids_outside_vocabulary: int = 0

    def add(self, other: Cell) -> Cell:
        """Add `other`'s counts to this cell, in place (`other` is not modified nor shared); returns self."""
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if isinstance(mine, Counter):
                mine.update(theirs)
            elif isinstance(mine, np.ndarray):
                setattr(self, f.name, _add_counts(mine, theirs))
            else:
                setattr(self, f.name, mine + theirs)
        return self

    def __getstate__(self) -> dict[str, Any]:
        # Pickled sparse: a file's partial, sent back from a Ray task, holds a few thousand of ~10^5 ids, and
        # under Ray's inline size it skips the object store.
        state = dict(self.__dict__)
        present = np.flatnonzero(self.token_ids)
        state["token_ids"] = (self.token_ids.size, present, self.token_ids[present])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        size, present, counts = state["token_ids"]
        token_ids = np.zeros(size, np.int64)
        token_ids[present] = counts
        self.__dict__.update(state, token_ids=token_ids)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Cell):
            return NotImplemented
        return all(
            _same_counts(getattr(self, f.name), getattr(other, f.name))
            if f.name == "token_ids"
            else getattr(self, f.name) == getattr(other, f.name)
            for f in fields(self)
        )


def _add_counts(mine: np.ndarray, theirs: np.ndarray) -> np.ndarray:
    """`mine` + `theirs` (count arrays, the shorter one padded with zeros), in `mine`'s buffer when it is
    long enough and writable (else a fresh copy: an array fetched from Ray's object store is read-only)."""
    if theirs.size == 0:
        return mine
    if mine.size < theirs.size or not mine.flags.writeable:
        grown = np.zeros(max(mine.size, theirs.size), np.int64)
        grown[: mine.size] = mine
        mine = grown
    mine[: theirs.size] += theirs
    return mine


def _same_counts(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two count arrays count the same (trailing zeros do not count)."""
    size = max(a.size, b.size)
    return bool(np.array_equal(np.pad(a, (0, size - a.size)), np.pad(b, (0, size - b.size))))


@dataclass
class Partial:
    """A mergeable piece of the statistics: cells by (source, kind), sequences by (source, kind, has
    images), rejects by (source, stage, reason) with the least key per (source, reason), and the files left
    out (path → why; the least message when two partials disagree).

    `add` merges another partial into this one in place, at a cost that depends on the other partial only
    (never on what was merged before), so a pass over n files merges in O(n); `merge` gives a new one."""

    cells: dict[tuple[str, str], Cell] = field(default_factory=dict)
    sequences: Counter = field(default_factory=Counter)
    sequence_tokens: Counter = field(default_factory=Counter)
    rejects: Counter = field(default_factory=Counter)
    reject_examples: dict[tuple[str, str], str] = field(default_factory=dict)
    filter_bins: Counter = field(default_factory=Counter)  # (source, quantity, bin, dropped_by or "")
    filter_extremes: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    def add(self, other: Partial) -> Partial:
        """Add `other`'s rows to this partial, in place (`other` is not modified nor shared); returns self."""
        for key, cell in other.cells.items():
            self.cells.setdefault(key, Cell()).add(cell)
        self.sequences.update(other.sequences)
        self.sequence_tokens.update(other.sequence_tokens)
        self.rejects.update(other.rejects)
        self.filter_bins.update(other.filter_bins)
        for key, example in other.reject_examples.items():
            self.reject_examples[key] = min(self.reject_examples.get(key, example), example)
        for key, (low, high) in other.filter_extremes.items():
            old_low, old_high = self.filter_extremes.get(key, (low, high))
            self.filter_extremes[key] = (min(old_low, low), max(old_high, high))
        for path, message in other.problems.items():
            self.problems[path] = min(self.problems.get(path, message), message)
        return self


def merge(a: Partial, b: Partial) -> Partial:
    """The partial of both inputs' rows; associative and commutative. The inputs are not modified (to merge
    many partials, `Partial.add` them into one: `merge` copies `a`)."""
    return Partial().add(a).add(b)


# ------------------------------------------------------------------------------------------------
# partials from rows


def _count(values: np.ndarray) -> Counter:
    """Counter of the integer values of a 1-D array."""
    if values.size == 0:
        return Counter()
    low = int(values.min())
    if int(values.max()) - low < 4 * values.size + 2**16:  # dense enough: counting beats sorting
        counts = np.bincount(values - low)
        keys = np.flatnonzero(counts)
        return Counter(dict(zip((keys + low).tolist(), counts[keys].tolist(), strict=True)))
    keys, counts = np.unique(values, return_counts=True)
    return Counter(dict(zip(keys.tolist(), counts.tolist(), strict=True)))


def _token_counts(values: np.ndarray, bound: int) -> tuple[np.ndarray, Counter]:
    """Occurrences of the ids in a 1-D array: an array over [0, bound) (length `bound`) and a Counter of the
    ids outside it. Counted run by run: an image's tokens are one run of the same id."""
    if values.size == 0:
        return np.zeros(bound, np.int64), Counter()
    change = np.empty(values.size, bool)
    change[0] = True
    np.not_equal(values[1:], values[:-1], out=change[1:])
    starts = np.flatnonzero(change)
    run_values = values[starts].astype(np.int64)
    run_lengths = np.diff(np.append(starts, values.size))
    inside = (run_values >= 0) & (run_values < bound)
    counts = np.bincount(run_values[inside], weights=run_lengths[inside], minlength=bound)
    others: Counter = Counter()
    if not inside.all():  # a damaged file: ids that are no array index
        for value, length in zip(run_values[~inside].tolist(), run_lengths[~inside].tolist(), strict=True):
            others[value] += length
    return counts.astype(np.int64), others  # exact: a batch holds far fewer than 2**53 ids


def _count_pairs(first: np.ndarray, second: np.ndarray) -> Counter:
    if first.size == 0:
        return Counter()
    low_first, low_second = int(first.min()), int(second.min())
    span = int(second.max()) - low_second + 1
    counts = _count((first - low_first) * span + (second - low_second))
    return Counter({(low_first + k // span, low_second + k % span): n for k, n in counts.items()})


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.to_numpy(zero_copy_only=False)


def _groups(source: np.ndarray, kind: np.ndarray) -> Iterable[tuple[tuple[str, str], np.ndarray]]:
    """((source, kind), mask) for each pair that occurs."""
    for name in np.unique(source).tolist():
        of_source = source == name
        for kind_name in np.unique(kind[of_source]).tolist():
            yield (name, kind_name), of_source & (kind == kind_name)


def _field(struct: pa.StructArray, name: str) -> pa.Array:
    """A child of a struct array, with the struct's offset applied."""
    return struct.flatten()[struct.type.get_field_index(name)]


def _list(column: pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """(flattened values, parent row index per value) of a list column."""
    array = column.combine_chunks()
    return array.flatten(), np.asarray(pa.compute.list_parent_indices(array))


def shard_partial(
    rows: pa.Table | pa.RecordBatch,
    context: Context,
    decode: Callable[[list[int]], str] | None = None,
    first_row: int = 0,
) -> Partial:
    """The partial of shard rows (at least the columns `SHARD_COLUMNS`). `first_row` is the index of the first
    row within its shard file (the text sample takes rows whose index is a multiple of 16); `decode` turns
    ordinary token ids into text for the characters-per-token sample (skipped when None)."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_batches([rows])
    n = table.num_rows
    partial = Partial()
    if n == 0:
        return partial
    source = _numpy(table.column("source")).astype(str)
    kind = _numpy(table.column("kind")).astype(str)
    part = _numpy(table.column("part"))
    seq_len = _numpy(table.column("seq_len")).astype(np.int64)
    text_tokens = _numpy(table.column("num_text_tokens"))
    image_tokens = _numpy(table.column("num_image_tokens"))
    loss_tokens = _numpy(table.column("num_loss_tokens"))
    truncated = _numpy(table.column("truncated")).astype(bool)

    # Images: sizes, grids, offsets, with their row.
    image_structs, image_row = _list(table.column("images"))
    width = _numpy(_field(image_structs, "width_px")).astype(np.int64)
    height = _numpy(_field(image_structs, "height_px")).astype(np.int64)
    grid_values, _ = _list(table.column("images_spatial_crop"))
    grid = _numpy(grid_values.flatten()).reshape(-1, 2).astype(np.int64)
    offsets, _ = _list(table.column("image_token_offsets"))
    # Positions stay inside their row even in a damaged file: a negative length counts as 0 here, an offset
    # outside the row as the row's nearest position.
    row_start = np.concatenate([[0], np.cumsum(np.maximum(seq_len, 0))])
    inside = np.clip(_numpy(offsets).astype(np.int64), 0, np.maximum(seq_len[image_row] - 1, 0))
    image_position = row_start[image_row] + inside

    # Sequences: one per unpacked row, one per document (and one per pad tail) of a packed row.
    packed = _numpy(table.column("cu_seqlens").is_valid()).astype(bool)
    boundary_values, boundary_row = _list(table.column("cu_seqlens"))
    boundaries = _numpy(boundary_values).astype(np.int64)
    last = np.append(boundary_row[1:] != boundary_row[:-1], True) if boundaries.size else np.zeros(0, bool)
    packed_starts = row_start[boundary_row[~last]] + boundaries[~last]
    starts = np.sort(np.concatenate([row_start[:-1][~packed], packed_starts]))
    segment_row = np.searchsorted(row_start, starts, side="right") - 1
    images_per_segment = np.bincount(
        np.searchsorted(starts, image_position, side="right") - 1, minlength=starts.size
    )
    documents, document_row = _list(table.column("documents"))
    doc_count = np.bincount(document_row, minlength=n)
    doc_lengths = _numpy(_field(documents, "seq_len")).astype(np.int64) if len(documents) else np.zeros(0)
    row_document_tokens = np.bincount(document_row, weights=doc_lengths, minlength=n).astype(np.int64)
    # Within a row, a segment is a sequence when its index is below the row's document count (unpacked: 1).
    segment_index = np.arange(starts.size) - np.searchsorted(segment_row, segment_row, side="left")
    is_sequence = segment_index < np.where(packed, doc_count, 1)[segment_row]
    sequence_row = segment_row[is_sequence]
    sequence_images = images_per_segment[is_sequence]
    sequence_of_image = np.cumsum(is_sequence)[np.searchsorted(starts, image_position, side="right") - 1] - 1
    images_in_sequence = sequence_images[sequence_of_image]

    # Sequence attributes: the row's for unpacked rows, the document's for packed ones.
    seq_source, seq_kind = source[sequence_row].copy(), kind[sequence_row].copy()
    seq_part, seq_tokens = part[sequence_row].copy(), seq_len[sequence_row].copy()
    has_special = "special_strings_as_text" in table.column_names
    special_strings = (
        _numpy(table.column("special_strings_as_text")).astype(np.int64) if has_special else np.zeros(n, int)
    )
    seq_special = special_strings[sequence_row].copy()
    packed_sequence = packed[sequence_row]
    if len(documents):
        seq_source[packed_sequence] = _numpy(_field(documents, "source")).astype(str)
        seq_kind[packed_sequence] = _numpy(_field(documents, "kind")).astype(str)
        seq_part[packed_sequence] = _numpy(_field(documents, "part"))
        seq_tokens[packed_sequence] = _numpy(_field(documents, "seq_len"))
        if has_special:
            seq_special[packed_sequence] = _numpy(_field(documents, "special_strings_as_text"))
    for key, mask in _groups(seq_source, seq_kind):
        for has_images in (False, True):
            selected = mask & ((sequence_images > 0) == has_images)
            if selected.any():
                partial.sequences[(*key, has_images)] += int(selected.sum())
                partial.sequence_tokens[(*key, has_images)] += int(seq_tokens[selected].sum())

    # Padding waste: the canvas minus the image fitted into it (PIL's contain, half-to-even rounding). Sizes
    # and grids that are not positive (a damaged file) are replaced by 1 and their images left out.
    sized = (width > 0) & (height > 0)
    tiled = sized & (grid > 0).all(axis=1)
    width_or_1, height_or_1 = np.where(sized, width, 1), np.where(sized, height, 1)
    grid_or_1 = np.where(tiled[:, None], grid, 1)
    canvas_area, padding = tiling.padded_pixels(width_or_1, height_or_1, grid_or_1, context.tile_px)
    aspect_bin = np.clip(
        np.floor(np.log2(width_or_1 / height_or_1) / ASPECT_STEP), -ASPECT_LIMIT / ASPECT_STEP, None
    )
    aspect_bin = np.minimum(aspect_bin, ASPECT_LIMIT / ASPECT_STEP - 1).astype(np.int64)
    size_bins = SIZE_MAX_PX // SIZE_BIN_PX
    size_log_bin = np.floor(np.log2(np.stack([width_or_1, height_or_1], axis=1)) * SIZE_BINS_PER_OCTAVE)
    size_log_bin = size_log_bin.astype(np.int64)
    tokens_by_grid = np.zeros(
        (
            1 + max(w for w, _ in context.image_tokens_by_grid),
            1 + max(h for _, h in context.image_tokens_by_grid),
        ),
        dtype=np.int64,
    )
    for (w, h), tokens in context.image_tokens_by_grid.items():
        tokens_by_grid[w, h] = tokens
    in_table = (grid >= 0).all(axis=1) & (grid < tokens_by_grid.shape).all(axis=1)
    grid_in_table = np.where(in_table[:, None], grid, 0)
    grid_tokens = tokens_by_grid[grid_in_table[:, 0], grid_in_table[:, 1]]
    known_grid = grid_tokens > 0  # one of the shape's tile grids (or 1x1)
    # Tiles a row feeds the vision tower: per image the global view and w·h local tiles (a 1x1 grid without
    # cropping repeats the global view as its local tile: 2, as the official processor makes it).
    image_tiles = 1 + np.clip(grid[:, 0], 0, None) * np.clip(grid[:, 1], 0, None)
    row_tiles = np.bincount(image_row, weights=image_tiles, minlength=n).astype(np.int64)

    # Regions: boxes per region, box areas against their image.
    regions, region_row = _list(table.column("regions"))
    boxes, box_region = _list(pa.chunked_array([_field(regions, "boxes")]))
    box = _numpy(boxes.flatten()).reshape(-1, 4)
    region_image = _numpy(_field(regions, "image")).astype(np.int64)
    first_image = np.searchsorted(image_row, np.arange(n), side="left")
    own_image = (region_image >= 0) & (region_image < np.bincount(image_row, minlength=n)[region_row])
    # A box without an image of its row is measured against area 0 (the appended entry): left out below.
    box_image = np.where(own_image, first_image[region_row] + region_image, width.size)[box_region]
    box_row = region_row[box_region]
    with np.errstate(invalid="ignore"):  # non-finite coordinates of a damaged file: left out below
        box_area = np.clip((box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1]), 0, None)
    image_area = np.append(width * height, 0)[box_image]
    measured_box = np.isfinite(box_area) & (image_area > 0)
    share = np.where(measured_box, box_area, 0) / np.where(measured_box, image_area, 1)
    box_percent = np.minimum(np.floor(share * 100), 99).astype(np.int64)

    # Tokens: every id is counted and the special ids dropped from the counts afterwards (cheaper than
    # filtering the ids, mostly image tokens, first); the text sample is every 16th row of the file.
    id_lists = table.column("input_ids").combine_chunks()
    ids = _numpy(id_lists.flatten())
    ids_per_row = _numpy(pa.compute.list_value_length(id_lists).fill_null(0)).astype(np.int64)
    id_start = np.concatenate([[0], np.cumsum(ids_per_row)])
    special_ids = np.asarray(context.special_ids, dtype=ids.dtype)
    sampled = (np.arange(first_row, first_row + n) % TEXT_SAMPLE_EVERY == 0) if decode else np.zeros(n, bool)
    outside_rows = np.zeros(n, np.int64)
    vocab = context.vocab_size
    if vocab is not None and ids.size and (int(ids.min()) < 0 or int(ids.max()) >= vocab):  # damaged only
        outside = np.flatnonzero((ids < 0) | (ids >= vocab))
        outside_rows = np.bincount(np.searchsorted(id_start, outside, side="right") - 1, minlength=n)
    decodable = context.piece_count if context.piece_count is not None else context.vocab_size
    token_bound = vocab if vocab is not None else 0  # without a vocabulary every id is counted in a Counter
    special_in_bound = [i for i in context.special_ids if 0 <= i < token_bound]

    refs = np.bincount(region_row, minlength=n)
    boxes_per_row = np.bincount(box_row, minlength=n)
    for key, rows_in in _groups(source, kind):
        image_in = rows_in[image_row]
        box_in = rows_in[box_row]
        sequence_in = rows_in[sequence_row]
        cell = Cell(
            rows=int(rows_in.sum()),
            samples=int(((seq_part <= 1) & sequence_in).sum()),
            truncated=int((truncated & rows_in).sum()),
            text_tokens=_count(text_tokens[rows_in]),
            image_tokens=_count(image_tokens[rows_in]),
            loss_tokens=_count(loss_tokens[rows_in]),
            seq_len=_count(seq_len[rows_in]),
            packed_rows=int((packed & rows_in).sum()),
            packed_documents=int(doc_count[rows_in].sum()),
            packed_document_tokens=int(seq_tokens[sequence_in & packed_sequence].sum()),
            packed_slots=int(seq_len[rows_in & packed].sum()),
            packed_row_tokens=_count(row_document_tokens[rows_in & packed]),
            packed_row_tiles=_count(row_tiles[rows_in & packed]),
            images_per_sequence=_count(sequence_images[sequence_in]),
            width_px=_count(width[image_in]),
            height_px=_count(height[image_in]),
            size_bins=_count_pairs(
                np.minimum(width[image_in] // SIZE_BIN_PX, size_bins - 1),
                np.minimum(height[image_in] // SIZE_BIN_PX, size_bins - 1),
            ),
            size_log_bins=_count_pairs(size_log_bin[image_in & sized, 0], size_log_bin[image_in & sized, 1]),
            aspect_bins=_count(aspect_bin[image_in & sized]),
            grids=_count_pairs(grid[image_in, 0], grid[image_in, 1]),
            tokens_per_image=_count(grid_tokens[image_in & known_grid]),
            no_tiling=int((images_in_sequence[image_in] > NO_TILING_ABOVE).sum()),
            padding_px=int(padding[image_in & tiled].sum()),
            canvas_px=int(canvas_area[image_in & tiled].sum()),
            padding_bins=_count(padding[image_in & tiled] * 100 // canvas_area[image_in & tiled]),
            refs_per_sequence=_count(refs[rows_in & ~packed]),
            boxes_per_sequence=_count(boxes_per_row[rows_in & ~packed]),
            box_area_bins=_count(box_percent[box_in & measured_box]),
            special_string_sequences=int(((seq_special > 0) & sequence_in).sum()),
            special_strings=int(seq_special[sequence_in].sum()),
            ids_outside_vocabulary=int(outside_rows[rows_in].sum()),
        )
        cell.token_ids, cell.other_token_ids = _token_counts(
            ids if rows_in.all() else ids[np.repeat(rows_in, ids_per_row)], token_bound
        )
        cell.token_ids[special_in_bound] = 0
        for special in context.special_ids:
            cell.other_token_ids.pop(special, None)
        sample = np.flatnonzero(rows_in & sampled)
        sample_ids = np.concatenate([ids[:0], *(ids[id_start[row] : id_start[row + 1]] for row in sample)])
        sample_ordinary = ~np.isin(sample_ids, special_ids) & (sample_ids >= 0)
        if decodable is not None:
            sample_ordinary &= sample_ids < decodable
        sample_start = np.concatenate([[0], np.cumsum(ids_per_row[sample])])
        for start, end in zip(sample_start[:-1].tolist(), sample_start[1:].tolist(), strict=True):
            row_ids = sample_ids[start:end][sample_ordinary[start:end]]
            if row_ids.size:
                cell.sampled_rows += 1
                cell.sampled_tokens += int(row_ids.size)
                assert decode is not None
                cell.sampled_chars += len(decode(row_ids.tolist()))
        partial.cells[key] = cell
    return partial


def reject_partial(rows: pa.Table | pa.RecordBatch) -> Partial:
    """The partial of reject rows (at least the columns `REJECT_COLUMNS`)."""
    partial = Partial()
    columns = [rows.column(name).to_pylist() for name in REJECT_COLUMNS]
    for source, key, stage, reason in zip(*columns, strict=True):
        partial.rejects[(source, stage, reason)] += 1
        example = partial.reject_examples.get((source, reason))
        partial.reject_examples[(source, reason)] = key if example is None else min(example, key)
    return partial


def filter_bin_edges(quantity: str) -> list[float]:
    """The histogram bin edges of a filtered quantity (see `FILTER_SCALES`)."""
    per_octave, count = FILTER_SCALES[quantity]
    if per_octave == 0:
        return [i / count for i in range(count + 1)]
    return [0.0] + [2.0 ** (i / per_octave) for i in range(1, per_octave * count + 1)]


def filter_bins(quantity: str, values: np.ndarray) -> np.ndarray:
    """The bin index of each value of a filtered quantity (float64 array, no NaN)."""
    per_octave, count = FILTER_SCALES[quantity]
    if per_octave == 0:
        return np.clip(np.floor(values * count), 0, count - 1).astype(np.int64)
    octaves = np.log2(np.maximum(values, 1.0))
    return np.clip(np.floor(octaves * per_octave), 0, per_octave * count - 1).astype(np.int64)


def filter_partial(rows: pa.Table | pa.RecordBatch) -> Partial:
    """The partial of filter measurement rows (`pipeline.filters.MEASUREMENT_SCHEMA`)."""
    partial = Partial()
    names = rows.schema.names
    source = _numpy(rows.column("source")).astype(str)
    dropped = _numpy(rows.column("dropped_by").fill_null("")).astype(str)
    for quantity in FILTER_SCALES:
        if quantity not in names:
            continue
        column = rows.column(quantity)
        present = _numpy(column.is_valid())
        if not present.any():
            continue
        values = _numpy(column.fill_null(0)).astype(np.float64)
        bins = filter_bins(quantity, values)
        for name in np.unique(source[present]).tolist():
            mask = present & (source == name)
            chosen = values[mask]
            partial.filter_extremes[(name, quantity)] = (float(chosen.min()), float(chosen.max()))
            pairs = zip(bins[mask].tolist(), dropped[mask].tolist(), strict=True)
            for (bin_index, by), count in Counter(pairs).items():
                partial.filter_bins[(name, quantity, bin_index, by)] += count
    return partial


# ------------------------------------------------------------------------------------------------
# finalize


def percentile(values: Counter, percent: int) -> int | None:
    """Nearest-rank percentile of the counted values: the least v with at least ⌈percent·n/100⌉ values ≤ v."""
    total = sum(values.values())
    if total == 0:
        return None
    rank = max(1, -(-percent * total // 100))
    seen = 0
    for value in sorted(values):
        seen += values[value]
        if seen >= rank:
            return value
    raise AssertionError("unreachable: rank ≤ total")


def distribution(values: Counter) -> dict[str, Any]:
    """DIST of counted integer values: count, sum, mean, min, p50, p90, p99, max."""
    count = sum(values.values())
    total = sum(value * times for value, times in values.items())
    return {
        "count": count,
        "sum": total,
        "mean": total / count if count else None,
        "min": min(values) if count else None,
        **{f"p{p}": percentile(values, p) for p in PERCENTILES},
        "max": max(values) if count else None,
    }


def _histogram(bins: Counter, edges: list[float], offset: int = 0) -> dict[str, Any]:
    return {"bin_edges": edges, "counts": [bins.get(i + offset, 0) for i in range(len(edges) - 1)]}


def _by_value(values: Counter) -> dict[str, int]:
    return {str(value): values[value] for value in sorted(values)}


def _top(cell: Cell) -> list[tuple[int, int]]:
    """The `TOP_TOKENS` most frequent ids of a cell as (id, count), ties by id."""
    counted = cell.token_ids
    ids = np.flatnonzero(counted)
    order = np.lexsort((ids, -counted[ids]))[:TOP_TOKENS]
    pairs = [(int(i), int(counted[i])) for i in ids[order]] + list(cell.other_token_ids.items())
    return sorted(pairs, key=lambda item: (-item[1], item[0]))[:TOP_TOKENS]


def _binned(values: Counter, edges: list[int]) -> dict[str, Any]:
    """HIST of counted integer values over increasing integer edges, the last bin closed; values outside
    [edges[0], edges[-1]] are left out."""
    bins: Counter = Counter()
    for value, times in values.items():
        if edges[0] <= value <= edges[-1]:
            bins[min(int(np.searchsorted(edges, value, side="right")) - 1, len(edges) - 2)] += times
    return _histogram(bins, edges)


def _per_row(values: Counter, edges: list[int]) -> dict[str, Any]:
    return {**distribution(values), "histogram": _binned(values, edges)}


def _count_edges(values: Counter) -> list[int]:
    """Integer bin edges from 0 past the largest value, at most `COUNT_BINS` bins of equal integer width."""
    top = max(values, default=0) + 1
    step = -(-top // COUNT_BINS)
    return list(range(0, step * -(-top // step) + 1, step))


def _dropped(rejects: Mapping[tuple[str, str, str], int]) -> dict[str, int]:
    """The `dropped` counts of reject rows by (source, stage, reason)."""
    counts = dict.fromkeys(DROPPED, 0)
    for (_, stage, reason), count in rejects.items():
        for name, (stages, reasons) in DROPPED.items():
            if stage in stages or reason in reasons:
                counts[name] += count
    return {**counts, "total": sum(counts.values())}


def _group(
    cell: Cell,
    context: Context,
    token_text: Callable[[int], str | None] | None,
    dropped: dict[str, int] | None,
) -> dict[str, Any]:
    tokens = {name: distribution(getattr(cell, f"{name}_tokens")) for name in ("text", "image", "loss")}
    tokens["total"] = distribution(cell.seq_len)
    total = tokens["total"]["sum"]
    max_len = context.max_seq_len
    edges = [i * max_len // SEQ_LEN_BINS for i in range(SEQ_LEN_BINS + 1)]
    size_bins = SIZE_MAX_PX // SIZE_BIN_PX
    aspect_low = int(-ASPECT_LIMIT / ASPECT_STEP)
    images = sum(cell.width_px.values())
    counted = cell.token_ids
    text_count = int(counted.sum()) + sum(cell.other_token_ids.values())
    byte_ids = context.byte_fallback_ids
    return {
        "rows": cell.rows,
        "samples": cell.samples,
        "truncated": cell.truncated,
        "dropped": dropped,
        "tokens": {**tokens, "image_share": tokens["image"]["sum"] / total if total else None},
        "seq_len": {
            "max_seq_len": max_len,
            "over_max": sum(times for value, times in cell.seq_len.items() if value > max_len),
            "histogram": _binned(cell.seq_len, edges),
        },
        "packing": (
            {
                "rows": cell.packed_rows,
                "documents": cell.packed_documents,
                "document_tokens": cell.packed_document_tokens,
                "slots": cell.packed_slots,
                "efficiency": cell.packed_document_tokens / cell.packed_slots,
                "tokens_per_row": _per_row(cell.packed_row_tokens, edges),
                "tiles_per_row": _per_row(cell.packed_row_tiles, _count_edges(cell.packed_row_tiles)),
            }
            if cell.packed_rows
            else None
        ),
        "images": {
            "count": images,
            "per_sequence": _by_value(cell.images_per_sequence),
            "width_px": distribution(cell.width_px),
            "height_px": distribution(cell.height_px),
            "size_histogram": {
                "bin_px": SIZE_BIN_PX,
                "max_px": SIZE_MAX_PX,
                "counts": [
                    [cell.size_bins.get((i, j), 0) for j in range(size_bins)] for i in range(size_bins)
                ],
            },
            "size_log_histogram": {
                "bins_per_octave": SIZE_BINS_PER_OCTAVE,
                "cells": [[i, j, cell.size_log_bins[(i, j)]] for i, j in sorted(cell.size_log_bins)],
            },
            "aspect_ratio": _histogram(
                cell.aspect_bins,
                [i * ASPECT_STEP for i in range(aspect_low, -aspect_low + 1)],
                offset=aspect_low,
            ),
            "grids": {f"{w}x{h}": cell.grids[(w, h)] for w, h in sorted(cell.grids)},
            "tokens_per_image": distribution(cell.tokens_per_image),
            "tokens_per_image_counts": _by_value(cell.tokens_per_image),
            "no_tiling": cell.no_tiling,
            "padding_waste": {
                "share": cell.padding_px / cell.canvas_px if cell.canvas_px else None,
                "histogram": _histogram(cell.padding_bins, list(range(101))),
            },
        },
        "grounding": {
            "sequences_with_regions": sum(t for n, t in cell.refs_per_sequence.items() if n > 0),
            "refs_per_sequence": _by_value(cell.refs_per_sequence),
            "boxes": sum(n * t for n, t in cell.boxes_per_sequence.items()),
            "boxes_per_sequence": _by_value(cell.boxes_per_sequence),
            "box_area_share": _histogram(cell.box_area_bins, list(range(101))),
        },
        "text": {
            "tokens": text_count,
            "distinct_tokens": int(np.count_nonzero(counted)) + len(cell.other_token_ids),
            "top_tokens": [
                {"id": i, "text": token_text(i) if token_text else None, "count": c} for i, c in _top(cell)
            ],
            "byte_fallback_share": (
                sum(int(counted[i]) if 0 <= i < counted.size else cell.other_token_ids[i] for i in byte_ids)
                / text_count
                if byte_ids is not None and text_count
                else None
            ),
            "chars_per_token": cell.sampled_chars / cell.sampled_tokens if cell.sampled_tokens else None,
            "chars_sample": {
                "rows": cell.sampled_rows,
                "tokens": cell.sampled_tokens,
                "chars": cell.sampled_chars,
            },
            "special_strings_as_text": {
                "sequences": cell.special_string_sequences,
                "occurrences": cell.special_strings,
            },
            "ids_outside_vocabulary": cell.ids_outside_vocabulary,
        },
    }


def _rejects(counts: Mapping[tuple[str, str, str], int], examples: Mapping[tuple[str, str], str]) -> dict:
    by_reason: dict[str, dict[str, Any]] = {}
    by_stage: Counter = Counter()
    for (source, stage, reason), count in counts.items():
        entry = by_reason.setdefault(reason, {"count": 0, "example_key": examples[(source, reason)]})
        entry["count"] += count
        entry["example_key"] = min(entry["example_key"], examples[(source, reason)])
        by_stage[stage] += count
    return {
        "total": sum(counts.values()),
        "by_reason": dict(sorted(by_reason.items())),
        "by_stage": dict(sorted(by_stage.items())),
    }


def _files(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "count": len(entries),
        "bytes": sum(e["bytes"] for e in entries),
        "rows": sum(e["rows"] for e in entries),
    }


def _sum_cells(cells: Iterable[Cell]) -> Cell:
    total = Cell()
    for cell in cells:
        total.add(cell)
    return total


def finalize(
    partial: Partial,
    context: Context,
    manifest: Mapping[str, Any],
    token_text: Callable[[int], str | None] | None = None,
) -> dict[str, Any]:
    """The `stats.json` dict (keys in the module docstring) of the merged partial of every shard and reject
    file of an output and its manifest. `token_text` names token ids for the top tokens (None: an id it
    does not know)."""
    cells = partial.cells
    manifest_sources = manifest.get("sources", {})
    names = sorted({*manifest_sources, *(s for s, _ in cells), *(s for s, _, _ in partial.rejects)})
    kinds = sorted({k for _, k in cells})

    sources = {}
    for name in names:
        counts = {k: c for k, c in partial.rejects.items() if k[0] == name}
        rejects = _rejects(counts, partial.reject_examples)
        cell = _sum_cells(c for (s, _), c in cells.items() if s == name)
        sources[name] = {
            "read": manifest_sources.get(name, {}).get("read", 0),
            "written": manifest_sources.get(name, {}).get("written", 0),
            "rejected": rejects["total"],
            "rejects": rejects,
            **_group(cell, context, token_text, _dropped(counts)),
        }

    tokens_by_source: Counter = Counter()
    sequences_by_source: Counter = Counter()
    vl_tokens = text_only_tokens = 0
    for (source, _, has_images), tokens in partial.sequence_tokens.items():
        tokens_by_source[source] += tokens
        if has_images:
            vl_tokens += tokens
        else:
            text_only_tokens += tokens
    for (source, _, _), count in partial.sequences.items():
        sequences_by_source[source] += count
    all_tokens = sum(tokens_by_source.values())

    shard_entries = list(manifest.get("shards", []))
    shard_sources = sorted({e["source"] for e in shard_entries})
    return {
        "vl2prep_stats": STATS_VERSION,
        "run": {
            "version": (manifest.get("code") or {}).get("version"),
            "source_sha256": (manifest.get("code") or {}).get("source_sha256"),
            "config_sha256": manifest.get("config_sha256"),
            "config": manifest.get("config"),
        },
        "output": {
            "model_shape": manifest.get("model_shape", {}).get("name"),
            "shape_fingerprint": manifest.get("model_shape", {}).get("fingerprint"),
            "tokenizer_sha256": manifest.get("tokenizer", {}).get("sha256"),
            "max_seq_len": context.max_seq_len,
            "packing": bool(manifest.get("packing")),
        },
        "overall": _group(_sum_cells(cells.values()), context, token_text, _dropped(partial.rejects)),
        "sources": sources,
        "kinds": {
            kind: _group(_sum_cells(c for (_, k), c in cells.items() if k == kind), context, token_text, None)
            for kind in kinds
        },
        "rejects": _rejects(partial.rejects, partial.reject_examples),
        "mixture": {
            "per_source": {
                source: {
                    "sequences": sequences_by_source[source],
                    "tokens": tokens_by_source[source],
                    "token_share": tokens_by_source[source] / all_tokens if all_tokens else None,
                }
                for source in sorted(tokens_by_source)
            },
            "vl_tokens": vl_tokens,
            "text_only_tokens": text_only_tokens,
            "vl_to_text_only": vl_tokens / text_only_tokens if text_only_tokens else None,
        },
        "shards": {
            "count": len(shard_entries),
            "bytes": distribution(Counter(e["bytes"] for e in shard_entries)),
            "rows": distribution(Counter(e["rows"] for e in shard_entries)),
            "per_source": {s: _files([e for e in shard_entries if e["source"] == s]) for s in shard_sources},
            "rejects": _files(list(manifest.get("rejects", []))),
        },
        "candidate_grids": [list(g) for g in context.candidate_grids],
        "filters": _filters(partial, manifest),
        "packing": _manifest_packing(manifest.get("packing")),
        "dedup": _manifest_dedup(manifest),
        "decontamination": _manifest_decontamination(manifest.get("decontamination")),
        "problems": [{"path": path, "message": partial.problems[path]} for path in sorted(partial.problems)],
    }


_FILL_KEYS = ("rows", "documents", "token_fill", "tile_fill")


def _fill(entry: Any) -> dict[str, Any] | None:
    if not isinstance(entry, Mapping):
        return None
    values = {key: entry.get(key) for key in _FILL_KEYS}
    if values["token_fill"] is None:  # manifests before tile budgets named it efficiency
        values["token_fill"] = entry.get("efficiency")
    return values


def _manifest_packing(packing: Any) -> dict[str, Any] | None:
    """`packing`: the manifest's packing figures, total and per source (see the module docstring)."""
    if not isinstance(packing, Mapping):
        return None
    per_source = packing.get("sources") or packing.get("per_source") or {}
    return {
        "total": _fill(packing.get("total", packing)),
        "sources": {name: _fill(entry) for name, entry in sorted(per_source.items())},
    }


def _manifest_dedup(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """`dedup`: duplicates, the near-duplicate distance histogram and the configured thresholds."""
    dedup = manifest.get("dedup")
    if not isinstance(dedup, Mapping):
        return None
    histogram = dedup.get("near_distance_histogram")
    sound = isinstance(histogram, list) and len(histogram) == HAMMING_BITS + 1
    thresholds = {}
    for source in (manifest.get("config") or {}).get("sources") or []:
        chosen = source.get("dedup") if isinstance(source, Mapping) else None
        if isinstance(chosen, Mapping) and isinstance(chosen.get("near_distance"), int | float):
            thresholds[str(source.get("name"))] = chosen["near_distance"]
    if isinstance(dedup.get("near_distance"), int | float):
        thresholds = {"": dedup["near_distance"]} | thresholds
    return {
        "duplicates": dedup.get("duplicates"),
        "near_distance_histogram": (
            {"bin_edges": list(range(HAMMING_BITS + 2)), "counts": [int(c) for c in histogram]}
            if sound
            else None
        ),
        "near_distance": thresholds,
    }


def _manifest_decontamination(counts: Any) -> dict[str, Any] | None:
    """`decontamination`: the manifest's counts per evaluation set, as recorded."""
    return dict(sorted(counts.items())) if isinstance(counts, Mapping) else None


def _filters(partial: Partial, manifest: Mapping[str, Any]) -> dict[str, Any]:
    from pipeline.filters import FILTERS

    thresholds = (manifest.get("filters") or {}).get("thresholds", {})
    result: dict[str, Any] = {}
    for source, quantity in sorted(partial.filter_extremes):
        configured = thresholds.get(source, {})
        own = {name: configured[name] for name in configured if FILTERS[name].quantity == quantity}
        edges = filter_bin_edges(quantity)
        counts, cut = Counter(), Counter()
        dropped_other = 0
        for (name, measured, bin_index, by), count in partial.filter_bins.items():
            if (name, measured) != (source, quantity):
                continue
            counts[bin_index] += count
            if by in own:
                cut[bin_index] += count
            elif by:
                dropped_other += count
        low, high = partial.filter_extremes[(source, quantity)]
        result.setdefault(source, {})[quantity] = {
            "filters": own,
            "measured": sum(counts.values()),
            "cut": sum(cut.values()),
            "dropped_other": dropped_other,
            "min": low,
            "max": high,
            "histogram": {**_histogram(counts, edges), "cut_counts": _histogram(cut, edges)["counts"]},
        }
    return result

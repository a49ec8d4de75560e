"""Quality filters of a source: measure each sample, drop those out of the configured bounds, say why.

A source turns filters on under `sources[i].filters` in the job config, a mapping of filter name to
threshold; every filter is off unless configured (a null threshold is off too). `parse_filters` validates
that mapping before any work starts. Per batch of samples (`schemas.sample` rows), `measure` computes the
quantities the configured filters read, one nullable column each, and `apply` turns them into a keep mask
and one `schemas.reject` row (stage `filter`) per dropped sample; a caller that also keeps the measurements
computes `dropped_by` once and passes it to `reject_rows` and `measurement_table`. The measured quantities
are kept per sample, with the filter that dropped it, so that the statistics report can plot each
distribution with its threshold cut.

| filter | keeps | threshold | reject reason |
|---|---|---|---|
| `min_image_side` | `image_min_side` ≥ t | int ≥ 1 (px) | `image_too_small` |
| `max_aspect_ratio` | `image_max_aspect_ratio` ≤ t | float ≥ 1 | `extreme_aspect_ratio` |
| `max_image_pixels` | `image_max_pixels` ≤ t | int ≥ 1 (px) | `too_many_pixels` |
| `min_text_chars` | `text_chars` ≥ t | int ≥ 1 (characters) | `text_too_short` |
| `max_text_chars` | `text_chars` ≤ t | int ≥ 1 (characters) | `text_too_long` |
| `min_text_tokens` | `text_tokens` ≥ t | int ≥ 1 (tokens) | `too_few_text_tokens` |
| `max_text_tokens` | `text_tokens` ≤ t | int ≥ 1 (tokens) | `too_many_text_tokens` |
| `max_padding_share` | `padding_share` ≤ t | float in (0, 1] | `too_much_padding` |
| `min_box_area` | `box_min_area` ≥ t | float > 0 (px²) | `box_too_small` |

The quantities of a sample (`measure` columns; int64 or float64, nullable):

- `image_min_side` (int, px): the smallest side (width or height) over its images.
- `image_max_aspect_ratio` (float): the largest long side / short side over its images (≥ 1).
- `image_max_pixels` (int, px): the largest width · height over its images.
- `text_chars` (int): characters (Python `len`, code points) of all its text segments together.
- `text_tokens` (int): tokens of all its text segments together (see below).
- `padding_share` (float in [0, 1]): the largest share of padding in an image's tiled canvas (see below).
- `box_min_area` (float, px²): the smallest (x2 − x1) · (y2 − y1) over all boxes of all its regions.

Bounds: a "min" filter keeps a sample whose quantity is ≥ the threshold, a "max" filter one whose quantity is
≤ the threshold; exactly at the threshold is kept. A quantity is null when the sample has nothing to measure
(no image for the image quantities, no text segment for the text ones, no region for `box_min_area`), and a
null quantity is never dropped. A sample's image quantities are the worst over its images and
`box_min_area` the smallest over all its boxes: one image or box out of bounds drops the whole
sample (filters keep or drop whole samples: taking one image or box out would change its text and layout).

`text_tokens` counts the ordinary pieces of each text segment encoded on its own by the job's tokenizer
(`Tokenizer.encode`: no template, no special tokens, no bos/eos), summed over the sample's segments; all
segments of a batch go to the backend in one `encode_batch` call.

`padding_share` is computed from image sizes alone, exactly as the tiling lays the image out
(`pipeline.tiling`): cropping is on when the sample has at most two images (as in `pipeline.sequence`), the
grid (gw, gh) is `best_grid((w, h), shape, cropping)`, the local canvas is (gw·T) × (gh·T) with T =
`shape.image_size`, the image is resized to fit it, (cw, ch) = `contain_size((w, h), (gw·T, gh·T))`, and
share = 1 − cw·ch / (gw·T · gh·T): the fraction of the canvas the pad colour fills. The square global view
is not counted: it is one tile whatever the image, so counting it would charge every non-square image for
padding that the tiling cannot avoid (a 768×384 image fills its 2×1 canvas exactly: share 0, yet its global
view is half padding), while the local canvas is the view the tiling chose and holds most of the image's
tokens. Without cropping the canvas is 1×1, the same box as the global view, which is then what is
measured. A 1×5000 image comes out at exactly 1: every candidate canvas would shrink it below one pixel
wide, so the tiling keeps the 1×1 grid and the image vanishes from it (`contain_size` gives 0×384).

When several filters fail for one sample, the first in `FILTERS` order (the table's) names the reason.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from model_shapes import ModelShape
from pipeline.errors import ConfigError
from pipeline.tiling import best_grid, cropping_for, padded_pixels
from pipeline.tokenizer import Tokenizer
from schemas import reject as reject_schema

__all__ = [
    "FILTERS",
    "MEASUREMENT_SCHEMA",
    "QUANTITIES",
    "FilterSpec",
    "Filters",
    "apply",
    "dropped_by",
    "measure",
    "measurement_table",
    "parse_filters",
    "reject_rows",
]


@dataclass(frozen=True)
class FilterSpec:
    """One filter as data.

    - `name`: the key under `sources[i].filters`; `quantity`: the `measure` column it reads.
    - `bound`: "min" (keeps quantity ≥ threshold) or "max" (keeps quantity ≤ threshold).
    - `reason`: the `schemas.reject` reason code of a sample it drops.
    - `value_type`: int or float, the type of both the threshold and the quantity (int64 or float64).
    - `unit`: the unit of threshold and quantity ("" for ratios and shares); `label`: the quantity in words,
      as reject details say it; `description`: what the quantity is.
    - `lowest` (and `lowest_included`), `highest`: the range a threshold must lie in.
    """

    name: str
    quantity: str
    bound: str
    reason: str
    value_type: type[int] | type[float]
    unit: str
    label: str
    description: str
    lowest: float
    lowest_included: bool = True
    highest: float | None = None

    @property
    def range_text(self) -> str:
        """The valid thresholds in words, e.g. "an integer ≥ 1" or "a number > 0 and ≤ 1"."""
        kind = "an integer" if self.value_type is int else "a number"
        lowest = f"{'≥' if self.lowest_included else '>'} {_number(self.value_type(self.lowest))}"
        highest = "" if self.highest is None else f" and ≤ {_number(self.value_type(self.highest))}"
        return f"{kind} {lowest}{highest}"

    def accepts(self, threshold: float) -> bool:
        """Whether `threshold` (a finite number) lies in this filter's range."""
        above = threshold >= self.lowest if self.lowest_included else threshold > self.lowest
        return above and (self.highest is None or threshold <= self.highest)


_IMAGE_SIDE = "the smallest side over the sample's images (null without images)"
_TEXT_CHARS = "characters (Python len) of the sample's text segments, summed (null without text segments)"
_TEXT_TOKENS = "tokens of the sample's text segments, each encoded alone, summed (null without text segments)"

FILTERS: dict[str, FilterSpec] = {
    spec.name: spec
    for spec in (
        FilterSpec(
            name="min_image_side",
            quantity="image_min_side",
            bound="min",
            reason="image_too_small",
            value_type=int,
            unit="px",
            label="smallest image side",
            description=_IMAGE_SIDE,
            lowest=1,
        ),
        FilterSpec(
            name="max_aspect_ratio",
            quantity="image_max_aspect_ratio",
            bound="max",
            reason="extreme_aspect_ratio",
            value_type=float,
            unit="",
            label="largest aspect ratio",
            description="the largest long side / short side over the sample's images (null without images)",
            lowest=1,
        ),
        FilterSpec(
            name="max_image_pixels",
            quantity="image_max_pixels",
            bound="max",
            reason="too_many_pixels",
            value_type=int,
            unit="px",
            label="largest image",
            description="the largest width · height over the sample's images (null without images)",
            lowest=1,
        ),
        FilterSpec(
            name="min_text_chars",
            quantity="text_chars",
            bound="min",
            reason="text_too_short",
            value_type=int,
            unit="characters",
            label="text length",
            description=_TEXT_CHARS,
            lowest=1,
        ),
        FilterSpec(
            name="max_text_chars",
            quantity="text_chars",
            bound="max",
            reason="text_too_long",
            value_type=int,
            unit="characters",
            label="text length",
            description=_TEXT_CHARS,
            lowest=1,
        ),
        FilterSpec(
            name="min_text_tokens",
            quantity="text_tokens",
            bound="min",
            reason="too_few_text_tokens",
            value_type=int,
            unit="tokens",
            label="text length",
            description=_TEXT_TOKENS,
            lowest=1,
        ),
        FilterSpec(
            name="max_text_tokens",
            quantity="text_tokens",
            bound="max",
            reason="too_many_text_tokens",
            value_type=int,
            unit="tokens",
            label="text length",
            description=_TEXT_TOKENS,
            lowest=1,
        ),
        FilterSpec(
            name="max_padding_share",
            quantity="padding_share",
            bound="max",
            reason="too_much_padding",
            value_type=float,
            unit="",
            label="largest padding share",
            description=(
                "the largest padding share of an image's local canvas over the sample's images "
                "(null without images)"
            ),
            lowest=0,
            lowest_included=False,
            highest=1,
        ),
        FilterSpec(
            name="min_box_area",
            quantity="box_min_area",
            bound="min",
            reason="box_too_small",
            value_type=float,
            unit="px²",
            label="smallest box area",
            description="the smallest (x2 − x1) · (y2 − y1) over all boxes of all regions (null without any)",
            lowest=0,
            lowest_included=False,
        ),
    )
}
"""Every filter, in the order that decides the reason when several fail."""

QUANTITIES: dict[str, pa.DataType] = {
    spec.quantity: pa.int64() if spec.value_type is int else pa.float64() for spec in FILTERS.values()
}
"""Every quantity `measure` computes, in a fixed order, with its Arrow type (the column is nullable)."""

MEASUREMENT_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("key", pa.string(), nullable=False),
        pa.field("sample_id", pa.string(), nullable=False),
        *(pa.field(quantity, data_type) for quantity, data_type in QUANTITIES.items()),
        pa.field("dropped_by", pa.string()),
    ],
    metadata={"vl2prep.schema": "filter_measurements", "vl2prep.schema_version": "1"},
)
"""A job's filter measurements (`OUT/filters/part-<partition>-<k>.parquet`): one row per sample of a
filtered source that reached the filters, its provenance, every quantity (null when not measured) and the
filter that dropped it (null when kept)."""

_IMAGE_QUANTITIES = ("image_min_side", "image_max_aspect_ratio", "image_max_pixels", "padding_share")

# (min, max) pairs of filters reading one quantity: the min may not exceed the max.
_PAIRS = (("min_text_chars", "max_text_chars"), ("min_text_tokens", "max_text_tokens"))


@dataclass(frozen=True)
class Filters:
    """The filters a source configured: `thresholds` maps filter names (keys of `FILTERS`) to thresholds.
    Build it with `parse_filters`, which checks the values; false when no filter is on."""

    thresholds: dict[str, int | float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = [name for name in self.thresholds if name not in FILTERS]
        if unknown:
            raise ValueError(f"unknown filters {', '.join(map(repr, unknown))}; known: {', '.join(FILTERS)}")

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities the configured filters read, in `QUANTITIES` order: what to pass to `measure`."""
        needed = {FILTERS[name].quantity for name in self.thresholds}
        return tuple(quantity for quantity in QUANTITIES if quantity in needed)

    def __bool__(self) -> bool:
        return bool(self.thresholds)


def parse_filters(value: object, where: str) -> Filters:
    """Validate a source's `filters` mapping (None: no filters). `where` is the key path of the mapping
    ("sources[2].filters"); a `ConfigError` message starts with the path of the offending key."""
    if value is None:
        return Filters()
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: must be a mapping of filter names to thresholds ({', '.join(FILTERS)}), "
            f"not {type(value).__name__}"
        )
    for name in value:
        if name not in FILTERS:
            raise ConfigError(f"{where}.{name}: unknown filter; known: {', '.join(FILTERS)}")
    thresholds: dict[str, int | float] = {}
    for name, spec in FILTERS.items():
        threshold = value.get(name)
        if threshold is None:
            continue
        if not _valid_threshold(spec, threshold):
            raise ConfigError(f"{where}.{name}: must be {spec.range_text}, not {threshold!r}")
        thresholds[name] = spec.value_type(threshold)
    for low, high in _PAIRS:
        if low in thresholds and high in thresholds and thresholds[low] > thresholds[high]:
            raise ConfigError(
                f"{where}.{low}: {thresholds[low]} is above {high} {thresholds[high]}; no sample could pass"
            )
    return Filters(thresholds)


def measure(
    samples: pa.Table, quantities: Sequence[str], shape: ModelShape, tokenizer: Tokenizer | None
) -> pa.Table:
    """The `quantities` (names from `QUANTITIES`) of each sample: one nullable column each, in the order
    asked, rows in the order of `samples`. Only what is asked is computed; `tokenizer` is needed only for
    `text_tokens`, `shape` (its tile size and candidate canvases) only for `padding_share`."""
    unknown = [quantity for quantity in quantities if quantity not in QUANTITIES]
    if unknown:
        raise ValueError(
            f"unknown quantities {', '.join(map(repr, unknown))}; known: {', '.join(QUANTITIES)}"
        )
    if "text_tokens" in quantities and tokenizer is None:
        raise ValueError("measuring text_tokens needs a tokenizer")
    rows = samples.num_rows
    columns: dict[str, pa.Array] = {}
    if any(quantity in _IMAGE_QUANTITIES for quantity in quantities):
        images = samples.column("images")
        flat = pc.list_flatten(images)
        parents = pc.list_parent_indices(images).to_numpy()
        widths = pc.struct_field(flat, "width").to_numpy().astype(np.int64)
        heights = pc.struct_field(flat, "height").to_numpy().astype(np.int64)
        if "image_min_side" in quantities:
            columns["image_min_side"] = _reduce(np.minimum, np.minimum(widths, heights), parents, rows)
        if "image_max_aspect_ratio" in quantities:
            ratios = np.maximum(widths, heights) / np.minimum(widths, heights)
            columns["image_max_aspect_ratio"] = _reduce(np.maximum, ratios, parents, rows)
        if "image_max_pixels" in quantities:
            columns["image_max_pixels"] = _reduce(np.maximum, widths * heights, parents, rows)
        if "padding_share" in quantities:
            cropping = cropping_for(np.bincount(parents, minlength=rows)[parents])
            shares = _padding_shares(widths, heights, cropping, shape)
            columns["padding_share"] = _reduce(np.maximum, shares, parents, rows)
    if "text_chars" in quantities or "text_tokens" in quantities:
        content = samples.column("content")
        flat = pc.list_flatten(content)
        texts = pc.struct_field(flat, "text")
        is_text = pc.and_(pc.equal(pc.struct_field(flat, "type"), "text"), pc.is_valid(texts))
        texts = texts.filter(is_text)
        parents = pc.list_parent_indices(content).filter(is_text).to_numpy()
        if "text_chars" in quantities:
            chars = pc.utf8_length(texts).to_numpy().astype(np.int64)
            columns["text_chars"] = _reduce(np.add, chars, parents, rows)
        if "text_tokens" in quantities:
            assert tokenizer is not None
            encoded = tokenizer.encode_batch(texts.to_pylist())
            counts = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
            columns["text_tokens"] = _reduce(np.add, counts, parents, rows)
    if "box_min_area" in quantities:
        regions = samples.column("regions")
        boxes = pc.struct_field(pc.list_flatten(regions), "boxes")
        box_regions = pc.list_parent_indices(boxes).to_numpy()
        parents = pc.list_parent_indices(regions).to_numpy()[box_regions]
        corners = pc.list_flatten(pc.list_flatten(boxes)).to_numpy().reshape(-1, 4)
        areas = (corners[:, 2] - corners[:, 0]) * (corners[:, 3] - corners[:, 1])
        columns["box_min_area"] = _reduce(np.minimum, areas, parents, rows)
    measured = pa.Table.from_struct_array(pa.nulls(rows, pa.struct([])))  # `rows` rows, no column yet
    for quantity in quantities:
        measured = measured.append_column(pa.field(quantity, QUANTITIES[quantity]), columns[quantity])
    return measured


def dropped_by(filters: Filters, measured: pa.Table) -> pa.Array:
    """The name of the filter that drops each row of `measured` (a `measure` table holding at least
    `filters.quantities`), null for a row kept: the first failing filter in `FILTERS` order."""
    rows = measured.num_rows
    names = [name for name in FILTERS if name in filters.thresholds]
    if not names:
        return pa.nulls(rows, pa.string())
    first = np.full(rows, -1, dtype=np.int64)
    for position, name in enumerate(names):
        spec = FILTERS[name]
        outside = pc.less if spec.bound == "min" else pc.greater
        fails = pc.fill_null(outside(measured.column(spec.quantity), filters.thresholds[name]), False)
        first[(first < 0) & fails.to_numpy()] = position
    return pa.array(names, pa.string()).take(pa.array(first, pa.int64(), mask=first < 0))


def apply(filters: Filters, samples: pa.Table, measured: pa.Table, source: str) -> tuple[pa.Array, pa.Table]:
    """The keep mask of `samples` (boolean, never null) and the reject table of the samples dropped
    (`reject_rows`). `measured` is `measure(samples, filters.quantities, ...)`, row for row."""
    dropped = dropped_by(filters, measured)
    return pc.is_null(dropped), reject_rows(filters, samples, measured, dropped, source)


def reject_rows(
    filters: Filters, samples: pa.Table, measured: pa.Table, dropped: pa.Array, source: str
) -> pa.Table:
    """The reject table (`schemas.reject.SCHEMA`) of the samples `dropped` (`dropped_by(filters, measured)`)
    names, in row order: stage "filter", the deciding filter's reason code, its quantity as `value`, and a
    detail naming filter, threshold and value ("min_image_side 32: smallest image side 12 px")."""
    if measured.num_rows != samples.num_rows:
        raise ValueError(f"measured has {measured.num_rows} rows for {samples.num_rows} samples")
    indices = np.flatnonzero(pc.is_valid(dropped).to_numpy(zero_copy_only=False))
    rejects: list[dict] = []
    if len(indices):
        picked = pa.array(indices, pa.int64())
        ids = samples.select(["key", "sample_id"]).take(picked).to_pylist()
        measured_rows = measured.take(picked).to_pylist()
        for name, id_row, values in zip(dropped.take(picked).to_pylist(), ids, measured_rows, strict=True):
            spec = FILTERS[name]
            value = values[spec.quantity]
            unit = f" {spec.unit}" if spec.unit else ""
            detail = f"{name} {_number(filters.thresholds[name])}: {spec.label} {_number(value)}{unit}"
            rejects.append(
                reject_schema.reject(
                    source, id_row["key"], "filter", spec.reason, detail, id_row["sample_id"], float(value)
                )
            )
    return reject_schema.to_table(rejects)


def measurement_table(samples: pa.Table, measured: pa.Table, dropped: pa.Array) -> pa.Table:
    """The `MEASUREMENT_SCHEMA` rows of `samples`, their `measure` table and `dropped_by` array."""
    columns = [samples.column("source"), samples.column("key"), samples.column("sample_id")]
    for quantity, data_type in QUANTITIES.items():
        names = measured.schema.names
        columns.append(
            measured.column(quantity) if quantity in names else pa.nulls(samples.num_rows, data_type)
        )
    columns.append(dropped)
    return pa.Table.from_arrays(columns, schema=MEASUREMENT_SCHEMA)


def _valid_threshold(spec: FilterSpec, threshold: object) -> bool:
    """Whether a configured threshold has the filter's type (bool is no number) and lies in its range."""
    if isinstance(threshold, bool) or not isinstance(
        threshold, int if spec.value_type is int else int | float
    ):
        return False
    return (isinstance(threshold, int) or math.isfinite(threshold)) and spec.accepts(threshold)


def _reduce(ufunc: np.ufunc, values: np.ndarray, parents: np.ndarray, rows: int) -> pa.Array:
    """`ufunc` (np.minimum, np.maximum or np.add) over the values of each row (`parents` gives each value's
    row); null for a row without values."""
    if ufunc is np.add:
        start = 0
    else:
        info = np.iinfo(values.dtype) if values.dtype.kind == "i" else np.finfo(values.dtype)
        start = info.max if ufunc is np.minimum else info.min
    out = np.full(rows, start, dtype=values.dtype)
    ufunc.at(out, parents, values)
    return pa.array(out, mask=np.bincount(parents, minlength=rows) == 0)


def _padding_shares(
    widths: np.ndarray, heights: np.ndarray, cropping: np.ndarray, shape: ModelShape
) -> np.ndarray:
    """The padding share of each image's local canvas (see the module docstring), one per distinct
    (width, height, cropping)."""
    keys = np.stack([widths, heights, cropping.astype(np.int64)], axis=1)
    distinct, inverse = np.unique(keys, axis=0, return_inverse=True)
    grids = [best_grid((width, height), shape, bool(crop)) for width, height, crop in distinct.tolist()]
    canvas, padding = padded_pixels(distinct[:, 0], distinct[:, 1], np.array(grids), shape.image_size)
    return (1 - (canvas - padding) / canvas)[inverse.reshape(-1)]  # 1 − cw·ch / canvas, as documented


def _number(value: int | float) -> str:
    """A threshold or quantity as details print it: an int as is, a float in its shortest exact form."""
    return str(value) if isinstance(value, int) else repr(float(value))

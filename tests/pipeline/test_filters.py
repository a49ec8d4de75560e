"""pipeline.filters: config parsing, measured quantities against plain computations, bounds, reject rows."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

import model_shapes
from pipeline import filters as filters_module
from pipeline import tiling, tokenizer
from pipeline.errors import ConfigError
from pipeline.filters import FILTERS, QUANTITIES, Filters, apply, dropped_by, measure, parse_filters
from schemas import reject as reject_schema
from schemas import sample as sample_schema

TOY = model_shapes.load("toy")
TOK = tokenizer.load("default", TOY)
TILE = TOY.image_size
WHERE = "sources[2].filters"


def picture(width: int, height: int) -> dict:
    """An image entry as readers write it; the filters read only the size, so no bytes are needed."""
    return {"bytes": None, "path": f"{width}x{height}.png", "width": width, "height": height, "format": "PNG"}


def text(value: str, turn: int = 0, role: str | None = None) -> dict:
    return {"turn": turn, "role": role, "type": "text", "text": value, "image": None}


def image_segment(index: int) -> dict:
    return {"turn": 0, "role": None, "type": "image", "text": None, "image": index}


def region(boxes: list[list[float]], image: int = 0) -> dict:
    return {"phrase": "a thing", "image": image, "boxes": boxes, "segment": None, "start": None, "end": None}


def sample(key: str, texts=(), sizes=(), regions=()) -> dict:
    """A sample row: its images (of the given sizes) first, then its texts, as one document."""
    content = [image_segment(index) for index in range(len(sizes))] + [text(value) for value in texts]
    return {
        "sample_id": sample_schema.sample_id_for("src", key),
        "source": "src",
        "key": key,
        "kind": "interleaved",
        "content": content,
        "images": [picture(width, height) for width, height in sizes],
        "regions": list(regions),
        "meta": "{}",
    }


def table(*rows: dict) -> pa.Table:
    return sample_schema.to_table(list(rows))


def measured_value(row: dict, quantity: str):
    return measure(table(row), [quantity], TOY, TOK).column(quantity)[0].as_py()


def padding_share_by_pixels(width: int, height: int, images_in_sample: int) -> float:
    """The share of pad-coloured pixels in the local views the tiling really draws for a solid red image."""
    red = Image.new("RGB", (width, height), (255, 0, 0))
    tiles = tiling.tile_image(red, TOY, cropping=images_in_sample <= 2)
    local = tiles.local_views
    return 1 - np.count_nonzero(local[..., 0] > 200) / local[..., 0].size


# ----------------------------------------------------------------------------------------------------
# the table as data


def test_filters_table_is_consistent():
    assert list(QUANTITIES) == list(dict.fromkeys(spec.quantity for spec in FILTERS.values()))
    for name, spec in FILTERS.items():
        assert spec.name == name and spec.bound in ("min", "max")
        assert spec.reason in reject_schema.REASONS
        assert f"`{name}`" in filters_module.__doc__ and f"`{spec.quantity}`" in filters_module.__doc__
        assert QUANTITIES[spec.quantity] == (pa.int64() if spec.value_type is int else pa.float64())


def test_filters_value_quantities_and_truth():
    assert not Filters() and Filters().quantities == ()
    configured = Filters({"min_box_area": 1.0, "max_text_chars": 9, "min_image_side": 3, "min_text_chars": 1})
    assert configured and configured.quantities == ("image_min_side", "text_chars", "box_min_area")
    assert pickle.loads(pickle.dumps(configured)) == configured
    with pytest.raises(ValueError, match="unknown filters 'min_width'"):
        Filters({"min_width": 3})


# ----------------------------------------------------------------------------------------------------
# parse_filters


def test_parse_filters_accepts_a_config():
    assert not parse_filters(None, WHERE) and not parse_filters({}, WHERE)
    parsed = parse_filters(
        {"max_aspect_ratio": 3, "min_image_side": 32, "max_padding_share": 1, "min_text_chars": None},
        WHERE,
    )
    assert parsed.thresholds == {"min_image_side": 32, "max_aspect_ratio": 3.0, "max_padding_share": 1.0}
    assert isinstance(parsed.thresholds["max_aspect_ratio"], float)
    assert parse_filters({"min_text_tokens": 5, "max_text_tokens": 5}, WHERE).quantities == ("text_tokens",)


@pytest.mark.parametrize(
    ("value", "key", "message"),
    [
        ([1, 2], "", "must be a mapping of filter names"),
        ({"min_width": 3}, ".min_width", "unknown filter; known: min_image_side"),
        ({"min_image_side": True}, ".min_image_side", "must be an integer ≥ 1, not True"),
        ({"min_image_side": 32.0}, ".min_image_side", "must be an integer ≥ 1, not 32.0"),
        ({"min_image_side": "32"}, ".min_image_side", "must be an integer"),
        ({"min_image_side": 0}, ".min_image_side", "must be an integer ≥ 1, not 0"),
        ({"max_image_pixels": -5}, ".max_image_pixels", "must be an integer ≥ 1"),
        ({"max_aspect_ratio": 0.5}, ".max_aspect_ratio", "must be a number ≥ 1.0, not 0.5"),
        ({"max_aspect_ratio": math.inf}, ".max_aspect_ratio", "must be a number ≥ 1.0, not inf"),
        ({"max_padding_share": 0}, ".max_padding_share", "must be a number > 0.0 and ≤ 1.0, not 0"),
        ({"max_padding_share": 1.5}, ".max_padding_share", "must be a number > 0.0 and ≤ 1.0"),
        ({"max_padding_share": math.nan}, ".max_padding_share", "not nan"),
        ({"min_box_area": 0.0}, ".min_box_area", "must be a number > 0.0"),
        ({"min_box_area": False}, ".min_box_area", "must be a number"),
        ({"min_text_chars": 10, "max_text_chars": 9}, ".min_text_chars", "10 is above max_text_chars 9"),
        ({"min_text_tokens": 3, "max_text_tokens": 2}, ".min_text_tokens", "is above max_text_tokens 2"),
    ],
)
def test_parse_filters_errors_name_the_key(value, key, message):
    with pytest.raises(ConfigError) as caught:
        parse_filters(value, WHERE)
    assert str(caught.value).startswith(f"{WHERE}{key}: ")
    assert message in str(caught.value)


# ----------------------------------------------------------------------------------------------------
# measure


def test_measure_image_quantities():
    rows = [
        sample("two", ["x"], [(40, 30), (50, 600)]),
        sample("one", ["x"], [(1000, 10)]),
        sample("none", ["only text"]),
    ]
    measured = measure(
        table(*rows), ["image_max_pixels", "image_min_side", "image_max_aspect_ratio"], TOY, None
    )
    assert measured.column_names == ["image_max_pixels", "image_min_side", "image_max_aspect_ratio"]
    assert measured.schema.types == [pa.int64(), pa.int64(), pa.float64()]
    assert measured.to_pydict() == {
        "image_max_pixels": [50 * 600, 1000 * 10, None],
        "image_min_side": [30, 10, None],
        "image_max_aspect_ratio": [600 / 50, 100.0, None],
    }


@pytest.mark.parametrize(
    ("size", "images_in_sample", "expected"),
    [
        ((384, 384), 1, 0.0),
        ((768, 384), 1, 0.0),  # a 2×1 canvas filled exactly
        ((700, 384), 2, 1 - 700 / 768),  # 2×1 canvas, the image keeps its size
        ((1000, 10), 1, 1 - 12 / 384),  # 3×1 canvas 1152×384, the image becomes 1152×12
        ((768, 384), 3, 0.5),  # no cropping with 3 images: 1×1 canvas, the image becomes 384×192
        ((1, 5000), 1, 1.0),  # every canvas shrinks it below a pixel: 1×1, and it vanishes
    ],
)
def test_padding_share_matches_the_drawn_canvas(size, images_in_sample, expected):
    row = sample("k", ["x"], [size] * images_in_sample)
    share = measured_value(row, "padding_share")
    assert share == pytest.approx(expected, abs=1e-12)
    assert share == pytest.approx(padding_share_by_pixels(*size, images_in_sample), abs=1e-12)


def test_padding_share_is_the_worst_image_and_null_without_images():
    rows = [sample("two", ["x"], [(384, 384), (1000, 10)]), sample("none", ["x"])]
    assert measure(table(*rows), ["padding_share"], TOY, None).column(0).to_pylist() == [1 - 12 / 384, None]


def test_measure_text_quantities():
    chat = sample("chat", sizes=[(64, 64)])
    chat["content"] += [text("What is this? ", 0, "user"), text("A cat on a mat.", 1, "assistant")]
    rows = [
        chat,
        sample("doc", ["héllo", " wörld ✓", ""]),
        sample("images only", sizes=[(64, 64)]),
        sample("empty"),
    ]
    measured = measure(table(*rows), ["text_tokens", "text_chars"], TOY, TOK)
    texts = [["What is this? ", "A cat on a mat."], ["héllo", " wörld ✓", ""]]
    assert measured.column("text_chars").to_pylist() == [sum(map(len, t)) for t in texts] + [None, None]
    tokens = [sum(len(TOK.encode(piece)) for piece in t) for t in texts]
    assert measured.column("text_tokens").to_pylist() == [*tokens, None, None]
    assert measured.column("text_chars")[1].as_py() == 13  # characters, not UTF-8 bytes (16)


def test_measure_box_min_area():
    rows = [
        sample(
            "two regions",
            ["x"],
            [(100, 100)],
            [region([[0, 0, 2.5, 4], [1, 1, 50, 50]]), region([[1, 1, 11, 11]])],
        ),
        sample("no regions", ["x"], [(100, 100)]),
    ]
    assert measure(table(*rows), ["box_min_area"], TOY, None).column(0).to_pylist() == [10.0, None]


def test_measure_follows_row_order_of_chunked_and_sliced_tables():
    rows = [
        sample(f"k{i}", ["a" * i], [(10 + i, 20)] * (i % 4), [region([[0, 0, 1 + i, 2]])] if i % 3 else [])
        for i in range(12)
    ]
    whole = table(*rows)
    chunked = pa.concat_tables([whole.slice(0, 5), whole.slice(5)]).slice(2, 8)
    quantities = list(QUANTITIES)
    expected = measure(whole, quantities, TOY, TOK).slice(2, 8)
    assert measure(chunked, quantities, TOY, TOK).equals(expected)
    singles = pa.concat_tables([measure(table(row), quantities, TOY, TOK) for row in rows[2:10]])
    assert singles.equals(expected)


def test_measure_computes_only_what_is_asked():
    assert measure(table(sample("k", ["x"])), [], TOY, None).num_columns == 0
    assert measure(table(), list(QUANTITIES), TOY, TOK).num_rows == 0
    with pytest.raises(ValueError, match="needs a tokenizer"):
        measure(table(sample("k", ["x"])), ["text_tokens"], TOY, None)
    with pytest.raises(ValueError, match="unknown quantities 'width'"):
        measure(table(sample("k", ["x"])), ["width"], TOY, None)


# ----------------------------------------------------------------------------------------------------
# apply: bounds, nulls, order, reject rows

BOUNDARY_SAMPLES = {
    "min_image_side": (sample("k", ["x"], [(40, 30), (50, 60)]), 30),
    "max_aspect_ratio": (sample("k", ["x"], [(250, 100), (100, 120)]), 2.5),
    "max_image_pixels": (sample("k", ["x"], [(101, 100), (20, 20)]), 10100),
    "min_text_chars": (sample("k", ["héllo", " wörld"]), 11),
    "max_text_chars": (sample("k", ["héllo", " wörld"]), 11),
    "min_text_tokens": (sample("k", ["A cat on a mat.", "Two cats."]), None),
    "max_text_tokens": (sample("k", ["A cat on a mat.", "Two cats."]), None),
    "max_padding_share": (sample("k", ["x"], [(700, 384)]), 1 - 700 / 768),
    "min_box_area": (sample("k", ["x"], [(99, 99)], [region([[0.5, 0, 3, 4], [0, 0, 50, 50]])]), 10.0),
}
TOKENS = sum(len(TOK.encode(piece)) for piece in ["A cat on a mat.", "Two cats."])


def keeps(name: str, threshold: float, row: dict) -> bool:
    samples = table(row)
    chosen = Filters({name: threshold})
    keep, rejects = apply(chosen, samples, measure(samples, chosen.quantities, TOY, TOK), "src")
    assert rejects.num_rows == (not keep[0].as_py())
    return keep[0].as_py()


@pytest.mark.parametrize("name", list(FILTERS))
def test_each_filter_at_its_boundary(name):
    spec = FILTERS[name]
    row, value = BOUNDARY_SAMPLES[name]
    value = TOKENS if value is None else value
    assert measured_value(row, spec.quantity) == value
    past = -1 if spec.bound == "min" else 1  # the direction a threshold moves to drop this value
    assert keeps(name, value, row)
    assert not keeps(name, value - past, row)  # one unit past
    assert keeps(name, value + past, row)
    if spec.value_type is float:
        assert not keeps(name, math.nextafter(value, past * -math.inf), row)  # just past


def test_null_quantities_are_never_dropped():
    strict = Filters({name: 10**6 if spec.bound == "min" else 1 for name, spec in FILTERS.items()})
    strict = Filters({**strict.thresholds, "max_padding_share": 1e-9, "max_aspect_ratio": 1.0})
    samples = table(sample("nothing"), sample("images", sizes=[(9, 9)]), sample("text", ["abc"]))
    measured = measure(samples, strict.quantities, TOY, TOK)
    keep, rejects = apply(strict, samples, measured, "src")
    assert measured.slice(0, 1).to_pylist() == [dict.fromkeys(QUANTITIES)]
    assert keep.to_pylist() == [True, False, False]
    assert rejects.column("reason").to_pylist() == ["image_too_small", "text_too_short"]


def test_the_first_failing_filter_decides_the_reason_and_the_reject_row():
    config = parse_filters({"min_text_chars": 10, "max_text_chars": 20, "min_image_side": 32}, WHERE)
    samples = table(
        sample("both", ["short"], [(12, 40)]),
        sample("text", ["short"], [(40, 40)]),
        sample("kept", ["long enough"], [(32, 32)]),
        sample("long", ["x" * 21]),
    )
    measured = measure(samples, config.quantities, TOY, TOK)
    keep, rejects = apply(config, samples, measured, "src")
    assert keep.type == pa.bool_() and keep.null_count == 0
    assert keep.to_pylist() == [False, False, True, False]
    assert dropped_by(config, measured).to_pylist() == [
        "min_image_side",
        "min_text_chars",
        None,
        "max_text_chars",
    ]
    assert rejects.schema.equals(reject_schema.SCHEMA, check_metadata=True)
    assert rejects.to_pylist() == [
        reject_schema.reject(
            "src", "both", "filter", "image_too_small", "min_image_side 32: smallest image side 12 px",
            sample_schema.sample_id_for("src", "both"), 12.0,
        ),
        reject_schema.reject(
            "src", "text", "filter", "text_too_short", "min_text_chars 10: text length 5 characters",
            sample_schema.sample_id_for("src", "text"), 5.0,
        ),
        reject_schema.reject(
            "src", "long", "filter", "text_too_long", "max_text_chars 20: text length 21 characters",
            sample_schema.sample_id_for("src", "long"), 21.0,
        ),
    ]  # fmt: skip
    assert reject_schema.to_table(rejects.to_pylist()).equals(rejects)


def test_float_details_print_the_exact_values():
    samples = table(sample("wide", ["x"], [(1000, 10)]))
    config = parse_filters({"max_padding_share": 0.5, "max_aspect_ratio": 4}, WHERE)
    _, rejects = apply(config, samples, measure(samples, config.quantities, TOY, None), "src")
    assert rejects.column("detail").to_pylist() == ["max_aspect_ratio 4.0: largest aspect ratio 100.0"]
    samples = table(sample("boxes", ["x"], [(10, 10)], [region([[0, 0, 0.5, 0.5]])]))
    config = parse_filters({"min_box_area": 1}, WHERE)
    _, rejects = apply(config, samples, measure(samples, config.quantities, TOY, None), "src")
    assert rejects.column("detail").to_pylist() == ["min_box_area 1.0: smallest box area 0.25 px²"]


def test_apply_without_filters_keeps_everything():
    samples = table(sample("a", ["x"]), sample("b"))
    keep, rejects = apply(Filters(), samples, measure(samples, (), TOY, None), "src")
    assert keep.to_pylist() == [True, True] and rejects.num_rows == 0
    assert rejects.schema.equals(reject_schema.SCHEMA)
    with pytest.raises(ValueError, match="measured has 0 rows for 2 samples"):
        apply(Filters(), samples, measure(table(), (), TOY, None), "src")


# Values and thresholds lie on one small grid per quantity (step, lowest, highest multiple), so that a value
# equal to its threshold, the boundary, comes up often.
GRID = {quantity: (1, 0, 6) for quantity in QUANTITIES} | {
    "image_max_aspect_ratio": (0.25, 4, 12),
    "padding_share": (0.125, 0, 8),
    "box_min_area": (0.5, 0, 12),
}


def on_grid(quantity: str, lowest: int = 0) -> st.SearchStrategy:
    step, low, high = GRID[quantity]
    return st.integers(max(low, lowest), high).map(lambda multiple: multiple * step)


@st.composite
def filter_cases(draw):
    names = draw(st.lists(st.sampled_from(list(FILTERS)), unique=True))
    thresholds = {name: draw(on_grid(FILTERS[name].quantity, lowest=1)) for name in names}
    rows = draw(st.integers(0, 12))
    values = {
        quantity: draw(st.lists(st.none() | on_grid(quantity), min_size=rows, max_size=rows))
        for quantity in QUANTITIES
    }
    return Filters(thresholds), rows, values


@given(filter_cases())
def test_keep_mask_matches_a_per_row_decision(case):
    chosen, rows, values = case
    measured = pa.table(
        {quantity: pa.array(values[quantity], QUANTITIES[quantity]) for quantity in QUANTITIES}
    )
    samples = table(*[sample(f"k{index}") for index in range(rows)])
    keep, rejects = apply(chosen, samples, measured, "src")
    expected = []
    for index in range(rows):
        failing = None
        for name, spec in FILTERS.items():
            value = values[spec.quantity][index]
            if name not in chosen.thresholds or value is None:
                continue
            threshold = chosen.thresholds[name]
            if (value < threshold) if spec.bound == "min" else (value > threshold):
                failing = name
                break
        expected.append(failing)
    assert dropped_by(chosen, measured).to_pylist() == expected
    assert keep.to_pylist() == [name is None for name in expected]
    assert rejects.column("key").to_pylist() == [f"k{i}" for i, name in enumerate(expected) if name]
    assert rejects.column("reason").to_pylist() == [FILTERS[name].reason for name in expected if name]
    assert rejects.column("value").to_pylist() == [
        values[FILTERS[name].quantity][i] for i, name in enumerate(expected) if name
    ]

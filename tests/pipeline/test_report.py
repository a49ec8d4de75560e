"""pipeline.report: the HTML page is well formed, self-contained, titles and labels every plot, says "none"
for a plot or table without data, and carries the run header, per-source rejects with percentages, packing,
near-duplicate distances and decontamination when the statistics have them; the Markdown summary names every
source. The gallery: a canvas thumbnail with its tile grid per row, the first tokens decoded with trained
text shaded, and rows without an image, without image bytes or with hostile ones shown as such."""

from __future__ import annotations

import base64
import html
import io
import re
import struct
import warnings
import zlib
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from shard_support import TOK, TOY, row_of, text
from shard_support import image as image_part
from test_stats import CONTEXT, manifest_for, synthetic_rows

from pipeline import inspect_rows, packing, report, stats, tiling
from schemas import reject as reject_schema
from schemas import shard as shard_schema

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Collects tags, figures (with their attributes, image and text), section ids and tables (their data
    cells); fails on a closing tag that does not match the innermost open one."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[str] = []
        self.figures: list[str] = []
        self.figure_info: dict[str, dict] = {}
        self.sections: list[str] = []
        self.tables: list[int] = []  # data cells of each table
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"])
            if "figure" in self.open:
                self.figure_info[self.figures[-1]]["image"] = True
        if tag == "figure":
            self.figures.append(values["id"])
            self.figure_info[values["id"]] = {**values, "image": False, "text": ""}
        if tag == "h2" and "id" in values:
            self.sections.append(values["id"])
        if tag == "table":
            self.tables.append(0)
        if tag == "td":
            self.tables[-1] += 1
        self.external += [v for k, v in attrs if k in ("src", "href") and not v.startswith("data:")]
        if tag not in VOID:
            self.open.append(tag)

    def handle_data(self, data):
        if "figure" in self.open:
            self.figure_info[self.figures[-1]]["text"] += data

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> does not close <{self.open[-1:]}>"


def example_stats() -> dict:
    table = shard_schema.to_table(synthetic_rows(5, 20))
    rejects = reject_schema.to_table([reject_schema.reject("gone", "k", "read", "malformed_record", "d")])
    manifest = manifest_for({"web": table}, rejects)
    manifest["sources"]["empty"] = {"read": 0, "written": 0}
    partial = stats.merge(stats.shard_partial(table, CONTEXT), stats.reject_partial(rejects))
    return stats.finalize(partial, CONTEXT, manifest)


SECTIONS = ["run", "sources", "rejects", "dropped", "tokens", "kinds", "mixture", "images-and-text", "plots"]


def check_page(page: str) -> Checker:
    """Well formed and self-contained; every figure titled, and either a plot with both axes labelled or a
    "none" that says why; the fixed sections in order; no table without a data row."""
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.open == []
    assert checker.external == []
    plots = [f for f in checker.figures if not f.startswith("filter-")]
    assert plots == list(report.PLOTS)
    for name, info in checker.figure_info.items():
        assert info["data-title"], name
        if info["image"]:
            assert info["data-xlabel"] and info["data-ylabel"], name
            assert info["data-title"] in info["text"]
        else:
            assert info["class"] == "none" and f"none: {info['data-empty']}." in info["text"], name
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    thumbnails = len(re.findall(r'<img class="thumbnail"', page))
    plotted = sum(i["image"] for i in checker.figure_info.values())
    assert len(embedded) == len(checker.images) == plotted + thumbnails
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in embedded)
    assert [s for s in checker.sections if s in SECTIONS] == SECTIONS
    assert all(checker.tables), "a table without data rows"
    return checker


def drawn(checker: Checker) -> set[str]:
    return {name for name, info in checker.figure_info.items() if info["image"]}


def test_html_is_well_formed_and_embeds_every_plot():
    result = example_stats()
    page = report.html(result)
    check_page(page)
    assert "malformed_record" in page and "<style>" in page
    found = result["overall"]["text"]["special_strings_as_text"]
    assert found["occurrences"] > 0
    shown = f"{found['sequences']:,} ({found['occurrences']:,})"
    assert f"<td>sequences with special-token strings kept as text (occurrences)</td><td>{shown}</td>" in page


def test_files_left_out_are_named_in_both_reports():
    result = example_stats()
    result["problems"] = [{"path": "shards/web/part-00001.parquet", "message": "truncated: no footer"}]
    validation = {
        "model": {"shape": "toy", "weights": None},
        "samples": {"validated": 3, "failed": 0},
        "loss": {"mean": None, "max": None},
        "checks": {},
        "failures": [],
        "failed_sample_ids": [],
        "highest_loss": [],
        "expert_load": {},
        "problems": [{"path": "shards/web/part-00002.parquet", "rows": 4, "message": "not Parquet"}],
    }
    page = report.html(result, validation)
    check_page(page)
    assert "<td>shards/web/part-00001.parquet</td>" in page and "truncated: no footer" in page
    assert "<td>shards/web/part-00002.parquet</td>" in page and "not Parquet" in page
    text = report.markdown(result, validation)
    assert "shards/web/part-00001.parquet: truncated: no footer" in text
    assert "shards/web/part-00002.parquet: not Parquet" in text


def test_a_report_of_nothing_says_none_instead_of_empty_axes_and_tables():
    """Before, every plot drew axes (with a ±0.04 scale) and every table its header alone."""
    page = report.html(stats.finalize(stats.Partial(), CONTEXT, manifest_for({})))
    checker = check_page(page)
    assert drawn(checker) == set()
    assert checker.figure_info["rejects"]["data-empty"] == "no rejects"
    assert checker.figure_info["box-area"]["data-empty"] == "no grounding boxes"
    assert "none: every record read was written." in page


def curated_stats() -> dict:
    """Two sources with rows and rejects of every kind (the new reasons too), a packed output's manifest
    entries, a near-duplicate distance histogram and decontamination counts."""
    web = shard_schema.to_table(synthetic_rows(5, 30))
    docs = shard_schema.to_table(synthetic_rows(6, 10, source="docs"))
    reasons = [
        ("web", "filter", "image_too_small"),
        ("web", "dedup", "near_duplicate_image"),
        ("web", "decontaminate", "eval_image_overlap"),
        ("web", "decontaminate", "eval_text_overlap"),
        ("web", "sequence", "too_many_tiles"),
        ("web", "sequence", "too_long"),
        ("docs", "read", "unsupported_file"),
        ("docs", "read", "failed_download"),
        ("docs", "read", "malformed_record"),
    ]
    rejects = reject_schema.to_table(
        [
            reject_schema.reject(src, f"k{i}", stage, reason, "d")
            for i, (src, stage, reason) in enumerate(reasons)
        ]
    )
    manifest = manifest_for({"web": web, "docs": docs}, rejects)
    manifest["sources"] = {"web": {"read": 36, "written": 30}, "docs": {"read": 13, "written": 10}}
    manifest["code"] = {"version": "9.9.9", "source_sha256": "c" * 64}
    manifest["config_sha256"] = "d" * 64
    manifest["config"] = {"sources": [{"name": "web", "dedup": {"by": ["image_near"], "near_distance": 6}}]}
    manifest["packing"] = {
        "rows": 7,
        "documents": 40,
        "token_fill": 0.96,
        "tile_fill": 0.9,
        "sources": {"web": {"rows": 5, "documents": 30, "token_fill": 0.97, "tile_fill": 0.91}},
    }
    manifest["dedup"] = {"duplicates": 1, "near_distance_histogram": [0, 2, 0, 3, 1] + [0] * 55 + [4] * 5}
    manifest["decontamination"] = {"mmmu": {"images": 1, "texts": 0}, "textvqa": {"images": 0, "texts": 1}}
    partial = stats.shard_partial(pa.concat_tables([web, docs]), CONTEXT)
    return stats.finalize(stats.merge(partial, stats.reject_partial(rejects)), CONTEXT, manifest)


def test_run_header_totals_and_rejects_per_source_with_percentages():
    result = curated_stats()
    page = report.html(result, made="2026-12-06 05:00 UTC", location="out/example")
    checker = check_page(page)
    for shown in ("2026-12-06 05:00 UTC", "out/example", "9.9.9", "c" * 16, "d" * 16, "config as written"):
        assert shown in page
    assert '<tr class="total"><td>all sources</td><td class="n">49</td><td class="n">40 (81.6%)</td>' in page
    # Rejects per source, with their share of the source's records read; the new reasons like any other.
    assert "<h3>web: 6 (16.7%) of 36 read</h3>" in page and "<h3>docs: 3 (23.1%) of 13 read</h3>" in page
    for reason in (
        "unsupported_file",
        "failed_download",
        "near_duplicate_image",
        "eval_image_overlap",
        "eval_text_overlap",
        "too_many_tiles",
    ):
        assert f'<td>{reason}</td><td class="n">1</td>' in page
    # "Dropped" has one meaning everywhere: sound samples left out on purpose, a part of the rejects.
    dropped = result["sources"]["web"]["dropped"]
    assert dropped == {"over_budget": 2, "filtered": 1, "duplicates": 1, "contaminated": 2, "total": 6}
    assert result["overall"]["dropped"]["total"] == 6 and result["sources"]["docs"]["dropped"]["total"] == 0
    assert '<td>web</td><td class="n">2 (5.6%)</td>' in page
    assert "ordinary text tokens" in page and "non-image tokens" in page  # both totals, defined
    assert {"packed-tokens-per-row", "packed-tiles-per-row"}.isdisjoint(drawn(checker))  # no packed rows
    assert "near-duplicate-distances" in drawn(checker)


def test_packing_dedup_and_decontamination_are_shown_when_present():
    result = curated_stats()
    assert result["packing"] == {
        "total": {"rows": 7, "documents": 40, "token_fill": 0.96, "tile_fill": 0.9},
        "sources": {"web": {"rows": 5, "documents": 30, "token_fill": 0.97, "tile_fill": 0.91}},
    }
    assert result["dedup"]["near_distance"] == {"web": 6}
    assert result["dedup"]["near_distance_histogram"]["counts"][3] == 3
    page = report.html(result)
    check_page(page)
    assert '<td>web</td><td class="n">5</td><td class="n">30</td><td>97.0%</td><td>91.0%</td>' in page
    assert "near-duplicate threshold 6 (web) bits" in page
    assert "<th>evaluation set</th><th>images</th><th>texts</th>" in page and "<td>textvqa</td>" in page
    # Without them, nothing of theirs is shown.
    bare = example_stats()
    assert bare["packing"] is None and bare["dedup"] is None and bare["decontamination"] is None
    page = report.html(bare)
    assert "Packing</h2>" not in page and "Decontamination</h2>" not in page


def test_near_duplicate_threshold_is_inside_its_plot():
    result = curated_stats()
    figure, ax = plt.subplots()
    report.PLOTS["near-duplicate-distances"].draw(ax, result)
    low, high = ax.get_xlim()
    assert low <= 7 <= high  # the line sits at the right edge of distance 6
    assert high <= 66
    plt.close(figure)


def test_packed_rows_get_their_token_and_tile_histograms():
    rows = [row for row in synthetic_rows(4, 12) if row["seq_len"] <= 4096]
    for row in rows:
        row["input_ids"] = np.array(row["input_ids"], dtype=np.int32)
        row["labels"] = np.array(row["labels"], dtype=np.int32)
    packer = packing.Packer(4096, CONTEXT.special_ids[2])
    table = shard_schema.to_table([made for row in rows for made in packer.add(row)] + packer.flush())
    result = stats.finalize(stats.shard_partial(table, CONTEXT), CONTEXT, manifest_for({"packed": table}))
    checker = check_page(report.html(result))
    assert {"packed-tokens-per-row", "packed-tiles-per-row"} <= drawn(checker)
    assert checker.figure_info["packed-tiles-per-row"]["data-xlabel"].startswith("tiles of the row")


def test_image_sizes_are_plotted_on_axes_fitted_to_the_data():
    """Before, a fixed 0-4096 px grid left images of ~100 px in one corner cell."""
    rows = synthetic_rows(7, 40)
    for row in rows:
        for image in row["images"]:
            image["width_px"], image["height_px"] = 60 + len(row["key"]), 90
    table = shard_schema.to_table(rows)
    result = stats.finalize(stats.shard_partial(table, CONTEXT), CONTEXT, manifest_for({"web": table}))
    figure, ax = plt.subplots()
    report.PLOTS["image-sizes"].draw(ax, result)
    (low_x, high_x), (low_y, high_y) = ax.get_xlim(), ax.get_ylim()
    assert 45 < low_x <= 62 and 63 < high_x < 80 and 70 < low_y <= 90 < high_y < 110  # a quarter-octave bin
    plt.close(figure)


def test_top_tokens_are_labelled_readably():
    assert report._token_label({"id": 5, "text": " the", "count": 1}) == "␣the  (5)"
    assert report._token_label({"id": 6, "text": "\n\x00", "count": 1}) == "⏎\\x00  (6)"
    assert report._token_label({"id": 7, "text": None, "count": 1}) == "id 7"
    assert report._token_label({"id": 8, "text": "x" * 40, "count": 1}) == "x" * 14 + "…  (8)"


def test_filter_thresholds_stay_inside_their_plot():
    """A threshold far beyond the measured values used to float outside the axes."""
    edges = stats.filter_bin_edges("image_min_side")
    counts = [0] * (len(edges) - 1)
    counts[int(stats.filter_bins("image_min_side", np.array([40.0]))[0])] = 5
    entry = {
        "filters": {"min_image_side": 2000},
        "measured": 5,
        "cut": 0,
        "dropped_other": 0,
        "min": 40.0,
        "max": 40.0,
        "histogram": {"bin_edges": edges, "counts": counts, "cut_counts": [0] * len(counts)},
    }
    figure, ax = plt.subplots()
    report._filtered(ax, "image_min_side", entry)
    low, high = ax.get_xlim()
    assert low <= 40 and 2000 < high and ax.get_xlabel() and ax.get_ylabel() == "samples"
    plt.close(figure)


VALIDATION = {
    "model": {"shape": "toy", "weights": None},
    "samples": {"validated": 3, "failed": 0},
    "loss": {"mean": 9.25, "max": 9.75},
    "checks": {"finite": {"passed": 3, "failed": 0}},
    "failures": [],
    "failed_sample_ids": [],
    "highest_loss": [{"sample_id": "s1", "loss": 9.75}],
    "expert_load": {},
    "problems": [],
}


def test_validation_shows_losses_only_with_real_weights_and_no_empty_tables():
    page = report.html(example_stats(), VALIDATION)
    check_page(page)
    assert "9.25" not in page and "no loss is shown" in page
    assert "<h3>Failures</h3>" not in page and "<h3>Highest losses</h3>" not in page
    real = {**VALIDATION, "model": {"shape": "toy", "weights": "ckpt/"}}
    page = report.html(example_stats(), real)
    check_page(page)
    assert "Per-sample loss mean 9.25, max 9.75." in page and "<h3>Highest losses</h3>" in page


def test_markdown_names_every_source():
    text = report.markdown(example_stats())
    assert text.startswith("# vl2prep dataset report")
    for name in ("web", "gone", "empty"):
        assert f"| {name} |" in text


# ----------------------------------------------------------------------------------------------------
# the gallery

BLUE = (20, 40, 220)


def blue_image(width: int, height: int, fmt: str = "PNG") -> dict:
    """An image input of one colour far from the grid lines' red."""
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), BLUE).save(buffer, format=fmt)
    return {
        "bytes": buffer.getvalue(),
        "path": f"{width}x{height}",
        "width": width,
        "height": height,
        "format": fmt,
    }


def caption_row(key: str, width: int, height: int) -> dict:
    return row_of(
        "pics",
        key,
        "caption",
        [image_part(0), text("A blue field under a clear sky.")],
        [blue_image(width, height)],
    )


def decoded_png(data: str) -> Image.Image:
    raw = base64.b64decode(data)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    return Image.open(io.BytesIO(raw)).convert("RGB")


def near(pixel: tuple[int, ...], colour: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize(("width", "height"), [(1000, 380), (300, 900), (640, 640)])
def test_the_thumbnail_is_the_local_canvas_with_its_tile_grid(width, height):
    row = caption_row(f"k{width}", width, height)
    grid = tuple(row["images_spatial_crop"][0])
    assert grid == tiling.best_grid((width, height), TOY)
    entry = report.gallery_entry(row, TOY, TOK, "shards/pics/part-0.parquet", 0)
    shown = entry["image"]
    assert shown["grid"] == list(grid) and shown["note"] is None
    thumb = decoded_png(shown["thumbnail_png"])
    canvas = (grid[0] * 384, grid[1] * 384)
    scale = report.THUMBNAIL_PX / max(canvas)
    assert thumb.size == (round(canvas[0] * scale), round(canvas[1] * scale))
    red = (230, 30, 30)
    for column in range(1, grid[0]):
        x = round(column * thumb.width / grid[0])
        assert all(thumb.getpixel((x, y)) == red for y in range(thumb.height))
    for line in range(1, grid[1]):
        y = round(line * thumb.height / grid[1])
        assert all(thumb.getpixel((x, y)) == red for x in range(thumb.width))
    # The image fills what `contain_size` gives it, centred; the rest of the canvas is grey padding.
    fit_w, fit_h = (round(v * scale) for v in tiling.contain_size((width, height), canvas))
    left, top = (thumb.width - fit_w) // 2, (thumb.height - fit_h) // 2
    inside = (left + fit_w // 2 + 2, top + fit_h // 2 + 2)
    assert near(thumb.getpixel(inside), BLUE)
    if fit_w < thumb.width - 4:
        assert near(thumb.getpixel((2, thumb.height // 2 + 2)), (127, 127, 127))
    if fit_h < thumb.height - 4:
        assert near(thumb.getpixel((thumb.width // 2 + 2, 2)), (127, 127, 127))


def test_tokens_are_decoded_as_inspect_shows_them_with_trained_text_apart():
    row = caption_row("short", 500, 300)
    entry = report.gallery_entry(row, TOY, TOK, "shards/pics/part-0.parquet", 3)
    assert (entry["sample_id"], entry["key"], entry["kind"], entry["row"]) == (
        row["sample_id"],
        "short",
        "caption",
        3,
    )
    pieces = entry["tokens"]["pieces"]
    assert entry["tokens"]["more"] == 0 and entry["seq_len"] == len(row["input_ids"])
    trained = "".join(t for is_trained, t in pieces if is_trained)
    assert "A blue field under a clear sky." in trained and "<image" not in trained
    grid = row["images_spatial_crop"][0]
    marker = f"<image ×{row['num_image_tokens']} grid {grid[0]}×{grid[1]}>"
    untrained = "".join(t for is_trained, t in pieces if not is_trained)
    assert untrained.count("<image") == 1 and marker in untrained
    # The same text `vl2prep inspect` prints, its «…» being the trained pieces.
    rebuilt = "".join(
        f"{inspect_rows.TRAINED_OPEN}{t}{inspect_rows.TRAINED_CLOSE}" if is_trained else t
        for is_trained, t in pieces
    )
    inspected = inspect_rows.render_row(row, TOY, TOK)
    assert rebuilt == inspected[inspected.index("trained on; the rest is no target):\n") :].split("\n", 1)[1]
    again = report.gallery_entry(row, TOY, TOK, "shards/pics/part-0.parquet", 3)
    assert again == entry  # thumbnail bytes included


def test_only_the_first_tokens_are_shown_and_image_spans_do_not_count():
    words = " ".join(f"word{i}" for i in range(200))
    long_text = row_of("docs", "long", "text", [text(words)])
    entry = report.gallery_entry(long_text, TOY, TOK, "shards/docs/part-0.parquet", 0)
    assert entry["image"] is None
    assert entry["tokens"]["more"] == len(long_text["input_ids"]) - report.GALLERY_TOKENS
    long_caption = row_of("pics", "long", "caption", [image_part(0), text(words)], [blue_image(800, 400)])
    entry = report.gallery_entry(long_caption, TOY, TOK, "shards/pics/part-0.parquet", 0)
    shown = len(long_caption["input_ids"]) - entry["tokens"]["more"]
    assert shown == report.GALLERY_TOKENS + long_caption["num_image_tokens"]


def test_packed_rows_show_their_document_breaks():
    documents = [row_of("docs", f"d{i}", "text", [text(f"Short document {i}.")]) for i in range(2)]
    for row in documents:
        row["input_ids"] = np.array(row["input_ids"], dtype=np.int32)
        row["labels"] = np.array(row["labels"], dtype=np.int32)
    packer = packing.Packer(64, TOY.special_tokens.pad)
    (packed,) = [made for row in documents for made in packer.add(row)] + packer.flush()
    pieces = report.gallery_entry(packed, TOY, TOK, "shards/docs/part-0.parquet", 0)["tokens"]["pieces"]
    documents, current = [], ""
    for _, piece in pieces:
        if piece is None:
            documents.append(current)
            current = ""
        else:
            current += piece
    # As `vl2prep inspect` breaks them: before each document of cu_seqlens, the padding after the last one.
    assert [*documents, current][:2] == ["<bos>Short document 0.<eos>", "<bos>Short document 1.<eos>"]
    assert re.fullmatch(r"<pad ×\d+>", current)


def test_rows_without_image_bytes_or_with_hostile_ones_say_why():
    by_reference = caption_row("ref", 400, 300)
    by_reference["images"][0]["bytes"] = None
    assert report.gallery_entry(by_reference, TOY, TOK, "s", 0)["image"]["note"] == (
        "image stored by reference (sequence.embed_images: false): no thumbnail"
    )
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 400 300\n" + b"0" * 64
    for data in (b"not an image at all", eps, blue_image(400, 300)["bytes"][:60]):
        hostile = caption_row("bad", 400, 300)
        hostile["images"][0]["bytes"] = data
        shown = report.gallery_entry(hostile, TOY, TOK, "s", 0)["image"]
        assert shown["thumbnail_png"] is None and shown["note"].startswith("image cannot be decoded: ")
        assert " at 0x" not in shown["note"]  # no memory address: stats.json stays the same bytes

    # A header promising 9,000 × 8,000 px (72 M, past the thumbnail bound but not Pillow's own): no decoding.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 9000, 8000, 8, 2, 0, 0, 0)
    promised = caption_row("big", 400, 300)
    promised["images"][0]["bytes"] = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        shown = report.gallery_entry(promised, TOY, TOK, "s", 0)["image"]
    assert shown["note"] == "image cannot be decoded: 9000×8000 px is too large for a thumbnail"
    huge_grid = caption_row("grid", 400, 300)
    huge_grid["images_spatial_crop"] = [[100000, 1]]
    assert report.gallery_entry(huge_grid, TOY, TOK, "s", 0)["image"]["note"] == (
        "grid [100000, 1] is not a tile grid of toy"
    )
    assert report.gallery_entry(caption_row("t", 400, 300), TOY, None, "s", 0)["tokens"] is None
    # Values no sound shard holds: the row is a card saying so, never an exception.
    unpaired = caption_row("none", 400, 300)
    unpaired["images_spatial_crop"] = [[None, 1]]
    broken = report.gallery_entry(unpaired, TOY, TOK, "s", 0)
    assert (broken["image"], broken["tokens"]) == (None, None)
    assert broken["note"].startswith("the row cannot be shown: ")
    card = report._gallery_card(broken)
    assert html.escape(broken["note"]) in card and "text only" not in card


def gallery_stats() -> dict:
    result = example_stats()
    pictures = [caption_row("a", 900, 300), caption_row("b", 300, 300)]
    pictures[1]["images"][0]["bytes"] = None
    plain = row_of("docs", "t", "text", [text("Nothing to see.")])
    result["gallery"] = {
        "pics": [
            report.gallery_entry(r, TOY, TOK, "shards/pics/part-0.parquet", i) for i, r in enumerate(pictures)
        ],
        "docs": [report.gallery_entry(plain, TOY, None, "shards/docs/part-0.parquet", 0)],
    }
    return result


class GalleryChecker(Checker):
    """Also collects the gallery: per source section its cards, and each card's thumbnails and shaded text."""

    def __init__(self) -> None:
        super().__init__()
        self.gallery: dict[str, list[dict]] = {}
        self.shading = 0

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "section" and "gallery-source" in values.get("class", ""):
            self.gallery[values["data-source"]] = []
        if tag == "div" and values.get("class") == "sample":
            next(reversed(self.gallery.values())).append({"thumbnails": [], "trained": ""})
        if tag == "img" and values.get("class") == "thumbnail":
            next(reversed(self.gallery.values()))[-1]["thumbnails"].append(values["src"])
        if tag == "span" and values.get("class") == "trained" and "pre" in self.open:
            self.shading += 1
        super().handle_starttag(tag, attrs)

    def handle_data(self, data):
        if self.open[-2:] == ["pre", "span"] and self.shading:
            next(reversed(self.gallery.values()))[-1]["trained"] += data
        super().handle_data(data)


def test_the_gallery_section_has_a_card_per_row_with_png_thumbnails_and_shaded_tokens():
    result = gallery_stats()
    page = report.html(result)
    check_page(page)
    checker = GalleryChecker()
    checker.feed(page)
    assert "gallery" in checker.sections
    assert list(checker.gallery) == ["pics", "docs"]
    assert [len(cards) for cards in checker.gallery.values()] == [2, 1]
    (first, by_reference), (plain,) = checker.gallery["pics"], checker.gallery["docs"]
    assert len(first["thumbnails"]) == 1 and first["thumbnails"][0].startswith("data:image/png;base64,")
    decoded_png(first["thumbnails"][0].removeprefix("data:image/png;base64,"))
    assert "A blue field under a clear sky." in first["trained"]
    assert by_reference["thumbnails"] == [] and "stored by reference" in page
    assert plain["thumbnails"] == [] and "no image (text only)" in page
    assert "no tokens decoded" in page
    # A report of statistics without a gallery (made before it existed) has no such section.
    assert 'id="gallery"' not in report.html(example_stats())

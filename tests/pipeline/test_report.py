"""pipeline.report: the HTML page is well formed, self-contained, titles and labels every plot, says "none"
for a plot or table without data, and carries the run header, per-source rejects with percentages, packing,
near-duplicate distances and decontamination when the statistics have them; the Markdown summary names every
source."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

import matplotlib.pyplot as plt
import numpy as np
import pyarrow as pa
from test_stats import CONTEXT, manifest_for, synthetic_rows

from pipeline import packing, report, stats
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
    assert len(embedded) == len(checker.images) == sum(i["image"] for i in checker.figure_info.values())
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

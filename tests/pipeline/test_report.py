"""pipeline.report: the HTML page is well formed, self-contained and embeds every plot it names; the Markdown
summary names every source."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser

from test_stats import CONTEXT, manifest_for, synthetic_rows

from pipeline import report, stats
from schemas import reject as reject_schema
from schemas import shard as shard_schema

VOID = {"meta", "img", "br", "hr", "link", "input"}


class Checker(HTMLParser):
    """Collects tags; fails on a closing tag that does not match the innermost open one."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.images: list[str] = []
        self.figures: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        if tag == "img":
            self.images.append(values["src"])
        if tag == "figure":
            self.figures.append(values["id"])
        self.external += [v for k, v in attrs if k in ("src", "href") and not v.startswith("data:")]
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> does not close <{self.open[-1:]}>"


def example_stats() -> dict:
    table = shard_schema.to_table(synthetic_rows(5, 20))
    rejects = reject_schema.to_table([reject_schema.reject("gone", "k", "read", "malformed_record", "d")])
    manifest = manifest_for({"web": table}, rejects)
    manifest["sources"]["empty"] = {"read": 0, "written": 0}
    partial = stats.merge(stats.shard_partial(table, CONTEXT), stats.reject_partial(rejects))
    return stats.finalize(partial, CONTEXT, manifest)


def check_page(page: str) -> Checker:
    checker = Checker()
    checker.feed(page)
    checker.close()
    assert checker.open == []
    assert checker.external == []
    assert checker.figures == list(report.PLOTS)
    embedded = re.findall(r'<img [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(checker.images) == len(report.PLOTS)
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in embedded)
    return checker


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


def test_a_report_of_nothing_is_still_valid():
    check_page(report.html(stats.finalize(stats.Partial(), CONTEXT, manifest_for({}))))


def test_markdown_names_every_source():
    text = report.markdown(example_stats())
    assert text.startswith("# vl2prep dataset report")
    for name in ("web", "gone", "empty"):
        assert f"| {name} |" in text

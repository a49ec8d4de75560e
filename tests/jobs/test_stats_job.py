"""The stats job through Ray on the example output: run by pretokenize at its end, numbers recomputed from the
shards with pyarrow, the gallery of every source's first rows, the CLI with --report-dir and its progress
line, and a rerun that leaves the files alone; files that cannot be read or counted, without Ray."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pretokenize import example_copy, run_job

import model_shapes
from jobs import cli
from jobs import stats as stats_job
from jobs.progress import Progress
from pipeline import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))  # the shared test helpers
from shard_support import rewrite_row, small_output


@pytest.fixture(scope="module")
def output(ray_session, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stats")
    code, printed = run_job(example_copy(folder))
    assert code == 0 and "stats:" in printed
    return folder


def test_pretokenize_writes_stats_that_match_the_shards(output):
    out = output / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    result = json.loads((out / "stats" / "stats.json").read_text())
    assert (out / "stats" / "report.html").stat().st_size > 0 and (out / "stats" / "report.md").is_file()
    rows = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["shards"])
    rejects = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["rejects"])

    for name, group in result["sources"].items():
        of_source = rows.filter(pa.compute.equal(rows.column("source"), name))
        assert group["rows"] == of_source.num_rows == manifest["sources"][name]["rows"]
        assert group["read"] == manifest["sources"][name]["read"]
        seq_len = of_source.column("seq_len").to_numpy()
        assert group["tokens"]["total"]["sum"] == seq_len.sum() == manifest["sources"][name]["tokens"]
        if seq_len.size:
            assert group["tokens"]["total"]["p90"] == np.percentile(seq_len, 90, method="inverted_cdf")
        reasons = Counter(r["reason"] for r in rejects.to_pylist() if r["source"] == name)
        assert {r: v["count"] for r, v in group["rejects"]["by_reason"].items()} == reasons
        assert group["rejected"] == manifest["sources"][name]["rejected_total"]
    for reason, entry in result["rejects"]["by_reason"].items():
        keys = [r["key"] for r in rejects.to_pylist() if r["reason"] == reason]
        assert entry == {"count": len(keys), "example_key": min(keys)}

    images = [image for row in rows.column("images").to_pylist() for image in row]
    assert result["overall"]["images"]["count"] == len(images)
    assert result["overall"]["images"]["width_px"]["max"] == max(image["width_px"] for image in images)
    grids = Counter(f"{w}x{h}" for row in rows.column("images_spatial_crop").to_pylist() for w, h in row)
    assert result["overall"]["images"]["grids"] == dict(sorted(grids.items()))
    sizes = sorted((out / e["path"]).stat().st_size for e in manifest["shards"])
    assert (result["shards"]["count"], result["shards"]["bytes"]["sum"]) == (len(sizes), sum(sizes))
    assert result["shards"]["bytes"]["max"] == sizes[-1]
    assert result["overall"]["text"]["byte_fallback_share"] is not None
    assert result["overall"]["text"]["top_tokens"][0]["text"] is not None


def test_the_gallery_shows_the_first_rows_of_every_source_with_rows(output):
    out = output / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    gallery = json.loads((out / "stats" / "stats.json").read_text())["gallery"]
    first: dict[str, str] = {}
    for entry in manifest["shards"]:
        if entry["rows"]:
            first.setdefault(entry["source"], entry["path"])
    assert list(gallery) == sorted(first) and len(first) >= 8
    shown = 0
    for source, entries in gallery.items():
        rows = pq.ParquetFile(out / first[source]).read_row_group(0).slice(0, stats_job.GALLERY_ROWS)
        assert [e["sample_id"] for e in entries] == rows.column("sample_id").to_pylist()
        for entry in entries:
            assert entry["shard"] == first[source] and any(
                trained for trained, _ in entry["tokens"]["pieces"]
            )
            if entry["image"] is not None:
                png = base64.b64decode(entry["image"]["thumbnail_png"])
                assert png.startswith(b"\x89PNG\r\n\x1a\n")
                shown += 1
    assert shown >= 10
    page = (out / "stats" / "report.html").read_text()
    assert 'id="gallery"' in page
    assert re.findall(r'<section class="gallery-source" id="gallery-([^"]+)"', page) == list(gallery)
    thumbnails = re.findall(r'<img class="thumbnail" [^>]*src="data:image/png;base64,([^"]+)"', page)
    assert len(thumbnails) == shown
    assert all(base64.b64decode(data).startswith(b"\x89PNG\r\n\x1a\n") for data in thumbnails)
    assert '<span class="trained">' in page


def test_cli_report_dir_and_reruns_leave_stats_alone(output, tmp_path, capsys):
    out = output / "out"
    assert cli.main(["stats", str(out), "--report-dir", str(tmp_path)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    files = len(manifest["shards"]) + len(manifest["rejects"]) + len(manifest["filters"]["measurements"])
    rows = sum(e["rows"] for key in ("shards", "rejects") for e in manifest[key])
    rows += sum(e["rows"] for e in manifest["filters"]["measurements"])
    progress = f"  {files}/{files} files · {rows:,} rows read · "
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ")][-1].startswith(
        progress
    )
    assert (tmp_path / "stats.json").read_bytes() == (out / "stats" / "stats.json").read_bytes()
    before = {p: p.stat().st_mtime_ns for p in (out / "stats").iterdir()}
    assert run_job(output / "job.yaml")[0] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "stats").iterdir()} == before
    assert cli.main(["stats", str(tmp_path / "nothing")]) == 2


def test_a_shard_of_schema_1_is_read_without_the_newer_column(tmp_path):
    """Outputs made before `special_strings_as_text` existed still get their statistics (counted as 0)."""
    import model_shapes
    from jobs import stats as stats_job
    from pipeline import stats, tokenizer
    from pipeline.sequence import build
    from schemas import shard as shard_schema

    toy = model_shapes.load("toy")
    sample = {
        "sample_id": "s",
        "source": "docs",
        "key": "a",
        "kind": "text",
        "content": [{"turn": 0, "role": None, "type": "text", "text": "A <|User|> here.", "image": None}],
        "images": [],
        "regions": [],
        "meta": "{}",
    }
    rows = build(sample, tokenizer.load("default", toy)).rows
    assert rows[0]["special_strings_as_text"] == 1
    old = shard_schema.to_table(rows).drop_columns(["special_strings_as_text"])
    (tmp_path / "shards").mkdir()
    pq.write_table(old.cast(shard_schema.schema_for_version(1)), tmp_path / "shards" / "part.parquet")
    context = stats.context_for(toy, 4096, None)
    partial = stats_job.file_partial(str(tmp_path), "shards/part.parquet", "shard", context)
    (cell,) = partial.cells.values()
    assert (cell.rows, cell.special_strings, cell.special_string_sequences) == (1, 0, 0)


# ------------------------------------------------------------------------------------------------
# damaged files: left out whole and named, never an exception (the job's exit code: test_damaged_outputs)


def listed(out: Path, source: str | None) -> str:
    """The one shard file of `source` that the output's manifest lists (None: its reject file)."""
    manifest = json.loads((out / "manifest.json").read_text())
    if source is None:
        (entry,) = manifest["rejects"]
    else:
        (entry,) = [e for e in manifest["shards"] if e["source"] == source]
    return entry["path"]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda path: path.write_bytes(path.read_bytes()[:-100]), "cannot be read: .*magic bytes"),
        (lambda path: path.write_bytes(b"not parquet at all"), "cannot be read: "),
        (lambda path: path.unlink(), "cannot be read: .*(No such file|not found|does not exist)"),
    ],
)
def test_a_file_that_cannot_be_read_is_a_problem(tmp_path, damage, message):
    out = small_output(tmp_path)
    context = stats.context_for(model_shapes.load("toy"), 4096, None)
    for relative, what in ((listed(out, "chat"), "shard"), (listed(out, None), "reject")):
        damage(out / relative)
        partial = stats_job.file_partial(str(out), relative, what, context)
        assert partial.cells == {} and not partial.rejects
        assert list(partial.problems) == [relative] and re.match(message, partial.problems[relative])


def test_rows_that_cannot_be_counted_leave_their_file_out(tmp_path):
    """Two grids for one image: the statistics cannot pair them, so nothing of the file is counted."""
    out = small_output(tmp_path)
    shard = listed(out, "pics")
    rewrite_row(out, shard, 1, lambda row: row["images_spatial_crop"].append([1, 1]))
    context = stats.context_for(model_shapes.load("toy"), 4096, None)
    partial = stats_job.file_partial(str(out), shard, "shard", context)
    assert partial.cells == {}
    assert partial.problems[shard].startswith("rows 0-2 cannot be counted: ")


def test_a_parquet_file_that_is_not_a_shard_is_left_out(tmp_path):
    out = small_output(tmp_path)
    shard = listed(out, "chat")
    pq.write_table(pa.table({"x": [1, 2]}), out / shard)
    context = stats.context_for(model_shapes.load("toy"), 4096, None)
    partial = stats_job.file_partial(str(out), shard, "shard", context)
    assert partial.cells == {}
    assert partial.problems[shard].startswith("rows 0-1 cannot be counted: ")


def test_gallery_rows_of_a_damaged_file_are_shown_or_left_out_never_raised(tmp_path):
    out = small_output(tmp_path)
    shape, spec = model_shapes.load("toy"), ("demo", None)
    pics = listed(out, "pics")
    entries = stats_job.gallery_entries(str(out), pics, spec, shape)
    assert [e["row"] for e in entries] == [0, 1] and all(e["image"]["thumbnail_png"] for e in entries)
    chat = listed(out, "chat")
    pq.write_table(pa.table({"x": [1, 2]}), out / chat)  # Parquet, but not a shard
    (first, _) = stats_job.gallery_entries(str(out), chat, spec, shape)
    assert first["sample_id"] is None and first["note"].startswith("the row cannot be shown: ")
    (out / pics).write_bytes((out / pics).read_bytes()[:-100])  # cut short: its statistics name it
    assert stats_job.gallery_entries(str(out), pics, spec, shape) == []


@pytest.mark.timeout(180)
def test_many_files_are_gathered_through_a_bounded_window(ray_session, tmp_path, monkeypatch):
    """The driver used to submit every file at once and `ray.wait` for one result at a time over all of
    them (quadratic in the number of files); now each wait sees a bounded window and returns several."""
    out = small_output(tmp_path)
    shape = model_shapes.load("toy")
    context = stats.context_for(shape, 4096, None)
    files = [(listed(out, "chat"), "shard")] * 20 + [(listed(out, None), "reject")] * 3
    expected = stats.Partial()
    for path, what in files:
        expected.add(stats_job.file_partial(str(out), path, what, context))

    waits = []
    real_wait = ray_session.wait

    def wait(pending, num_returns=1, **options):
        waits.append((len(pending), num_returns))
        return real_wait(pending, num_returns=num_returns, **options)

    monkeypatch.setattr(stats_job, "IN_FLIGHT_PER_CPU", 1)  # the least window: 8 tasks
    monkeypatch.setattr(ray_session, "wait", wait)
    stream = io.StringIO()
    progress = Progress(len(files), stream, counts=("rows read",), rate_unit="rows")
    rows = {listed(out, "chat"): 5, listed(out, None): 1}
    merged = stats_job._partials(str(out), files, context, None, shape, None, None, rows, progress)
    progress.finish()
    assert merged == expected and merged.cells[("chat", "text")].rows == 20 * 5
    assert re.fullmatch(r"  23/23 files · 103 rows read · [0-9.,]+ rows/s\n", stream.getvalue())
    assert max(size for size, _ in waits) == 8 and all(n == min(size, 2) for size, n in waits)
    assert len(waits) <= len(files) // 2 + 1

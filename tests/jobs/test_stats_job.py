"""The stats job through Ray on the example output: run by pretokenize at its end, numbers recomputed from the
shards with pyarrow, the CLI with --report-dir, and a rerun that leaves the files alone."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_pretokenize import example_copy, run_job

from jobs import cli


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


def test_cli_report_dir_and_reruns_leave_stats_alone(output, tmp_path, capsys):
    out = output / "out"
    assert cli.main(["stats", str(out), "--report-dir", str(tmp_path)]) == 0
    assert (tmp_path / "stats.json").read_bytes() == (out / "stats" / "stats.json").read_bytes()
    before = {p: p.stat().st_mtime_ns for p in (out / "stats").iterdir()}
    assert run_job(output / "job.yaml")[0] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "stats").iterdir()} == before
    assert cli.main(["stats", str(tmp_path / "nothing")]) == 2

"""`vl2prep stats`, `validate` and `inspect` on a damaged output: a row with an id outside the vocabulary, a
row whose labels are one short, a shard file cut short on disk, a manifest that is not JSON. Each ends in its
documented exit code with one line per problem naming the file or sample, never a traceback, and stats and
validate still write what they found about the rest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))  # the shared test helpers
from shard_support import rewrite_row, small_output

from jobs import cli

PICS = "shards/pics/part-00000-000.parquet"
CHAT = "shards/chat/part-00000-000.parquet"


@pytest.fixture(scope="module")
def damaged(tmp_path_factory) -> tuple[Path, str, str]:
    """The output (3 pics rows, 5 chat rows), the sample ids of the out-of-vocabulary and short-labels rows;
    the pics shard is cut short after the manifest was written."""
    out = small_output(tmp_path_factory.mktemp("damaged"))
    outside = rewrite_row(out, CHAT, 0, lambda row: row["input_ids"].__setitem__(-2, 10**6))
    short = rewrite_row(out, CHAT, 1, lambda row: row.__setitem__("labels", row["labels"][:-1]))
    (out / PICS).write_bytes((out / PICS).read_bytes()[:-100])
    return out, outside, short


def lines_of(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return err.splitlines()


@pytest.mark.timeout(300)
def test_stats_writes_the_rest_and_names_the_file_left_out(ray_session, damaged, tmp_path, capsys):
    out, _, _ = damaged
    assert cli.main(["stats", str(out), "--report-dir", str(tmp_path)]) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert line.startswith(f"{out / PICS}: left out of the statistics: cannot be read: ")
    result = json.loads((tmp_path / "stats.json").read_text())
    assert [p["path"] for p in result["problems"]] == [PICS]
    assert result["overall"]["rows"] == 5 and list(result["kinds"]) == ["text"]
    assert result["overall"]["text"]["ids_outside_vocabulary"] == 1
    assert result["rejects"]["total"] == 1
    assert (tmp_path / "report.html").stat().st_size > 0


@pytest.mark.timeout(300)
def test_validate_fails_the_damaged_rows_by_name_and_reports_the_file(ray_session, damaged, tmp_path, capsys):
    out, outside, short = damaged
    assert cli.main(["validate", str(out), "--batch-size", "4", "--report-dir", str(tmp_path)]) == 1
    lines = lines_of(capsys.readouterr().err)
    assert lines[0].startswith(f"{out / PICS}: 3 rows not validated: cannot be read: ")
    assert f"sample {outside}: ids_in_vocab: input ids 1000000 outside the vocabulary [0, 8192)" in lines
    assert f"sample {short}: labels_length: 12 labels for 13 input ids" in lines
    result = json.loads((tmp_path / "validation.json").read_text())
    assert [(p["path"], p["rows"]) for p in result["problems"]] == [(PICS, 3)]
    assert result["samples"] == {"validated": 5, "failed": 2, "passed": 3}
    assert {(f["sample_id"], f["check"]) for f in result["failures"]} == {
        (outside, "ids_in_vocab"),
        (short, "labels_length"),
    }
    assert result["checks"]["forward"] == {"passed": 3, "failed": 0}


def test_inspect_shows_a_damaged_row_and_names_an_unreadable_file(damaged, capsys):
    out, _, _ = damaged
    assert (
        cli.main(["inspect", str(out), "--row", "3"]) == 0
    )  # the first chat row: one id past the vocabulary
    printed = capsys.readouterr()
    assert "<id 1000000?>" in printed.out and printed.err == ""
    assert cli.main(["inspect", str(out), "--row", "4"]) == 0
    assert "damaged: 12 labels for 13 input ids" in capsys.readouterr().out
    assert cli.main(["inspect", str(out), "--row", "0"]) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert line.startswith(f"{out / PICS}: cannot be read: ")


@pytest.mark.parametrize("command", ["stats", "validate", "inspect"])
def test_a_manifest_that_is_not_json_is_one_line(tmp_path, capsys, command):
    (tmp_path / "manifest.json").write_text('{"shards": [')
    assert cli.main([command, str(tmp_path)]) == 2
    (line,) = lines_of(capsys.readouterr().err)
    assert line.startswith(f"{tmp_path}: cannot read manifest.json: ")
    assert not (tmp_path / "stats").exists()

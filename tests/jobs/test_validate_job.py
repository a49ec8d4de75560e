"""The validation job through Ray and the CLI on a small toy output with two corrupted rows (their manifest
checksums made consistent): both are named, the other rows validate; a model with other ids is refused. Rows
of a file that cannot be read, and a batch whose task fails, are problems of their file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pipeline"))  # the shared test helpers
from shard_support import IMG, TOY, rewrite_row, small_output

from jobs import cli
from jobs.validate import ValidationActor, batch_result
from pipeline import validate as checks


def shard_of(out: Path, source: str) -> str:
    """The one shard file of `source`, as the manifest names it."""
    (path,) = [
        e["path"] for e in json.loads((out / "manifest.json").read_text())["shards"] if e["source"] == source
    ]
    return path


@pytest.fixture(scope="module")
def corrupted(tmp_path_factory) -> tuple[Path, set[str]]:
    out = small_output(tmp_path_factory.mktemp("validate"))

    def one_more_image_token(row: dict) -> None:
        row["input_ids"][row["image_token_offsets"][0] + row["num_image_tokens"]] = IMG

    def wrong_grid(row: dict) -> None:
        row["images_spatial_crop"] = [[2, 1]]

    shard = shard_of(out, "pics")
    return out, {rewrite_row(out, shard, 1, one_more_image_token), rewrite_row(out, shard, 2, wrong_grid)}


def test_corrupted_rows_are_named_by_the_job(ray_session, corrupted, capsys):
    out, bad = corrupted
    assert cli.main(["validate", str(out), "--batch-size", "4"]) == 1
    printed = capsys.readouterr()
    # pics: 3 rows, one batch; chat: 5 rows, two batches. The last progress line says it all.
    (progress,) = [line for line in printed.out.splitlines() if line.startswith("  ")][-1:]
    assert re.fullmatch(r"  3/3 batches · 8 samples validated · 2 failed · [0-9.,]+ samples/s", progress)
    assert all(sample_id in printed.err.splitlines()[-1] for sample_id in bad)
    result = json.loads((out / "stats" / "validation.json").read_text())
    assert set(result["failed_sample_ids"]) == bad
    assert result["samples"] == {"validated": 8, "failed": 2, "passed": 6}
    assert result["checks"]["visual_tokens"]["failed"] == 1 and result["checks"]["reader"]["failed"] == 1
    assert result["model"]["shape"] == "toy-small" and result["loss"]["count"] == 6
    assert set(result["expert_load"]) == {"1", "2"}


@pytest.mark.timeout(300)
def test_a_report_made_again_by_validate_keeps_the_gallery(ray_session, tmp_path):
    out = small_output(tmp_path / "output")
    report_dir = tmp_path / "report"
    assert cli.main(["stats", str(out), "--report-dir", str(report_dir)]) == 0
    gallery = json.loads((report_dir / "stats.json").read_text())["gallery"]
    assert sorted(gallery) == ["chat", "pics"]
    assert cli.main(["validate", str(out), "--samples", "2", "--report-dir", str(report_dir)]) == 0
    page = (report_dir / "report.html").read_text()
    assert 'id="validation"' in page
    assert re.findall(r'<section class="gallery-source" id="gallery-([^"]+)"', page) == ["chat", "pics"]
    assert len(re.findall(r'<img class="thumbnail"', page)) == len(gallery["pics"]) == 2


def test_samples_report_dir_and_a_shape_that_does_not_fit(ray_session, corrupted, tmp_path, capsys):
    out, _ = corrupted
    code = cli.main(["validate", str(out), "--shape", "toy", "--samples", "3", "--report-dir", str(tmp_path)])
    result = json.loads((tmp_path / "validation.json").read_text())
    assert result["samples"]["validated"] == 3 and result["model"]["shape"] == "toy"
    assert code == (1 if result["failed_sample_ids"] else 0)
    assert cli.main(["validate", str(out), "--shape", "tiny", "--report-dir", str(tmp_path / "no")]) == 2
    assert "vocabulary size 129280, the output's is 8192" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


# ------------------------------------------------------------------------------------------------
# damaged files: rows not validated are problems of their file, never an exception (without Ray; the job
# through Ray: test_damaged_outputs)


@pytest.fixture(scope="module")
def actor() -> ValidationActor:
    return ValidationActor(TOY, checks.small_shape(TOY), None)


def test_a_shard_that_cannot_be_read_is_a_problem_of_its_rows(tmp_path, actor):
    out = small_output(tmp_path)
    shard = shard_of(out, "chat")
    good = actor.validate(str(out), shard, [0, 1])
    assert good.samples == 2 and good.problems == [] and good.failures == []
    # The manifest lists more rows than the file holds.
    (problem,) = actor.validate(str(out), shard, [4, 7]).problems
    assert problem == checks.Problem(shard, 2, "cannot be read: it holds 5 rows, the manifest lists row 7")
    (out / shard).write_bytes((out / shard).read_bytes()[:-100])  # cut short on disk
    result = actor.validate(str(out), shard, [0, 1, 2])
    assert result.samples == 0 and result.failures == []
    (problem,) = result.problems
    assert (problem.path, problem.rows) == (shard, 3) and "magic bytes" in problem.message


def test_a_batch_whose_task_fails_is_a_problem_of_its_file():
    from ray.exceptions import RayTaskError

    def failing() -> checks.BatchResult:
        cause = IndexError("index out of range in self\nmore")
        raise RayTaskError("validate", "Traceback (most recent call last):\n", cause).as_instanceof_cause()

    batch = ("shards/a.parquet", [3, 4])
    result = batch_result(batch, failing)
    assert result.problems == [
        checks.Problem("shards/a.parquet", 2, "validation failed: IndexError: index out of range in self")
    ]
    fine = checks.BatchResult(samples=2)
    assert batch_result(batch, lambda: fine) is fine


# ------------------------------------------------------------------------------------------------
# --samples N|all (the job itself is replaced: only what the command passes is checked)


def test_samples_default_to_a_bounded_sample_and_all_means_every_row(monkeypatch, capsys):
    from jobs import validate as job

    calls = []
    monkeypatch.setattr(job, "run", lambda location, **options: calls.append(options["samples"]) or 0)
    assert cli.main(["validate", "out"]) == 0
    assert cli.main(["validate", "out", "--samples", "all"]) == 0
    assert cli.main(["validate", "out", "--samples", "7"]) == 0
    assert calls == [checks.DEFAULT_SAMPLES, None, 7]
    assert cli.DEFAULT_VALIDATE_SAMPLES == checks.DEFAULT_SAMPLES == 64
    for bad in ("0", "-3", "some"):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(["validate", "out", "--samples", bad])
        assert exit_info.value.code == 2
        assert "--samples" in capsys.readouterr().err

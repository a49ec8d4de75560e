"""The `vl2prep` command: the `tile` table over the bundled examples and over given files; pretokenize's
one-line messages and exit codes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from jobs import cli, pretokenize
from pipeline import shards


def test_tile_prints_the_bundled_examples(capsys):
    assert cli.main(["tile"]) == 0
    out = capsys.readouterr().out
    names = sorted(p.name for p in cli.EXAMPLE_IMAGES.iterdir())
    assert len(names) >= 5
    for name in names:
        assert name in out
    # astronaut.jpg is 512×512: a 768×768 canvas, 2×2 tiles, 5 tiles, 1023 tokens.
    row = next(line for line in out.splitlines() if line.startswith("astronaut.jpg"))
    assert row.split()[3:8] == ["512×512", "768×768", "2×2", "5", "1023"]
    assert "Layouts from headers alone" in out


def test_more_than_two_images_turns_cropping_off(capsys):
    path = cli.EXAMPLE_IMAGES / "astronaut.jpg"
    assert cli.main(["tile", "--images-per-sample", "3", str(path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("astronaut.jpg"))
    assert row.split()[5:8] == ["1×1", "2", "421"]


def test_unreadable_file_is_reported_and_fails(tmp_path, capsys):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    assert cli.main(["tile", str(bad), str(cli.EXAMPLE_IMAGES / "horse_rgba.png")]) == 1
    captured = capsys.readouterr()
    assert "bad.jpg: not a readable image" in captured.err
    assert "horse_rgba.png" in captured.out


def test_bad_shape_names_the_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tile", "--shape", "huge"])
    assert exit_info.value.code == 2
    assert "--shape" in capsys.readouterr().err


def test_console_script_help():
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "--help"], capture_output=True, text=True, check=True
    )
    assert "tile" in result.stdout


def test_pretokenize_config_error_exits_2(tmp_path, capsys):
    config = tmp_path / "job.yaml"
    config.write_text("sources: []\noutput: {dir: out}\n")
    assert cli.main(["pretokenize", str(config)]) == 2
    assert "sources" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# pretokenize: every failure a user can cause is one line and an exit code


def text_job(folder: Path) -> Path:
    (folder / "in").mkdir(parents=True)
    (folder / "in" / "text.jsonl").write_text('{"text": "A caption."}\n')
    config = folder / "job.yaml"
    config.write_text("sources:\n  - {name: t, format: text, path: in/text.jsonl}\noutput: {dir: out}\n")
    return config


def one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.timeout(60)
@pytest.mark.parametrize("value", ["1e400", ".inf", ".nan", "-5", "1e30", "100000000000000000000000"])
def test_impossible_shard_sizes_are_config_errors(tmp_path, capsys, value):
    config = text_job(tmp_path)
    config.write_text(config.read_text().replace("{dir: out}", f"{{dir: out, shard_target_bytes: {value}}}"))
    assert cli.main(["pretokenize", str(config)]) == 2
    assert one_line(capsys).startswith(f"{config}: output.shard_target_bytes: ")


@pytest.mark.timeout(60)
def test_config_paths_that_are_not_files_are_refused_unread(tmp_path, capsys):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero"), tmp_path):
        assert cli.main(["pretokenize", str(path)]) == 2
        assert "not a regular file" in one_line(capsys)


@pytest.mark.timeout(60)
def test_a_manifest_that_is_not_json_is_a_message(tmp_path, capsys):
    config = text_job(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "manifest.json").write_text("{truncated")
    assert cli.main(["pretokenize", str(config)]) == 2
    assert f"{tmp_path / 'out' / 'manifest.json'} is not JSON" in one_line(capsys)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("code", "text"),
    [(errno.EROFS, "Read-only file system"), (errno.EACCES, "Permission denied")],
)
def test_an_output_that_cannot_be_written_is_a_message(tmp_path, capsys, monkeypatch, code, text):
    """Simulated (the tests may run as root, for whom no folder is read-only): the lease, the first file
    the job creates, fails as the storage would."""
    config = text_job(tmp_path)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if str(path).endswith(shards.LEASE) and flags & os.O_CREAT:
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    assert cli.main(["pretokenize", str(config)]) == 4
    line = one_line(capsys)
    assert line.startswith(f"pretokenize stopped: {tmp_path / 'out' / shards.LEASE}: {text}")
    assert errno.errorcode[code] in line


@pytest.mark.timeout(60)
def test_a_full_disk_is_a_message_and_releases_the_lease(tmp_path, capsys, monkeypatch):
    """Simulated by a write that fails with ENOSPC (the first one the job makes: its staging claim)."""
    config = text_job(tmp_path)

    def full(self, relative, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.path(relative))

    monkeypatch.setattr(shards.OutputDir, "write_bytes", full)
    assert cli.main(["pretokenize", str(config)]) == 4
    line = one_line(capsys)
    assert "No space left on device (ENOSPC); the disk is full" in line and "_staging/job.json" in line
    assert not (tmp_path / "out" / shards.LEASE).exists()


def test_storage_errors_raised_in_ray_tasks_are_one_line():
    """A worker's OSError reaches the driver wrapped in Ray's task error, whose text is the worker's whole
    traceback; the line says only the cause."""
    from ray.exceptions import RayTaskError

    try:
        raise OSError(errno.ENOSPC, "No space left on device", "/out/_staging/rows/x.parquet")
    except OSError as cause:
        wrapped = RayTaskError("ReadPartition", "Traceback (most recent call last):\n" * 130, cause)
    error = wrapped.as_instanceof_cause()
    code, line = cli.failure(error, Path("job.yaml"), "/out")
    assert code == 4 and "\n" not in line
    assert line.startswith("pretokenize stopped: /out/_staging/rows/x.parquet: No space left on device")
    # pyarrow's errors name no file: the output folder is named instead.
    code, line = cli.failure(OSError(errno.EIO, "Error writing bytes to file"), Path("job.yaml"), "/out")
    assert (code, line.split(";")[0]) == (4, "pretokenize stopped: /out: Error writing bytes to file (EIO)")


@pytest.mark.timeout(60)
def test_unexpected_failures_are_one_line_and_verbose_adds_the_traceback(tmp_path, capsys, monkeypatch):
    config = text_job(tmp_path)

    def broken(config, **options):
        raise RuntimeError("counts do not reconcile\nsecond line")

    monkeypatch.setattr(pretokenize, "run", broken)
    assert cli.main(["pretokenize", str(config)]) == 1
    assert one_line(capsys) == (
        "pretokenize failed: RuntimeError: counts do not reconcile (rerun with --verbose for the traceback)\n"
    )
    assert cli.main(["pretokenize", str(config), "--verbose"]) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.endswith("for the traceback)\n")

    def interrupted(config, **options):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretokenize, "run", interrupted)
    assert cli.main(["pretokenize", str(config)]) == 130
    assert "interrupted" in one_line(capsys)


@pytest.mark.timeout(60)
def test_pretokenize_passes_its_options_to_the_job(tmp_path, capsys, monkeypatch):
    config = text_job(tmp_path)
    calls = []

    def record(config, **options):
        calls.append(options)
        return 0

    monkeypatch.setattr(pretokenize, "run", record)
    assert cli.main(["pretokenize", str(config)]) == 0
    assert cli.main(["pretokenize", str(config), "--allow-empty", "--verbose", "--overwrite"]) == 0
    assert calls == [
        {"overwrite": False, "out_stream": sys.stdout, "allow_empty": False, "verbose": False},
        {"overwrite": True, "out_stream": sys.stdout, "allow_empty": True, "verbose": True},
    ]


@pytest.mark.timeout(60)
def test_an_empty_output_keeps_the_job_s_exit_code(tmp_path, capsys, monkeypatch):
    """The job decides that an output with no row is exit 1; the command returns its code unchanged."""
    config = text_job(tmp_path)
    monkeypatch.setattr(
        pretokenize, "run", lambda config, allow_empty=False, **options: 0 if allow_empty else 1
    )
    assert cli.main(["pretokenize", str(config)]) == 1
    assert cli.main(["pretokenize", str(config), "--allow-empty"]) == 0


def test_the_help_lists_every_exit_code_and_the_new_options():
    result = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "pretokenize", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    text = " ".join(result.stdout.split())
    assert "--allow-empty" in text and "--verbose" in text
    for code in cli.EXIT_CODES:
        assert f"{code} " in text
    assert "wrote no row" in cli.EXIT_CODES[1]


def test_stats_and_validate_get_local_outputs_as_absolute_paths(tmp_path, monkeypatch):
    """Their Ray tasks read the output from another working directory (a Ray started elsewhere, another
    node): a relative OUT is made absolute here, a URI is passed as given."""
    from jobs import stats, validate

    seen = []
    monkeypatch.setattr(stats, "run", lambda location, **options: seen.append((location, options)) or 0)
    monkeypatch.setattr(validate, "run", lambda location, **options: seen.append((location, options)) or 0)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["stats", "out/example", "--report-dir", "report"]) == 0
    assert cli.main(["validate", "out/example"]) == 0
    assert cli.main(["stats", "s3://bucket/out"]) == 0
    assert [location for location, _ in seen] == [str(tmp_path / "out/example")] * 2 + ["s3://bucket/out"]
    assert seen[0][1]["report_dir"] == str(tmp_path / "report") and seen[2][1]["report_dir"] is None

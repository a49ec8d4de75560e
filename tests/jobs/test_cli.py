"""The `vl2prep` command: the `tile` table over the bundled examples and over given files."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jobs import cli


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

"""`vl2prep train-tokenizer`: reproducible training from files, the shipped demo model by default."""

from __future__ import annotations

import pytest

from jobs import cli
from pipeline import tokenizer


def test_train_from_files_is_reproducible(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    text.write_text("a photo of a cat on a mat\nthe dog sleeps on the porch\n" * 50, encoding="utf-8")
    for name in ("one.model", "two.model"):
        code = cli.main(
            ["train-tokenizer", "--input", str(text), "--vocab-size", "300", "--out", str(tmp_path / name)]
        )
        assert code == 0
    assert (tmp_path / "one.model").read_bytes() == (tmp_path / "two.model").read_bytes()
    out = capsys.readouterr().out
    assert f"{tmp_path / 'one.model'}: {tokenizer.file_sha256(tmp_path / 'one.model')}" in out


def test_default_input_reproduces_the_shipped_demo_model(tmp_path, capsys):
    out = tmp_path / "demo.model"
    assert cli.main(["train-tokenizer", "--vocab-size", "4096", "--out", str(out), "--shape", "toy"]) == 0
    assert out.read_bytes() == tokenizer.DEMO_MODEL.read_bytes()
    printed = capsys.readouterr().out
    assert "4096 pieces" in printed and "fits shape toy" in printed


def test_a_model_that_does_not_fit_the_shape_fails(tmp_path, capsys):
    out = tmp_path / "x.model"
    assert cli.main(["train-tokenizer", "--vocab-size", "4096", "--out", str(out), "--shape", "small"]) == 1
    assert "disagree" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", "missing.txt", "--vocab-size", "300"], "--input: no such file"),
        (["--vocab-size", "100"], "too small"),
        (["--vocab-size", "50000"], "vocab_size=50000: the training text supports only 9979 pieces"),
        (["--vocab-size", "300", "--shape", "huge"], "--shape"),
    ],
)
def test_bad_arguments_name_the_option(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["train-tokenizer", *args, "--out", str(tmp_path / "x.model")])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err

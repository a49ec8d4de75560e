"""`vl2prep verify` and `vl2prep inspect` on the example output (made once through Ray for this module)."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from jobs import cli, pretokenize
from jobs.config import load_config
from schemas import shard

EXAMPLES = Path(__file__).resolve().parents[2] / "jobs" / "examples"


@pytest.fixture(scope="module")
def example_out(ray_session, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("example")
    shutil.copytree(EXAMPLES / "corpus", folder / "corpus")
    config = folder / "job.yaml"
    config.write_text((EXAMPLES / "pretokenize.yaml").read_text().replace("../../out/example", "out"))
    assert pretokenize.run(load_config(config), out_stream=io.StringIO()) == 0
    return folder / "out"


@pytest.fixture
def out_copy(example_out, tmp_path) -> Path:
    shutil.copytree(example_out, tmp_path / "out")
    return tmp_path / "out"


def test_verify_a_clean_output(example_out, capsys):
    assert cli.main(["verify", str(example_out)]) == 0
    printed = capsys.readouterr().out
    manifest = json.loads((example_out / "manifest.json").read_text())
    rows = sum(entry["rows"] for entry in manifest["shards"])
    rejects = sum(entry["rows"] for entry in manifest["rejects"])
    shard_files, sources = len(manifest["shards"]), len(manifest["sources"])
    reject_files = len(manifest["rejects"])
    assert (
        f"OK. {shard_files} shard files ({rows} rows) and {reject_files} reject files ({rejects} rows)"
        in printed
    )
    assert f"{sources} sources" in printed


def shard_of(out: Path, source: str) -> str:
    """The first shard file of `source`, as the manifest lists it."""
    manifest = json.loads((out / "manifest.json").read_text())
    return next(entry["path"] for entry in manifest["shards"] if entry["source"] == source)


def test_verify_a_flipped_byte(out_copy, capsys):
    relative = shard_of(out_copy, "coco")
    path = out_copy / relative
    data = bytearray(path.read_bytes())
    data[100] ^= 0x10
    path.write_bytes(bytes(data))
    assert cli.main(["verify", str(out_copy)]) == 1
    errors = capsys.readouterr().err
    assert f"{relative}: sha256" in errors and "FAILED" in errors


def test_verify_a_missing_shard(out_copy, capsys):
    relative = shard_of(out_copy, "text")
    (out_copy / relative).unlink()
    assert cli.main(["verify", str(out_copy)]) == 1
    errors = capsys.readouterr().err
    assert f"{relative}: listed in the manifest but missing" in errors
    assert "source text: rows 3 but the shards' rows hold 0" in errors


def test_verify_names_the_sample_of_an_edited_row(out_copy, capsys):
    relative = shard_of(out_copy, "llava")
    rows = pq.read_table(out_copy / relative).to_pylist()
    edited = rows[1]
    end = edited["image_token_offsets"][-1] + 421  # the last image is 1×1
    edited["input_ids"][end] = 128815  # one <image> token too many
    pq.write_table(shard.to_table(rows), out_copy / relative, compression="zstd")
    manifest = json.loads((out_copy / "manifest.json").read_text())
    data = (out_copy / relative).read_bytes()
    for entry in manifest["shards"]:
        if entry["path"] == relative:
            entry["bytes"], entry["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    (out_copy / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["verify", str(out_copy)]) == 1
    errors = capsys.readouterr().err
    assert f"{relative}: sample {edited['sample_id']}: 1 <image> tokens outside the image spans" in errors
    assert "sha256" not in errors


def test_inspect_one_row_of_each_kind(example_out, capsys):
    assert cli.main(["inspect", str(example_out)]) == 0  # row 0: a conversation with one image
    printed = capsys.readouterr().out
    assert printed.startswith(f"row 0 of {example_out} ({shard_of(example_out, 'llava')})\nsample_id ")
    assert "kind conversation" in printed and "<image ×421 grid 1×1>" in printed and "<eos>»" in printed

    assert cli.main(["inspect", str(example_out), "--row", "7"]) == 0  # the panorama caption, plain
    printed = capsys.readouterr().out
    assert (
        "kind caption" in printed
        and "image 0: panorama.jpg JPEG 1024×192, grid 3×1, 813 tokens at 1" in printed
    )
    assert "<bos><image ×813 grid 3×1>«" in printed

    assert cli.main(["inspect", str(example_out), "--sample-id", "87689c623f72a6da7b96948dba0196dd"]) == 0
    printed = capsys.readouterr().out
    assert (
        "row 15 of" in printed and "kind text" in printed and "<bos>«" in printed and "image 0" not in printed
    )


def test_inspect_an_unknown_row(example_out, capsys):
    rows = sum(entry["rows"] for entry in json.loads((example_out / "manifest.json").read_text())["shards"])
    assert cli.main(["inspect", str(example_out), "--row", str(rows)]) == 1
    assert f"no row {rows} among its {rows} rows" in capsys.readouterr().err
    assert cli.main(["inspect", str(example_out), "--sample-id", "nope"]) == 1
    assert "no sample_id nope" in capsys.readouterr().err

"""pipeline.verify: row invariants one by one, and whole outputs (made here without Ray) that pass or fail."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from shard_support import (
    EXPECTED,
    IMG,
    TOK,
    TOY,
    image,
    png,
    rewrite_row,
    row_of,
    small_output,
    text,
)

from pipeline import shards, verify
from pipeline.packing import pack_rows
from schemas import shard as shard_schema


def caption_row() -> dict:
    return row_of("pics", "k", "caption", [image(0), text("A red square.")], [png(640, 480)])


def test_a_built_row_passes():
    assert verify.check_row(caption_row(), EXPECTED) == []


def test_one_image_token_too_many_is_found():
    row = caption_row()
    end = row["image_token_offsets"][0] + 1023
    row["input_ids"][end] = IMG
    row["labels"][end] = -100
    row["num_loss_tokens"] -= int(row["labels"][end] != -100)
    problems = verify.check_row(row, EXPECTED)
    assert any("outside the image spans, first at position" in p for p in problems)
    assert any("num_image_tokens 1023 but the row holds 1024" in p for p in problems)


def test_each_broken_invariant_has_its_message():
    cases = {
        "labels holds": lambda r: r.update(labels=r["labels"][:-1]),
        "ids outside [0, 8192)": lambda r: r["input_ids"].__setitem__(-2, 9000),
        "neither -100 nor the token's id": lambda r: r["labels"].__setitem__(-2, 5),
        "<image> tokens are trained on": lambda r: r["labels"].__setitem__(10, IMG),
        "does not start with bos labelled 0": lambda r: r["labels"].__setitem__(0, -100),
        "special_strings_as_text is negative": lambda r: r.update(special_strings_as_text=-1),
        "should be 1023 <image> tokens, found 1022": lambda r: r.update(image_token_offsets=[5]),
        "stored grid 1×1 but a 640×480 image tiles to 2×2": lambda r: r.update(images_spatial_crop=[[1, 1]]),
        "num_text_tokens": lambda r: r.update(num_text_tokens=1),
        "num_loss_tokens": lambda r: r.update(num_loss_tokens=0),
        "seq_len": lambda r: r.update(seq_len=3),
        "tokenizer_sha256": lambda r: r.update(tokenizer_sha256="0" * 64),
        "shape_fingerprint": lambda r: r.update(shape_fingerprint="x"),
        "its bytes are 640×480": lambda r: r["images"][0].update(width_px=641),
        "1 images, 0 images_spatial_crop rows": lambda r: r.update(images_spatial_crop=[]),
        "must be null": lambda r: r.update(cu_seqlens=np.array([0, 3])),
    }
    for expected, change in cases.items():
        row = caption_row()
        change(row)
        problems = verify.check_row(row, EXPECTED)
        assert any(expected in p for p in problems), (expected, problems)


def test_three_images_must_not_crop():
    content = [image(0), image(1), image(2), text("Three pictures.")]
    row = row_of("pics", "k", "interleaved", content, [png(640, 480), png(50, 50), png(60, 60)])
    assert row["images_spatial_crop"] == [[1, 1]] * 3 and verify.check_row(row, EXPECTED) == []
    row["images_spatial_crop"] = [[2, 2], [1, 1], [1, 1]]
    assert any("tiles to 1×1" in p for p in verify.check_row(row, EXPECTED))


def test_packed_rows():
    first = row_of("a", "1", "text", [text("One document.")])
    second = row_of("a", "2", "caption", [image(0), text("A picture.")], [png(100, 100)])
    packed = pack_rows([first, second], 600, TOY.special_tokens.pad)
    assert verify.check_row(packed, EXPECTED) == []
    packed["position_ids"] = np.arange(600)
    assert any("position_ids do not restart" in p for p in verify.check_row(packed, EXPECTED))
    packed["cu_seqlens"] = np.array([0, 5, 600])
    assert any("do not match cu_seqlens" in p for p in verify.check_row(packed, EXPECTED))


# ----------------------------------------------------------------------------------------------------
# whole outputs


def test_a_clean_output_verifies(tmp_path):
    report = verify.verify(str(small_output(tmp_path)))
    assert report.ok, [str(p) for p in report.problems]
    assert (report.shard_files, report.shard_rows, report.reject_files, report.reject_rows) == (2, 8, 1, 1)


def test_an_output_written_before_the_value_column_still_verifies(tmp_path):
    """Reject schema 1 (no `value` column) is what outputs made before filters existed hold."""
    out = small_output(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    entry = manifest["rejects"][0]
    path = out / entry["path"]
    pq.write_table(pq.read_table(path).drop_columns(["value"]), path)
    entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["schema_versions"] = {"reject": 1}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify.verify(str(out)).ok
    manifest["schema_versions"] = {"reject": 2}  # the old file under the new version's name is wrong
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any("schema differs" in str(p) for p in verify.verify(str(out)).problems)
    manifest["schema_versions"] = {"reject": 7}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any("unknown reject schema version 7" in str(p) for p in verify.verify(str(out)).problems)


def test_an_output_of_shard_schema_1_still_verifies(tmp_path):
    """Shard schema 1: labels -100 at the bos (position 0), no `special_strings_as_text` column."""
    out = small_output(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["shards"]:
        path = out / entry["path"]
        rows = pq.read_table(path).drop_columns(["special_strings_as_text"]).to_pylist()
        for row in rows:
            row["labels"][0] = -100
        pq.write_table(pa.Table.from_pylist(rows, schema=shard_schema.schema_for_version(1)), path)
        entry["bytes"], entry["sha256"] = path.stat().st_size, hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["schema_versions"] = {"shard": 1}
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert verify.verify(str(out)).ok
    manifest["schema_versions"] = {"shard": 2}  # the old files under the new version's name are wrong
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert any("schema differs" in str(p) for p in verify.verify(str(out)).problems)


def test_an_edited_row_with_a_consistent_checksum_is_named(tmp_path):
    out = small_output(tmp_path)

    def one_more_image_token(row: dict) -> None:
        end = row["image_token_offsets"][0] + row["num_image_tokens"]
        row["input_ids"][end] = IMG
        row["labels"][end] = -100

    sample_id = rewrite_row(out, "shards/pics/part-00000-000.parquet", 1, one_more_image_token)
    report = verify.verify(str(out))
    assert not report.ok
    named = [p for p in report.problems if p.sample_id == sample_id]
    assert named and any("outside the image spans" in p.message for p in named)
    assert all("sha256" not in p.message for p in report.problems)


def test_file_and_count_problems(tmp_path):
    out = small_output(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "shards/chat/part-00000-000.parquet").unlink()
    (out / "shards/pics/extra.parquet").write_bytes(b"stray")
    manifest["sources"]["pics"]["read"] += 1
    manifest["sources"]["pics"]["rows"] += 1
    (out / "manifest.json").write_text(json.dumps(manifest))
    messages = [str(p) for p in verify.verify(str(out)).problems]
    expected = [
        "shards/chat/part-00000-000.parquet: listed in the manifest but missing",
        "shards/pics/extra.parquet: not listed in the manifest",
        "manifest.json source pics: read 4 != written 3 + rejected 0",
        "manifest.json source pics: rows 4 but the shards' rows hold 3",
        "manifest.json source chat: rows 5 but the shards' rows hold 0",
    ]
    for message in expected:
        assert message in messages, (message, messages)


def test_config_sha256_must_be_the_identity_of_the_recorded_config(tmp_path):
    out = small_output(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    identity = shards.config_identity(manifest["config"], TOK.identity, TOY.fingerprint())
    legacy = hashlib.sha256(shards.canonical_json(manifest["config"])).hexdigest()
    for version, recorded, ok in (
        (3, identity, True),
        (2, legacy, True),
        (3, legacy, False),
        (3, "0" * 64, False),
    ):
        manifest["vl2prep_manifest"], manifest["config_sha256"] = version, recorded
        (out / "manifest.json").write_text(json.dumps(manifest))
        problems = [str(p) for p in verify.verify(str(out)).problems]
        flagged = any("is not the identity of the recorded config" in p for p in problems)
        assert flagged is not ok, (version, problems)


def test_a_flipped_byte_fails_the_checksum(tmp_path):
    out = small_output(tmp_path)
    path = out / "rejects/part-00000-000.parquet"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    report = verify.verify(str(out))
    assert any(p.where == "rejects/part-00000-000.parquet" and "sha256" in p.message for p in report.problems)


def test_problems_are_capped_but_counted(tmp_path):
    out = small_output(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["tokenizer"]["sha256"] = "0" * 64
    (out / "manifest.json").write_text(json.dumps(manifest))
    report = verify.verify(str(out), max_problems=2)
    assert len(report.problems) == 2 and report.problem_count == 8

"""The pretokenize job end to end through Ray: the example corpus, determinism across folders,
exactly-once resume after a real process kill, and reruns."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import pretokenize, ray_runtime
from jobs.config import load_config
from schemas import reject as reject_schema
from schemas import shard as shard_schema

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "jobs" / "examples"


def example_copy(folder: Path) -> Path:
    """The example corpus and config in `folder`, writing to `folder/out`; returns the config path."""
    shutil.copytree(EXAMPLES / "corpus", folder / "corpus")
    config = (EXAMPLES / "pretokenize.yaml").read_text().replace("../../out/example", "out")
    path = folder / "job.yaml"
    path.write_text(config)
    return path


def file_hashes(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def without_report(hashes: dict[str, str]) -> dict[str, str]:
    """File hashes but the report's: `report.html` carries the time it was made."""
    return {path: digest for path, digest in hashes.items() if path != "stats/report.html"}


def run_job(config_path: Path, overwrite: bool = False) -> tuple[int, str]:
    stream = io.StringIO()
    code = pretokenize.run(load_config(config_path), overwrite=overwrite, out_stream=stream)
    return code, stream.getvalue()


def test_example_corpus_end_to_end(ray_session, tmp_path):
    config_path = example_copy(tmp_path)
    code, printed = run_job(config_path)
    assert code == 0
    out = tmp_path / "out"
    manifest = json.loads((out / "manifest.json").read_text())
    assert not (out / "_staging").exists()

    # Every listed file is there with its size and checksum; nothing else is, but the statistics report.
    measured = manifest["filters"]["measurements"]
    listed = {entry["path"]: entry for entry in manifest["shards"] + manifest["rejects"] + measured}
    written = {path for path in file_hashes(out) if not path.startswith("stats/")}
    assert set(listed) | {"manifest.json"} == written
    assert {"stats/stats.json", "stats/report.html", "stats/report.md"} <= set(file_hashes(out))
    for path, entry in listed.items():
        data = (out / path).read_bytes()
        assert (len(data), hashlib.sha256(data).hexdigest()) == (entry["bytes"], entry["sha256"])

    # Counts reconcile per source and match the files.
    rows = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["shards"])
    rejects = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["rejects"])
    assert rows.schema.equals(shard_schema.SCHEMA) and rejects.schema.equals(reject_schema.SCHEMA)
    for name, counts in manifest["sources"].items():
        assert counts["read"] == counts["written"] + counts["rejected_total"] > 0
        assert rows.column("source").to_pylist().count(name) == counts["rows"]
        assert rejects.column("source").to_pylist().count(name) == counts["rejected_total"]
    assert len(set(rows.column("sample_id").to_pylist())) == rows.num_rows
    expected_reasons = {"missing_image", "placeholder_mismatch", "truncated_image", "empty_text"}
    expected_reasons |= {"duplicate_image", "text_too_short"}  # the hf-captions source filters and dedups
    assert expected_reasons <= set(rejects.column("reason").to_pylist())
    assert "llava" in printed and "rejects by reason" in printed
    assert_real_ids_decode_to_the_source_text(out, rows)

    # A finished job is left alone.
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, printed = run_job(config_path)
    assert code == 0 and "complete" in printed
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    # A run stopped between the manifest and the statistics gets them on its rerun, and only them.
    report = (out / "stats" / "stats.json").read_bytes()
    shutil.rmtree(out / "stats")
    assert run_job(config_path)[0] == 0
    assert (out / "stats" / "stats.json").read_bytes() == report
    assert all(p.stat().st_mtime_ns == t for p, t in before.items() if "stats" not in p.parts)

    # Another config on the same output needs --overwrite; with packing, every row is max_seq_len long.
    changed = config_path.read_text().replace("packing: false", "packing: true").replace("4096", "1024")
    config_path.write_text(changed)
    assert run_job(config_path)[0] == 2
    assert run_job(config_path, overwrite=True)[0] == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["sequence"]["packing"] is True
    assert {entry["source"] for entry in manifest["shards"]} == {"packed"}
    packed = pa.concat_tables(pq.read_table(out / e["path"]) for e in manifest["shards"])
    assert set(pc.list_value_length(packed.column("input_ids")).to_pylist()) == {1024}
    documents = sum(len(d) for d in packed.column("documents").to_pylist())
    assert documents == sum(counts["rows"] for counts in manifest["sources"].values())
    assert 0 < manifest["packing"]["token_fill"] <= 1


def assert_real_ids_decode_to_the_source_text(out: Path, rows: pa.Table) -> None:
    """The example job (tiny, `tokenizer: default`) writes DeepSeek-VL2 ids: the text of its LLaVA and text
    sources decodes back from them with the shipped DeepSeek-VL2 tokenizer."""
    import model_shapes
    from pipeline import tokenizer

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["sha256"] == (
        "6ae3d2a608d82e48196939a2ccfea2a545808c681fceae60afa02117a2c6fccb"
    )
    tiny = model_shapes.load("tiny")
    vl2 = tokenizer.load("deepseek-vl2", tiny)
    special = set(tiny.special_tokens.as_dict().values())

    def decoded(row: dict) -> str:
        return vl2.decode([i for i in row["input_ids"] if i not in special])

    by_key = {row["key"]: row for row in rows.to_pylist()}
    corpus = EXAMPLES / "corpus"
    for index, record in enumerate(json.loads((corpus / "llava.json").read_text())):
        row = by_key.get(f"llava.json#{index}")
        if row is None:
            continue  # a deliberately bad record, rejected
        text = decoded(row)
        for turn in record["conversations"]:
            for piece in turn["value"].split("<image>"):
                assert piece.strip() in text, (piece, text)
    documents = [json.loads(line) for line in (corpus / "text.jsonl").read_text().splitlines()[:4]]
    for index, document in enumerate(documents):
        if document["text"]:
            assert decoded(by_key[f"text.jsonl#{index}"]) == document["text"]


def test_same_bytes_wherever_the_corpus_and_output_live(ray_session, tmp_path):
    first, second, third = tmp_path / "a", tmp_path / "deeper" / "b", tmp_path / "uri"
    for folder in (first, second, third):
        folder.mkdir(parents=True)
    assert run_job(example_copy(first))[0] == 0
    assert run_job(example_copy(second))[0] == 0
    # report.html says when it was made; every other file, stats.json included, is the same to the byte.
    assert without_report(file_hashes(first / "out")) == without_report(file_hashes(second / "out"))

    # Inputs and output given as file:// URIs: the config differs, the shards and rejects do not.
    config = example_copy(third)
    text = config.read_text().replace("path: corpus/", f"path: file://{third}/corpus/")
    config.write_text(text.replace("dir: out", f"dir: file://{third}/out-uri"))
    assert run_job(config)[0] == 0
    uri_files = without_report(file_hashes(third / "out-uri"))
    reference = without_report(file_hashes(first / "out"))
    config_files = ("manifest.json", "stats/stats.json")  # both record the config as written
    assert {k: v for k, v in uri_files.items() if k not in config_files} == {
        k: v for k, v in reference.items() if k not in config_files
    }


def caption_corpus(folder: Path, files: int, per_file: int) -> Path:
    """`files` Parquet files of `per_file` captioned images each, and a config over them."""
    (folder / "parts").mkdir(parents=True)
    with Image.open(REPO / "tests" / "golden" / "images" / "skimage_astronaut.png") as photo:
        source = photo.convert("RGB")
    for f in range(files):
        images, texts = [], []
        for i in range(per_file):
            buffer = io.BytesIO()
            size = (96 + 7 * i, 64 + 5 * f)
            source.resize(size).save(buffer, format="JPEG", quality=70)
            images.append({"bytes": buffer.getvalue(), "path": f"{f}-{i}.jpg"})
            texts.append(f"Picture {i} of part {f}, {size[0]} by {size[1]} pixels.")
        pq.write_table(pa.table({"image": images, "text": texts}), folder / "parts" / f"part-{f:02d}.parquet")
    config = folder / "job.yaml"
    config.write_text(
        "model_shape: tiny\n"
        "sources:\n  - {name: captions, format: parquet, path: parts}\n"
        "output: {dir: out, shard_target_bytes: 64KiB}\n"
        "ray: {num_cpus: 2}\n"
    )
    return config


def test_killed_job_resumes_exactly_once(ray_session, tmp_path):
    clean = caption_corpus(tmp_path / "clean", files=12, per_file=12)
    assert run_job(clean)[0] == 0
    reference = without_report(file_hashes(tmp_path / "clean" / "out"))

    crashed = caption_corpus(tmp_path / "crashed", files=12, per_file=12)
    staging = tmp_path / "crashed" / "out" / "_staging" / "done"
    script = (
        "from jobs.config import load_config; from jobs import pretokenize; "
        f"pretokenize.run(load_config({str(crashed)!r}))"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ADDRESS": ""}
    process = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if staging.exists() and len(list(staging.glob("*.json"))) >= 2:
                break
            time.sleep(0.02)
        assert process.poll() is None, "the job finished before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the driver (Ray's processes run in their own sessions)
    finally:
        process.wait(timeout=60)
    # Ray's processes and workers outlive the driver by seconds and may finish another partition: the
    # stale session's stragglers are stopped (as a rerun that takes over the lease does) before counting.
    assert ray_runtime.reap_stale_sessions()
    done_before = len(list(staging.glob("*.json")))
    assert 2 <= done_before < 12
    assert not (tmp_path / "crashed" / "out" / "manifest.json").exists()

    code, printed = run_job(crashed)
    assert code == 0
    assert f"({done_before} already done)" in printed
    resumed = without_report(file_hashes(tmp_path / "crashed" / "out"))
    if resumed["manifest.json"] != reference["manifest.json"]:
        print((tmp_path / "crashed" / "out" / "manifest.json").read_text())
        print((tmp_path / "clean" / "out" / "manifest.json").read_text())
    assert resumed == reference


def test_embedded_ray_listens_on_loopback_only():
    """The job's own `import ray` (after `jobs` is imported) starts a node bound to 127.0.0.1."""
    script = (
        "import jobs.pretokenize, ray; from jobs.ray_runtime import start_ray; start_ray(num_cpus=1); "
        "print(ray.util.get_node_ip_address())"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert result.stdout.strip().splitlines()[-1] == "127.0.0.1"


def test_a_local_output_on_many_nodes_stops_before_any_work(ray_session, tmp_path, monkeypatch):
    config = caption_corpus(tmp_path, files=2, per_file=2)
    monkeypatch.setattr(ray_session, "nodes", lambda: [{"Alive": True}, {"Alive": True}, {"Alive": False}])
    with pytest.raises(pretokenize.OutputError, match=r"the Ray cluster has 2 nodes.*output.shared: true"):
        run_job(config)
    assert not (tmp_path / "out" / "shards").exists() and not (tmp_path / "out" / "manifest.json").exists()
    config.write_text(config.read_text().replace("output: {dir: out,", "output: {dir: out, shared: true,"))
    code, printed = run_job(config)
    assert code == 0 and "2 input files (0 already done)" in printed


def test_a_job_that_writes_no_row_exits_1_unless_allowed(ray_session, tmp_path, capsys):
    config = caption_corpus(tmp_path, files=1, per_file=3)
    config.write_text(config.read_text() + "sequence: {max_seq_len: 10}\n")
    code, printed = run_job(config)
    assert code == 1 and "3 rejected" in printed.replace(",", "")
    assert "the job wrote no row (3 records read, 3 rejected" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"]["captions"]["rejected"] == {"too_long": 3}
    stream = io.StringIO()
    assert pretokenize.run(load_config(config), out_stream=stream, allow_empty=True) == 0
    assert "complete (manifest.json present)" in stream.getvalue()


def test_progress_lines_count_records(tmp_path):
    from jobs.progress import PartitionProgress
    from schemas.manifest import PartitionRecord, SourceTotals

    now = [0.0]
    stream = io.StringIO()
    progress = PartitionProgress(4, stream, clock=lambda: now[0])
    for step in range(4):
        now[0] = 11.0 * (step + 1)
        totals = SourceTotals(read=100, written=98, rejected={"too_long": 2})
        progress.update(PartitionRecord(step, "s", f"f{step}", totals, [], [], []))
    lines = stream.getvalue().splitlines()
    assert (
        lines[0]
        == "  1/4 files · 100 records read · 98 written · 2 rejected · 9 records/s, about 0:00:33 left"
    )
    assert lines[-1].startswith("  4/4 files · 400 records read · 392 written · 8 rejected · 9 records/s")
    progress.finish()
    assert "left" not in stream.getvalue().splitlines()[-1]

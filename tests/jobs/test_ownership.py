"""The output folder is the job's own: it deletes only files it wrote (as its manifest or staging records
list them), one job at a time holds its lease, and a rerun never calls an output with a missing or changed
shard complete."""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jobs import cli, pretokenize
from jobs.config import load_config
from pipeline import shards

REPO = Path(__file__).resolve().parents[2]
TEXT = REPO / "jobs" / "examples" / "corpus" / "text.jsonl"


def text_job(folder: Path, extra: str = "") -> Path:
    """A one-file text source in `folder/in`, writing to `folder/out`; returns the config path."""
    (folder / "in").mkdir(parents=True, exist_ok=True)
    (folder / "in" / "text.jsonl").write_bytes(TEXT.read_bytes())
    config = folder / "job.yaml"
    config.write_text(
        "model_shape: tiny\n"
        "sources:\n  - {name: t, format: text, path: in/text.jsonl}\n"
        f"output: {{dir: out, stats: false{extra}}}\n"
        "ray: {num_cpus: 2}\n"
    )
    return config


def run_job(config: Path, overwrite: bool = False) -> tuple[int, str]:
    stream = io.StringIO()
    code = pretokenize.run(load_config(config), overwrite=overwrite, out_stream=stream)
    return code, stream.getvalue()


def tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fake_output(out: Path, config_sha256: str = "another") -> dict:
    """A finished output as an earlier run leaves it: listed shards, rejects and measurements, the stats
    files, and its manifest."""
    listed = {
        "shards": ["shards/a/part-00000.parquet", "shards/a/part-00001.parquet"],
        "rejects": ["rejects/part-00000.parquet"],
        "measurements": ["filters/part-00000.parquet"],
    }
    entries = {}
    for group, paths in listed.items():
        entries[group] = []
        for path in paths:
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_bytes(path.encode())
            entries[group].append({"path": path, "bytes": len(path.encode()), "rows": 1})
    (out / "stats").mkdir()
    for name in ("stats.json", "report.html", "report.md"):
        (out / "stats" / name).write_text("{}")
    manifest = {
        "vl2prep_manifest": 2,
        "config_sha256": config_sha256,
        "shards": entries["shards"],
        "rejects": entries["rejects"],
        "filters": {"thresholds": {}, "measurements": entries["measurements"]},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    return manifest


# ------------------------------------------------------------------------------------------------
# ownership: only listed files are removed


@pytest.mark.timeout(60)
def test_overwrite_removes_exactly_the_listed_files(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    manifest = fake_output(out)
    (out / "stats" / "notes.txt").write_text("mine")
    (out / "data.tar").write_bytes(b"an input that happens to live here")
    (out / "shards" / "a" / "keep.txt").write_text("not a shard")
    staged = out / "_staging" / "rows"
    staged.mkdir(parents=True)
    (staged / "x.parquet").write_bytes(b"staged")
    (out / "_staging" / "job.json").write_text("{}")
    (out / "_staging" / "started").mkdir()
    (out / "_staging" / "started" / "00003.json").write_text("{}")  # an unfinished run's partition 3
    (out / "shards" / "b").mkdir()
    (out / "shards" / "b" / "part-00003-000.parquet").write_bytes(b"written by the unfinished run")
    (out / "rejects" / "part-00003-001.parquet").write_bytes(b"written by the unfinished run")
    (out / "shards" / "b" / "part-00004-000.parquet").write_bytes(b"no partition of the run says so")

    removed = pretokenize._remove_output(shards.OutputDir(str(out)), manifest)

    assert removed == 4 + 3 + 1  # the listed files, the stats files, the manifest
    assert tree(out).keys() == {
        "stats/notes.txt",
        "data.tar",
        "shards/a/keep.txt",
        "shards/b/part-00004-000.parquet",
    }
    assert not (out / "_staging").exists()
    assert not (out / "rejects").exists() and not (out / "filters").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        ("{not json", "is not JSON"),
        ('{"shards": []}', "not a vl2prep manifest"),
        ('{"vl2prep_manifest": 2, "shards": [{"path": "../in/text.jsonl", "bytes": 3}], "rejects": []}',
         "not a file vl2prep writes"),
        ('{"vl2prep_manifest": 2, "shards": [{"path": "/etc/passwd", "bytes": 3}], "rejects": []}',
         "not a file vl2prep writes"),
    ],
)  # fmt: skip
def test_a_manifest_that_is_not_vl2prep_s_stops_the_job_untouched(tmp_path, manifest, message):
    config = text_job(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(manifest)
    (out / "shards").mkdir()
    (out / "shards" / "x.parquet").write_bytes(b"x")
    before = tree(tmp_path)
    for overwrite in (False, True):
        with pytest.raises(pretokenize.OutputError, match=message):
            run_job(config, overwrite=overwrite)
    assert tree(tmp_path) == before  # nothing removed, no staging, no lease left behind


@pytest.mark.timeout(60)
def test_foreign_staging_and_unlisted_files_stop_the_job_untouched(tmp_path):
    config = text_job(tmp_path)
    out = tmp_path / "out"
    (out / "_staging").mkdir(parents=True)
    (out / "_staging" / "mine.txt").write_text("a user's folder of that name")
    before = tree(tmp_path)
    with pytest.raises(pretokenize.OutputError, match="_staging was not made by vl2prep"):
        run_job(config, overwrite=True)
    assert tree(tmp_path) == before

    (out / "_staging" / "mine.txt").unlink()
    (out / "_staging").rmdir()
    (out / "rejects").mkdir()
    (out / "rejects" / "part-00000-000.parquet").write_bytes(b"someone else's, named as vl2prep names")
    before = tree(tmp_path)
    with pytest.raises(pretokenize.OutputError, match=r"rejects/part-00000-000\.parquet was not written by"):
        run_job(config)
    assert tree(tmp_path) == before and not (out / "_staging").exists()


def test_listed_file_problems_are_said(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    manifest = fake_output(out, config_sha256="same")
    folder = shards.OutputDir(str(out))
    assert pretokenize._listed_file_problem(folder, manifest) is None
    (out / "rejects" / "part-00000.parquet").write_bytes(b"longer than it was")
    assert pretokenize._listed_file_problem(folder, manifest) == (
        "rejects/part-00000.parquet has 18 bytes where manifest.json lists 26"
    )
    (out / "shards" / "a" / "part-00001.parquet").unlink()
    assert pretokenize._listed_file_problem(folder, manifest) == (
        "shards/a/part-00001.parquet, listed in manifest.json, is missing"
    )


@pytest.mark.timeout(300)
def test_reruns_are_honest_and_overwrite_keeps_what_is_not_the_job_s(ray_session, tmp_path):
    config = text_job(tmp_path)
    out = tmp_path / "out"
    assert run_job(config)[0] == 0
    first = tree(out)
    assert "_lease.json" not in first and not (out / "_staging").exists()

    # A deleted shard: the rerun says so and writes the same output again.
    (out / "stats").mkdir()
    (out / "stats" / "notes.txt").write_text("mine")
    (out / "shards" / "t" / "part-00000-000.parquet").unlink()
    code, printed = run_job(config)
    assert code == 0
    assert "shards/t/part-00000-000.parquet, listed in manifest.json, is missing" in printed
    assert "complete" not in printed.replace("incomplete", "")
    assert tree(out) == {**first, "stats/notes.txt": hashlib.sha256(b"mine").hexdigest()}
    code, printed = run_job(config)
    assert code == 0 and "complete (manifest.json present)" in printed

    # Another config with --overwrite: the user's file survives, the old shards are gone.
    config.write_text(config.read_text().replace("stats: false", "stats: false, compression: snappy"))
    assert run_job(config)[0] == 2
    code, printed = run_job(config, overwrite=True)
    assert code == 0 and "removed the previous output (3 files)" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["output"]["compression"] == "snappy"
    listed = {e["path"] for e in manifest["shards"] + manifest["rejects"]}
    assert set(tree(out)) == listed | {"manifest.json", "stats/notes.txt"}
    assert (tmp_path / "in" / "text.jsonl").read_bytes() == TEXT.read_bytes()


# ------------------------------------------------------------------------------------------------
# the lease


def lease_record(**fields) -> bytes:
    record = {"vl2prep_lease": 1, "id": "f" * 32, "host": "elsewhere", "machine": None, "pid": 1,
              "process_start": None, "started": time.time(), "heartbeat": time.time(), **fields}  # fmt: skip
    return json.dumps(record).encode()


@pytest.mark.timeout(60)
def test_a_second_job_fails_at_once_naming_the_owner(tmp_path):
    out = shards.OutputDir(str(tmp_path / "out"))
    with shards.OutputLease(out) as first:
        assert first.took_over is None
        record = json.loads((tmp_path / "out" / shards.LEASE).read_bytes())
        assert record["pid"] == os.getpid() and record["host"] and len(record["id"]) == 32
        with pytest.raises(shards.LeaseHeld) as held:
            shards.OutputLease(out).acquire()
        message = str(held.value)
        assert f"pid {os.getpid()}" in message and record["id"][:8] in message
        assert "stale" in message and "120 s after its last heartbeat" in message
        first.check()  # still this job's
    assert not (tmp_path / "out" / shards.LEASE).exists()


@pytest.mark.timeout(60)
def test_the_job_and_the_command_refuse_a_held_folder(tmp_path, capsys):
    config = text_job(tmp_path)
    with shards.OutputLease(shards.OutputDir(str(tmp_path / "out"))):
        with pytest.raises(shards.LeaseHeld):
            run_job(config)
        assert cli.main(["pretokenize", str(config)]) == 3
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "is in use by the job of host" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "_staging").exists()


@pytest.mark.timeout(60)
def test_a_stale_lease_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / shards.LEASE).write_bytes(lease_record(heartbeat=time.time() - 1000))
    with shards.OutputLease(shards.OutputDir(str(folder))) as lease:
        assert "last heartbeat was 1000 s ago" in lease.took_over
        assert json.loads((folder / shards.LEASE).read_bytes())["id"] == lease.owner["id"]
    assert list(folder.iterdir()) == []


@pytest.mark.timeout(60)
def test_the_lease_of_a_process_that_ended_is_stale(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                           text=True, check=True)  # fmt: skip
    folder = tmp_path / "out"
    folder.mkdir()
    probe = shards.OutputLease(shards.OutputDir(str(folder)))
    if probe.owner["machine"] is None:
        pytest.skip("no /proc: a process is known gone only by its heartbeat here")
    mine = {"host": probe.owner["host"], "machine": probe.owner["machine"]}
    (folder / shards.LEASE).write_bytes(lease_record(pid=int(ended.stdout), **mine))
    with probe:
        assert f"its process {int(ended.stdout)} on {mine['host']} is no longer running" in probe.took_over
    # A live process on this machine holds its lease.
    (folder / shards.LEASE).write_bytes(lease_record(pid=os.getppid(), **mine))
    with pytest.raises(shards.LeaseHeld):
        shards.OutputLease(shards.OutputDir(str(folder))).acquire()


@pytest.mark.timeout(60)
def test_a_lease_changed_while_being_taken_over_is_put_back(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    fresh = lease_record(id="a" * 32)
    (folder / shards.LEASE).write_bytes(fresh)
    lease = shards.OutputLease(shards.OutputDir(str(folder)))
    with pytest.raises(shards.LeaseHeld, match="id aaaaaaaa"):
        lease._take_over(lease_record(heartbeat=0))  # judged stale from bytes that are no longer there
    assert (folder / shards.LEASE).read_bytes() == fresh and len(list(folder.iterdir())) == 1


@pytest.mark.timeout(60)
def test_the_lease_is_released_after_an_error(tmp_path, monkeypatch):
    config = text_job(tmp_path)

    def broken(*args):
        raise RuntimeError("a failure in the middle of the job")

    monkeypatch.setattr(pretokenize._Job, "_start_ray", broken)
    with pytest.raises(RuntimeError, match="middle of the job"):
        run_job(config)
    assert not (tmp_path / "out" / shards.LEASE).exists()
    assert (tmp_path / "out" / "_staging" / "job.json").exists()  # kept: a rerun resumes


@pytest.mark.timeout(60)
@pytest.mark.parametrize("exclusive_create", [True, False])
def test_heartbeats_are_renewed_and_a_lost_lease_stops_the_commit(tmp_path, exclusive_create):
    ticks = iter(range(1_000_000))
    clock = threading.Lock()

    def now() -> float:
        with clock:
            return 1e9 + next(ticks)

    folder = shards.OutputDir(str(tmp_path / "out"))
    path = tmp_path / "out" / shards.LEASE

    def lease(renew_every: float) -> shards.OutputLease:
        return shards.OutputLease(
            folder, renew_every=renew_every, settle=0, exclusive_create=exclusive_create, clock=now
        )

    with lease(renew_every=0.001) as beating:
        first = json.loads(path.read_bytes())["heartbeat"]
        assert beating.renewed.wait(30), "the heartbeat thread renewed nothing"
        assert json.loads(path.read_bytes())["heartbeat"] > first
        with pytest.raises(shards.LeaseHeld):
            lease(renew_every=3600).acquire()
    assert not path.exists()

    with lease(renew_every=3600) as quiet:  # no renewal of its own during the takeover below
        taken = tmp_path / "taken"
        taken.write_bytes(lease_record(id="b" * 32, heartbeat=now()))
        os.replace(taken, path)  # another job's takeover: a new file in its place
        with pytest.raises(shards.LeaseLost, match="id bbbbbbbb"):
            quiet.check()
    assert json.loads(path.read_bytes())["id"] == "b" * 32  # not the job's to remove


@pytest.mark.timeout(60)
def test_an_unreadable_lease_is_held_while_fresh_and_stale_when_old(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / shards.LEASE).write_bytes(b"")  # a lease being written, or not vl2prep's
    with pytest.raises(shards.LeaseHeld, match="an unknown job"):
        shards.OutputLease(shards.OutputDir(str(folder))).acquire()
    os.utime(folder / shards.LEASE, (time.time() - 1000, time.time() - 1000))
    with shards.OutputLease(shards.OutputDir(str(folder))) as lease:
        assert "the stale lease of an unknown job: its file is unreadable" in lease.took_over

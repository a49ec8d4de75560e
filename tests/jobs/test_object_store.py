"""The pretokenize job writing to an object store: `s3://` end to end against a local S3-compatible server
(moto, started by the test on a free loopback port), the same bytes as a local run, then `verify` on the
bucket. The job runs as a user runs it, `vl2prep pretokenize` in its own process with its own embedded
Ray, with the endpoint and credentials in the environment."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from tests.jobs.test_pretokenize import caption_corpus, file_hashes, run_job

REPO = Path(__file__).resolve().parents[2]
VL2PREP = str(Path(sys.executable).with_name("vl2prep"))


@pytest.fixture
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3_environment(endpoint: str) -> dict[str, str]:
    return {
        "AWS_ACCESS_KEY_ID": "vl2prep-test",
        "AWS_SECRET_ACCESS_KEY": "vl2prep-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }


def bucket_hashes(fs: pafs.FileSystem, root: str) -> dict[str, str]:
    import hashlib

    found = {}
    for info in fs.get_file_info(pafs.FileSelector(root, recursive=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as stream:
                found[info.path.removeprefix(root + "/")] = hashlib.sha256(stream.read()).hexdigest()
    return found


@pytest.mark.timeout(420)
def test_s3_output_end_to_end(ray_session, s3_endpoint, tmp_path):
    environment = s3_environment(s3_endpoint)
    fs = pafs.S3FileSystem(
        access_key="vl2prep-test",
        secret_key="vl2prep-test",
        region="us-east-1",
        endpoint_override=s3_endpoint,
        allow_bucket_creation=True,
    )
    fs.create_dir("corpora")

    local = caption_corpus(tmp_path / "local", files=3, per_file=6)
    assert run_job(local)[0] == 0
    remote = caption_corpus(tmp_path / "remote", files=3, per_file=6)
    remote.write_text(remote.read_text().replace("dir: out", "dir: s3://corpora/run-1"))
    env = {**os.environ, **environment, "RAY_ADDRESS": ""}

    def vl2prep(*arguments: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [VL2PREP, *arguments], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=360
        )

    job = vl2prep("pretokenize", str(remote))
    assert job.returncode == 0, job.stdout + job.stderr
    assert "manifest.json written" in job.stdout

    written = bucket_hashes(fs, "corpora/run-1")
    reference = file_hashes(tmp_path / "local" / "out")
    data = {path for path in reference if path.startswith(("shards/", "rejects/"))}
    assert data and {path: written[path] for path in data} == {path: reference[path] for path in data}
    assert "manifest.json" in written and "_lease.json" not in written
    assert not any(path.startswith("_staging/") for path in written)
    assert "stats/stats.json" in written, job.stdout + job.stderr

    verify = vl2prep("verify", "s3://corpora/run-1")
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # A rerun finds the output complete and writes nothing.
    again = vl2prep("pretokenize", str(remote))
    assert again.returncode == 0 and "complete (manifest.json present)" in again.stdout
    assert bucket_hashes(fs, "corpora/run-1") == written

"""The pretokenize job on a two-node Ray cluster, submitted with `ray job submit`: both nodes write final
shards, and the output is byte for byte the output of an embedded run.

The cluster is the test's own: a head and a second raylet started with `ray start` on loopback, each with
its own temp dir, free ports chosen at run time, token authentication with a token made for the test, and a
home folder of its own. Its processes are stopped by their ids at the end (never the ray CLI's stop command,
which would stop every Ray on the machine). Both nodes see the same disk here, so the config says
`output.shared: true`;
without it the job refuses a local output on a multi-node cluster (`test_local_output_on_many_nodes...`).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.jobs.test_pretokenize import caption_corpus, file_hashes, run_job, without_report
from tests.test_readme import free_port, stop_cluster

RAY = str(Path(sys.executable).with_name("ray"))


def cluster_environment(temp_dir: Path) -> dict[str, str]:
    home = temp_dir / "home"
    home.mkdir()
    token = temp_dir / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        HOME=str(home),
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token),
        RAY_USAGE_STATS_ENABLED="0",
        PATH=f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
    )
    return env


def ray_start(arguments: list[str], env: dict[str, str]) -> None:
    started = subprocess.run([RAY, "start", *arguments], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout + started.stderr


@pytest.mark.timeout(600)
def test_two_node_cluster_writes_the_bytes_of_an_embedded_run(ray_session, tmp_path):
    corpus = caption_corpus(tmp_path / "cluster", files=8, per_file=6)
    text = corpus.read_text().replace("output: {dir: out,", "output: {dir: out, shared: true,")
    corpus.write_text(text.replace("ray: {num_cpus: 2}\n", ""))
    embedded = caption_corpus(tmp_path / "embedded", files=8, per_file=6)
    embedded.write_text(corpus.read_text())
    assert run_job(embedded)[0] == 0

    temp_dir = Path(tempfile.mkdtemp(prefix="vl2prep-2n-"))  # short: Ray's unix socket paths are limited
    env = cluster_environment(temp_dir)
    port, dashboard = free_port(), free_port()
    try:
        ray_start(
            [
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={dashboard}",
                f"--ray-client-server-port={free_port()}",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={temp_dir / 'head'}",
                "--num-cpus=1",
            ],
            env,
        )
        ray_start(
            [
                f"--address=127.0.0.1:{port}",
                "--node-ip-address=127.0.0.1",
                f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={temp_dir / 'second'}",
                "--num-cpus=1",
            ],
            env,
        )
        job = subprocess.run(
            [
                RAY, "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--",
                sys.executable, "-m", "jobs.cli", "pretokenize", str(corpus),
            ],
            cwd=corpus.parent, env=env, capture_output=True, text=True, timeout=480,
        )  # fmt: skip
    finally:
        stop_cluster(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
    logs = job.stdout + job.stderr
    assert job.returncode == 0 and "manifest.json written" in logs, logs[-4000:]
    spread = re.search(r"input files written per Ray node: (.*)", logs)
    assert spread, logs[-4000:]
    counts = [int(part.rsplit(" ", 1)[1]) for part in spread.group(1).split(", ")]
    assert len(counts) == 2 and sum(counts) == 8 and min(counts) >= 1

    cluster, embedded = (
        without_report(file_hashes(tmp_path / name / "out")) for name in ("cluster", "embedded")
    )
    assert cluster == embedded

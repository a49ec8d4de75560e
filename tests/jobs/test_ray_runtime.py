"""Starting and stopping Ray for the jobs (`jobs.ray_runtime`): the embedded Ray refuses processes without its
token and leaves no files behind, an unreachable cluster fails in bounded time with one line, and the
cluster path keeps the environment a multi-node cluster needs.

Every Ray here runs in a subprocess with no RAY_* variables and its own HOME, so that the test process stays
clean and no token of the machine's user is found or written.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

from jobs.ray_runtime import RayStartError, ray_environment, remove_stale_session_dirs

REPO = Path(__file__).resolve().parents[2]

# The embedded Ray as the jobs start it (`ray` imported before `start_ray`), waiting for a line on stdin and
# then exiting without calling stop_ray: the exit hook must clean up.
EMBEDDED_DRIVER = """
import faulthandler, json, os, sys
faulthandler.dump_traceback_later(150, exit=True)  # a hang ends with the stack in the log
import ray
from jobs.ray_runtime import start_ray
start_ray(num_cpus=1, object_store_memory=80 * 2**20)
print(json.dumps({
    "gcs": ray.get_runtime_context().gcs_address,
    "folder": os.path.dirname(os.environ["RAY_AUTH_TOKEN_PATH"]),
    "task": ray.get(ray.remote(lambda: 7).remote()),
}), flush=True)
sys.stdin.readline()
"""

# A local process that knows the GCS address (it is readable from Ray's session folder) but not the token.
ATTACKER = """
import sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
ray.get(ray.remote(lambda: open(sys.argv[2], "w").write("ran")).remote(), timeout=60)
"""

# vl2prep's own cluster path with a token that is not the cluster's: refused, with one line naming the fix.
JOINER = """
import sys
from jobs.ray_runtime import RayStartError, start_ray
try:
    start_ray(sys.argv[1])
except RayStartError as error:
    sys.exit(str(error))
import ray
ray.get(ray.remote(lambda: open(sys.argv[2], "w").write("ran")).remote(), timeout=60)
"""


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    return {**env, "PYTHONPATH": str(REPO), "HOME": str(home), **extra}


@pytest.mark.timeout(240)
def test_embedded_ray_refuses_processes_without_its_token_and_removes_its_folder_at_exit(tmp_path):
    log = tmp_path / "driver.log"
    with log.open("w") as stderr:
        driver = subprocess.Popen(
            [sys.executable, "-c", EMBEDDED_DRIVER], cwd=REPO, env=clean_env(tmp_path),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True,
        )  # fmt: skip
    try:
        line = driver.stdout.readline()
        assert line, log.read_text()[-3000:]
        started = json.loads(line)
        assert started["task"] == 7
        assert started["gcs"].startswith("127.0.0.1:")
        folder = Path(started["folder"])
        assert any(name.startswith("session_") for name in os.listdir(folder / "ray"))

        # Both attachers keep 127.0.0.1 as the address (without the variable Ray would rewrite it to the
        # machine's address, where nothing listens, and the test would pass for the wrong reason).
        refused = f"could not join the Ray cluster at {started['gcs']}: it refused this job's token"
        attachers = {
            "ray-init-without-token": (ATTACKER, {}, "InvalidAuthToken"),  # Ray's default: no token
            "start-ray-wrong-token": (
                JOINER,
                {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)},
                refused,
            ),
        }
        running = {}
        for name, (script, settings, expected) in attachers.items():
            env = clean_env(tmp_path, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", **settings)
            process = subprocess.Popen(
                [sys.executable, "-c", script, started["gcs"], str(tmp_path / f"ran-{name}")], cwd=REPO,
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            running[name] = (process, expected)
        for name, (process, expected) in running.items():
            try:
                _, err = process.communicate(timeout=120)
            finally:
                process.kill()
            assert process.returncode != 0, f"{name}: the attacher connected"
            assert not (tmp_path / f"ran-{name}").exists(), f"{name}: the attacher ran a task"
            assert expected in err, f"{name}: refused for another reason:\n{err[-2000:]}"
    finally:
        if driver.poll() is None:
            driver.communicate(input="\n", timeout=120)
    assert driver.returncode == 0, log.read_text()[-3000:]
    assert not folder.exists(), "the exit hook left the session folder"
    assert not (tmp_path / "home" / ".ray").exists(), "the token was written to the user's home"


STOP_DRIVER = """
import faulthandler, json, os, stat
faulthandler.dump_traceback_later(120, exit=True)  # a hang ends with the stack in the output
import ray
from jobs.ray_runtime import ray_scope, start_ray, stop_ray
MANAGED = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
with ray_scope():  # a job's scope: the Ray started inside is stopped at its end
    assert start_ray(num_cpus=1, object_store_memory=80 * 2**20)
    folder = os.path.dirname(os.environ["RAY_AUTH_TOKEN_PATH"])
    environment_during_run = {key: os.environ.get(key) for key in MANAGED}
    with ray_scope():  # an inner scope finds Ray running and must leave it running
        assert not start_ray()
    report = {
        "mode": stat.S_IMODE(os.stat(folder).st_mode),
        "sessions": [name for name in os.listdir(os.path.join(folder, "ray")) if name.startswith("session_")],
        "task_after_nested": ray.get(ray.remote(lambda: 7).remote()),
        "environment_during_run": environment_during_run,
    }
stop_ray()  # a second stop does nothing
report["exists_after_stop"] = os.path.exists(folder)
report["initialized_after_stop"] = ray.is_initialized()
report["environment_after_stop"] = {key: os.environ.get(key) for key in MANAGED}
print(json.dumps(report))
"""


@pytest.mark.timeout(200)
def test_the_job_scope_removes_the_private_session_folder_and_gives_the_environment_back(tmp_path):
    # A TMPDIR this long would put Ray's Unix sockets past the 107-byte limit: the folder goes elsewhere.
    long_tmp = tmp_path / ("t" * 64)
    long_tmp.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", STOP_DRIVER], cwd=REPO,
        env=clean_env(tmp_path, TMPDIR=str(long_tmp), RAY_AUTH_TOKEN="the-user's", RAY_AUTH_TOKEN_PATH="/t"),
        capture_output=True, text=True, timeout=170,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["mode"] == 0o700
    assert report["sessions"]
    assert report["task_after_nested"] == 7
    assert report["exists_after_stop"] is False
    assert report["initialized_after_stop"] is False
    during = report["environment_during_run"]
    assert during["RAY_AUTH_MODE"] == "token"
    assert during["RAY_AUTH_TOKEN"] is None
    assert during["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert during["RAY_AUTH_TOKEN_PATH"] != "/t"
    assert report["environment_after_stop"] == {
        "RAY_AUTH_MODE": None,
        "RAY_AUTH_TOKEN": "the-user's",
        "RAY_AUTH_TOKEN_PATH": "/t",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": None,
    }


UNREACHABLE = """
import json, os
import jobs.pretokenize, ray
from ray._private import ray_constants
from jobs.ray_runtime import RayStartError, start_ray
try:
    start_ray("127.0.0.1:1", connect_timeout_s=2)
except RayStartError as error:
    print(json.dumps({
        "message": str(error),
        "variable": os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"),
        "cluster_enabled": ray_constants.ENABLE_RAY_CLUSTER,
        "initialized": ray.is_initialized(),
        "chained": [repr(e) for e in (error.__cause__, error.__context__) if e is not None],
    }))
"""


@pytest.mark.timeout(120)
def test_unreachable_address_fails_within_the_timeout_with_one_line(tmp_path):
    # Before, ray.init retried this address forever: the subprocess timeout is the bound.
    result = subprocess.run(
        [sys.executable, "-c", UNREACHABLE], cwd=REPO, env=clean_env(tmp_path, RAY_AUTH_MODE="token"),
        capture_output=True, text=True, timeout=90,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "\n" not in report["message"]
    assert report["message"].startswith("no Ray cluster answers at 127.0.0.1:1")
    assert "after 2 s" in report["message"]
    assert not report["initialized"]
    assert report["chained"] == []  # a chained OSError would read as a storage failure to the CLI
    # Joining a cluster leaves RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER alone: neither importing `jobs` nor the
    # cluster path sets it.
    assert report["variable"] is None
    assert report["cluster_enabled"] is True


@pytest.mark.parametrize(
    ("address", "environ"),
    [
        ("auto", {"RAY_AUTH_MODE": "token"}),
        ("10.1.2.3:6379", {"RAY_AUTH_MODE": "token"}),
        (None, {"RAY_ADDRESS": "10.1.2.3:6379", "RAY_AUTH_MODE": "Token"}),
        ("ray://10.1.2.3:10001", {"RAY_AUTH_MODE": "token", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1"}),
    ],
)
def test_joining_a_cluster_changes_no_environment(address, environ):
    assert ray_environment(address, environ) == {}


@pytest.mark.parametrize("address", ["auto", "10.1.2.3:6379", None])
@pytest.mark.parametrize("mode", [{"RAY_AUTH_MODE": " Off "}, {"RAY_AUTH_MODE": ""}, {}])
def test_joining_a_cluster_without_token_authentication_is_refused(address, mode):
    environ = {**mode, "RAY_ADDRESS": "10.1.2.3:6379"}
    with pytest.raises(RayStartError, match="RAY_AUTH_MODE=token") as raised:
        ray_environment(address, environ)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("address", "environ"),
    [
        (None, {"RAY_AUTH_MODE": "off", "RAY_AUTH_TOKEN": "not-ours", "RAY_ADDRESS": ""}),
        ("local", {"RAY_ADDRESS": "10.1.2.3:6379"}),
    ],
)
def test_embedded_ray_gets_token_authentication_and_loopback(address, environ):
    assert ray_environment(address, environ, "/private/auth_token") == {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": None,
        "RAY_AUTH_TOKEN_PATH": "/private/auth_token",
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    }


def test_stale_session_folders_of_killed_runs_are_removed_and_live_ones_kept(tmp_path):
    folders = {name: tmp_path / name for name in ("vl2prep-ray-dead", "vl2prep-ray-live", "vl2prep-ray-new")}
    for folder in folders.values():
        (folder / "ray" / "session_x").mkdir(parents=True)
    (folders["vl2prep-ray-dead"] / "lock").write_text("")  # its run was killed: nobody holds the lock
    (folders["vl2prep-ray-live"] / "lock").write_text("")
    other = tmp_path / "someone-else"
    other.mkdir()
    (other / "lock").write_text("")
    with open(folders["vl2prep-ray-live"] / "lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # a running job (a separate open file, as another process's)
        removed = remove_stale_session_dirs(str(tmp_path))
    assert removed == [str(folders["vl2prep-ray-dead"])]
    assert not folders["vl2prep-ray-dead"].exists()
    assert folders["vl2prep-ray-live"].exists()
    assert folders["vl2prep-ray-new"].exists()  # being set up: no lock yet
    assert other.exists()


STRAGGLER_DRIVER = """
import os, sys, time
from jobs.ray_runtime import start_ray
start_ray(num_cpus=1, object_store_memory=80 * 2**20)
import ray

@ray.remote
def keep_writing(path):
    while True:  # a task that would go on writing into an output after its driver is killed
        with open(path, "a") as out:
            out.write("x")
        time.sleep(0.05)

keep_writing.remote(sys.argv[1])
print(os.path.dirname(os.environ["RAY_AUTH_TOKEN_PATH"]), flush=True)
time.sleep(600)
"""


@pytest.mark.timeout(240)
def test_the_workers_of_a_killed_run_are_stopped_with_its_folder(tmp_path):
    import signal
    import time

    from jobs.ray_runtime import reap_stale_sessions

    written = tmp_path / "written"
    env = clean_env(tmp_path)
    driver = subprocess.Popen(
        [sys.executable, "-c", STRAGGLER_DRIVER, str(written)], cwd=REPO, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        folder = Path(driver.stdout.readline().strip())
        deadline = time.monotonic() + 120
        while not (written.exists() and written.stat().st_size > 3) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert written.exists(), "the task never ran"
    finally:
        os.killpg(driver.pid, signal.SIGKILL)  # the driver, its GCS and raylet; the worker has its own group
        driver.wait(timeout=60)
    size = written.stat().st_size
    time.sleep(1.5)
    assert written.stat().st_size > size, "no straggler: the worker died with its driver"
    assert str(folder) in reap_stale_sessions()
    size = written.stat().st_size
    time.sleep(1.5)
    assert written.stat().st_size == size, "the killed run's worker still writes"
    assert not folder.exists()

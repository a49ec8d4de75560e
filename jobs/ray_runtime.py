"""Starting and stopping Ray for vl2prep's jobs: an embedded local Ray by default, a cluster when asked.

Embedded (no address in the config, or `local`, and no `RAY_ADDRESS` in the environment): a Ray of this
process alone, `ray.init(address="local")` so that a cluster `ray start` left running on the machine is
never joined by accident. It listens only on 127.0.0.1, runs no dashboard and requires token
authentication: loopback does not protect a shared machine, since any local user can read the GCS port
from Ray's session folder and, without a token, run code as the job's user. The token is fresh for each
run and lives with the session files in a private folder (mode 0700) made for the run, which
`stop_ray()` (or, at the latest, interpreter exit) removes, so nothing accumulates in `/tmp/ray` and
nothing is written to `~/.ray`. Ray makes every folder it creates world-writable (mode 0777), so its
temp dir is a subfolder of the private one, which no other user can enter. A run killed before it could
clean up (SIGKILL) leaves its folder behind; the next embedded start removes the folders of this user
whose lock no live run holds.

Cluster (`ray.address: auto` or an address, or `RAY_ADDRESS`, which `ray job submit` sets): the
environment is left as it is, but it must ask for token authentication (`RAY_AUTH_MODE=token`, as every
node of the cluster and the submitting side do): a cluster without tokens runs code for anyone who reaches
it, and vl2prep never joins one. The address must answer within `connect_timeout_s`; Ray itself would
retry forever.

Every failure to start or join Ray is a `RayStartError` whose text is one line naming what to change.

Ray reads `RAY_AUTH_MODE` and `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` when it is imported (checked on Ray
2.60). `start_ray` sets the environment first and imports `ray` after; where the caller imported `ray`
earlier, it makes the imported module read the two again (`_sync_imported_ray`).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import glob
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from typing import NamedTuple

CONNECT_TIMEOUT_S = 30.0
"""How long a cluster address may take to accept a connection before the job gives up."""

# AF_UNIX paths hold at most 107 bytes on Linux. Ray puts its sockets at
# <private folder>/ray/session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store: 68 bytes after the
# private folder with a 7-digit pid (measured on Ray 2.60), kept with a margin here.
_AF_UNIX_MAX_BYTES = 107
_SOCKET_TAIL_BYTES = 76
_SESSION_PREFIX = "vl2prep-ray-"
_SESSION_NAME_BYTES = len(_SESSION_PREFIX) + 8  # mkdtemp appends 8 random characters
_LOCK_NAME = "lock"  # held (flock) by the run that owns the folder, released by the kernel when it dies


class RayStartError(RuntimeError):
    """Ray could not be started or joined; `str(error)` is one line that names the address or setting."""


class _Embedded(NamedTuple):
    """What `start_ray` changed to run an embedded Ray, so that `stop_ray` can undo it."""

    session_dir: str
    lock_descriptor: int
    previous_environment: dict[str, str | None]


_embedded: _Embedded | None = None
_atexit_registered = False


def is_embedded(address: str | None, environ: Mapping[str, str]) -> bool:
    """True when `address` (the config's `ray.address`) and `environ` ask for an embedded local Ray."""
    return address == "local" or (address is None and not environ.get("RAY_ADDRESS"))


def ray_environment(
    address: str | None, environ: Mapping[str, str], token_path: str | None = None
) -> dict[str, str | None]:
    """The environment variables to set (None: to remove) before Ray starts or is joined.

    Embedded: token authentication whatever `environ` says, the token read from `token_path` only
    (`RAY_AUTH_TOKEN` would take precedence over it), and `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`, without
    which Ray binds the machine's network address even when told 127.0.0.1. Cluster: nothing, since the
    cluster's nodes and the submitting side share their settings; `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`
    would make `ray start --address` refuse to join. Raises `RayStartError` for a cluster without
    `RAY_AUTH_MODE=token`.
    """
    if is_embedded(address, environ):
        if token_path is None:
            raise ValueError("an embedded Ray needs the path of its token file")
        return {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": None,
            "RAY_AUTH_TOKEN_PATH": token_path,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }
    mode = environ.get("RAY_AUTH_MODE", "").strip().lower()
    if mode != "token":
        found = f"RAY_AUTH_MODE={mode}" if mode else "RAY_AUTH_MODE is not set"
        raise RayStartError(
            f"{found}: vl2prep joins only Ray clusters with token authentication (a cluster without tokens "
            "runs code for anyone who reaches it); start every node and this job with RAY_AUTH_MODE=token "
            "and the cluster's token"
        )
    return {}


def start_ray(
    address: str | None = None,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    log_to_driver: bool = False,
) -> bool:
    """Start an embedded Ray or join a cluster, once per process (see the module docstring).
    `log_to_driver` passes the workers' output to this process's terminal (off: vl2prep prints its own
    progress).

    Returns False when Ray was already initialised in this process (it is reused as it is, and the
    caller must not stop it), True when this call started or joined it. Raises `RayStartError`.
    """
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return False
    if is_embedded(address, os.environ):
        _start_embedded(num_cpus, object_store_memory, log_to_driver)
    else:
        _join_cluster(address, connect_timeout_s, log_to_driver)
    return True


def stop_ray() -> None:
    """Shut Ray down in this process; for an embedded Ray also remove its session folder and token and
    give the environment back. Safe to call more than once; once an embedded Ray was started it also runs
    at interpreter exit (the folder of a process killed with SIGKILL goes at the next embedded start)."""
    global _embedded
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()
    if _embedded is None:
        return
    session_dir, lock_descriptor, previous = _embedded
    _embedded = None
    _apply_environment(previous)
    _sync_imported_ray()
    shutil.rmtree(session_dir, ignore_errors=True)
    os.close(lock_descriptor)
    if os.path.exists(session_dir):
        print(f"vl2prep: could not remove Ray's session folder {session_dir}", file=sys.stderr)


@contextlib.contextmanager
def ray_scope() -> Iterator[None]:
    """A block that leaves Ray as it found it: Ray that `start_ray` started or joined inside the block is
    stopped (`stop_ray`) when the block ends, however it ends; Ray already running on entry (a test session,
    a notebook, an enclosing job) is left running. Jobs start Ray only where they need it, inside."""
    running = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    try:
        yield
    finally:
        if not running and "ray" in sys.modules and sys.modules["ray"].is_initialized():
            stop_ray()


def _start_embedded(num_cpus: int | None, object_store_memory: int | None, log_to_driver: bool) -> None:
    global _embedded, _atexit_registered
    session_dir, lock_descriptor = _make_session_dir()
    token_path = os.path.join(session_dir, "auth_token")
    descriptor = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as token_file:
        token_file.write(secrets.token_hex(32))
    previous = _apply_environment(ray_environment(None, {}, token_path))
    _embedded = _Embedded(session_dir, lock_descriptor, previous)
    if not _atexit_registered:
        # Before or after Ray's own exit hook, either order works: stop_ray shuts Ray down before it removes
        # the folder, and Ray's hook does nothing once Ray is down.
        atexit.register(stop_ray)
        _atexit_registered = True
    _sync_imported_ray()
    import ray

    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            object_store_memory=object_store_memory,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            _temp_dir=os.path.join(session_dir, "ray"),
            configure_logging=False,
            log_to_driver=log_to_driver,
        )
    except Exception as error:
        stop_ray()
        raise RayStartError(f"could not start the embedded Ray: {_one_line(error)}") from error


def _join_cluster(address: str | None, connect_timeout_s: float, log_to_driver: bool) -> None:
    _apply_environment(ray_environment(address, os.environ))
    _sync_imported_ray()
    import ray

    # RAY_ADDRESS replaces a missing or `auto` address, as it does in ray.init.
    shown = (os.environ.get("RAY_ADDRESS") if address in (None, "auto") else address) or "auto"
    try:
        endpoint = _endpoint(shown)
    except (ConnectionError, ValueError) as error:
        raise RayStartError(f"no Ray cluster to join at {shown}: {_one_line(error)}") from error
    _wait_for_port(endpoint, connect_timeout_s, shown)
    try:
        ray.init(address=address, log_to_driver=log_to_driver)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as error:
        cause = error.__cause__ or error
        if "InvalidAuthToken" in str(cause):
            reason = (
                "it refused this job's token; run the job with RAY_AUTH_MODE=token and the cluster's token "
                "(~/.ray/auth_token, RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN)"
            )
        else:
            reason = _one_line(cause)
        raise RayStartError(f"could not join the Ray cluster at {shown}: {reason}") from error


def _endpoint(address: str) -> tuple[str, int]:
    """The (host, port) Ray will connect to for `address`, resolved as Ray resolves it (`auto` reads the
    cluster that `ray start` recorded; a loopback host can become the node's address)."""
    from ray._private import services

    if address.startswith("ray://"):
        hostport = address.removeprefix("ray://")
    else:
        hostport = services.canonicalize_bootstrap_address(address)
    host, separator, port = hostport.rpartition(":")
    if not separator or not port.isdigit():
        raise ValueError(f"not host:port: {hostport!r}")
    return host.strip("[]"), int(port)


def _wait_for_port(endpoint: tuple[str, int], timeout_s: float, shown: str) -> None:
    """Return once `endpoint` accepts a TCP connection (a cluster may still be starting); raise
    `RayStartError` when it has not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection(endpoint, timeout=max(0.1, min(remaining, 5.0))):
                return
        except OSError as error:
            failure = error.strerror or str(error)
        if time.monotonic() >= deadline:
            break
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    host, port = endpoint
    reached = "" if shown.endswith(f"{host}:{port}") else f" ({host}:{port})"
    # Raised outside the handler, so that no OSError hangs in the chain: code that looks for one among the
    # causes (the CLI's exit codes) would take it for a storage failure. The message says what failed.
    raise RayStartError(
        f"no Ray cluster answers at {shown}{reached} after {timeout_s:g} s ({failure}); "
        "check ray.address / RAY_ADDRESS and that the cluster runs"
    )


def _session_base() -> str:
    """The folder that holds the embedded Ray's session folders."""
    base = tempfile.gettempdir()
    if len(os.fsencode(base)) + 1 + _SESSION_NAME_BYTES + _SOCKET_TAIL_BYTES > _AF_UNIX_MAX_BYTES:
        base = "/tmp"  # a long TMPDIR (a test's folder) would make Ray's socket paths too long
    return base


def reap_stale_sessions() -> list[str]:
    """Stop what embedded runs of this user that died without `stop_ray` left behind (their Ray's GCS,
    raylet and workers outlive a killed driver by seconds, and a worker may still write into an output)
    and remove their folders; returns the folders removed. The pretokenize job calls it when it takes
    over the lease of a dead job, so that no straggler of that job writes beside it."""
    return remove_stale_session_dirs(_session_base())


def _make_session_dir() -> tuple[str, int]:
    """A fresh folder (mode 0700) for Ray's session files, short enough for Ray's Unix sockets, and the
    descriptor of its lock, held until `stop_ray`. Stale folders of killed runs are removed first."""
    base = _session_base()
    remove_stale_session_dirs(base)
    session_dir = tempfile.mkdtemp(prefix=_SESSION_PREFIX, dir=base)
    # Locked before it gets its final name, so that no sweep ever finds this folder's lock free.
    pending = os.path.join(session_dir, _LOCK_NAME + ".new")
    descriptor = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.rename(pending, os.path.join(session_dir, _LOCK_NAME))
    return session_dir, descriptor


def remove_stale_session_dirs(base: str) -> list[str]:
    """Remove the session folders in `base` left by embedded runs that died without `stop_ray` (their
    lock is free), after stopping the processes still running for them (`_kill_session`); folders in use,
    of other users or not yet set up are left alone. Returns the removed."""
    removed = []
    for folder in sorted(glob.glob(os.path.join(glob.escape(base), _SESSION_PREFIX + "*"))):
        try:
            descriptor = os.open(os.path.join(folder, _LOCK_NAME), os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live run holds it
        else:
            _kill_session(folder)
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
        finally:
            os.close(descriptor)
    return removed


def _kill_session(folder: str, wait_s: float = 10.0) -> None:
    """SIGKILL the processes of this user that belong to the Ray session in `folder` and wait (at most
    `wait_s`) until they are gone. Linux only (/proc); elsewhere nothing is found."""
    pids = _session_processes(folder)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + wait_s
    while pids and time.monotonic() < deadline:
        pids = {pid for pid in pids if _running(pid)}
        time.sleep(0.05)


def _session_processes(folder: str) -> set[int]:
    """The processes of this user whose command line or environment names `folder` (Ray's GCS, raylet and
    agents of the session name it on their command line; its workers inherit the token's path in
    `RAY_AUTH_TOKEN_PATH`, also once their raylet is gone and they run in process groups of their own)
    and every process below them."""
    needle = os.fsencode(folder)
    parents: dict[int, int] = {}
    found: set[int] = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        pid = int(entry)
        try:
            if os.stat(f"/proc/{pid}").st_uid != os.getuid():
                continue
            with open(f"/proc/{pid}/stat", "rb") as stat_file:
                fields = stat_file.read().rsplit(b")", 1)[1].split()
            parents[pid] = int(fields[1])
            for name in ("cmdline", "environ"):
                with open(f"/proc/{pid}/{name}", "rb") as text:
                    if needle in text.read():
                        found.add(pid)
                        break
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not readable
    grew = True
    while grew:
        below = {pid for pid, parent in parents.items() if parent in found} - found
        found |= below
        grew = bool(below)
    found.discard(os.getpid())
    return found


def _running(pid: int) -> bool:
    """Whether `pid` is a process that has not exited (a zombie waiting to be reaped has)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat_file:
            return stat_file.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def _apply_environment(changes: Mapping[str, str | None]) -> dict[str, str | None]:
    """Set (or, for None, remove) the variables; returns their previous values in the same form."""
    previous = {key: os.environ.get(key) for key in changes}
    for key, value in changes.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    return previous


def _sync_imported_ray() -> None:
    """Make an already imported `ray` see the current environment: it reads the authentication mode and
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import, and caches the token it loaded."""
    if "ray" not in sys.modules:
        return
    from ray._private import ray_constants
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")  # what Ray itself does when it turns token authentication on
    AuthenticationTokenLoader.instance().reset_cache()
    ray_constants.ENABLE_RAY_CLUSTER = ray_constants.env_bool(
        ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR, not ray_constants.IS_WINDOWS_OR_OSX
    )


def _one_line(error: BaseException) -> str:
    """The last line of an error's text: Ray's messages can end with a traceback, whose last line is the
    error that counts."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__


def pool_resources() -> tuple[int, float]:
    """(most actors in a pool, CPUs per actor) for the cluster Ray runs on.

    A pool must never take every CPU: read tasks would find none and the job would hang without an
    error. So the pool holds at most every CPU but one; on a one-CPU machine its single actor asks for
    half a CPU (and tasks must ask for at most the other half, see `task_cpus`).
    """
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    if cpus >= 2:
        return int(cpus) - 1, 1.0
    return 1, cpus / 2


def task_cpus() -> float:
    """CPUs a read task asks for: one, or half of a one-CPU machine."""
    import ray

    cpus = ray.cluster_resources().get("CPU", 1.0)
    return 1.0 if cpus >= 2 else cpus / 2

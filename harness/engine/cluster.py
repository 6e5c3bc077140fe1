"""The Ray session of a driver: join a cluster or start a local one, check that the workers fit, and
leave no Ray process behind.

Why it works the way it does:
- A local cluster (no `workers.address`) listens on 127.0.0.1 only. Ray binds its servers to all
  interfaces unless the node's address is the loopback one, and ray.init turns 127.0.0.1 into the
  host's address unless Ray's "cluster mode" is off (its setting for macOS/Windows laptops); it is
  switched off for the duration of ray.init. Nothing on the network can reach the GCS, raylet,
  object manager, workers or agents of such a cluster (tests/test_cluster_security.py reads their
  listening sockets).
- Joining a cluster that refuses the connection (wrong address, head not running, token
  authentication: Ray >= 2.5x turns it on at `ray start --head` when ~/.ray/auth_token exists) is a
  one-line error that says what to do, not a traceback. The token is never sent on the user's behalf:
  an explicit address only uses it with RAY_AUTH_MODE=token, as Ray's own `ray start --address` does.
- Worker actors that do not fit in the cluster (`workers.num_gpus=1` on a machine without a GPU)
  would wait forever, silently: the cluster's resources are checked before any actor is created.
- Ray leaves processes behind: after ray.shutdown() or a killed driver its dashboard and runtime-env
  agents live on for up to a minute. For the local cluster it started, the driver ends all of its
  session's processes at shutdown (and at exit), and a small reaper process (harness/engine/reaper.py)
  does the same when the driver dies without a chance to (SIGKILL).
- Ray's per-node dashboard agent listens on one fixed HTTP port (52365) unless told otherwise, and ray.init
  does not let it be told. With a second Ray on the machine (another run, a study lane, a test), the agent
  retried that port for 3.3 s and the raylet waited for it: ray.init took 7.3 s instead of 4.2 s
  (bench/results/bench_startup.md). A local cluster asks for a free port instead (`_free_agent_port`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile

import ray

from harness.config import ConfigError, RunConfig
from harness.engine import reaper

README_SECTION = "README.md, 'Ray: one laptop or an existing cluster'"
CONNECT_TIMEOUT_S = 10.0

_session: dict = {}  # the local session this process started: {"dir": session dir, "reaper": Popen}


def init_ray(cfg: RunConfig) -> None:
    """Join cfg.workers.address, or start a local, loopback-only Ray with the CPUs the config asks for;
    then check that the config's worker actors fit in the cluster."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}}
        if cfg.workers.address:
            join_cluster(cfg.workers.address, env)
        else:
            cpus = max(int(round(cfg.workers.num_workers * cfg.workers.num_cpus)), 1)
            start_local(cpus, env)
    check_resources(cfg)


WORKER_NICENESS = "RAY_worker_niceness"


def start_local(num_cpus: int, runtime_env: dict | None = None) -> None:
    """A Ray cluster of this machine for this process: bound to 127.0.0.1, no dashboard, no process left
    when this process ends."""
    from ray._private import ray_constants  # private: the switch ray.init reads to keep 127.0.0.1

    cluster_mode = getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    ray_constants.ENABLE_RAY_CLUSTER = False
    niceness = os.environ.get(WORKER_NICENESS)
    # Ray starts its workers 15 nice levels below the driver; the actors do this run's training, so they keep
    # the driver's priority (bench/bench_compare.py measured actors at +15 getting 2.3% of a core next to two
    # busy processes at the driver's niceness, which got 36% each). RAY_worker_niceness set by the user wins.
    os.environ.setdefault(WORKER_NICENESS, "0")  # read by the raylet that ray.init starts
    try:
        # address="local": start our own Ray, never join a cluster someone else started on this machine
        with _free_agent_port():
            ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=num_cpus, num_gpus=None,
                     include_dashboard=False, runtime_env=runtime_env, log_to_driver=False, configure_logging=True,
                     logging_level=logging.WARNING)
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode
        if niceness is None:
            os.environ.pop(WORKER_NICENESS, None)
    _own_session()


@contextlib.contextmanager
def _free_agent_port():
    """While ray.init starts a local node: its dashboard agent's HTTP server binds a free port (0), not Ray's fixed
    default 52365, which a second Ray on the machine already holds (the agent then retries it for 3.3 s while the
    raylet waits). ray.init has no parameter for it; the node's parameters (ray._private.parameter.RayParams,
    private, like the cluster-mode switch) take it as `dashboard_agent_listen_port`, where 0 means any free port.
    No dashboard runs (include_dashboard=False), so nothing needs to find the agent's port."""
    from ray._private import parameter

    original = parameter.RayParams

    class RayParams(original):
        def __init__(self, *args, **kwargs):
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = RayParams
    try:
        yield
    finally:
        parameter.RayParams = original


def join_cluster(address: str, runtime_env: dict | None = None) -> None:
    """ray.init(address=...), with every refusal as one line. A port nobody listens on is found out first
    with a plain TCP connect: Ray itself keeps retrying it for minutes."""
    endpoint = _endpoint(address)
    if endpoint is not None:
        try:
            socket.create_connection(endpoint, timeout=CONNECT_TIMEOUT_S).close()
        except OSError as err:
            raise ConfigError(join_error(address, err)) from None
    try:
        with _stderr_kept_if_ok():  # a refused join: Ray's C++ client logs each retry (20-40 lines); one is enough
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - ConnectionError, AuthenticationError, ValueError, ...
        raise ConfigError(join_error(address, err)) from None


@contextlib.contextmanager
def _stderr_kept_if_ok():
    """Hold back what is written to file descriptor 2 (Ray's C++ logging included) while the block runs: it
    is written out if the block succeeds, dropped if it fails (the caller then says why, in one line)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        ok = False
        try:
            yield
            ok = True
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if ok:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                sys.stderr.flush()


def _endpoint(address: str) -> tuple[str, int] | None:
    """(host, port) of a `host:port` or `ray://host:port` address; None for `auto` and the like."""
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    host = host.strip("[]")
    return (host, int(port)) if host and port.isdigit() else None


def join_error(address: str, err: BaseException) -> str:
    cause = err.__cause__ or err
    text = f"{err}\n{cause}"
    token_mode = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    if token_mode:
        auth = ("this process uses token authentication: check that its token (RAY_AUTH_TOKEN, or the file "
                "RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token) is the head's")
    else:
        auth = ("if the cluster uses token authentication (`ray start --head` turns it on when ~/.ray/auth_token "
                "exists), set RAY_AUTH_MODE=token and give this machine the head's token (copy ~/.ray/auth_token, "
                "or set RAY_AUTH_TOKEN)")
    if any(word in text for word in ("InvalidAuthToken", "Unauthenticated", "authentication token")):
        fix = auth if token_mode else ("set RAY_AUTH_MODE=token and give this machine the head's token (copy the "
                                       "head's ~/.ray/auth_token here, or set RAY_AUTH_TOKEN)")
        why = "it refused this process's authentication token" if token_mode else "it wants an authentication token"
        return f"workers.address={address!r}: cannot join the Ray cluster: {why} (InvalidAuthToken); {fix}; " \
               f"see {README_SECTION}"
    first = str(cause).split("Traceback", 1)[0].strip(" :\n").splitlines()
    first = f"{type(cause).__name__}: {first[0][:200] if first else 'no details'}"
    return (f"workers.address={address!r}: cannot join the Ray cluster ({first}); is `ray start --head` running "
            f"there and its port reachable from here? {auth}; see {README_SECTION}")


def check_resources(cfg: RunConfig) -> None:
    """Fail at once, in one line, when the config's worker actors cannot all be placed in the cluster
    (they would wait forever). Only the cluster's totals count, not what other work holds right now."""
    w = cfg.workers
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]

    def fits(res: dict) -> int:
        counts = [int(res.get("CPU", 0.0) / w.num_cpus + 1e-9)]
        if w.num_gpus > 0:
            counts.append(int(res.get("GPU", 0.0) / w.num_gpus + 1e-9))
        return min(counts)

    placeable = sum(fits(res) for res in nodes)
    if placeable >= w.num_workers:
        return
    cpus = sum(res.get("CPU", 0.0) for res in nodes)
    gpus = sum(res.get("GPU", 0.0) for res in nodes)
    where = f"the Ray cluster at {w.address!r}" if w.address else "the local Ray cluster (this machine)"
    asked = f"workers.num_workers={w.num_workers} actors of workers.num_cpus={w.num_cpus:g}"
    asked += f" and workers.num_gpus={w.num_gpus:g}" if w.num_gpus else ""
    largest = max(nodes, key=fits, default={})
    raise ConfigError(
        f"{asked} each do not fit in {where}: it has {cpus:g} CPUs and {gpus:g} GPUs on {len(nodes)} node(s) "
        f"(largest: {largest.get('CPU', 0.0):g} CPUs, {largest.get('GPU', 0.0):g} GPUs), room for {placeable} such "
        f"actor(s); they would wait forever. Ask for less (workers.num_gpus, num_cpus, num_workers) or use a "
        f"cluster that has it")


def _own_session() -> None:
    """Remember the local session this process started and start its reaper."""
    node = getattr(ray._private.worker, "_global_node", None)
    session_dir = node.get_session_dir_path() if node is not None else None
    if not session_dir or not sys.platform.startswith("linux"):
        return
    _end_session()  # a session started earlier by this process and shut down by someone else
    proc = subprocess.Popen([sys.executable, "-I", reaper.__file__, str(os.getpid()), session_dir],
                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, close_fds=True)
    _session.update(dir=session_dir, reaper=proc)
    if not _session.get("atexit"):
        atexit.register(shutdown_ray)  # after ray.init's own: runs first, so the session ends before exit
        _session["atexit"] = True


def _end_session() -> None:
    session_dir, proc = _session.pop("dir", None), _session.pop("reaper", None)
    if session_dir:
        reaper.sweep(session_dir, grace_s=0.5)
    if proc is not None:
        try:
            proc.stdin.close()  # the reaper sweeps once more (nothing left) and exits
            proc.wait(timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            pass


def session_dir() -> str | None:
    """The session folder of the local cluster this process started (None: none, or joined a cluster)."""
    return _session.get("dir")


def shutdown_ray() -> None:
    """ray.shutdown(), and for a local cluster this process started, end whatever of it is still alive."""
    if ray.is_initialized():
        ray.shutdown()
    _end_session()

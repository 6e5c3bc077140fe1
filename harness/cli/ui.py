"""`fedharness ui`: the MLflow UI for the local store, reachable from this machine only.

It always binds 127.0.0.1: the tracking server has no authentication, so exposing it is a
decision to take outside this tool (e.g. an SSH tunnel: ssh -L 5000:127.0.0.1:5000 host).
One worker and no background job execution keep it at ~0.5 GB and a ~5 s start.

The server runs in its own process group, and `fedharness ui` ends that whole group (uvicorn's
workers included) however it is stopped: Ctrl-C, SIGTERM or SIGHUP (a closed terminal, `kill`,
a service manager); and, should `fedharness ui` itself be SIGKILLed, the kernel sends the server
SIGTERM (PR_SET_PDEATHSIG), which it passes on to its workers.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def build_command(backend_uri: str, port: int) -> list[str]:
    return [sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port), "--workers", "1",
            "--backend-store-uri", backend_uri]


def server_env() -> dict[str, str]:
    return {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def landing_page(url: str) -> str:
    """The address to open: MLflow 3's UI starts in its GenAI view (traces; "No data available" for training
    runs) unless told otherwise; workflowType=machine_learning opens the experiments' runs tables."""
    return f"{url}/#/?workflowType=machine_learning"


def wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            time.sleep(0.3)
    return False


# exec the server with PR_SET_PDEATHSIG = SIGTERM: it is told when the process that started it dies (Linux;
# set in the new process rather than with preexec_fn, which is unsafe in a process with threads)
DIE_WITH_PARENT = ("import ctypes, os, sys\ntry:\n    ctypes.CDLL(None).prctl(1, 15)\nexcept Exception:\n    pass\n"
                   "os.execv(sys.argv[1], sys.argv[1:])")


def start(backend_uri: str, port: int) -> tuple[subprocess.Popen, str]:
    if backend_uri.startswith("sqlite:///"):
        Path(backend_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    cmd = build_command(backend_uri, port)
    if sys.platform.startswith("linux"):
        cmd = [sys.executable, "-c", DIE_WITH_PARENT, *cmd]
    proc = subprocess.Popen(cmd, env=server_env(), start_new_session=True)
    return proc, f"http://{HOST}:{port}"


def _stop_signal(signum, frame) -> None:
    raise KeyboardInterrupt  # unwinds main(), whose `finally` stops the server


def stop(proc: subprocess.Popen) -> None:
    """The server runs in its own process group (uvicorn/gunicorn children included): end all of it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def main(argv: list[str] | None = None) -> int:
    from harness.tracking import tracking_uri

    p = argparse.ArgumentParser(prog="fedharness ui", description="start the MLflow UI on 127.0.0.1")
    p.add_argument("--tracking-uri", help="backend store (default sqlite:///mlruns/mlflow.db)")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    uri = tracking_uri(args.tracking_uri)
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):  # the default action would leave the server running
            signal.signal(sig, _stop_signal)
    proc, url = start(uri, args.port)
    try:
        if not wait_until_up(url, proc):
            print(f"fedharness: the MLflow server did not come up on {url} (port taken? try --port)", file=sys.stderr)
            stop(proc)
            return 1
        print(f"MLflow UI for {uri}: {landing_page(url)}  (Ctrl-C to stop)", flush=True)
        proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

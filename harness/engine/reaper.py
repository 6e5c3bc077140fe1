"""The processes of one local Ray session, and a reaper that ends them when their driver is gone.

Ray's own clean-up leaves some behind: after `ray.shutdown()` or a killed driver the dashboard agent
and the runtime-env agent notice that their raylet died, then try to report it to the (dead) GCS and
live on for up to a minute. A session's processes are found by their session folder (unique per
session: `<temp dir>/session_<time>_<pid>`): in their command line, or among their open files (the
agents and workers rename themselves, but keep their log files there open). Nothing of any other
Ray session on the machine matches.

Run as a script (`python -I reaper.py DRIVER_PID SESSION_DIR`, stdlib only, so it starts in
~30 ms): it waits until the driver exits (its stdin, a pipe from the driver, reaches EOF, or the
driver's pid is gone) and then ends every process of the session. The driver also sweeps itself
on a normal exit (harness.engine.cluster.shutdown_ray); the reaper covers SIGKILL and crashes.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import time


def _mentions(text: str, session_dir: str) -> bool:
    return text == session_dir or text.endswith("=" + session_dir) or (session_dir + "/") in text


def session_pids(session_dir: str, exclude: frozenset[int] | set[int] = frozenset()) -> list[int]:
    """Pids of the live processes that belong to a Ray session (Linux /proc)."""
    session_dir = session_dir.rstrip("/")
    found = []
    try:
        names = os.listdir("/proc")
    except OSError:
        return found
    for name in names:
        if not name.isdigit() or int(name) in exclude:
            continue
        pid = int(name)
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                args = fh.read().decode(errors="replace").split("\0")
            with open(f"/proc/{pid}/stat", "rb") as fh:
                if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                    continue  # a zombie: already dead, waiting for its parent
        except OSError:
            continue
        if any(_mentions(a, session_dir) for a in args) or _has_open(pid, session_dir):
            found.append(pid)
    return found


def _has_open(pid: int, session_dir: str) -> bool:
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(session_dir + "/"):
                return True
        except OSError:
            continue
    return False


def sweep(session_dir: str, exclude: frozenset[int] | set[int] = frozenset(), grace_s: float = 1.0,
          timeout_s: float = 15.0) -> list[int]:
    """End every process of the session: SIGTERM, then SIGKILL what is left after `grace_s`. Returns the
    pids it signalled."""
    exclude = set(exclude) | {os.getpid()}
    signalled: set[int] = set()
    deadline = time.monotonic() + timeout_s
    term_sent: dict[int, float] = {}
    while time.monotonic() < deadline:
        alive = session_pids(session_dir, exclude)
        if not alive:
            break
        now = time.monotonic()
        for pid in alive:
            sig = signal.SIGKILL if now - term_sent.setdefault(pid, now) >= grace_s else signal.SIGTERM
            try:
                os.kill(pid, sig)
                signalled.add(pid)
            except OSError:
                pass
        time.sleep(0.1)
    return sorted(signalled)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except OSError:
        return False


def main(argv: list[str]) -> int:
    driver, session_dir = int(argv[0]), argv[1]
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # live until the driver is gone, then clean up and exit
    while _alive(driver):
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        if ready and not os.read(sys.stdin.fileno(), 4096):
            break  # EOF: the driver exited (or is done with the session)
    sweep(session_dir, exclude={driver})
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

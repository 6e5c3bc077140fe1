"""Ctrl-C that is never lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be; a library
that catches broadly at that moment can swallow it, and the run carries on (seen in the test
suite: a study that received SIGINT mid-cell finished normally, about one time in two). The
command line installs `install()`: the handler still raises KeyboardInterrupt at once, and also
records the request, which the engine and the study check at every round and cell boundary.
"""

from __future__ import annotations

import signal
import threading

_requested = threading.Event()


def _handler(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt


def install() -> None:
    """Only from the main thread (signal handlers can only be set there)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def check() -> None:
    """Raise KeyboardInterrupt if a Ctrl-C arrived, even if its first exception was swallowed."""
    if _requested.is_set():
        raise KeyboardInterrupt


def reset() -> None:
    _requested.clear()

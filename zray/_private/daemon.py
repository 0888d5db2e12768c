"""What every zray daemon does at start: log to its file, stop cleanly on
SIGTERM/SIGINT, and (when started by a driver) die with its parent."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask Linux to send ``sig`` to this process when its parent exits."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def set_process_name(name: str) -> None:
    """The name ``top`` and ``ps -e`` show for this process (15 bytes kept)."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def setup_logging(path: str | None, level: str = "INFO") -> None:
    handler = logging.FileHandler(path) if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s %(levelname)s %(process)d %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def on_terminate(stop) -> None:
    """Call ``stop()`` on SIGTERM or SIGINT (the loop then exits and cleans up)."""
    def handler(signum, frame):
        logging.getLogger(__name__).info("signal %d: stopping", signum)
        stop()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def parent_watch_requested() -> bool:
    return os.environ.get("ZRAY_DIE_WITH_PARENT") == "1"

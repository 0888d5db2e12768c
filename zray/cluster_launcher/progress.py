"""A live per-host progress display for commands that work on many hosts at once.

On a terminal: one line per host, redrawn in place (step, elapsed time).
Otherwise (a pipe, a CI log): one plain line per step, ``[host] step``.
Thread-safe; hosts report from their own threads.
"""
from __future__ import annotations

import sys
import threading
import time


class Progress:
    """Per-host state lines; :meth:`step` from any thread, :meth:`close` once."""

    def __init__(self, hosts: list, roles: dict, stream=None):
        self.stream = stream or sys.stdout
        self.hosts = list(hosts)
        self.roles = roles
        self.state = {h: "waiting" for h in hosts}
        self.started = {h: time.monotonic() for h in hosts}
        self.ended: dict = {}
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.lock = threading.Lock()
        self.width = max(len(h) for h in hosts) if hosts else 0
        self.drawn = False
        self._stop = threading.Event()
        if self.live:           # keep the elapsed times moving between steps
            threading.Thread(target=self._tick, name="zray-progress", daemon=True).start()

    def _tick(self) -> None:
        while not self._stop.wait(0.5):
            with self.lock:
                if self.drawn and not self._stop.is_set():
                    self._draw()

    def step(self, host: str, text: str) -> None:
        """``host`` is now doing ``text``."""
        with self.lock:
            self.state[host] = text
            if self.live:
                self._draw()
            else:
                took = time.monotonic() - self.started[host]
                self.stream.write(f"[{host}] {took:5.1f}s {text}\n")
                self.stream.flush()

    def done(self, host: str, text: str) -> None:
        """``host`` has finished (``text``: how it ended)."""
        with self.lock:
            self.ended[host] = time.monotonic()
        self.step(host, text)

    def _line(self, host: str) -> str:
        took = self.ended.get(host, time.monotonic()) - self.started[host]
        role = self.roles.get(host, "")
        return f"  {host:<{self.width}}  {role:<6} {took:5.1f}s  {self.state[host]}"[:160]

    def _draw(self) -> None:
        if self.drawn:
            self.stream.write(f"\x1b[{len(self.hosts)}F")
        for host in self.hosts:
            self.stream.write("\x1b[2K" + self._line(host) + "\n")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        """Draw the final state (on a terminal); stops the ticking."""
        self._stop.set()
        with self.lock:
            if self.live:
                self._draw()

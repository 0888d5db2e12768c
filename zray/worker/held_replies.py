"""Held replies (an actor's side of a call batch): the results of calls that
came together in one ExecuteCalls leave together, in one CallsReturned per
caller, when the batch ends.

A caller may rely on: no result is held longer than about ``HOLD_S`` (a
helper thread sends what waits that long, so a call of the batch that
blocks — maybe until its caller has seen an earlier result — never holds
the earlier results back), and ``flush()`` sends everything held at once.
"""
from __future__ import annotations

import logging
import threading
import time

from ..broker import protocol as p

log = logging.getLogger(__name__)

#: the longest a finished call's result waits for the rest of its batch
HOLD_S = 0.001


class HeldReplies:
    def __init__(self, send, hold_s: float = HOLD_S):
        """``send(owner_address, message)``: a one-way message to a caller;
        ``hold_s``: the longest a result is held."""
        self._send = send
        self._hold_s = hold_s
        self._cond = threading.Condition(threading.Lock())
        self._held: dict = {}           # owner (a tuple) -> [(task_id, returns)]
        self._since = 0.0               # when the oldest held result came
        self._thread = None

    def hold(self, owner, task_id: bytes, returns: list) -> None:
        """Keep a result until ``flush`` (or HOLD_S)."""
        with self._cond:
            if not self._held:
                self._since = time.monotonic()
                if self._thread is None:
                    self._thread = threading.Thread(target=self._watch, daemon=True,
                                                    name="zray-held-replies")
                    self._thread.start()
                self._cond.notify()
            self._held.setdefault(tuple(owner), []).append((task_id, returns))

    def holding(self) -> bool:
        """Whether results wait (a hint: another thread may send them now)."""
        return bool(self._held)

    def flush(self) -> None:
        """Send every held result now: one message per caller."""
        if not self._held:
            return
        with self._cond:
            held, self._held = self._held, {}
        for owner, results in held.items():
            if len(results) == 1:
                message = p.TaskReturned(*results[0])
            else:
                message = p.CallsReturned([[task_id, returns] for task_id, returns in results])
            try:
                self._send(list(owner), message)
            except Exception:       # noqa: BLE001 — the caller sees its actor die instead
                log.exception("could not send the results of %d calls", len(results))

    def _watch(self) -> None:
        """(helper thread) Send what waits longer than HOLD_S."""
        cond = self._cond
        while True:
            with cond:
                while not self._held:
                    cond.wait()
                due = self._since + self._hold_s - time.monotonic()
                if due > 0:
                    cond.wait(due)
                    continue
            self.flush()

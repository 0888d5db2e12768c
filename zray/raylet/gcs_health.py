"""Whether the GCS answers this raylet's heartbeats, and saying so in the log.

The GCS answers every heartbeat. When no answer has come for
``config.node_timeout_s``, the GCS is unreachable: the raylet logs it once
with what still works, then again at a slow, growing interval while it lasts,
and once more when the GCS answers again. The raylet meanwhile keeps serving
its local drivers and workers; nothing here blocks or waits.
"""
from __future__ import annotations

import logging
import time

from ..config import config

log = logging.getLogger(__name__)

#: first interval between "still unreachable" lines; it doubles up to the cap
REMIND_FIRST_S = 30.0
REMIND_MAX_S = 600.0


class GcsHealth:
    """Track the GCS at ``address``: call ``answered()`` on each heartbeat
    reply and ``check()`` now and then (cheap; logs at most once a call)."""

    def __init__(self, address: str, clock=time.monotonic):
        self.address = address
        self._clock = clock
        self._last_answer = clock()
        self.unreachable_since: float | None = None    # clock time of the last answer
        self._next_remind = 0.0
        self._remind_every = REMIND_FIRST_S

    @property
    def reachable(self) -> bool:
        return self.unreachable_since is None

    def answered(self) -> None:
        now = self._clock()
        if self.unreachable_since is not None:
            log.warning("the GCS at %s answers again after %.0fs without it", self.address,
                        now - self.unreachable_since)
            self.unreachable_since = None
            self._remind_every = REMIND_FIRST_S
        self._last_answer = now

    def check(self) -> None:
        now = self._clock()
        silent = now - self._last_answer
        if self.unreachable_since is None:
            if silent <= config.node_timeout_s:
                return
            self.unreachable_since = self._last_answer
            self._next_remind = now + self._remind_every
            log.error(
                "the GCS at %s is unreachable: no answer to heartbeats for %.0fs. This raylet "
                "keeps serving the drivers and workers already connected to it (their tasks "
                "and objects); new drivers, new functions, actors and other nodes need the "
                "GCS. Restart the cluster (`zray stop`, then `zray start`) if it does not "
                "come back.", self.address, silent)
        elif now >= self._next_remind:
            log.error("the GCS at %s is still unreachable (for %.0fs)", self.address, silent)
            self._remind_every = min(self._remind_every * 2, REMIND_MAX_S)
            self._next_remind = now + self._remind_every

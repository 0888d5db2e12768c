"""A task this process submitted and has not seen finish (its owner's record)."""
from __future__ import annotations


def return_id(task_id: bytes, index: int) -> bytes:
    """The object id of a task's return ``index`` (1-based)."""
    return task_id + index.to_bytes(4, "big")


class PendingTask:
    """A task this process submitted and has not seen finish."""
    __slots__ = ("spec", "return_ids", "held", "retries_left", "deps", "cancelled",
                 "retry_exceptions", "submitted", "node", "lease", "queued", "via_raylet",
                 "since", "parent")

    def __init__(self, spec, return_ids, held, retry_exceptions):
        self.spec = spec
        self.return_ids = return_ids
        self.held = held                    # arg object ids counted as "submitted"
        self.retries_left = spec.max_retries
        self.deps: set = set()
        self.cancelled = False
        self.retry_exceptions = retry_exceptions
        self.submitted = False
        self.node = b""                     # where it runs, when not on our node
        self.lease = None                   # the Lease it was sent on, if any
        self.queued = False                 # it waits in the driver for a lease
        self.via_raylet = False             # a plain task sent the raylet's way
        self.since = None                   # task events: submitted then (monotonic), not
        #                                     reported yet
        self.parent = None                  # task events: the task that submitted it

    def take_retry(self, new_attempt: bool = True) -> bool:
        """Spend one retry (``max_retries`` -1: unlimited); False when none
        is left. ``new_attempt``: the spec's attempt number goes up by one
        (an actor call resent to a restarted actor keeps its attempt)."""
        if self.retries_left == 0:
            return False
        self.retries_left -= 1
        if new_attempt:
            self.spec = self.spec._replace(attempt=self.spec.attempt + 1)
        return True

"""A task this process submitted and has not seen finish (its owner's record)."""
from __future__ import annotations


class PendingTask:
    """A task this process submitted and has not seen finish."""
    __slots__ = ("spec", "return_ids", "held", "retries_left", "deps", "cancelled",
                 "retry_exceptions", "submitted", "node")

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

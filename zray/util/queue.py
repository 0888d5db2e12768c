"""``Queue``: a FIFO queue shared between tasks and actors, backed by an
async actor, as ``ray.util.queue.Queue``."""
from __future__ import annotations

import asyncio
import queue as _queue

import zray


class Empty(_queue.Empty):
    pass


class Full(_queue.Full):
    pass


class _QueueActor:
    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self.queue = asyncio.Queue(maxsize)

    async def qsize(self):
        return self.queue.qsize()

    async def put(self, item, timeout=None):
        try:
            await asyncio.wait_for(self.queue.put(item), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def get(self, timeout=None):
        try:
            return True, await asyncio.wait_for(self.queue.get(), timeout)
        except asyncio.TimeoutError:
            return False, None

    async def put_nowait(self, item):
        try:
            self.queue.put_nowait(item)
            return True
        except asyncio.QueueFull:
            return False

    async def put_nowait_batch(self, items):
        if self.maxsize > 0 and len(items) + self.queue.qsize() > self.maxsize:
            return False
        for item in items:
            self.queue.put_nowait(item)
        return True

    async def get_nowait(self):
        try:
            return True, self.queue.get_nowait()
        except asyncio.QueueEmpty:
            return False, None

    async def get_nowait_batch(self, n):
        if n > self.queue.qsize():
            return False, []
        return True, [self.queue.get_nowait() for _ in range(n)]


class Queue:
    """A first-in first-out queue; the handle can be passed to tasks and actors."""

    def __init__(self, maxsize: int = 0, actor_options: dict | None = None):
        self.maxsize = maxsize
        self.actor = zray.remote(_QueueActor).options(**(actor_options or {})).remote(maxsize)

    def __len__(self):
        return self.size()

    def size(self) -> int:
        return zray.get(self.actor.qsize.remote())

    def qsize(self) -> int:
        return self.size()

    def empty(self) -> bool:
        return self.size() == 0

    def full(self) -> bool:
        return self.maxsize > 0 and self.size() >= self.maxsize

    def put(self, item, block: bool = True, timeout: float | None = None) -> None:
        """Add ``item``; when full, wait (up to ``timeout``) or raise Full."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not block:
            if not zray.get(self.actor.put_nowait.remote(item)):
                raise Full
            return
        if not zray.get(self.actor.put.remote(item, timeout)):
            raise Full

    def get(self, block: bool = True, timeout: float | None = None):
        """Remove and return an item; when empty, wait (up to ``timeout``) or raise Empty."""
        if timeout is not None and timeout < 0:
            raise ValueError("'timeout' must be a non-negative number")
        if not block:
            ok, item = zray.get(self.actor.get_nowait.remote())
        else:
            ok, item = zray.get(self.actor.get.remote(timeout))
        if not ok:
            raise Empty
        return item

    def put_nowait(self, item) -> None:
        self.put(item, block=False)

    def get_nowait(self):
        return self.get(block=False)

    def put_nowait_batch(self, items) -> None:
        if not zray.get(self.actor.put_nowait_batch.remote(list(items))):
            raise Full(f"Cannot add {len(items)} items to queue of size {self.size()} "
                       f"and maxsize {self.maxsize}.")

    def get_nowait_batch(self, num_items: int) -> list:
        ok, items = zray.get(self.actor.get_nowait_batch.remote(num_items))
        if not ok:
            raise Empty(f"Cannot get {num_items} items from queue of size {self.size()}.")
        return items

    def shutdown(self, force: bool = False, grace_period_s: int = 5) -> None:
        if self.actor is not None:
            zray.kill(self.actor)
        self.actor = None

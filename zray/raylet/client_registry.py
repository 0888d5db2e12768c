"""The drivers and workers connected to a raylet, by their socket identity
and by worker id, and the files a dead one leaves behind."""
from __future__ import annotations

import logging
import os

from .._private.pids import pid_alive
from .._private.session import actor_ipc, inbox_ipc

log = logging.getLogger(__name__)


class Client:
    """A driver or worker connected to this raylet."""
    __slots__ = ("kind", "worker_id", "pid", "job_id", "inbox", "identity")

    def __init__(self, kind, worker_id, pid, job_id, inbox, identity):
        self.kind, self.worker_id, self.pid = kind, worker_id, pid
        self.job_id, self.inbox, self.identity = job_id, inbox, identity


class ClientRegistry:
    """Who is connected. A client is found by the identity its requests come
    from, or by its worker id, until :meth:`remove`."""

    def __init__(self, session_dir: str):
        self.session_dir = session_dir
        self._by_identity: dict[bytes, Client] = {}
        self._by_worker_id: dict[bytes, Client] = {}

    def add(self, identity: bytes, msg) -> Client:
        """Record the client that sent ``msg`` (a RegisterClient)."""
        client = Client(msg.kind, msg.worker_id, msg.pid, msg.job_id, msg.inbox, identity)
        self._by_identity[identity] = client
        self._by_worker_id[msg.worker_id] = client
        return client

    def get(self, identity) -> Client | None:
        return self._by_identity.get(identity)

    def of_worker(self, worker_id: bytes) -> Client | None:
        return self._by_worker_id.get(worker_id)

    def remove(self, client: Client) -> None:
        self._by_identity.pop(client.identity, None)
        self._by_worker_id.pop(client.worker_id, None)

    def all(self) -> list[Client]:
        """Every connected client (a copy: the caller may remove while iterating)."""
        return list(self._by_identity.values())

    def dead_drivers(self) -> list[Client]:
        """Drivers whose process is gone (drivers are not our children:
        their death is noticed by pid)."""
        return [c for c in self._by_identity.values()
                if c.kind == "driver" and not pid_alive(c.pid)]

    def remove_sockets_of(self, worker_id: bytes) -> None:
        """Socket files of a process that cannot remove them itself (killed)."""
        for path in (inbox_ipc(self.session_dir, worker_id),
                     actor_ipc(self.session_dir, worker_id)):
            try:
                os.unlink(path[len("ipc://"):])
            except FileNotFoundError:
                pass                    # it removed them itself
            except OSError as err:
                log.warning("could not remove the socket file %s: %s", path, err)

"""The session table: what a restarted GCS must keep to be the same cluster —
its ``cluster_id`` (made once), the port of its PUB socket (so subscribers
reconnect to the same address) and the session directory."""
from __future__ import annotations

import logging
import os

TABLE = "session"

log = logging.getLogger(__name__)


class SessionManager:
    def __init__(self, storage, session_dir: str):
        self.storage = storage
        stored_dir = storage.get(TABLE, "session_dir")
        #: the tables were there already: this GCS restarted (or replaces another)
        self.reloaded = stored_dir is not None
        stored_id = storage.get(TABLE, "cluster_id")
        #: the cluster's id (hex): the one the storage checked, else made once
        self.cluster_id: str = (getattr(storage, "cluster_id", None) or stored_id
                                or os.urandom(8).hex())
        if stored_id != self.cluster_id:
            storage.put(TABLE, "cluster_id", self.cluster_id)
        if stored_dir is None or (session_dir and stored_dir != session_dir):
            if stored_dir is not None:                  # the one it was started for wins
                log.warning("the GCS tables were kept by session %s; this GCS serves %s",
                            stored_dir, session_dir)
            storage.put(TABLE, "session_dir", session_dir)

    @property
    def session_dir(self) -> str:
        return self.storage.get(TABLE, "session_dir") or ""

    @property
    def pub_port(self) -> int | None:
        """The port the PUB socket bound before, or None the first time."""
        return self.storage.get(TABLE, "pub_port")

    def set_pub_port(self, port: int) -> None:
        self.storage.put(TABLE, "pub_port", port)

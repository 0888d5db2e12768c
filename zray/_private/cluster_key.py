"""Which cluster key a process uses to reach a cluster: the one place that
decides it, for ``zray.init(address=...)`` and the ``zray`` commands alike."""
from __future__ import annotations

import os

from ..broker import security
from .node import find_cluster_key, is_listening


def locate_cluster_key(address: str, key_file: str | None = None,
                       session_dir: str | None = None) -> tuple[str | None, str]:
    """The key to reach the cluster whose GCS is at ``address``, in this order:
    ``key_file``; the environment (``ZRAY_CLUSTER_KEY``/``ZRAY_CLUSTER_KEY_FILE``);
    the key file of ``session_dir``; the key file this host holds for that
    cluster. Returns (the key file to use, or None when the environment names
    it already; where the key comes from, for messages). ConnectionError, saying
    what to do, when there is none or it cannot be used."""
    try:
        if key_file:
            security.load_key_file(key_file)
            return key_file, f"the key file {key_file}"
        if security.from_env() is not None:
            if os.environ.get(security.ENV_KEY):
                return None, security.ENV_KEY
            return None, f"the key file {os.environ[security.ENV_KEY_FILE]}"
        path = security.key_file_in(session_dir) if session_dir else None
        if not (path and os.path.isfile(path)):
            path = find_cluster_key(address)
        if path is None and not is_listening(address):
            raise ConnectionError(
                f"the zray cluster at {address} did not answer (nothing listens there): "
                f"check the address and that `zray start --head` runs there")
        if path is None:
            raise ConnectionError(
                f"no cluster key to join the zray cluster at {address}: pass "
                f"--cluster-key-file=PATH or set {security.ENV_KEY_FILE}=PATH (a copy of the "
                f"head's <session_dir>/{security.KEY_FILE_NAME}, printed by `zray start "
                f"--head`), or set {security.ENV_KEY} to its secret key")
        security.load_key_file(path)
        return path, f"the key file {path}"
    except security.ClusterKeyError as err:
        raise ConnectionError(f"cannot use the cluster key to join {address}: {err}") from None

"""``python -m zray.gcs --address 127.0.0.1:6380 --session-dir DIR
[--storage URL] [--cluster-id ID] [--storage-reuse]``

The GCS keeps its tables where ``--storage`` (default: ``config.gcs_storage``,
env ``ZRAY_GCS_STORAGE``) says. ``--cluster-id`` is the cluster it serves: a
storage holding another cluster's tables is refused unless
``--storage-reuse``; without it, the GCS serves whatever cluster the storage
holds. Exit code 2: the storage cannot be used (the log and stderr say why;
a supervisor does not restart it); 1: it does not answer now (a supervisor
tries again).
"""
from __future__ import annotations

import argparse
import gc
import logging
import sys

from .._private import daemon
from .._private.session import log_path
from ..config import config
from .server import GcsServer
from .storage import StorageError, StorageUnavailableError, open_storage, redact

#: exit code for settings that cannot work (a supervisor does not restart it)
EXIT_BAD_SETTINGS = 2
#: a full garbage collection at most once per this many of the middle
#: generation's (Python's default: 10). The GCS's tables are long-lived and
#: large: a full collection scans them all (~80 ms with 100,000 task rows), and
#: at the default a task table taking a burst in did that every ~25,000 rows,
#: doubling the cost of a task event. The GCS makes few reference cycles.
FULL_COLLECTION_EVERY = 1000


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zray.gcs", description=__doc__)
    ap.add_argument("--address", required=True, help="host:port to serve on")
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--storage", default=None, help="memory://, sqlite:///path or "
                    "redis://host:port/db (default: ZRAY_GCS_STORAGE)")
    ap.add_argument("--cluster-id", default=None)
    ap.add_argument("--storage-reuse", action="store_true")
    args = ap.parse_args(argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    daemon.set_process_name("zray.gcs")
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    daemon.setup_logging(log_path(args.session_dir, "gcs.log"))
    log = logging.getLogger(__name__)
    url = args.storage if args.storage is not None else config.gcs_storage
    try:
        storage = open_storage(url, args.cluster_id, args.storage_reuse)
    except StorageError as err:     # unavailable for now: exit 1, a supervisor tries again
        log.error("the GCS cannot start: %s", err)
        print(f"zray GCS: {err}", file=sys.stderr)
        sys.exit(1 if isinstance(err, StorageUnavailableError) else EXIT_BAD_SETTINGS)
    log.info("GCS tables in %s (cluster %s)", redact(url), storage.cluster_id)
    server = GcsServer(args.address, args.session_dir, storage)
    daemon.on_terminate(server.stop)
    try:
        server.run()
    finally:
        server.close()
        storage.close()
        log.info("GCS stopped")


if __name__ == "__main__":
    main()

"""``python -m zray.gcs --address 127.0.0.1:6380 --session-dir DIR``"""
from __future__ import annotations

import argparse
import logging

from .._private import daemon
from .._private.session import log_path
from ..config import config
from .server import GcsServer
from .storage import open_storage


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zray.gcs", description=__doc__)
    ap.add_argument("--address", required=True, help="host:port to serve on")
    ap.add_argument("--session-dir", required=True)
    args = ap.parse_args(argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    daemon.set_process_name("zray.gcs")
    daemon.setup_logging(log_path(args.session_dir, "gcs.log"))
    server = GcsServer(args.address, args.session_dir, open_storage(config.gcs_storage))
    daemon.on_terminate(server.stop)
    try:
        server.run()
    finally:
        server.close()
        logging.getLogger(__name__).info("GCS stopped")


if __name__ == "__main__":
    main()

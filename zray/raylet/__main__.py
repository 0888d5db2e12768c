"""``python -m zray.raylet --gcs-address HOST:PORT --session-dir DIR [...]``"""
from __future__ import annotations

import argparse
import json
import logging
import os

from .._private import daemon
from .._private.session import log_path, raylet_ipc
from .worker_pool import start_zygote


def default_object_store_memory() -> int:
    import psutil
    from ..config import config
    avail = psutil.virtual_memory().available
    return int(min(avail * config.object_store_fraction, config.object_store_max_bytes))


def node_resources(num_cpus, num_gpus, memory, custom: dict, store_bytes: int,
                   node_ip: str) -> dict:
    import psutil
    resources = {"CPU": float(os.cpu_count() if num_cpus is None else num_cpus)}
    if num_gpus:
        resources["GPU"] = float(num_gpus)
    resources["memory"] = float(memory if memory is not None
                                else int(psutil.virtual_memory().available * 0.7))
    resources["object_store_memory"] = float(store_bytes)
    resources[f"node:{node_ip}"] = 1.0
    for key, value in (custom or {}).items():
        resources[key] = float(value)
    return resources


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zray.raylet", description=__doc__)
    ap.add_argument("--gcs-address", required=True)
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--node-id", required=True, help="hex")
    ap.add_argument("--node-ip", default="127.0.0.1")
    ap.add_argument("--num-cpus", type=float)
    ap.add_argument("--num-gpus", type=float, default=0)
    ap.add_argument("--memory", type=int)
    ap.add_argument("--resources", default="{}", help="JSON of custom resources")
    ap.add_argument("--object-store-memory", type=int)
    args = ap.parse_args(argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    node_id = bytes.fromhex(args.node_id)
    # The zygote warms up (imports) while this process imports and starts.
    zygote = start_zygote(raylet_ipc(args.session_dir, node_id),
                          args.session_dir, args.node_id,
                          log_path(args.session_dir, f"zygote_{args.node_id[:12]}.err"))
    from .server import Raylet
    daemon.set_process_name("zray.raylet")
    daemon.setup_logging(log_path(args.session_dir, f"raylet_{args.node_id[:12]}.log"))
    store = args.object_store_memory or default_object_store_memory()
    resources = node_resources(args.num_cpus, args.num_gpus, args.memory,
                               json.loads(args.resources), store, args.node_ip)
    raylet = Raylet(args.gcs_address, args.session_dir, node_id, resources, store,
                    args.node_ip, zygote)
    daemon.on_terminate(raylet.stop)
    try:
        raylet.start()
        raylet.run()
    finally:
        raylet.close()
        logging.getLogger(__name__).info("raylet stopped")


if __name__ == "__main__":
    main()

"""``python -m zray.raylet --gcs-address HOST:PORT --session-dir DIR [...]``"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading

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


#: the raylet imports numpy (its store's views over the arena are numpy
#: arrays) this long after it starts, off its loop's thread: not while the
#: first task waits for the zygote (they share the CPU), nor on the loop at its
#: first transfer or spill
NUMPY_IMPORT_DELAY_S = 1.0


def _import_numpy_later() -> None:
    def import_numpy():
        import numpy  # noqa: F401
    timer = threading.Timer(NUMPY_IMPORT_DELAY_S, import_numpy)
    timer.daemon = True
    timer.start()


def _adopt_zygote(pid: int, fds: str):
    """The handle on a zygote this raylet's parent started (see
    ``NodeProcesses.prestart_zygote``), over the pipes it inherited."""
    from .._private.launcher import AdoptedProcess
    try:
        fd_in, fd_out = (int(fd) for fd in fds.split(","))
    except (AttributeError, ValueError):
        raise SystemExit(f"--zygote-fds must be IN,OUT (two descriptors), got {fds!r}")
    for fd in (fd_in, fd_out):
        os.set_inheritable(fd, False)       # not for what this raylet starts
    return AdoptedProcess(pid, ["python", "-m", "zray.worker.zygote"],
                          stdin=open(fd_in, "wb", buffering=0),
                          stdout=open(fd_out, "rb", buffering=0))


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
    ap.add_argument("--zygote-pid", type=int, help="a zygote started for this raylet by "
                    "its parent (NodeProcesses.prestart_zygote), with --zygote-fds")
    ap.add_argument("--zygote-fds", help="IN,OUT: that zygote's stdin and stdout pipes")
    args = ap.parse_args(argv)
    if daemon.parent_watch_requested():
        daemon.die_with_parent()
    node_id = bytes.fromhex(args.node_id)
    if args.zygote_pid:
        zygote = _adopt_zygote(args.zygote_pid, args.zygote_fds)
    else:   # the zygote warms up (imports) while this process imports and starts
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
        _import_numpy_later()
        raylet.run()
    finally:
        raylet.close()
        logging.getLogger(__name__).info("raylet stopped")


if __name__ == "__main__":
    main()

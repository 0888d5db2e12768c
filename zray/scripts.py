"""The ``zray`` command: start, stop, status, microbenchmark."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from . import session
from .broker import protocol as p
from .broker import security, sockets
from .broker.rpc import RpcClient
from .config import config


def _gib(n: float) -> str:
    return f"{n / 1024 ** 3:.2f} GiB"


def cmd_start(args) -> int:
    from .node import NodeProcesses
    if args.head == bool(args.address):
        print("zray start: give either --head (start a cluster) or --address=HOST:PORT "
              "(join one)", file=sys.stderr)
        return 2
    try:
        resources = json.loads(args.resources) if args.resources else None
    except ValueError as err:
        print(f"zray start: --resources must be JSON like '{{\"GPU_TYPE_A\": 2}}': {err}",
              file=sys.stderr)
        return 2
    if resources is not None and not isinstance(resources, dict):
        print("zray start: --resources must be a JSON object", file=sys.stderr)
        return 2
    node_ip = args.node_ip_address
    if args.head:
        if args.cluster_key_file:
            print("zray start: --cluster-key-file is for joining (--address); the head "
                  "makes a fresh key", file=sys.stderr)
            return 2
        gcs_address = f"{node_ip}:{args.port}"
        if _port_in_use(node_ip, args.port):
            print(f"zray start: something already listens at {gcs_address} (a zray "
                  f"cluster?); run `zray stop` first or pick another --port",
                  file=sys.stderr)
            return 1
        session_dir = session.new_session_dir()
        key_file = security.create_key_file(security.key_file_in(session_dir))
        _use_key_file(key_file)
    else:
        gcs_address = args.address.removeprefix("zray://")
        key_source, error = _use_cluster_key(gcs_address, args.cluster_key_file)
        if error:
            print(f"zray start: {error}", file=sys.stderr)
            return 1
        nodes = _nodes(gcs_address, config.connect_timeout_s)
        if nodes is None:
            print(f"zray start: no zray cluster answered at {gcs_address} within "
                  f"{config.connect_timeout_s:.0f}s: {_why_silent(gcs_address, key_source)}",
                  file=sys.stderr)
            return 1
        head = next((n for n in nodes if n["alive"]), None)
        session_dir = head["session_dir"] if head and os.path.isdir(head["session_dir"]) \
            else session.new_session_dir()
    # the daemons get the key this process uses, through their environment
    node = NodeProcesses(session_dir, detached=True)
    if args.head:
        node.start_gcs(gcs_address)
    node_id = os.urandom(16)
    node.start_raylet(gcs_address, node_id, node_ip=node_ip, num_cpus=args.num_cpus,
                      num_gpus=args.num_gpus, resources=resources,
                      object_store_memory=args.object_store_memory)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        nodes = _nodes(gcs_address, 1.0) or []
        if any(n["node_id"] == node_id and n["alive"] for n in nodes):
            break
        try:
            node.check_alive()
        except RuntimeError as err:
            print(f"zray start: {err}", file=sys.stderr)
            node.stop()
            return 1
        time.sleep(0.05)
    else:
        print(f"zray start: the node did not come up within 15s; see {session_dir}/logs",
              file=sys.stderr)
        node.stop()
        return 1
    if args.head:
        session.write_current_cluster(gcs_address, session_dir)
        print(f"zray cluster started at {gcs_address} (session {session_dir})\n"
              f"  cluster key (secret):  {key_file}\n"
              f"  connect from Python:   zray.init(address=\"auto\")  or  "
              f"zray.init(address=\"{gcs_address}\")\n"
              f"  add a node (this host): zray start --address={gcs_address}\n"
              f"  add a node elsewhere:  copy the key file there (keep it mode 0600), then\n"
              f"                         zray start --address={gcs_address} "
              f"--cluster-key-file=PATH\n"
              f"                         or set {security.ENV_KEY}=<the 'secret:' value "
              f"of the key file> (or {security.ENV_KEY_FILE}=PATH)\n"
              f"  stop everything here:  zray stop")
    else:
        print(f"zray node {node_id.hex()[:12]} joined the cluster at {gcs_address}")
    if args.block:
        return _block(node)
    return 0


def _block(node) -> int:
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        if any(proc.poll() is not None for proc in node.procs):
            print("zray start --block: a zray process exited; stopping", file=sys.stderr)
            break
        time.sleep(0.2)
    node.stop()
    return 0


def _port_in_use(host: str, port: int) -> bool:
    from .node import is_listening
    return is_listening(f"{host}:{port}", 0.5)


def _why_silent(gcs_address: str, key_source: str) -> str:
    """Why a cluster did not answer, as far as can be told from here."""
    from .node import is_listening
    if is_listening(gcs_address):
        return (f"something listens there but does not accept this process's key "
                f"(wrong cluster key? it used {key_source})")
    return "nothing listens there; check the address and that `zray start --head` runs there"


def _use_key_file(path: str) -> None:
    """This process (and the daemons it starts) use the key in ``path``."""
    os.environ.pop(security.ENV_KEY, None)
    os.environ[security.ENV_KEY_FILE] = os.path.abspath(path)


def _use_cluster_key(gcs_address: str, key_file: str | None) -> tuple[str, str | None]:
    """Find the key to reach the cluster at ``gcs_address`` with: ``key_file``,
    else the environment (ZRAY_CLUSTER_KEY, ZRAY_CLUSTER_KEY_FILE), else the
    key file this host holds for that cluster. Returns (where the key comes
    from, None) or (.., an error message)."""
    from .node import find_cluster_key, is_listening
    try:
        if key_file:
            security.load_key_file(key_file)
            _use_key_file(key_file)
            return f"the key file {key_file}", None
        if security.from_env() is not None:
            if os.environ.get(security.ENV_KEY):
                return security.ENV_KEY, None
            return f"the key file {os.environ[security.ENV_KEY_FILE]}", None
        found = find_cluster_key(gcs_address)
        if found is None and not is_listening(gcs_address):
            return "", (f"the cluster at {gcs_address} did not answer (nothing listens "
                        f"there): check the address and that `zray start --head` runs there")
        if found is None:
            return "", (f"no cluster key for the cluster at {gcs_address}: pass "
                        f"--cluster-key-file=PATH (a copy of the head's "
                        f"<session_dir>/{security.KEY_FILE_NAME}, printed by `zray start "
                        f"--head`) or set {security.ENV_KEY} / {security.ENV_KEY_FILE}")
        security.load_key_file(found)
        _use_key_file(found)
        return f"the key file {found}", None
    except security.ClusterKeyError as err:
        return "", f"cannot use the cluster key: {err}"


def _nodes(gcs_address: str, timeout: float):
    gcs = RpcClient(sockets.tcp_endpoint(gcs_address), timeout, "GCS")
    try:
        return gcs.call(p.GetNodes(), timeout=timeout).value
    except (TimeoutError, OSError):
        return None
    finally:
        gcs.close()


def cmd_stop(args) -> int:
    from .node import stop_all
    count = stop_all(timeout=args.grace_period)
    print(f"zray stop: stopped {count} zray process(es)")
    return 0


def _resolve_address(address: str | None) -> str | None:
    if address and address != "auto":
        return address
    env = os.environ.get("ZRAY_ADDRESS")
    if env and env != "auto":
        return env
    current = session.read_current_cluster()
    return current["gcs_address"] if current else None


def cmd_status(args) -> int:
    address = _resolve_address(args.address)
    if address is None:
        print("zray status: no cluster found on this host; start one with "
              "`zray start --head` or pass --address", file=sys.stderr)
        return 1
    key_source, error = _use_cluster_key(address, args.cluster_key_file)
    if error:
        print(f"zray status: {error}", file=sys.stderr)
        return 1
    nodes = _nodes(address, config.connect_timeout_s)
    if nodes is None:
        print(f"zray status: the cluster at {address} did not answer: "
              f"{_why_silent(address, key_source)}", file=sys.stderr)
        return 1
    print(f"======== zray cluster at {address} ========")
    alive = [n for n in nodes if n["alive"]]
    dead = [n for n in nodes if not n["alive"]]
    print(f"Nodes: {len(alive)} alive, {len(dead)} dead")
    total: dict = {}
    avail: dict = {}
    for n in nodes:
        state = "ALIVE" if n["alive"] else "DEAD"
        print(f"  {n['node_id'].hex()[:12]}  {n['node_ip']:<15} {n['hostname']:<20} {state}"
              f"  store {_gib(n['store_used'])} / {_gib(n['arena_size'])}")
        if n["alive"]:
            for k, v in n["resources"].items():
                total[k] = total.get(k, 0.0) + v
            for k, v in n["available"].items():
                avail[k] = avail.get(k, 0.0) + v
    print("Resources (used / total):")
    for key in sorted(total):
        if key.startswith("node:"):
            continue
        used = total[key] - avail.get(key, 0.0)
        if key in ("memory", "object_store_memory"):
            print(f"  {key:<20} {_gib(used)} / {_gib(total[key])}")
        else:
            print(f"  {key:<20} {used:g} / {total[key]:g}")
    return 0


def cmd_list(args) -> int:
    address = _resolve_address(args.address)
    if address is None:
        print("zray list: no cluster found on this host; pass --address", file=sys.stderr)
        return 1
    key_source, error = _use_cluster_key(address, args.cluster_key_file)
    if error:
        print(f"zray list: {error}", file=sys.stderr)
        return 1
    gcs = RpcClient(sockets.tcp_endpoint(address), config.connect_timeout_s, "GCS")
    try:
        actors = gcs.call(p.ListActors()).value
    except TimeoutError:
        print(f"zray list: the cluster at {address} did not answer: "
              f"{_why_silent(address, key_source)}", file=sys.stderr)
        return 1
    finally:
        gcs.close()
    print(f"{'ACTOR ID':<34}{'CLASS':<24}{'STATE':<18}{'NODE':<14}{'PID':<8}NAME")
    for a in actors:
        print(f"{a['actor_id'].hex():<34}{a['class_name'][:23]:<24}{a['state']:<18}"
              f"{a['node_id'].hex()[:12]:<14}{a['pid'] or '':<8}{a['name']}")
    return 0


def cmd_microbenchmark(argv) -> int:
    from . import microbenchmark
    return microbenchmark.main(argv) or 0


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zray", description="Run and inspect zray clusters.")
    sub = ap.add_subparsers(dest="command", required=True)

    start = sub.add_parser("start", help="start the zray processes of this node",
                           description="Start a head node (--head) or join a cluster "
                                       "(--address). Settings also come from ZRAY_* "
                                       "environment variables (see zray/config.py).")
    start.add_argument("--head", action="store_true", help="start the GCS here too")
    start.add_argument("--address", help="HOST:PORT of the head's GCS, to join")
    start.add_argument("--cluster-key-file",
                       help="the cluster's key file, to join (a copy of the head's "
                            "<session_dir>/cluster.key; default: $ZRAY_CLUSTER_KEY, "
                            "$ZRAY_CLUSTER_KEY_FILE, else this host's key of that cluster)")
    start.add_argument("--port", type=int, default=6380, help="GCS port on the head")
    start.add_argument("--node-ip-address", default="127.0.0.1",
                       help="the address other nodes reach this one at")
    start.add_argument("--num-cpus", type=float, help="default: the cores of this host")
    start.add_argument("--num-gpus", type=float, default=0)
    start.add_argument("--resources", help='custom resources as JSON, e.g. \'{"disk": 2}\'')
    start.add_argument("--object-store-memory", type=int,
                       help="bytes of shared memory for objects (default: 30%% of memory)")
    start.add_argument("--block", action="store_true",
                       help="stay in the foreground; stop the node on Ctrl-C")
    start.set_defaults(func=cmd_start)

    stop = sub.add_parser("stop", help="stop every zray process of this user on this host")
    stop.add_argument("--grace-period", type=float, default=5.0,
                      help="seconds before survivors are killed")
    stop.set_defaults(func=cmd_stop)

    status = sub.add_parser("status", help="nodes, resources and store usage")
    status.add_argument("--address", help="HOST:PORT of the GCS (default: this host's cluster)")
    status.add_argument("--cluster-key-file", help="the cluster's key file (default: as for "
                                                   "`zray start --address`)")
    status.set_defaults(func=cmd_status)

    lst = sub.add_parser("list", help="list cluster state: `zray list actors`")
    lst.add_argument("what", choices=["actors"])
    lst.add_argument("--address", help="HOST:PORT of the GCS (default: this host's cluster)")
    lst.add_argument("--cluster-key-file", help="the cluster's key file (default: as for "
                                                "`zray start --address`)")
    lst.set_defaults(func=cmd_list)

    sub.add_parser("microbenchmark", help="measure core operations (see --help)",
                   add_help=False)
    return ap


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "microbenchmark":
        return cmd_microbenchmark(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

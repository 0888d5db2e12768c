"""The ``zray`` command: start, stop, status, microbenchmark."""
from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

from . import session
from ..broker import protocol as p
from ..broker import security, sockets
from ..broker.rpc import RpcClient
from ..config import config


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
        if args.cluster_key_file:           # cluster_launcher: a key kept across restarts
            try:
                security.load_key_file(args.cluster_key_file)
            except security.ClusterKeyError as err:
                print(f"zray start: cannot use --cluster-key-file: {err}", file=sys.stderr)
                return 2
        gcs_address = f"{node_ip}:{args.port}"
        error = _check_dashboard_flags(args)
        if error:
            print(f"zray start: {error}", file=sys.stderr)
            return 2
        if _port_in_use(node_ip, args.port):
            print(f"zray start: something already listens at {gcs_address} (a zray "
                  f"cluster?); run `zray stop` first or pick another --port",
                  file=sys.stderr)
            return 1
        session_dir = session.new_session_dir()
        key_file = security.key_file_in(session_dir)
        if args.cluster_key_file:           # cluster_launcher: the given key, copied (0600)
            with open(args.cluster_key_file, "rb") as src:
                secret = src.read()
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as dst:
                dst.write(secret)
        else:
            security.create_key_file(key_file)
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
        head = next((n for n in nodes if n.alive), None)
        session_dir = head.session_dir if head and os.path.isdir(head.session_dir) \
            else session.new_session_dir()
    # the daemons get the key this process uses, through their environment
    node = NodeProcesses(session_dir, detached=True)
    if args.head:
        from ..gcs.storage import redact
        storage, cluster_id, error = _gcs_storage(args, session_dir)    # storage
        if error:
            print(f"zray start: {error}", file=sys.stderr)
            return 1
        node.start_gcs(gcs_address, storage=storage, cluster_id=cluster_id, supervised=True)
    node_id = os.urandom(16)
    node.start_raylet(gcs_address, node_id, node_ip=node_ip, num_cpus=args.num_cpus,
                      num_gpus=args.num_gpus, resources=resources,
                      object_store_memory=args.object_store_memory)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        nodes = _nodes(gcs_address, 1.0) or []
        if any(n.node_id == node_id and n.alive for n in nodes):
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
        print(_start_dashboard(args, node, gcs_address), end="")
        print(f"zray cluster started at {gcs_address} (session {session_dir})\n"
              f"  cluster key (secret):  {key_file}\n"
              f"  GCS tables:            {redact(storage)}  (the GCS restarts if it dies)\n"
              f"  connect from Python:   zray.init(address=\"auto\")  or  "
              f"zray.init(address=\"{gcs_address}\")\n"
              f"  add a node (this host): zray start --address={gcs_address}\n"
              + _join_elsewhere_hint(gcs_address, node_ip) +
              "  stop everything here:  zray stop")
    else:
        print(f"zray node {node_id.hex()[:12]} joined the cluster at {gcs_address}")
    if args.block:
        return _block(node)
    return 0


def _check_dashboard_flags(args) -> str | None:
    """Why the --dashboard-* flags cannot work (None when they can)."""
    if not args.include_dashboard:
        return None
    from ..dashboard import launch
    from ..dashboard import token_file as auth
    if args.dashboard_token_file:
        try:
            auth.read_token_file(args.dashboard_token_file)
        except auth.TokenError as err:
            return str(err)
    if args.dashboard_port is not None and not launch.port_free(args.dashboard_host,
                                                                args.dashboard_port):
        return (f"--dashboard-port {args.dashboard_port}: something already listens at "
                f"{args.dashboard_host}:{args.dashboard_port}; pick another port")
    return None


def _start_dashboard(args, node, gcs_address: str) -> str:
    """Start the head's dashboard (unless --include-dashboard=false); what to print."""
    if not args.include_dashboard:
        return ""
    from ..dashboard import launch
    from ..dashboard import token_file as auth
    allowed = [h for h in (args.dashboard_allowed_hosts or "").split(",") if h.strip()]
    info = launch.start(node, gcs_address, host=args.dashboard_host,
                        port=args.dashboard_port, token_file=args.dashboard_token_file,
                        allowed_hosts=allowed)
    shown = "" if args.dashboard_token_file or os.environ.get(auth.ENV_TOKEN) else \
        f"  dashboard token:       {auth.read_token_file(info.token_file)}  (shown once)\n"
    return (f"  dashboard:             {info.url}  (token file {info.token_file})\n" + shown)


def _bool_flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _join_elsewhere_hint(gcs_address: str, node_ip: str) -> str:
    """How another host joins: the command when the head listens on an
    address others can reach, else how to restart the head so they can."""
    if node_ip.startswith("127.") or node_ip in ("localhost", "::1"):
        return ("  add a node elsewhere:  this head listens on loopback only; to let other "
                "hosts join,\n"
                "                         restart it with --node-ip-address=<this host's "
                "IP on their network>\n")
    return (f"  add a node elsewhere:  copy the key file there (keep it mode 0600), then\n"
            f"                         zray start --address={gcs_address} "
            f"--node-ip-address=THAT_HOST_IP --cluster-key-file=PATH\n"
            f"                         or set {security.ENV_KEY}=<the 'secret:' value "
            f"of the key file> (or {security.ENV_KEY_FILE}=PATH)\n")


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


# -- storage: where the head's GCS keeps its tables -----------------------------
def _gcs_storage(args, session_dir: str) -> tuple[str, str, str | None]:
    """(storage URL, cluster id, None) for the head's GCS, or (.., an error):
    ``--gcs-storage``, else $ZRAY_GCS_STORAGE, else ``<session>/gcs.db``.
    The storage is opened once here, so one that cannot be used is refused
    before anything starts (with --gcs-storage-reuse, the cluster id is the
    one the storage holds)."""
    from ..gcs.storage import StorageError, new_cluster_id, open_storage
    url = args.gcs_storage or os.environ.get("ZRAY_GCS_STORAGE") or \
        f"sqlite://{os.path.join(session_dir, 'gcs.db')}"
    try:
        storage = open_storage(url, new_cluster_id(), reuse=args.gcs_storage_reuse)
    except StorageError as err:
        return url, "", str(err)
    cluster_id = storage.cluster_id
    storage.close()
    return url, cluster_id, None


def _port_in_use(host: str, port: int) -> bool:
    from .node import is_listening
    return is_listening(f"{host}:{port}", 0.5)


def _why_silent(gcs_address: str, key_source: str) -> str:
    """Why a cluster did not answer, as far as can be told from here."""
    from ..broker.rpc import diagnose
    from .node import is_listening
    if is_listening(gcs_address):
        reason, wrong_key = diagnose(sockets.tcp_endpoint(gcs_address))
        if wrong_key:           # the CURVE handshake really failed for a key
            return f"{reason} (wrong cluster key? it used {key_source})"
        return reason
    return "nothing listens there; check the address and that `zray start --head` runs there"


def _use_key_file(path: str) -> None:
    """This process (and the daemons it starts) use the key in ``path``."""
    os.environ.pop(security.ENV_KEY, None)
    os.environ[security.ENV_KEY_FILE] = os.path.abspath(path)


def _use_cluster_key(gcs_address: str, key_file: str | None) -> tuple[str, str | None]:
    """Use the key to reach the cluster at ``gcs_address`` (see
    ``locate_cluster_key``). Returns (where the key comes from, None) or
    ("", an error message)."""
    from .cluster_key import locate_cluster_key
    try:
        path, source = locate_cluster_key(gcs_address, key_file)
    except ConnectionError as err:
        return "", str(err)
    if path is not None:
        _use_key_file(path)
    return source, None


def _nodes(gcs_address: str, timeout: float):
    gcs = RpcClient(sockets.tcp_endpoint(gcs_address), timeout, "GCS")
    try:
        return gcs.call(p.GetNodes(), timeout=timeout).nodes
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


def _orphan_raylets(gcs_address: str) -> str:
    """What still runs here of the cluster at ``gcs_address`` (for status)."""
    from .node import _same_address, command_line, zray_processes
    count = 0
    for proc in zray_processes():
        cmd = command_line(proc)
        if "zray.raylet" in cmd[:3] and "--gcs-address" in cmd[:-1] \
                and _same_address(cmd[cmd.index("--gcs-address") + 1], gcs_address):
            count += 1
    if not count:
        return ""
    return (f" {count} raylet(s) of that cluster still run on this host, serving the drivers "
            f"already connected to them; `zray stop` ends them.")


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
    from .node import is_listening
    nodes = _nodes(address, config.connect_timeout_s) if is_listening(address) else None
    if nodes is None:
        why = (_why_silent(address, key_source) if is_listening(address) else
               "nothing listens there: the GCS is not running (it died or was stopped), or "
               "the address is wrong")
        print(f"zray status: the GCS at {address} is unreachable: {why}."
              f"{_orphan_raylets(address)}", file=sys.stderr)
        return 1
    print(f"======== zray cluster at {address} ========")
    alive = [n for n in nodes if n.alive]
    dead = [n for n in nodes if not n.alive]
    print(f"Nodes: {len(alive)} alive, {len(dead)} dead")
    total: dict = {}
    avail: dict = {}
    for n in nodes:
        state = "ALIVE" if n.alive else "DEAD"
        print(f"  {n.node_id.hex()[:12]}  {n.node_ip:<15} {n.hostname:<20} {state}"
              f"  store {_gib(n.store_used)} / {_gib(n.arena_size)}")
        if n.alive:
            for k, v in n.resources.items():
                total[k] = total.get(k, 0.0) + v
            for k, v in n.available.items():
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


class _CliError(Exception):
    """A command's failure, with its message and exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


def _cluster_call(command: str, args, query):
    """``query(gcs)`` against the cluster ``args`` name (``--address``, else
    this host's), with its key; its result, or _CliError saying what was wrong."""
    address = _resolve_address(args.address)
    if address is None:
        raise _CliError(f"zray {command}: no cluster found on this host; pass --address")
    key_source, error = _use_cluster_key(address, args.cluster_key_file)
    if error:
        raise _CliError(f"zray {command}: {error}")
    gcs = RpcClient(sockets.tcp_endpoint(address), config.connect_timeout_s, "GCS")
    try:
        return query(gcs)
    except TimeoutError:
        raise _CliError(f"zray {command}: the cluster at {address} did not answer: "
                        f"{_why_silent(address, key_source)}") from None
    finally:
        gcs.close()


def cmd_list(args) -> int:
    if args.what != "actors" or args.filter or args.format == "json":
        return _print_state(args)
    actors = _cluster_call("list", args, lambda gcs: gcs.call(p.ListActors()).actors)
    print(f"{'ACTOR ID':<34}{'CLASS':<24}{'STATE':<18}{'NODE':<14}{'PID':<8}NAME")
    for a in actors:
        print(f"{a.actor_id.hex():<34}{a.class_name[:23]:<24}{a.state:<18}"
              f"{a.node_id.hex()[:12]:<14}{a.pid or '':<8}{a.name}")
    return 0


def cmd_timeline(args) -> int:
    """Write the cluster's task timeline as Chrome trace JSON (Perfetto opens it)."""
    from ..util.timeline import chrome_trace, fetch_rows

    def query(gcs):
        gcs.call(p.Ping())                  # a cluster that is not there fails fast
        return chrome_trace(fetch_rows(gcs, timeout=config.rpc_timeout_s))
    trace = _cluster_call("timeline", args, query)
    path = args.output or os.path.join(
        "/tmp", f"zray-timeline-{time.strftime('%Y-%m-%d_%H-%M-%S')}.json")
    try:
        with open(path, "w") as f:
            json.dump(trace, f)
    except OSError as err:
        print(f"zray timeline: cannot write {path}: {err}; pick another --output",
              file=sys.stderr)
        return 1
    tasks = sum(1 for e in trace if e["ph"] == "X")
    print(f"Trace file written to {path} ({tasks} task(s)); open it at "
          f"https://ui.perfetto.dev or chrome://tracing")
    return 0


def _state_filters(texts) -> list:
    """``--filter key=value`` / ``key!=value`` as State API filters."""
    out = []
    for text in texts or []:
        key, sep, value = text.partition("!=") if "!=" in text else text.partition("=")
        if not sep or not key:
            raise ValueError(f"--filter {text!r}: write KEY=VALUE or KEY!=VALUE")
        out.append((key.strip(), "!=" if sep == "!=" else "=", value.strip()))
    return out


def _print_state(args) -> int:
    """``zray list <what>``: the State API rows, as a table or JSON."""
    from ..dashboard import rows
    try:
        filters = _state_filters(args.filter)
        data = _cluster_call("list", args,
                             lambda gcs: rows.list_state(gcs, args.what, filters, args.limit))
    except (ValueError, rows.StateError) as err:
        print(f"zray list: {err}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(data["result"], indent=2, default=str))
        return 0
    columns = _STATE_COLUMNS[args.what.replace("-", "_")]
    table = [[_cell(row.get(c)) for c in columns] for row in data["result"]]
    widths = [max([len(c)] + [len(r[i]) for r in table]) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths)).rstrip())
    for r in table:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    if data["num_filtered"] > data["num_after_truncation"]:
        print(f"({data['num_after_truncation']} shown; more match: raise --limit)")
    return 0


_STATE_COLUMNS = {
    "nodes": ["node_id", "node_ip", "state", "is_head_node", "resources_total"],
    "actors": ["actor_id", "class_name", "state", "name", "pid", "node_id"],
    "tasks": ["task_id", "func_or_class_name", "state", "type", "node_id", "worker_pid",
              "error_type"],
    "jobs": ["submission_id", "job_id", "type", "status", "entrypoint"],
    "placement_groups": ["placement_group_id", "name", "state", "strategy"],
    "objects": ["object_id", "object_size", "state", "owner_pid", "owner_type", "node_id",
                "pinned_by"],
    "workers": ["worker_id", "is_alive", "node_id", "pid", "actor_id"],
}


def _cell(value) -> str:
    if isinstance(value, dict):
        return ",".join(f"{k}:{v:g}" if isinstance(v, float) else f"{k}:{v}"
                        for k, v in value.items() if not str(k).startswith("node:"))
    text = "" if value is None else str(value)
    return text[:60]


def cmd_summary(args) -> int:
    """``zray summary tasks``: per function, the number of tasks in each state."""
    from ..dashboard import rows
    counts = _cluster_call("summary", args, rows.task_summary)
    summary, dropped = rows.summarize_tasks(counts), counts["dropped"]
    print(f"======== Tasks summary: {summary['total_tasks']} task(s) ========")
    width = max([len("FUNC_OR_CLASS_NAME")] + [len(n) for n in summary["summary"]])
    print(f"{'FUNC_OR_CLASS_NAME':<{width}}  {'TYPE':<20}STATE_COUNTS")
    for name, entry in sorted(summary["summary"].items()):
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(entry["state_counts"].items()))
        print(f"{name:<{width}}  {entry['type'] or '':<20}{counts}")
    if dropped:
        print(f"({dropped} task events were dropped by the GCS's bounded table)")
    return 0


def cmd_job(args) -> int:
    """``zray job submit|status|logs|stop|list|delete``, through the dashboard."""
    from ..dashboard.sdk import JobClient, JobClientError
    try:
        client = JobClient(args.address, token_file=args.token_file)
        return _JOB_COMMANDS[args.job_command](client, args)
    except JobClientError as err:
        print(f"zray job: {err}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as err:
        print(f"zray job: {err}", file=sys.stderr)
        return 1


def _job_submit(client, args) -> int:
    entrypoint = " ".join(args.entrypoint).strip()
    if entrypoint.startswith("-- "):
        entrypoint = entrypoint[3:]
    if not entrypoint:
        print("zray job submit: give the entrypoint after --, e.g. "
              "`zray job submit -- python run.py`", file=sys.stderr)
        return 2
    runtime_env = json.loads(args.runtime_env_json) if args.runtime_env_json else {}
    sid = client.submit_job(entrypoint=entrypoint, submission_id=args.submission_id,
                            runtime_env=runtime_env, working_dir=args.working_dir)
    print(f"Job '{sid}' submitted successfully")
    if args.no_wait:
        print(f"  zray job status {sid}\n  zray job logs --follow {sid}\n"
              f"  zray job stop {sid}")
        return 0
    return _follow(client, sid)


def _follow(client, sid: str) -> int:
    """Print the job's logs as they grow until it ends; 0 if it SUCCEEDED."""
    shown = 0
    while True:
        status = client.get_job_status(sid)
        logs = client.get_job_logs(sid)
        if len(logs) > shown:
            sys.stdout.write(logs[shown:])
            sys.stdout.flush()
            shown = len(logs)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            print(f"Job '{sid}' {status}")
            return 0 if status == "SUCCEEDED" else 1
        time.sleep(0.5)


def _job_status(client, args) -> int:
    info = client.get_job_info(args.job_id)
    print(f"Job '{args.job_id}': {info['status']}")
    if info.get("message"):
        print(f"  {info['message']}")
    return 0


def _job_logs(client, args) -> int:
    if args.follow:
        return _follow(client, args.job_id)
    sys.stdout.write(client.get_job_logs(args.job_id))
    return 0


def _job_stop(client, args) -> int:
    stopped = client.stop_job(args.job_id)
    print(f"Job '{args.job_id}': " + ("stop requested" if stopped else "already ended"))
    if stopped and not args.no_wait:
        while client.get_job_status(args.job_id) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            time.sleep(0.2)
        print(f"Job '{args.job_id}': {client.get_job_status(args.job_id)}")
    return 0


def _job_list(client, args) -> int:
    jobs = client.list_jobs()
    print(f"{'SUBMISSION ID':<36}{'JOB ID':<10}{'TYPE':<12}{'STATUS':<11}ENTRYPOINT")
    for j in jobs:
        print(f"{j.get('submission_id') or '':<36}{j.get('job_id') or '':<10}{j['type']:<12}"
              f"{j['status']:<11}{(j.get('entrypoint') or '')[:60]}")
    return 0


def _job_delete(client, args) -> int:
    client.delete_job(args.job_id)
    print(f"Job '{args.job_id}' deleted")
    return 0


_JOB_COMMANDS = {"submit": _job_submit, "status": _job_status, "logs": _job_logs,
                 "stop": _job_stop, "list": _job_list, "delete": _job_delete}


def cmd_microbenchmark(argv) -> int:
    from . import microbenchmark
    return microbenchmark.main(argv) or 0


def cmd_rllib(argv) -> int:
    from ..rllib import cli      # torch and gymnasium load only for this command
    return cli.main(argv) or 0


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
                            "$ZRAY_CLUSTER_KEY_FILE, else this host's key of that cluster); "
                            "with --head: use this key instead of a fresh one (kept "
                            "across restarts, as `zray up` does)")
    start.add_argument("--port", type=int, default=6380, help="GCS port on the head")
    start.add_argument("--gcs-storage", metavar="URL",
                       help="where the head's GCS keeps its tables: sqlite:///abs/path.db or "
                            "redis://host:port/db (default: $ZRAY_GCS_STORAGE, else "
                            "<session_dir>/gcs.db); the GCS is restarted when it dies and "
                            "reloads them")
    start.add_argument("--gcs-storage-reuse", action="store_true",
                       help="take over the tables another cluster left in --gcs-storage "
                            "(a replaced head); without it such a storage is refused")
    start.add_argument("--node-ip-address", default="127.0.0.1",
                       help="the address other nodes reach this one at")
    start.add_argument("--num-cpus", type=float, help="default: the cores of this host")
    start.add_argument("--num-gpus", type=float, default=0)
    start.add_argument("--resources", help='custom resources as JSON, e.g. \'{"disk": 2}\'')
    start.add_argument("--object-store-memory", type=int,
                       help="bytes of shared memory for objects (default: 30%% of memory)")
    start.add_argument("--include-dashboard", type=_bool_flag, default=True,
                       metavar="{true,false}", help="start the dashboard on the head "
                                                    "(default true)")
    start.add_argument("--dashboard-host", default="127.0.0.1",
                       help="address the dashboard binds (default loopback)")
    start.add_argument("--dashboard-port", type=int, default=None,
                       help="default 8265 (a free port when 8265 is taken)")
    start.add_argument("--dashboard-token-file",
                       help="file (mode 0600) holding the dashboard token (default: a fresh "
                            "token in <session_dir>/dashboard.token, or $ZRAY_DASHBOARD_TOKEN)")
    start.add_argument("--dashboard-allowed-hosts", default="",
                       help="comma-separated host names browsers may use to reach the "
                            "dashboard, besides its bind address and localhost")
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
    lst.add_argument("what", choices=["nodes", "actors", "tasks", "jobs", "placement-groups",
                                      "objects", "workers"])
    lst.add_argument("--filter", action="append", metavar="KEY=VALUE",
                     help="keep rows whose KEY equals VALUE (KEY!=VALUE: differs); repeatable")
    lst.add_argument("--limit", type=int, default=100, help="at most this many rows")
    lst.add_argument("--format", choices=["table", "json"], default="table")
    lst.add_argument("--address", help="HOST:PORT of the GCS (default: this host's cluster)")
    lst.add_argument("--cluster-key-file", help="the cluster's key file (default: as for "
                                                "`zray start --address`)")
    lst.set_defaults(func=cmd_list)

    summary = sub.add_parser("summary", help="summaries: `zray summary tasks`")
    summary.add_argument("what", choices=["tasks"])
    summary.add_argument("--address", help="HOST:PORT of the GCS (default: this host's "
                                           "cluster)")
    summary.add_argument("--cluster-key-file", help="the cluster's key file")
    summary.set_defaults(func=cmd_summary)

    job = sub.add_parser("job", help="submit and manage jobs through the dashboard")
    job.add_argument("--address", help="the dashboard, http://HOST:PORT (default: "
                                       "$ZRAY_DASHBOARD_ADDRESS, else this host's cluster's)")
    job.add_argument("--token-file", help="the dashboard token's file (default: "
                                          "$ZRAY_DASHBOARD_TOKEN, else this host's cluster's)")
    jobs = job.add_subparsers(dest="job_command", required=True)
    submit = jobs.add_parser("submit", help="run an entrypoint as a job: "
                                            "`zray job submit -- python run.py`")
    submit.add_argument("--submission-id")
    submit.add_argument("--working-dir", help="a local directory, uploaded as the job's "
                                              "working directory")
    submit.add_argument("--runtime-env-json", help='e.g. \'{"env_vars": {"A": "1"}}\'')
    submit.add_argument("--no-wait", action="store_true",
                        help="return at once instead of following the logs")
    submit.add_argument("entrypoint", nargs=argparse.REMAINDER)
    for name, text in (("status", "the job's status"), ("delete", "forget a finished job")):
        one = jobs.add_parser(name, help=text)
        one.add_argument("job_id")
    logs = jobs.add_parser("logs", help="the job's output")
    logs.add_argument("job_id")
    logs.add_argument("-f", "--follow", action="store_true", help="until the job ends")
    stop = jobs.add_parser("stop", help="stop a running job (SIGTERM, then SIGKILL)")
    stop.add_argument("job_id")
    stop.add_argument("--no-wait", action="store_true")
    jobs.add_parser("list", help="every job")
    job.set_defaults(func=cmd_job)

    timeline = sub.add_parser("timeline", help="write the task timeline as Chrome trace JSON")
    timeline.add_argument("--address", help="HOST:PORT of the GCS (default: this host's "
                                            "cluster)")
    timeline.add_argument("--cluster-key-file", help="the cluster's key file (default: as for "
                                                     "`zray start --address`)")
    timeline.add_argument("--output", help="where to write it (default: "
                                           "/tmp/zray-timeline-<date>.json)")
    timeline.set_defaults(func=cmd_timeline)

    # cluster_launcher: up/down/exec/submit/attach/... from a cluster YAML
    from ..cluster_launcher.cli import add_parsers as add_cluster_launcher_parsers
    add_cluster_launcher_parsers(sub)

    sub.add_parser("microbenchmark", help="measure core operations (see --help)",
                   add_help=False)
    sub.add_parser("rllib", help="reinforcement learning: `zray rllib train --algo PPO ...`",
                   add_help=False)
    return ap


def main(argv=None) -> int:
    """The ``zray`` command; returns its exit code."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "microbenchmark":
            return cmd_microbenchmark(argv[1:])
        if argv and argv[0] == "rllib":
            return cmd_rllib(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except session.UnsafePathError as err:
        print(f"zray: {err}", file=sys.stderr)
        return 1
    except _CliError as err:
        print(err, file=sys.stderr)
        return err.code
    except BrokenPipeError:
        # whoever read our output has gone (`zray status | head`): stop quietly,
        # and keep the interpreter's final flush from raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())

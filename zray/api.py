"""The public API, as in Ray: ``init``, ``remote``, ``get``, ``put``, ``wait``,
``cancel``, ``shutdown`` and the cluster queries."""
from __future__ import annotations

import atexit
import inspect
import logging
import os
import sys
import threading
import time
import uuid
import warnings

from ._private import session
from .broker import protocol as p
from .broker import security, sockets
from .broker.rpc import RpcClient
from .config import config
from ._private.cluster_key import locate_cluster_key
from ._private.node import NodeProcesses, free_port, is_listening
from .object_ref import DynamicObjectRefGenerator, ObjectRef, ObjectRefGenerator
from .remote_function import RemoteFunction
from .worker import global_state
from .worker.core_worker import CoreWorker
from .worker.global_state import require_worker

log = logging.getLogger("zray")

_lock = threading.RLock()
_local_node: NodeProcesses | None = None
_atexit_registered = False
_saved_key_env: dict | None = None      # the key variables before init() set them


class RuntimeContext:
    """What the calling process or task knows about where it runs."""

    def __init__(self, worker: CoreWorker):
        self._worker = worker

    def get_job_id(self) -> str:
        return self._worker.job_id.hex()

    @property
    def job_id(self):
        return self._worker.job_id.hex()

    def get_task_id(self) -> str | None:
        task_id = self._worker.current_task_id()
        return task_id.hex() if task_id else None

    def get_node_id(self) -> str:
        return self._worker.node_id.hex()

    @property
    def node_id(self):
        return self._worker.node_id.hex()

    def get_worker_id(self) -> str:
        return self._worker.worker_id.hex()

    def get_actor_id(self) -> str | None:
        actor_id = getattr(self._worker, "actor_id", None)
        return actor_id.hex() if actor_id else None

    @property
    def gcs_address(self) -> str:
        return self._worker.gcs_address

    @property
    def namespace(self) -> str:
        return self._worker.namespace

    def get_assigned_resources(self) -> dict:
        spec = self._worker.current_spec()
        return dict(spec.resources) if spec else {}

    @property
    def was_current_actor_reconstructed(self) -> bool:
        """True in an actor whose process was started by a restart."""
        return self._worker.actor_reconstructed


def is_initialized() -> bool:
    return global_state.worker is not None


def init(address: str | None = None, *, num_cpus=None, num_gpus=None, resources=None,
         object_store_memory=None, namespace=None, ignore_reinit_error=False,
         logging_level=logging.INFO, log_to_driver=True, include_dashboard=None,
         dashboard_host="127.0.0.1", dashboard_port=None, _memory=None, **ray_only):
    """Connect this process to a cluster, starting a local one if needed.

    With no ``address`` (and no ``ZRAY_ADDRESS``) a GCS and a raylet start
    here and stop at ``shutdown()`` or exit. ``address="auto"`` joins the
    cluster ``zray start --head`` started on this host; ``"host:port"`` joins
    the cluster whose GCS listens there.

    Every TCP connection is encrypted and authenticated with the cluster key
    (ZeroMQ CURVE): a local cluster gets a fresh key in
    ``<session_dir>/cluster.key``; joining uses ``ZRAY_CLUSTER_KEY`` /
    ``ZRAY_CLUSTER_KEY_FILE`` if set, else the key file this host holds for
    that cluster (``zray start`` writes one).

    A local cluster also starts the dashboard (``include_dashboard`` None or
    True; False: not) on ``dashboard_host:dashboard_port`` (default
    127.0.0.1:8265, or a free port when that one is taken), without waiting
    for it; its URL is printed, its token is in ``<session_dir>/dashboard.token``.

    Ray's other keywords (``runtime_env``, ``job_config``, ``local_mode``, ...)
    are accepted and ignored with one warning that names them; a keyword Ray's
    ``init`` does not have raises TypeError."""
    global _local_node, _atexit_registered
    _check_ray_only_keywords(ray_only)
    with _lock:
        if is_initialized():
            if ignore_reinit_error:
                return RuntimeContext(global_state.worker)
            raise RuntimeError("Maybe you called zray.init twice by accident? This error can "
                               "be suppressed by passing ignore_reinit_error=True, or by "
                               "calling zray.shutdown() first.")
        logging.getLogger("zray").setLevel(logging_level)
        address = address or os.environ.get("ZRAY_ADDRESS") or os.environ.get("RAY_ADDRESS")
        if address in ("local", ""):
            address = None
        if resources and ("CPU" in resources or "GPU" in resources):
            raise ValueError("Use the 'num_cpus' and 'num_gpus' keywords instead of 'CPU' "
                             "and 'GPU' in 'resources'")
        if address is None:
            session_dir = session.new_session_dir()
            gcs_address = f"127.0.0.1:{free_port()}"
            node = NodeProcesses(session_dir, detached=False)
            _set_key_env(node.new_cluster_key())
            node_id = os.urandom(16)
            try:
                node.prestart_zygote(node_id)   # the first task waits for it: first
                node.start_gcs(gcs_address)
                raylet_endpoint = node.start_raylet(
                    gcs_address, node_id, num_cpus=num_cpus, num_gpus=num_gpus,
                    memory=_memory, resources=resources,
                    object_store_memory=object_store_memory)
                dashboard = _start_dashboard(node, gcs_address, include_dashboard,
                                             dashboard_host, dashboard_port)
            except BaseException:
                node.stop()
                _restore_key_env()
                raise
            _local_node = node
        else:
            if num_cpus is not None or num_gpus is not None or resources:
                raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus "
                                 "and resources must not be given: they belong to "
                                 "`zray start`.")
            try:
                gcs_address, raylet_endpoint, session_dir = _find_cluster(address)
            except BaseException:
                _restore_key_env()
                raise
        try:
            worker = _connect(gcs_address, raylet_endpoint, session_dir, namespace or "",
                              log_to_driver)
        except BaseException as err:
            exited = _exited_daemon(_local_node) if isinstance(err, ConnectionError) else None
            if _local_node is not None:
                _local_node.stop()
                _local_node = None
            _restore_key_env()
            if exited:
                raise ConnectionError(f"{err}: {exited}") from None
            raise
        global_state.worker = worker
        if address is None and dashboard is not None:
            try:            # on stderr, as Ray logs it; a closed stream: not shown
                print(f"zray: dashboard at {dashboard.url} (token in {dashboard.token_file})",
                      file=sys.stderr)
            except (OSError, ValueError, AttributeError):
                log.debug("dashboard at %s (stderr closed)", dashboard.url)
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return RuntimeContext(worker)


#: keywords of Ray's init() that zray accepts but does not act on (yet)
RAY_INIT_KEYWORDS_IGNORED = frozenset({
    "labels", "local_mode", "job_config", "configure_logging", "logging_format",
    "logging_config", "runtime_env", "enable_resource_isolation", "cgroup_path",
    "system_reserved_cpu", "system_reserved_memory", "proxy_server_url", "storage",
    "_node_ip_address", "_redis_username", "_redis_password", "_temp_dir",
    "_metrics_export_port", "_system_config", "_tracing_startup_hook", "_node_name",
    "_enable_object_reconstruction", "_plasma_directory", "_object_spilling_directory",
    "_max_cpu_frequency", "_driver_object_store_memory", "_include_log_monitor",
    "_skip_env_hook", "_cgroup_path"})


def _check_ray_only_keywords(given: dict) -> None:
    """TypeError for a keyword Ray's init() lacks; one warning naming the
    Ray keywords zray ignores."""
    unknown = sorted(set(given) - RAY_INIT_KEYWORDS_IGNORED)
    if unknown:
        raise TypeError(f"init() got an unexpected keyword argument {unknown[0]!r}"
                        + (f" (and {', '.join(map(repr, unknown[1:]))})" if unknown[1:] else ""))
    if given:
        warnings.warn(f"zray.init() ignores Ray's {', '.join(sorted(given))}: zray does not "
                      f"support {'it' if len(given) == 1 else 'them'} yet", stacklevel=3)


#: a local cluster's dashboard server starts this long after init(), so the
#: driver's first tasks have the CPU first
_DASHBOARD_START_DELAY_S = 1.0


def _exited_daemon(node) -> str | None:
    """Which daemon of the local cluster ``node`` exited (and where its logs
    are), or None."""
    if node is None:
        return None
    try:
        node.check_alive()
    except RuntimeError as dead:
        return str(dead)
    return None


def _start_dashboard(node, gcs_address, include, host, port):
    """Start the local cluster's dashboard unless ``include`` is False."""
    if include is False:
        return None
    from .dashboard import launch as dashboard_launch
    return dashboard_launch.start(node, gcs_address, host=host, port=port,
                                  start_delay=_DASHBOARD_START_DELAY_S)


def _find_cluster(address: str) -> tuple[str, str, str]:
    """(gcs address, local raylet endpoint, session dir) of a running cluster."""
    if address == "auto":
        current = session.read_current_cluster()
        if current is None:
            raise ConnectionError("address='auto' found no running zray cluster on this "
                                  "host: start one with `zray start --head`")
        address = current["gcs_address"]
        key_source = _use_cluster_key(address, current.get("session_dir"))
    else:
        address = address.removeprefix("zray://").removeprefix("ray://")
        key_source = _use_cluster_key(address)
    gcs = RpcClient(sockets.tcp_endpoint(address), config.rpc_timeout_s, "GCS")
    try:
        nodes = gcs.call(p.GetNodes(), timeout=config.connect_timeout_s).nodes
    except TimeoutError as err:
        if getattr(err, "wrong_key", False):        # the CURVE handshake failed for a key
            raise ConnectionError(
                f"could not join the zray cluster at {address}: {err.reason} (wrong cluster "
                f"key? this process used {key_source})") from None
        if is_listening(address):
            raise ConnectionError(
                f"could not reach a zray cluster at {address}: it did not answer within "
                f"{config.connect_timeout_s:.0f}s ({getattr(err, 'reason', 'no answer')})"
            ) from None
        raise ConnectionError(
            f"could not reach a zray cluster at {address} within "
            f"{config.connect_timeout_s:.0f}s: nothing listens there; is `zray start "
            f"--head` running there, and is the address right?") from None
    finally:
        gcs.close()
    local_ips = _local_ips()
    for node in nodes:
        if node.alive and node.node_ip in local_ips and os.path.isdir(node.session_dir):
            return address, session.raylet_ipc(node.session_dir, node.node_id), \
                node.session_dir
    raise ConnectionError(f"the cluster at {address} has no live node on this host: "
                          f"run `zray start --address={address}` here first")


def _use_cluster_key(address: str, session_dir: str | None = None) -> str:
    """Make this process use the key of the cluster at ``address`` (see
    ``locate_cluster_key``); returns where the key came from. ConnectionError
    when there is none."""
    path, source = locate_cluster_key(address, session_dir=session_dir)
    if path is not None:
        _set_key_env(path)
    return source


def _set_key_env(path: str) -> None:
    """Name the cluster key for this process (and what it starts) until
    shutdown() puts the previous variables back."""
    global _saved_key_env
    if _saved_key_env is None:
        _saved_key_env = {name: os.environ.get(name)
                          for name in (security.ENV_KEY, security.ENV_KEY_FILE)}
    os.environ.pop(security.ENV_KEY, None)
    os.environ[security.ENV_KEY_FILE] = path


def _restore_key_env() -> None:
    global _saved_key_env
    saved, _saved_key_env = _saved_key_env, None
    for name, value in (saved or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _local_ips() -> set[str]:
    import psutil
    ips = {"127.0.0.1"}
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            ips.add(a.address)
    return ips


def _connect(gcs_address, raylet_endpoint, session_dir, namespace, log_to_driver):
    namespace = namespace or f"anonymous-{uuid.uuid4().hex[:12]}"
    gcs = RpcClient(sockets.tcp_endpoint(gcs_address), config.rpc_timeout_s, "GCS")
    try:
        job_id = gcs.call(p.RegisterJob(
            os.getpid(), [], namespace, [path for path in sys.path if path],
            os.getcwd()), timeout=config.connect_timeout_s).job_id
    except TimeoutError as err:
        raise ConnectionError(f"the GCS at {gcs_address} did not answer within "
                              f"{config.connect_timeout_s:.0f}s: "
                              f"{getattr(err, 'reason', 'no answer came')}"
                              f"{' (wrong cluster key?)' if getattr(err, 'wrong_key', False) else ''}"
                              ) from None
    finally:
        gcs.close()
    worker = CoreWorker("driver", raylet_endpoint, session_dir, job_id=job_id)
    worker.namespace = namespace
    if log_to_driver:
        worker.subscribe_logs(_print_worker_lines)
    return worker


def _print_worker_lines(pid, ip, lines) -> None:
    """Workers' output on this driver's stdout (dropped when that is closed:
    the lines stay in the workers' log files)."""
    out = sys.stdout
    try:
        for line in lines:
            out.write(line + "\n")
        out.flush()
    except (OSError, ValueError, AttributeError):
        pass


def shutdown() -> None:
    """Disconnect; stop the local cluster if ``init()`` started one."""
    global _local_node
    with _lock:
        worker = global_state.worker
        global_state.worker = None
        if worker is not None:
            worker.shutdown()
        if _local_node is not None:
            _local_node.stop()
            _local_node = None
        sockets.term()
        _restore_key_env()


def remote(*args, **options):
    """``@zray.remote`` or ``@zray.remote(num_cpus=..., ...)`` on a function or class."""
    if len(args) == 1 and not options and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @zray.remote decorator must be applied either with no "
                        "arguments and no parentheses, or with keyword arguments only, "
                        "e.g. @zray.remote(num_cpus=1)")
    return lambda target: _make_remote(target, options)


def _make_remote(target, options):
    if inspect.isclass(target):
        from .actor import ActorClass
        return ActorClass(target, options)
    return RemoteFunction(target, options)


def get(object_refs, *, timeout: float | None = None):
    """The value(s) of ObjectRef(s); raises the task's error if it failed.
    A generator task's result (``num_returns="dynamic"``) comes back, once
    the task has finished, as a DynamicObjectRefGenerator of its refs."""
    worker = require_worker()
    if isinstance(object_refs, ObjectRefGenerator):
        return _finished_generator(worker, object_refs, timeout)
    if isinstance(object_refs, list) and any(isinstance(ref, ObjectRefGenerator)
                                             for ref in object_refs):
        deadline = None if timeout is None else time.monotonic() + timeout
        return [get(ref, timeout=None if deadline is None
                    else max(0.0, deadline - time.monotonic()))
                for ref in object_refs]
    return worker.get(object_refs, timeout)


def _finished_generator(worker, generator: ObjectRefGenerator, timeout):
    worker.get(generator.completed(), timeout)    # raises the task's error
    return DynamicObjectRefGenerator(list(generator))


def put(value) -> ObjectRef:
    """Store ``value`` in the cluster and return a ref to it."""
    return require_worker().put(value)


def wait(object_refs, *, num_returns: int = 1, timeout: float | None = None,
         fetch_local: bool = True):
    """``(ready, not_ready)`` once ``num_returns`` refs are ready or time is up
    (``([], [])`` for no refs, as Ray). ``fetch_local=True``: a ref counts as
    ready only once its value is on this node (a stored object of another
    node is pulled here first); False: as soon as it exists anywhere."""
    if not object_refs:
        return [], []
    return require_worker().wait(list(object_refs) if not isinstance(object_refs, list)
                                 else object_refs, num_returns, timeout, fetch_local)


def cancel(object_ref: ObjectRef, *, force: bool = False, recursive: bool = True) -> None:
    """Cancel the task that returns ``object_ref``; ``get`` then raises
    TaskCancelledError. ``force=True`` kills the worker running it."""
    if not isinstance(object_ref, ObjectRef):
        raise TypeError(f"zray.cancel() takes an ObjectRef, got {type(object_ref).__name__}")
    require_worker().cancel(object_ref, force)


def get_runtime_context() -> RuntimeContext:
    return RuntimeContext(require_worker())


def nodes() -> list[dict]:
    """Every node that joined, in Ray's format (``Alive`` false for dead ones)."""
    worker = require_worker()
    out = []
    for node in worker.gcs.call(p.GetNodes()).nodes:
        out.append({
            "NodeID": node.node_id.hex(), "Alive": node.alive,
            "NodeManagerAddress": node.node_ip, "NodeManagerHostname": node.hostname,
            "NodeName": node.node_ip, "Resources": node.resources if node.alive else {},
            "alive": node.alive, "RayletSocketName": node.address,
            "ObjectStoreSocketName": node.address,
        })
    return out


def cluster_resources() -> dict:
    """Total resources of the live nodes."""
    return _sum_resources("resources")


def available_resources() -> dict:
    """Resources free now on the live nodes (as last reported)."""
    return {k: v for k, v in _sum_resources("available").items() if v > 0}


def _sum_resources(field: str) -> dict:
    worker = require_worker()
    total: dict = {}
    for node in worker.gcs.call(p.GetNodes()).nodes:
        if node.alive:
            for k, v in getattr(node, field).items():
                total[k] = total.get(k, 0.0) + v
    return total

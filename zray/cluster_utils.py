"""``Cluster``: several nodes on one machine, for tests and experiments, as
``ray.cluster_utils.Cluster``. Every node is its own raylet process with its
own object store; they talk to each other over TCP like separate hosts."""
from __future__ import annotations

import os
import signal
import time

import zray

from ._private import session
from .broker import protocol as p
from .broker import sockets
from .broker.rpc import RpcClient
from .broker.security import ENV_KEY, ENV_KEY_FILE

from ._private.node import NodeProcesses, free_port


class ClusterNode:
    """A node of a Cluster: its id and the raylet process that runs it."""

    def __init__(self, node_id: bytes, process, resources: dict):
        self.node_id = node_id.hex()
        self.process = process
        self.resources = resources

    @property
    def unique_id(self) -> str:
        return self.node_id

    def __repr__(self):
        return f"ClusterNode({self.node_id[:12]})"


class Cluster:
    def __init__(self, initialize_head: bool = False, connect: bool = False,
                 head_node_args: dict | None = None, shutdown_at_exit: bool = True):
        self.session_dir = session.new_session_dir()
        self._procs = NodeProcesses(self.session_dir, detached=False)
        # The cluster's key (<session_dir>/cluster.key): this process uses it
        # to talk to the cluster until shutdown().
        self._saved_key_env = {k: os.environ.get(k) for k in (ENV_KEY, ENV_KEY_FILE)}
        os.environ.pop(ENV_KEY, None)
        os.environ[ENV_KEY_FILE] = self._procs.new_cluster_key()
        self.gcs_address: str | None = None
        self.head_node: ClusterNode | None = None
        self.worker_nodes: list[ClusterNode] = []
        self._removed: set[str] = set()
        if initialize_head:
            self.add_node(**(head_node_args or {}))
        if connect:
            self.connect()

    @property
    def address(self) -> str:
        return self.gcs_address

    def connect(self, namespace: str | None = None):
        """``zray.init`` this process against the cluster (through the head)."""
        return zray.init(address=self.gcs_address, namespace=namespace)

    def add_node(self, wait: bool = True, num_cpus=1, num_gpus=0, resources=None,
                 object_store_memory=128 * 1024 * 1024, memory=None, **_) -> ClusterNode:
        """Start a node (the first one is the head, with the GCS)."""
        if self.gcs_address is None:
            self.gcs_address = f"127.0.0.1:{free_port()}"
            self._procs.start_gcs(self.gcs_address)
        node_id = os.urandom(16)
        self._procs.start_raylet(self.gcs_address, node_id, num_cpus=num_cpus,
                                 num_gpus=num_gpus, resources=resources, memory=memory,
                                 object_store_memory=object_store_memory)
        node = ClusterNode(node_id, self._procs.procs[-1],
                           {"CPU": num_cpus, "GPU": num_gpus, **(resources or {})})
        if self.head_node is None:
            self.head_node = node
        else:
            self.worker_nodes.append(node)
        if wait:
            self._wait(lambda alive: node.node_id in alive)
        return node

    def remove_node(self, node: ClusterNode, allow_graceful: bool = False) -> None:
        """Kill the node's raylet (its workers die with it), as a crash would."""
        sig = signal.SIGTERM if allow_graceful else signal.SIGKILL
        if node.process.poll() is None:
            node.process.send_signal(sig)
            node.process.wait(10)
        self._removed.add(node.node_id)
        if node in self.worker_nodes:
            self.worker_nodes.remove(node)

    def list_all_nodes(self) -> list[ClusterNode]:
        nodes = [self.head_node] if self.head_node else []
        return nodes + list(self.worker_nodes)

    def wait_for_nodes(self, timeout: float = 30) -> None:
        """Wait until the GCS sees exactly the nodes that were added and not removed."""
        expected = {n.node_id for n in self.list_all_nodes()} - self._removed
        self._wait(lambda alive: alive == expected, timeout)

    def _alive(self) -> set[str]:
        gcs = RpcClient(sockets.tcp_endpoint(self.gcs_address), 2.0, "GCS")
        try:
            return {n.node_id.hex() for n in gcs.call(p.GetNodes()).nodes if n.alive}
        except TimeoutError:
            return set()
        finally:
            gcs.close()

    def _wait(self, done, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if done(self._alive()):
                return
            for node in self.list_all_nodes():
                if node.node_id not in self._removed and node.process.poll() is not None:
                    raise RuntimeError(f"node {node.node_id[:12]} exited with code "
                                       f"{node.process.returncode}; see "
                                       f"{self.session_dir}/logs")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster's nodes did not come up within {timeout}s; "
                                   f"see {self.session_dir}/logs")
            time.sleep(0.05)

    def shutdown(self) -> None:
        """Disconnect this process if connected, then stop every node."""
        if zray.is_initialized():
            zray.shutdown()
        self._procs.stop()
        for name, value in self._saved_key_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value




"""The GCS process: cluster tables behind one ROUTER, changes on one PUB."""
from __future__ import annotations

import logging

import msgpack

from ..broker import protocol as p
from ..broker import sockets
from ..broker.service import Service
from ..config import config
from .job_manager import JobManager
from .kv_manager import FUNCTIONS, KVManager
from .node_manager import NodeManager
from .storage import InMemoryStorage

log = logging.getLogger(__name__)


class GcsServer(Service):
    name = "gcs"

    def __init__(self, address: str, session_dir: str, storage=None):
        super().__init__()
        self.session_dir = session_dir
        storage = storage or InMemoryStorage()
        self.nodes = NodeManager(storage, config.node_timeout_s)
        self.jobs = JobManager(storage)
        self.kv = KVManager(storage)
        router, self.address = sockets.server_router(sockets.tcp_endpoint(address))
        host = self.address.rsplit(":", 1)[0]
        self.pub, self.pub_address = sockets.publisher(f"{host}:0")
        self.serve(router)
        self.every(config.heartbeat_interval_s, self.check_node_health)
        log.info("GCS serving at %s, events at %s", self.address, self.pub_address)

    def publish(self, topic: bytes, event) -> None:
        self.pub.send_multipart([topic, msgpack.packb(event, use_bin_type=True)])

    # -- nodes ------------------------------------------------------------
    def handle_register_node(self, req, msg: p.RegisterNode):
        node = self.nodes.register(msg)
        log.info("node %s joined from %s with %s", msg.node_id.hex()[:12], msg.node_ip,
                 msg.resources)
        self.publish(p.TOPIC_NODE, {"event": "added", "node": self.nodes.public(node)})
        self.reply(req, p.RegisterNodeReply(self.pub_address, self.session_dir))

    def handle_heartbeat(self, req, msg: p.Heartbeat):
        known = self.nodes.heartbeat(msg) is not None
        self.reply(req, p.Ack(known))

    def handle_unregister_node(self, req, msg: p.UnregisterNode):
        self._node_down(msg.node_id, "stopped")
        self.reply(req, p.Ack(True))

    def check_node_health(self) -> None:
        for node_id in self.nodes.expired():
            self._node_down(node_id, f"no heartbeat for {config.node_timeout_s}s")

    def _node_down(self, node_id: bytes, reason: str) -> None:
        node = self.nodes.mark_dead(node_id)
        if node is not None:
            log.warning("node %s is dead: %s", node_id.hex()[:12], reason)
            self.publish(p.TOPIC_NODE, {"event": "removed", "node": self.nodes.public(node),
                                        "reason": reason})

    def handle_get_nodes(self, req, msg):
        self.reply(req, p.Ack(self.nodes.all()))

    def handle_get_cluster_info(self, req, msg):
        self.reply(req, p.Ack({"nodes": self.nodes.all(), "jobs": self.jobs.all()}))

    # -- jobs -------------------------------------------------------------
    def handle_register_job(self, req, msg: p.RegisterJob):
        job = self.jobs.register(msg)
        log.info("job %s started by pid %d", job["job_id"].hex(), msg.driver_pid)
        self.publish(p.TOPIC_JOB, {"event": "started", "job": job})
        self.reply(req, p.Ack([job["job_id"], self.pub_address]))

    def handle_finish_job(self, req, msg: p.FinishJob):
        job = self.jobs.finish(msg.job_id)
        if job is not None:
            log.info("job %s finished", msg.job_id.hex())
            self.publish(p.TOPIC_JOB, {"event": "finished", "job": job})
        self.reply(req, p.Ack(job is not None))

    def handle_get_job(self, req, msg: p.GetJob):
        self.reply(req, p.Ack(self.jobs.get(msg.job_id)))

    # -- functions and KV -------------------------------------------------
    def handle_export_function(self, req, msg: p.ExportFunction):
        self.kv.put(FUNCTIONS, msg.function_hash, msg.blob, overwrite=False)
        self.reply(req, p.Ack(True))

    def handle_get_function(self, req, msg: p.GetFunction):
        self.reply(req, p.Ack(self.kv.get(FUNCTIONS, msg.function_hash)))

    def handle_kv_put(self, req, msg: p.KVPut):
        self.reply(req, p.Ack(self.kv.put(msg.namespace, msg.key, msg.value, msg.overwrite)))

    def handle_kv_get(self, req, msg: p.KVGet):
        self.reply(req, p.Ack(self.kv.get(msg.namespace, msg.key)))

    def handle_kv_delete(self, req, msg: p.KVDelete):
        self.reply(req, p.Ack(self.kv.delete(msg.namespace, msg.key)))

    def handle_kv_keys(self, req, msg: p.KVKeys):
        self.reply(req, p.Ack(self.kv.keys(msg.namespace, msg.prefix)))

    # -- events -----------------------------------------------------------
    def handle_publish_logs(self, req, msg: p.PublishLogs):
        self.publish(p.log_topic(msg.job_id), [msg.pid, msg.node_ip, msg.lines])

    def handle_ping(self, req, msg):
        self.reply(req, p.Ack("pong"))

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)

"""The GCS process: cluster tables behind one ROUTER, changes on one PUB."""
from __future__ import annotations

import logging
import time

from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import Sender
from ..broker.service import Service
from ..config import config
from .actor_manager import ALIVE, DEAD, ActorManager
from .job_manager import JobManager
from .kv_manager import FUNCTIONS, KVManager
from .metrics_manager import MetricsManager
from .node_manager import NodeManager
from .placement_group_manager import (CREATED, PENDING, REMOVED, STRATEGIES,
                                      PlacementGroupManager, place)
from .storage import InMemoryStorage
from .task_event_manager import TaskEventManager

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
        self.actors = ActorManager(storage)
        self.pgs = PlacementGroupManager(storage)
        self.task_events = TaskEventManager(config.task_events_max)
        self.metrics = MetricsManager()
        self.sender = Sender("gcs")     # to raylets and to actor watchers' inboxes: never blocks
        self.unscheduled: list[bytes] = []   # actors no live node can host yet
        self.requests_served = 0
        router, self.address = sockets.server_router(sockets.tcp_endpoint(address))
        host = self.address.rsplit(":", 1)[0]
        self.pub, self.pub_address = sockets.publisher(f"{host}:0")
        self.serve(router)
        self.every(config.heartbeat_interval_s, self.check_node_health)
        self.every(1.0, self.publish_task_events)
        log.info("GCS serving at %s, events at %s; a node silent for %ss is dead",
                 self.address, self.pub_address, config.node_timeout_s)

    def dispatch_frames(self, identity: bytes, frames, sock=None) -> None:
        self.requests_served += 1           # for the dashboard's requests/s
        return super().dispatch_frames(identity, frames, sock)

    def publish(self, topic: bytes, event) -> None:
        self.pub.send_multipart([topic, p.encode_event(event)])

    # -- nodes ------------------------------------------------------------
    def handle_register_node(self, req, msg: p.RegisterNode):
        node = self.nodes.register(msg)
        log.info("node %s joined from %s with %s", msg.node_id.hex()[:12], msg.node_ip,
                 msg.resources)
        self.publish(p.TOPIC_NODE, {"event": "added", "node": self.nodes.public(node)})
        self.reply(req, p.RegisterNodeReply(self.pub_address, self.session_dir))
        waiting, self.unscheduled = self.unscheduled, []
        for actor_id in waiting:
            actor = self.actors.get(actor_id)
            if actor is not None and actor["state"] != DEAD:
                try:        # one actor that cannot be scheduled never stops the others
                    self._schedule_actor(actor)
                except Exception:
                    log.exception("actor %s: cannot schedule it", actor_id.hex()[:12])

    def handle_heartbeat(self, req, msg: p.Heartbeat):
        node = self.nodes.heartbeat(msg)
        if node is not None:
            self.publish(p.TOPIC_RESOURCES, {"node_id": msg.node_id, "available": msg.available,
                                            "total": msg.total, "stats": node.get("stats")})
            if self.pgs.pending():
                self._place_pending_groups()
        self.reply(req, p.Ack(node is not None))

    def handle_unregister_node(self, req, msg: p.UnregisterNode):
        self._node_down(msg.node_id, "stopped")
        self.reply(req, p.Ack(True))

    def check_node_health(self) -> None:
        for node_id in self.nodes.expired():
            self._node_down(node_id, f"no heartbeat for {config.node_timeout_s}s")

    def _node_down(self, node_id: bytes, reason: str) -> None:
        node = self.nodes.mark_dead(node_id)
        if node is None:
            return
        log.warning("node %s is dead: %s", node_id.hex()[:12], reason)
        self.publish(p.TOPIC_NODE, {"event": "removed", "node": self.nodes.public(node),
                                    "reason": reason})
        for pg in self.pgs.on_node(node_id):
            pg["nodes"] = [None if n == node_id else n for n in pg["nodes"]]
            pg["state"] = PENDING
            log.warning("placement group %s lost bundles with node %s; placing them again",
                        pg["pg_id"].hex()[:12], node_id.hex()[:12])
        self._place_pending_groups()
        for actor in self.actors.all():
            if actor["state"] == ALIVE and actor["node_id"] == node_id:
                self.handle_report_actor_died(None, p.ReportActorDied(
                    actor["actor_id"], f"its node {node_id.hex()[:12]} died", False))

    def handle_get_nodes(self, req, msg):
        self.reply(req, p.Ack(self.nodes.all()))

    def handle_get_cluster_info(self, req, msg):
        self.reply(req, p.Ack({"nodes": self.nodes.all(), "jobs": self.jobs.all(),
                               "pub_address": self.pub_address,
                               "requests_served": self.requests_served}))

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
            for pg in self.pgs.of_job(msg.job_id):
                self._remove_group(pg)
            for actor in self.actors.of_job(msg.job_id):
                self._kill_actor(actor, no_restart=True,
                                 reason="its owner (the driver of its job) exited")
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

    # -- actors -----------------------------------------------------------
    def handle_register_actor(self, req, msg: p.RegisterActor):
        if msg.name:
            existing = self.actors.named(msg.name, msg.namespace)
            if existing is not None:
                if msg.get_if_exists:
                    self.reply(req, p.Ack([False, existing["actor_id"],
                                           existing["handle_meta"]]))
                    return
                self.reply(req, p.ErrorReply(
                    "ValueError", f"The name {msg.name!r} (namespace={msg.namespace!r}) is "
                    f"already taken by a live actor; pick another name, or pass "
                    f"get_if_exists=True to get that actor"))
                return
        spec = p.task_spec(msg.spec)
        actor = self.actors.register(msg, spec.job_id)
        log.info("actor %s (%s) registered", msg.actor_id.hex()[:12], msg.class_name)
        self._actor_changed(actor)
        self._schedule_actor(actor)
        self.reply(req, p.Ack([True, msg.actor_id, msg.handle_meta]))

    def _schedule_actor(self, actor: dict) -> None:
        """Send the creation task to the live node with the most free CPU that fits."""
        spec = p.task_spec(actor["spec"])
        fits = [n for n in self.nodes.all() if n["alive"] and all(
            n["resources"].get(k, 0.0) >= v for k, v in spec.resources.items())]
        if not fits:
            log.warning("actor %s needs %s: no live node has that; it waits",
                        actor["actor_id"].hex()[:12], spec.resources)
            self.unscheduled.append(actor["actor_id"])
            return
        node = max(fits, key=lambda n: n["available"].get("CPU", 0.0))
        if spec.options.get("strategy") == "NODE":
            wanted = [n for n in fits if n["node_id"] == spec.options.get("node_id")]
            if wanted:
                node = wanted[0]
            elif not spec.options.get("soft"):
                actor, _ = self.actors.died(actor["actor_id"], "its node affinity names a node "
                                            "that is not alive", True)
                if actor is not None:
                    self._actor_changed(actor)
                return
        elif spec.options.get("strategy") == "SPREAD":
            counts = {n["node_id"]: 0 for n in fits}
            for other in self.actors.all():
                if other["state"] == ALIVE and other["node_id"] in counts:
                    counts[other["node_id"]] += 1
            node = min(fits, key=lambda n: counts[n["node_id"]])
        spec = spec._replace(attempt=actor["restarts"])
        self.task_events.record(spec.task_id, spec.attempt, p.TS_PENDING_NODE_ASSIGNMENT,
                                      time.time(), {
                                          "name": f"{spec.function_name}.__init__",
                                          "type": p.TASK_ACTOR_CREATION, "job_id": spec.job_id,
                                          "actor_id": spec.actor_id,
                                          "required_resources": spec.resources})
        self.sender.send(node["address"], p.SubmitTask(list(spec)))

    def handle_actor_started(self, req, msg: p.ActorStarted):
        actor = self.actors.started(msg)
        if actor is None:           # killed while it was being created
            node = self._node_of(msg.node_id)
            if node is not None:
                self.sender.send(node["address"], p.KillActorWorker(msg.actor_id))
        else:
            log.info("actor %s is %s", msg.actor_id.hex()[:12], actor["state"])
            self._actor_changed(actor)
        self.reply(req, p.Ack(True))

    def handle_report_actor_died(self, req, msg: p.ReportActorDied):
        actor, restart = self.actors.died(msg.actor_id, msg.message, msg.intentional)
        if actor is None:
            return
        log.info("actor %s died (%s); %s", msg.actor_id.hex()[:12], msg.message,
                 "restarting" if restart else "not restarting")
        self._actor_changed(actor)
        if restart:
            self._schedule_actor(actor)

    def handle_watch_actor(self, req, msg: p.WatchActor):
        actor = self.actors.get(msg.actor_id)
        if actor is None:
            info = p.ActorInfo(msg.actor_id, DEAD, [], 0,
                               "no such actor in this cluster (was it created in another "
                               "cluster?)", b"")
            self.sender.send(msg.reply_to, info)
            return
        if actor["state"] != DEAD:
            self.actors.watchers.setdefault(msg.actor_id, set()).add(msg.reply_to)
        self.sender.send(msg.reply_to, self.actors.info(actor))

    def handle_kill_actor(self, req, msg: p.KillActor):
        actor = self.actors.get(msg.actor_id)
        if actor is not None:
            self._kill_actor(actor, msg.no_restart, "killed by zray.kill()")
        self.reply(req, p.Ack(actor is not None))

    def _kill_actor(self, actor: dict, no_restart: bool, reason: str) -> None:
        if actor["state"] == DEAD:
            return
        if no_restart:
            actor["no_restart"] = True
        if actor["state"] == ALIVE:
            node = self._node_of(actor["node_id"])
            if node is not None and node["alive"]:
                self.sender.send(node["address"], p.KillActorWorker(actor["actor_id"]))
                if not no_restart:
                    return          # its death report decides the restart
        if no_restart:              # dead now, whether or not its process has exited
            actor, _ = self.actors.died(actor["actor_id"], reason, True)
            if actor is not None:
                self._actor_changed(actor)

    def _node_of(self, node_id: bytes):
        return next((n for n in self.nodes.all() if n["node_id"] == node_id), None)

    def _actor_changed(self, actor: dict) -> None:
        info = self.actors.info(actor)
        for endpoint in self.actors.watchers.get(actor["actor_id"], ()):
            self.sender.send(endpoint, info)
        if actor["state"] == DEAD:
            self.actors.watchers.pop(actor["actor_id"], None)
        self.publish(p.TOPIC_ACTOR, {"event": actor["state"], "actor": self.actors.public(actor)})

    def handle_get_named_actor(self, req, msg: p.GetNamedActor):
        actor = self.actors.named(msg.name, msg.namespace)
        self.reply(req, p.Ack(None if actor is None else
                              [actor["actor_id"], actor["handle_meta"]]))

    def handle_list_actors(self, req, msg):
        self.reply(req, p.Ack([self.actors.public(a) for a in self.actors.all()]))

    # -- placement groups -------------------------------------------------
    def handle_create_placement_group(self, req, msg: p.CreatePlacementGroup):
        if msg.strategy not in STRATEGIES:
            self.reply(req, p.ErrorReply("ValueError", f"strategy must be one of {STRATEGIES}, "
                                                       f"got {msg.strategy!r}"))
            return
        if msg.name and self.pgs.named(msg.name) is not None:
            self.reply(req, p.ErrorReply("ValueError", f"a placement group named {msg.name!r} "
                                                       f"already exists"))
            return
        self.pgs.create(msg)
        self._place_pending_groups()
        self.reply(req, p.Ack(True))

    def _place_pending_groups(self) -> None:
        """Reserve bundles for groups still waiting, where the nodes now fit them."""
        for pg in self.pgs.pending():
            missing = [i for i, n in enumerate(pg["nodes"]) if n is None]
            free = {n["node_id"]: n["available"] for n in self.nodes.all() if n["alive"]}
            for i, node_id in enumerate(pg["nodes"]):     # STRICT_* keep their peers' nodes
                if node_id is not None and pg["strategy"] == "STRICT_SPREAD":
                    free.pop(node_id, None)
            bundles = [pg["bundles"][i] for i in missing]
            placement = place(bundles, pg["strategy"], free)
            if placement is None:
                continue
            for i, node_id in zip(missing, placement):
                node = self._node_of(node_id)
                pg["nodes"][i] = node_id
                for k, v in pg["bundles"][i].items():          # until its next report
                    node["available"][k] = node["available"].get(k, 0.0) - v
                self.sender.send(node["address"], p.ReserveBundle(pg["pg_id"], i,
                                                                  pg["bundles"][i]))
            pg["state"] = CREATED
            log.info("placement group %s placed on %s", pg["pg_id"].hex()[:12],
                     [n.hex()[:12] for n in pg["nodes"]])

    def handle_remove_placement_group(self, req, msg: p.RemovePlacementGroup):
        pg = self.pgs.get(msg.pg_id)
        if pg is not None:
            self._remove_group(pg)
        self.reply(req, p.Ack(pg is not None))

    def _remove_group(self, pg: dict) -> None:
        if pg["state"] == REMOVED:
            return
        for i, node_id in enumerate(pg["nodes"]):
            node = self._node_of(node_id) if node_id else None
            if node is not None and node["alive"]:
                self.sender.send(node["address"], p.ReturnBundle(pg["pg_id"], i))
        pg["state"] = REMOVED

    def handle_get_placement_groups(self, req, msg: p.GetPlacementGroups):
        if msg.name:
            pgs = [pg for pg in [self.pgs.named(msg.name)] if pg]
        elif msg.pg_id:
            pgs = [pg for pg in [self.pgs.get(msg.pg_id)] if pg]
        else:
            pgs = self.pgs.all()
        self.reply(req, p.Ack([self.pgs.public(pg) for pg in pgs]))

    # -- events -----------------------------------------------------------
    def handle_add_task_events(self, req, msg: p.AddTaskEvents):
        self.task_events.add(msg)

    #: task rows published at most per publish_task_events (once a second):
    #: a live view gets the latest changes; the table has them all
    TASK_ROWS_PUBLISHED_MAX = 1000

    def publish_task_events(self) -> None:
        """Publish the task rows changed since the last call, each once."""
        rows = self.task_events.take_changed(self.TASK_ROWS_PUBLISHED_MAX)
        if rows:
            self.publish(p.TOPIC_TASK_EVENTS, rows)

    def handle_get_task_events(self, req, msg: p.GetTaskEvents):
        self.reply(req, p.TaskEventsReply(self.task_events.query(msg.limit, msg.filters),
                                          self.task_events.dropped))

    def handle_get_task_summary(self, req, msg: p.GetTaskSummary):
        by_state, by_name, types = self.task_events.summary()
        self.reply(req, p.TaskSummaryReply(by_state, by_name, len(self.task_events.rows),
                                           self.task_events.dropped, types))

    def handle_report_metrics(self, req, msg: p.ReportMetrics):
        self.metrics.report(msg.worker_id, msg.metrics)

    def handle_get_metrics(self, req, msg: p.GetMetrics):
        self.reply(req, p.MetricsReply(self.metrics.query()))

    def handle_publish_logs(self, req, msg: p.PublishLogs):
        self.publish(p.log_topic(msg.job_id), [msg.pid, msg.node_ip, msg.lines])

    def handle_ping(self, req, msg):
        self.reply(req, p.Ack("pong"))

    def close(self) -> None:
        self.sender.close()
        self.router.close(linger=0)
        self.pub.close(linger=0)
        super().close()

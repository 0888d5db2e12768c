"""The GCS process: cluster tables behind one ROUTER, changes on one PUB.

``GcsServer`` only dispatches: each handler asks a manager (one per table,
each writing its rows through the storage) or a scheduler (actors, placement
groups), replies, and publishes what changed. Built on a storage that holds
tables already (a restarted GCS), it reloads them: nodes that were alive get
a fresh heartbeat deadline, actors waiting for a worker are scheduled again,
pending placement groups are placed, and the PUB socket binds its old port.
"""
from __future__ import annotations

import errno
import logging
import time

import zmq

from ..broker import protocol as p
from ..broker import sockets
from ..broker.rpc import Sender
from ..broker.service import Service
from ..config import config
from .actor_manager import ALIVE, DEAD, OUT_OF_SCOPE, OWNER_DIED, ActorManager
from .actor_scheduler import GcsActorScheduler
from .job_manager import JobManager
from .kv_manager import FUNCTIONS, KVManager
from .metrics_manager import MetricsManager
from .node_manager import NodeManager
from .placement_group_manager import STRATEGIES, PlacementGroupManager
from .placement_group_scheduler import GcsPlacementGroupScheduler
from .session_manager import SessionManager
from .storage import InMemoryStorage
from .task_event_manager import TaskEventManager

log = logging.getLogger(__name__)

#: how long a restarted GCS waits for its old PUB port to be free
PUB_REBIND_WAIT_S = 2.0


class GcsServer(Service):
    name = "gcs"

    def __init__(self, address: str, session_dir: str, storage=None):
        super().__init__()
        self.storage = storage if storage is not None else InMemoryStorage()
        self.session = SessionManager(self.storage, session_dir)
        self.session_dir = self.session.session_dir
        self.nodes = NodeManager(self.storage, config.node_timeout_s)
        self.jobs = JobManager(self.storage)
        self.kv = KVManager(self.storage)
        self.actors = ActorManager(self.storage)
        self.pgs = PlacementGroupManager(self.storage)
        self.task_events = TaskEventManager(config.task_events_max)
        self.metrics = MetricsManager()
        self.sender = Sender("gcs")     # to raylets and to actor watchers' inboxes: never blocks
        self.actor_scheduler = GcsActorScheduler(self.nodes, self.actors, self.sender,
                                                 self.task_events, self._actor_changed)
        self.pg_scheduler = GcsPlacementGroupScheduler(self.nodes, self.pgs, self.sender)
        self.requests_served = 0
        self._cpu_seen: tuple | None = None     # see _idle_cores
        self._apply_until = 0.0                 # see publish_task_events
        self._idle_checked = 0.0                # see _still_idle
        router, self.address = sockets.server_router(sockets.tcp_endpoint(address))
        self.pub, self.pub_address = self._bind_publisher(self.address.rsplit(":", 1)[0])
        self.subscribed: set[bytes] = set()     # topic prefixes someone subscribes to
        self.watch(self.pub, self._on_subscriptions)
        self.serve(router)
        self.every(config.heartbeat_interval_s, self.check_node_health)
        self.every(1.0, self.publish_task_events)
        if self.session.reloaded:
            self._resume()
        log.info("GCS serving at %s, events at %s; a node silent for %ss is dead",
                 self.address, self.pub_address, config.node_timeout_s)

    def _bind_publisher(self, host: str):
        """The event stream (XPUB) on the port the tables remember (subscribers reconnect there by
        themselves), else on a fresh port that the tables then remember."""
        port = self.session.pub_port
        if port:
            deadline = time.monotonic() + PUB_REBIND_WAIT_S
            while True:     # a socket closed just now frees its port a moment later
                try:
                    return sockets.publisher(f"{host}:{port}")
                except zmq.ZMQError as exc:
                    if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                        log.warning("cannot bind the event stream to its old port %d (%s); "
                                    "subscribers must reconnect to a new one", port, exc)
                        break
                    time.sleep(0.02)
        pub, pub_address = sockets.publisher(f"{host}:0")
        self.session.set_pub_port(int(pub_address.rsplit(":", 1)[1]))
        return pub, pub_address

    def _resume(self) -> None:
        """After a restart: schedule actors that wait for a worker, place pending groups."""
        unfinished = self.actors.unfinished()
        log.info("GCS reloaded its tables: %d nodes alive, %d actors to schedule",
                 len(self.nodes.alive()), len(unfinished))
        for actor in unfinished:
            self.actor_scheduler.schedule(actor)
        self.pg_scheduler.place_pending()

    def dispatch_frames(self, identity: bytes, frames, sock=None) -> None:
        self.requests_served += 1           # for the dashboard's requests/s
        return super().dispatch_frames(identity, frames, sock)

    #: subscription messages read per wake-up at most (the loop serves on)
    SUBSCRIPTIONS_PER_WAKEUP = 1000

    def _on_subscriptions(self, sock) -> None:
        """Keep ``subscribed`` up to date from what the publisher reads."""
        junk = 0
        for _ in range(self.SUBSCRIPTIONS_PER_WAKEUP):
            try:
                frame = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            change = sockets.subscription_change(frame)
            if change is None:
                junk += 1
            elif change[0]:
                self.subscribed.add(change[1])
            else:
                self.subscribed.discard(change[1])
        if junk:
            log.warning("ignored %d message(s) on the event stream that are not "
                        "subscriptions", junk)

    def followed(self, topic: bytes) -> bool:
        """Whether a subscriber takes events of ``topic`` (a prefix of it is
        subscribed to)."""
        return any(topic.startswith(prefix) for prefix in self.subscribed)

    def publish(self, topic: bytes, event: tuple) -> None:
        """Send a declared event record (NodeEvent, ...) on ``topic``."""
        self.pub.send_multipart([topic, p.encode_event(event)])

    # -- nodes ------------------------------------------------------------
    def handle_register_node(self, req, msg: p.RegisterNode):
        node = self.nodes.register(msg)
        log.info("node %s joined from %s with %s", msg.node_id.hex()[:12], msg.node_ip,
                 msg.resources)
        self.publish(p.TOPIC_NODE, p.NodeEvent(p.NODE_ADDED, node))
        self.reply(req, p.RegisterNodeReply(self.pub_address, self.session_dir))
        self.actor_scheduler.retry_unscheduled()

    def handle_heartbeat(self, req, msg: p.Heartbeat):
        status, node = self.nodes.heartbeat(msg)
        if node is not None:
            self.publish(p.TOPIC_RESOURCES, p.ResourcesEvent(msg.node_id, msg.available,
                                                             msg.total, node.stats))
            self.pg_scheduler.place_pending()
        self.reply(req, p.HeartbeatReply(status))

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
        self.publish(p.TOPIC_NODE, p.NodeEvent(p.NODE_REMOVED, node, reason))
        # every owner on the node died with it (the GCS does not know which lived there)
        self._owner_died(b"", node_id, f"its node {node_id.hex()[:12]} died ({reason})")
        self.pg_scheduler.node_lost(node_id)
        for actor in self.actors.being_created_on(node_id):    # its creation went with it
            self.actor_scheduler.schedule(actor)
        for actor in self.actors.alive_on(node_id):
            self._actor_died(actor.actor_id, f"its node {node_id.hex()[:12]} died", False)

    def handle_get_nodes(self, req, msg):
        self.reply(req, p.NodesReply(self.nodes.all()))

    def handle_get_cluster_info(self, req, msg):
        self.reply(req, p.ClusterInfoReply(self.nodes.all(), self.jobs.all(), self.pub_address,
                                           self.session.cluster_id,
                                           type(self.storage).__name__, self.requests_served))

    # -- jobs -------------------------------------------------------------
    def handle_register_job(self, req, msg: p.RegisterJob):
        job = self.jobs.register(msg)
        log.info("job %s started by pid %d", job.job_id.hex(), msg.driver_pid)
        self.publish(p.TOPIC_JOB, p.JobEvent(p.JOB_STARTED, job))
        self.reply(req, p.RegisterJobReply(job.job_id, self.pub_address))

    def handle_finish_job(self, req, msg: p.FinishJob):
        job = self.jobs.finish(msg.job_id)
        if job is not None:
            log.info("job %s finished", msg.job_id.hex())
            self.publish(p.TOPIC_JOB, p.JobEvent(p.JOB_FINISHED, job))
            for pg in self.pgs.of_job(msg.job_id):
                self.pg_scheduler.remove(pg.pg_id)
            for actor in self.actors.of_job(msg.job_id):
                self._kill_actor(actor, no_restart=True,
                                 reason="its owner (the driver of its job) exited")
        self.reply(req, p.Ack(job is not None))

    def handle_get_job(self, req, msg: p.GetJob):
        self.reply(req, p.JobReply(self.jobs.get(msg.job_id) or []))

    # -- functions and KV -------------------------------------------------
    def handle_export_function(self, req, msg: p.ExportFunction):
        self.kv.put(FUNCTIONS, msg.function_hash, msg.blob, overwrite=False)
        self.reply(req, p.Ack(True))

    def handle_get_function(self, req, msg: p.GetFunction):
        self.reply(req, self._kv_value(self.kv.get(FUNCTIONS, msg.function_hash)))

    def handle_kv_put(self, req, msg: p.KVPut):
        self.reply(req, p.KVPutReply(self.kv.put(msg.namespace, msg.key, msg.value,
                                                 msg.overwrite)))

    def handle_kv_get(self, req, msg: p.KVGet):
        self.reply(req, self._kv_value(self.kv.get(msg.namespace, msg.key)))

    @staticmethod
    def _kv_value(value: bytes | None) -> p.KVValueReply:
        return p.KVValueReply(False) if value is None else p.KVValueReply(True, value)

    def handle_kv_delete(self, req, msg: p.KVDelete):
        self.reply(req, p.KVDeleteReply(self.kv.delete(msg.namespace, msg.key)))

    def handle_kv_keys(self, req, msg: p.KVKeys):
        self.reply(req, p.KVKeysReply(self.kv.keys(msg.namespace, msg.prefix)))

    # -- actors -----------------------------------------------------------
    def handle_register_actor(self, req, msg: p.RegisterActor):
        if self.actors.get(msg.actor_id) is not None:
            # sent again by a caller whose first try met a GCS restart after it was stored:
            # the same answer, and no second creation
            self.reply(req, p.RegisterActorReply(True, msg.actor_id, msg.handle_meta))
            return
        if msg.name:
            existing = self.actors.named(msg.name, msg.namespace)
            if existing is not None:
                if msg.get_if_exists:
                    self.reply(req, p.RegisterActorReply(False, existing.actor_id,
                                                         existing.handle_meta))
                    return
                self.reply(req, p.ErrorReply(
                    "ValueError", f"The name {msg.name!r} (namespace={msg.namespace!r}) is "
                    f"already taken by a live actor; pick another name, or pass "
                    f"get_if_exists=True to get that actor"))
                return
        actor = self.actors.register(msg, p.task_spec(msg.spec))
        log.info("actor %s (%s) registered", msg.actor_id.hex()[:12], msg.class_name)
        self._actor_changed(actor)
        self.actor_scheduler.schedule(actor)
        self.reply(req, p.RegisterActorReply(True, msg.actor_id, msg.handle_meta))

    def handle_actor_started(self, req, msg: p.ActorStarted):
        current = self.actors.get(msg.actor_id)
        if current is not None and current.state == ALIVE:
            # the report sent again after a GCS restart, or a creation a restarted GCS
            # sent again: the first worker to start it is the actor
            if current.worker_id != msg.worker_id:
                log.warning("actor %s started a second time, in worker %s; it lives in "
                            "worker %s", msg.actor_id.hex()[:12], msg.worker_id.hex()[:12],
                            current.worker_id.hex()[:12])
            self.reply(req, p.Ack(True))
            return
        actor = self.actors.started(msg)
        if actor is None:           # killed while it was being created
            node = self.nodes.get(msg.node_id)
            if node is not None:
                self.sender.send(node.address, p.KillActorWorker(msg.actor_id))
        else:
            log.info("actor %s is %s", msg.actor_id.hex()[:12], actor.state)
            self._actor_changed(actor)
        self.reply(req, p.Ack(True))

    def handle_report_actor_died(self, req, msg: p.ReportActorDied):
        self._actor_died(msg.actor_id, msg.message, msg.intentional)
        self.reply(req, p.Ack(True))

    def _actor_died(self, actor_id: bytes, message: str, intentional: bool) -> None:
        actor, restart = self.actors.died(actor_id, message, intentional)
        if actor is None:
            return
        log.info("actor %s died (%s); %s", actor_id.hex()[:12], message,
                 "restarting" if restart else "not restarting")
        self._actor_changed(actor)
        if restart:
            self.actor_scheduler.schedule(actor)

    def handle_report_actor_out_of_scope(self, req, msg: p.ReportActorOutOfScope):
        actor = self.actors.get(msg.actor_id)
        if actor is not None and not actor.detached:
            self._kill_actor(actor, no_restart=True, reason=OUT_OF_SCOPE)
        self.reply(req, p.Ack(actor is not None))

    def handle_report_worker_died(self, req, msg: p.ReportWorkerDied):
        self._owner_died(msg.worker_id, msg.node_id, msg.message)
        self.reply(req, p.Ack(True))

    def _owner_died(self, worker_id: bytes, node_id: bytes, message: str) -> None:
        """End the non-detached actors the owner (worker_id b"": every owner on
        node_id) owned, and tell subscribers its objects are lost."""
        for actor in self.actors.of_owner(worker_id, node_id):
            self._kill_actor(actor, no_restart=True, reason=OWNER_DIED)
        self.publish(p.TOPIC_WORKER, p.WorkerDiedEvent(worker_id, node_id, message))

    def handle_watch_actor(self, req, msg: p.WatchActor):
        actor = self.actors.get(msg.actor_id)
        if actor is None:
            info = p.ActorInfo(msg.actor_id, DEAD, [], 0,
                               "no such actor in this cluster (was it created in another "
                               "cluster?)", b"")
            self.sender.send(msg.reply_to, info)
            return
        if actor.state != DEAD:
            self.actors.watchers.setdefault(msg.actor_id, set()).add(msg.reply_to)
        self.sender.send(msg.reply_to, self.actors.info(actor))

    def handle_kill_actor(self, req, msg: p.KillActor):
        actor = self.actors.get(msg.actor_id)
        if actor is not None:
            self._kill_actor(actor, msg.no_restart, "killed by zray.kill()")
        self.reply(req, p.Ack(actor is not None))

    def _kill_actor(self, actor: p.ActorRow, no_restart: bool, reason: str) -> None:
        """Stop the actor's worker; without restart the actor is DEAD at once."""
        if actor.state == DEAD:
            return
        if no_restart:
            self.actors.forbid_restart(actor.actor_id)
        if actor.state == ALIVE:
            node = self.nodes.get(actor.node_id)
            if node is not None and node.alive:
                self.sender.send(node.address, p.KillActorWorker(actor.actor_id))
                if not no_restart:
                    return          # its death report decides the restart
        if no_restart:              # dead now, whether or not its process has exited
            self._actor_died(actor.actor_id, reason, True)

    def _actor_changed(self, actor: p.ActorRow) -> None:
        info = self.actors.info(actor)
        for endpoint in self.actors.watchers.get(actor.actor_id, ()):
            self.sender.send(endpoint, info)
        if actor.state == DEAD:
            self.actors.watchers.pop(actor.actor_id, None)
        self.publish(p.TOPIC_ACTOR, p.ActorEvent(actor.state, self.actors.summary(actor)))

    def handle_get_named_actor(self, req, msg: p.GetNamedActor):
        actor = self.actors.named(msg.name, msg.namespace)
        self.reply(req, p.NamedActorReply(b"") if actor is None else
                   p.NamedActorReply(actor.actor_id, actor.handle_meta))

    def handle_list_actors(self, req, msg):
        self.reply(req, p.ActorsReply([self.actors.summary(a) for a in self.actors.all()]))

    # -- placement groups -------------------------------------------------
    def handle_create_placement_group(self, req, msg: p.CreatePlacementGroup):
        if msg.strategy not in STRATEGIES:
            self.reply(req, p.ErrorReply("ValueError", f"strategy must be one of {STRATEGIES}, "
                                                       f"got {msg.strategy!r}"))
            return
        if self.pgs.get(msg.pg_id) is not None:     # sent again across a GCS restart
            self.reply(req, p.Ack(True))
            return
        if msg.name and self.pgs.named(msg.name) is not None:
            self.reply(req, p.ErrorReply("ValueError", f"a placement group named {msg.name!r} "
                                                       f"already exists"))
            return
        self.pgs.create(msg)
        self.pg_scheduler.place_pending()
        self.reply(req, p.Ack(True))

    def handle_remove_placement_group(self, req, msg: p.RemovePlacementGroup):
        known = self.pgs.get(msg.pg_id) is not None
        self.pg_scheduler.remove(msg.pg_id)
        self.reply(req, p.Ack(known))

    def handle_get_placement_groups(self, req, msg: p.GetPlacementGroups):
        if msg.name:
            pgs = [pg for pg in [self.pgs.named(msg.name)] if pg]
        elif msg.pg_id:
            pgs = [pg for pg in [self.pgs.get(msg.pg_id)] if pg]
        else:
            pgs = self.pgs.all()
        self.reply(req, p.PlacementGroupsReply(pgs))

    # -- events -----------------------------------------------------------
    def handle_add_task_events(self, req, msg: p.AddTaskEvents):
        self.task_events.add(msg)

    #: task rows published at most per publish_task_events (once a second):
    #: a live view gets the latest changes; the table has them all
    TASK_ROWS_PUBLISHED_MAX = 1000

    #: waiting task events are applied while this many of the machine's
    #: cores were idle in the last second (the GCS's own use counts as idle) ...
    IDLE_CORES_TO_APPLY = 1.0
    #: ... for at most this long a second, in slices of this many events
    #: (about 15 ms each: requests are served between slices)
    APPLY_S_PER_SECOND = 0.5
    APPLY_SLICE_EVENTS = 2_500

    def publish_task_events(self) -> None:
        """Publish the task rows changed since the last call, each once, while
        someone follows them (a dashboard with a page reading task rows).
        Nobody following, the rows are not built; those of the last second
        are kept for the next call, so a follower that read the table just
        before its subscription arrived still gets every change since; and
        task events that wait are applied if the machine has idle cores."""
        if self.followed(p.TOPIC_TASK_EVENTS):
            rows = self.task_events.take_changed(self.TASK_ROWS_PUBLISHED_MAX)
            if rows:
                self.publish(p.TOPIC_TASK_EVENTS, p.TaskRowsEvent(rows))
            return
        self.task_events.hold_changed()
        if not self.task_events.waiting:
            self._cpu_seen = None
        elif self._idle_cores() >= self.IDLE_CORES_TO_APPLY:
            self._idle_checked = time.monotonic()
            self._apply_until = self._idle_checked + self.APPLY_S_PER_SECOND
            self.call_soon(self._apply_waiting_task_events)

    def _apply_waiting_task_events(self) -> None:
        """One slice of the waiting task events; the next one soon, until
        none wait, this second's share is spent or the cores got busy (a
        burst began: its own events must not share them with the GCS)."""
        if time.monotonic() >= self._apply_until or not self._still_idle():
            return
        if self.task_events.apply_waiting(self.APPLY_SLICE_EVENTS):
            self.call_soon(self._apply_waiting_task_events)

    #: while applying, the machine's idle cores are measured again this often
    IDLE_RECHECK_S = 0.1

    def _still_idle(self) -> bool:
        """Whether the machine still has the idle cores to apply task events
        (measured at most every IDLE_RECHECK_S; True in between)."""
        now = time.monotonic()
        if now - self._idle_checked < self.IDLE_RECHECK_S:
            return True
        self._idle_checked = now
        return self._idle_cores() >= self.IDLE_CORES_TO_APPLY

    def _idle_cores(self) -> float:
        """How many of the machine's cores were idle, on average, since the
        last call (0.0 at the first), counting the GCS's own CPU as idle."""
        import psutil           # only when task events wait: not on the GCS's start path
        seen = (time.monotonic(), psutil.cpu_times().idle, time.process_time())
        last, self._cpu_seen = self._cpu_seen, seen
        if last is None or seen[0] <= last[0]:
            return 0.0
        return (seen[1] - last[1] + seen[2] - last[2]) / (seen[0] - last[0])

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
        self.publish(p.log_topic(msg.job_id), p.LogEvent(msg.pid, msg.node_ip, msg.lines))

    def handle_ping(self, req, msg):
        self.reply(req, p.Ack())

    def close(self) -> None:
        self.sender.close()
        self.router.close(linger=0)
        self.pub.close(linger=0)
        super().close()

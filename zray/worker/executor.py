"""The worker process main loop: pull a task from the raylet, run it, send
its results straight to its owner, ask for the next one.

A task may also be a lease (TASK_LEASE): the worker then runs the tasks the
lease's owner sends to its direct ROUTER, until the owner returns the lease
or dies, and only then asks the raylet for the next one (see
``lease_manager.py``). An actor serves its calls on that same ROUTER.

The main thread owns the task socket (a DEALER to the raylet) and runs user
code; the core worker's I/O thread serves the inbox meanwhile.
"""
from __future__ import annotations

import collections
import logging
import os
import queue
import signal
import sys
import threading
import traceback

import zmq

from .. import exceptions as exc
from ..broker import protocol as p
from ..actor import ActorExit
from ..broker import sockets
from .._private.pids import pid_alive
from .._private.session import actor_ipc
from . import global_state, serialization
from .core_worker import GEN_DONE_INDEX, CoreWorker
from .held_replies import HeldReplies
from .task_events import MAX_ERROR_CHARS, error_info, reporting_failed


log = logging.getLogger(__name__)

#: how often a leased worker waiting for tasks checks that its owner lives
LEASE_OWNER_CHECK_MS = 1000


class LogForwarder:
    """A stdout/stderr that also sends complete lines to the driver's console."""

    def __init__(self, stream, executor):
        self._stream = stream
        self._executor = executor
        self._partial = ""
        self._unflushed = False         # written to since the last flush

    def write(self, text: str) -> int:
        self._stream.write(text)
        if "\n" in text:
            self._stream.flush()
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
            self._executor.forward_lines(lines)
        else:
            self._partial += text
        self._unflushed = True
        return len(text)

    def flush(self) -> None:
        self._unflushed = False
        self._stream.flush()
        if self._partial:
            self._executor.forward_lines([self._partial])
            self._partial = ""

    def flush_written(self) -> None:
        """``flush`` if anything was written through this stream since the
        last flush (the end of every task: mostly nothing to do)."""
        if self._unflushed:
            self.flush()

    def __getattr__(self, name):
        self._unflushed = True          # .buffer, .fileno, ...: may write around us
        return getattr(self._stream, name)


class Executor:
    def __init__(self, raylet_endpoint: str, session_dir: str, worker_id: bytes):
        self.worker_id = worker_id
        self.cw = CoreWorker("worker", raylet_endpoint, session_dir, worker_id=worker_id)
        global_state.worker = self.cw
        self.cw.register_executor_hooks(blocked=self._blocked, cancel=self._cancel)
        self.task_sock = sockets.dealer(raylet_endpoint)
        self.jobs: set[bytes] = set()
        self.current = None
        self.main_thread = threading.get_ident()
        self.cancel_requested = None
        self.events = self.cw.task_events
        #: function name -> (job id, its event info's index or the info)
        self._call_infos: dict[str, tuple] = {}
        #: task events' hot path (_started, _returns_of): the recorder's
        #: start and finish, called directly (one Python call fewer on each
        #: call of an actor)
        self._start_task = self.events.recorder.start
        self._finish_task = self.events.recorder.finish
        self._direct = None             # ROUTER for direct calls (see _direct_sock)
        self.leased_by = None           # the lease this worker serves, if any
        self.cancelled_early: set[bytes] = set()    # lease tasks cancelled before they ran
        self._replies = HeldReplies(self.cw.send_to)    # actor calls: a batch's results
        self._hold = False      # (actor, one call at a time) more calls of the batch follow
        self._pool = None       # (actor, threads) its _CallPool
        self._async_calls = None    # (async actor) its calls not done: (running, queued)
        signal.signal(signal.SIGINT, self._on_sigint)
        sys.stdout = LogForwarder(sys.stdout, self)
        sys.stderr = LogForwarder(sys.stderr, self)

    # -- the loop ---------------------------------------------------------
    def run(self) -> int:
        self._send(p.WorkerReady(self.worker_id, b""))
        while True:
            frames = sockets.recv_frames(self.task_sock)
            try:
                msg = p.decode(frames[1].buffer)
            except (p.ProtocolError, IndexError) as err:
                log.warning("dropped a message from the raylet: %s", err)
                continue
            if isinstance(msg, p.ExecuteTask):
                spec = p.task_spec(msg.spec)
                self.execute(spec)
                self._send(p.WorkerReady(self.worker_id, spec.task_id))

    def _send(self, message) -> None:
        sockets.send_frames(self.task_sock, [b"", p.encode(message)])

    # -- running a task ---------------------------------------------------
    def execute(self, spec: p.TaskSpec) -> None:
        """Run a task (or an actor's constructor) on this thread."""
        self._bind_job(spec.job_id)
        if spec.kind == p.TASK_ACTOR_CREATION:
            self.become_actor(spec)
            return
        if spec.kind == p.TASK_LEASE:
            self.serve_lease(spec)
            return
        try:
            fn = self.cw.functions.load(spec.function_hash)
        except Exception as err:     # noqa: BLE001 — reported to the owner
            self._send_returns(spec, self._error_returns(spec, err))
            return
        self.run_call(spec, fn)

    def run_call(self, spec: p.TaskSpec, fn) -> None:
        """Resolve the arguments, call ``fn``, send the results to the owner."""
        self._enter(spec)
        events = self.events
        begun = None
        try:
            try:
                args, kwargs = self._resolve_args(spec)
                if events.enabled:
                    begun = self._started(spec)
                if spec.num_returns == p.STREAMING:
                    error = self._run_generator(spec, fn, args, kwargs)
                    if begun is not None:
                        self._ended(spec, error)
                    return
                result = fn(*args, **kwargs)
                del args, kwargs
                returns = self._returns_of(spec, result, begun)
            except ActorExit:
                self._exited(spec, begun)
                raise
            except BaseException as err:     # noqa: BLE001 — reported to the owner
                if events.enabled or begun is not None:     # (switched off meanwhile)
                    self._ended(spec, err)
                if spec.num_returns == p.STREAMING:
                    return self._send_stream_error(spec, self._error_blob(spec, err))
                returns = self._error_returns(spec, err)
            self._send_returns(spec, returns)
        finally:
            self._leave()

    async def run_call_async(self, spec: p.TaskSpec, fn) -> None:
        """``run_call`` for an ``async def`` method, on the actor's event loop."""
        self._enter(spec)
        events = self.events
        begun = None
        try:
            try:
                args, kwargs = self._resolve_args(spec)
                if events.enabled:
                    begun = self._started(spec)
                result = await fn(*args, **kwargs)
                del args, kwargs
                returns = self._returns_of(spec, result, begun)
            except ActorExit:
                self._exited(spec, begun)
                self._exit_actor()
            except BaseException as err:     # noqa: BLE001 — reported to the owner
                if events.enabled or begun is not None:     # (switched off meanwhile)
                    self._ended(spec, err)
                returns = self._error_returns(spec, err)
            self._send_returns(spec, returns)
        finally:
            self._leave()

    def _exited(self, spec, begun) -> None:
        """The call ran exit_actor() (``begun``: what ``_started`` gave, or
        None): its owner gets ActorDiedError."""
        self._send_returns(spec, self._exited_returns(spec))
        if self.events.enabled or begun is not None:
            self._ended(spec, exc.ActorDiedError("the actor called exit_actor()"))

    def _enter(self, spec) -> None:
        self.current = spec
        self.cw.enter_task(spec)

    def _started(self, spec) -> int:
        """Note that ``spec`` starts running now, with what it is (its owner
        may never report it), as ``events.started`` would; its slot in the
        recorder (``begun``). Never raises (but a cancel, see
        ``reporting_failed``)."""
        known = self._call_infos.get(spec.function_name)
        if known is None or known[0] != spec.job_id:
            known = self._call_info(spec)
        return self._start_task(spec.task_id, spec.attempt, known[1])

    def _call_info(self, spec) -> tuple:
        """``(job id, info)`` of ``spec``'s calls, ``info`` the index the
        reporter registered it under (or the dict itself when too many are):
        one info per function, job and actor (a process is one actor at
        most, and forgets the infos of its tasks when it becomes one); an
        actor call's name is ``Class.method``. Never raises (but a cancel,
        see ``reporting_failed``): when making it fails, ``info`` is None
        (the call's events go without it) and the next call tries again."""
        try:
            if len(self._call_infos) > 10_000:
                self._call_infos.clear()
            name = spec.function_name
            if spec.kind == p.TASK_ACTOR_METHOD:
                cls = getattr(getattr(self, "actor_spec", None), "function_name", "Actor")
                name = f"{cls}.{spec.method_name}"
            info = {"name": name, "type": spec.kind, "job_id": spec.job_id}
            if spec.actor_id:
                info["actor_id"] = spec.actor_id
            index = self.events.info_index((spec.function_name, spec.job_id, spec.actor_id),
                                           info)
            known = self._call_infos[spec.function_name] = (
                spec.job_id, index if index >= 0 else info)
            return known
        except Exception:       # noqa: BLE001 — logged: reporting never fails a task
            reporting_failed("a task's start")
            return spec.job_id, None

    def _ended(self, spec, err) -> None:
        """Note that ``spec`` finished (``err`` None) or failed with ``err``
        (its message: the user's traceback when user code raised it). Never
        raises."""
        try:
            self._note_ended(spec, err)
        except exc.TaskCancelledError:  # a cancel's SIGINT, as the task ends anyway
            log.info("task %s ended as a cancel of it came", spec.task_id.hex())
        except Exception:       # noqa: BLE001 — logged: reporting never fails a task
            reporting_failed("a task's end")

    def _note_ended(self, spec, err) -> None:
        """``_ended``, which may raise."""
        if err is None:
            self.events.ended(spec.task_id, spec.attempt, p.TS_FINISHED)
            return
        info = error_info(err)
        tb = err.__traceback__
        if not isinstance(err, exc.RayError) and tb is not None:
            # the user's frames: the first one is run_call's own
            text = "".join(traceback.format_exception(type(err), err, tb.tb_next or tb))
            info["error_message"] = text[-MAX_ERROR_CHARS:]
        self.events.ended(spec.task_id, spec.attempt, p.TS_FAILED, info)

    def _leave(self) -> None:
        self.current = None
        self.cw.leave_task()
        for stream in (sys.stdout, sys.stderr):
            if type(stream) is LogForwarder:
                stream.flush_written()
            else:                       # replaced by user code
                stream.flush()

    def _returns_of(self, spec, result, begun=None) -> list:
        """The Returns of ``spec``'s ``result``; once they are made, given
        ``begun`` (the slot ``_started`` gave), its end is noted too, as
        ``events.ended`` would (packed by the recorder; what it cannot pack
        by ``events.finished_unpacked``). Raises what serializing the result
        raised (nothing noted then), or a cancel that lands in the noting."""
        cw = self.cw
        owner_id = spec.owner_address.worker_id
        returns = []
        for i, value in enumerate(self._split_returns(spec, result)):
            ser = serialization.serialize(value)
            if ser.contained_refs:
                cw.lend(ser.contained_refs, owner_id)
            returns.append(cw.return_of(cw.return_id(spec.task_id, i + 1), ser, owner_id))
        if begun is not None:
            try:
                unpacked = self._finish_task(begun)
            except Exception:       # noqa: BLE001 — logged: reporting never fails a task
                reporting_failed("a task's end")    # (a cancel's SIGINT is raised again)
            else:
                if unpacked is not None:        # its info not an index, its attempt too big
                    self.events.finished_unpacked(unpacked)
        return returns

    def _error_returns(self, spec, err) -> list:
        """Error results: ``err`` wrapped in a RayTaskError unless zray raised it
        on purpose (a zray error raised outside user code, like exit_actor's)."""
        return self._returns_of_error(spec, self._error_blob(spec, err))

    def _exited_returns(self, spec) -> list:
        return self._returns_of_error(spec, serialization.error_bytes(exc.ActorDiedError(
            "The actor exited by calling exit_actor() in this call")))

    def _returns_of_error(self, spec, blob: bytes) -> list:
        return [p.Return(self.cw.return_id(spec.task_id, i + 1), p.RET_ERROR, blob)
                for i in range(max(spec.num_returns, 1))]

    def _send_returns(self, spec, returns) -> None:
        """Send a call's results to its owner: an actor holds them while more
        of its calls wait to run (see HeldReplies), and sends what it held
        with the results of the last one."""
        more = self._more_calls_follow()
        if more or (more is not None and self._replies.holding()):
            self._replies.hold(spec.owner, spec.task_id, returns)
            if not more:
                self._replies.flush()
        else:
            self.cw.send_to(spec.owner, p.TaskReturned(spec.task_id, returns))

    def _more_calls_follow(self):
        """(an actor) Whether more of its calls follow the one that just ended
        on this thread (then its results may wait for theirs): calls waiting
        to run, or for an async actor also calls running at the same time;
        None where results are never held (a task; a thread not serving
        calls)."""
        if threading.get_ident() == self.main_thread:
            if self._hold:                      # one call at a time, in a batch
                return True
            if self._async_calls is not None:   # the async actor's event loop
                running, queued = self._async_calls
                return len(running) + len(queued) > 1
            return None
        if self._pool is not None:              # a thread of a threaded actor
            return self._pool.waiting()
        return None

    # -- actors -----------------------------------------------------------
    def become_actor(self, spec: p.TaskSpec) -> None:
        """Run the constructor; on success serve the actor's calls until it ends."""
        cw = self.cw
        cw.become_actor(spec)
        self._call_infos.clear()        # (a task's name may be a method's)
        error = b""
        self._enter(spec)
        begun = None
        try:
            cls = cw.functions.load(spec.function_hash)
            args, kwargs = self._resolve_args(spec)
            if self.events.enabled:
                begun = self.events.started(spec.task_id, spec.attempt)
            self.instance = cls(*args, **kwargs)
            if self.events.enabled or begun is not None:
                self._ended(spec, None)
        except BaseException as err:     # noqa: BLE001 — reported through the GCS
            if self.events.enabled or begun is not None:
                self._ended(spec, err)
            error = self._error_blob(spec, err)
        finally:
            self._leave()
        endpoint = ""
        if not error:
            self.actor_socks = [self._direct_sock()]
            sock, endpoint = sockets.inbox_router(f"tcp://{cw.node_ip}:0")
            self.actor_socks.append(sock)
        cw.gcs.call(p.ActorStarted(spec.actor_id, self.worker_id, endpoint,
                                   cw.node_id, os.getpid(), error))
        if error:
            self._exit_actor()
        self.actor_spec = spec
        self._turn = 0
        self.serve_actor(spec.options.get("max_concurrency", 1), spec.options.get("is_async"))

    # -- leases -----------------------------------------------------------
    def _direct_sock(self):
        """The ROUTER a local caller sends this worker tasks on directly (an
        actor's calls, a lease's tasks): bound once, at the actor endpoint."""
        if self._direct is None:
            self._direct = sockets.inbox_router(actor_ipc(self.cw.session_dir,
                                                          self.worker_id))[0]
        return self._direct

    def serve_lease(self, lease: p.TaskSpec) -> None:
        """Run the tasks the lease's owner sends straight here, one at a time,
        until it returns the lease (ReturnLease) or dies; then the caller
        tells the raylet this worker is idle (which frees the lease's
        resources)."""
        sock = self._direct_sock()
        owner = lease.owner_address
        self.cw.send_to(lease.owner, p.LeaseGranted(lease.task_id, list(self.cw.address)))
        self.leased_by = lease.task_id
        try:
            while True:
                if not sock.poll(LEASE_OWNER_CHECK_MS):
                    if not pid_alive(owner.pid):
                        log.info("the owner (pid %d) of lease %s died: idle again",
                                 owner.pid, lease.task_id.hex()[:12])
                        return
                    continue
                frames = sockets.recv_frames(sock)
                try:
                    msg = p.decode(frames[2].buffer)
                    spec = p.task_spec(msg.spec) if isinstance(msg, p.ExecuteTask) else None
                except (p.ProtocolError, IndexError) as err:
                    log.warning("lease: dropped a message: %s", err)
                    continue
                if isinstance(msg, p.ReturnLease):
                    if msg.lease_id == lease.task_id:
                        return
                    continue                    # of an earlier lease: already idle
                if spec is None or spec.kind != p.TASK_NORMAL or spec.job_id != lease.job_id:
                    log.warning("lease: dropped a %s", type(msg).__name__)
                    continue
                if spec.task_id in self.cancelled_early:
                    self.cancelled_early.discard(spec.task_id)
                    self._send_returns(spec, self._error_returns(spec, exc.TaskCancelledError(
                        f"task {spec.function_name} was cancelled before it ran")))
                    continue
                self.execute(spec)
        finally:
            self.leased_by = None
            self.cancelled_early.clear()

    def serve_actor(self, max_concurrency: int, is_async: bool) -> None:
        """Receive calls on the actor's ROUTER and run them: in order on this
        thread, on a thread pool, or on an asyncio loop."""
        if is_async:
            self._serve_async(max_concurrency)
            return
        submit = self._call_inline
        if max_concurrency > 1:
            self._pool = _CallPool(max_concurrency, self._call_guarded)
            submit = self._pool.submit
        hold = max_concurrency <= 1     # one at a time: a batch's results leave together
        poller = zmq.Poller()
        for sock in self.actor_socks:
            poller.register(sock, zmq.POLLIN)
        while True:
            ready = poller.poll()
            if len(ready) == 1:
                (sock, _), = ready
            else:                        # both have calls: take turns
                sock, _ = ready[self._turn % len(ready)]
                self._turn += 1
            calls = self._next_calls(sock)
            self._hold = hold and len(calls) > 1
            try:
                for call in calls:
                    submit(*call)
            finally:
                if self._hold:
                    self._hold = False
                    self._replies.flush()

    def _next_calls(self, sock) -> list:
        """Receive one message from an actor socket that has one: the calls
        to run, ``[(spec, method)]`` in order (several when the caller sent
        them together, ExecuteCalls); empty when it was dropped (logged) or
        answered here (no such method)."""
        try:
            frames = sockets.recv_frames(sock, zmq.NOBLOCK)
        except zmq.Again:
            return []
        try:
            msg = p.decode(frames[2].buffer)
            if isinstance(msg, p.ExecuteTask):
                specs = [p.task_spec(msg.spec)]
            elif isinstance(msg, p.ExecuteCalls):
                specs = msg.calls
            else:
                log.warning("actor: dropped a %s", type(msg).__name__)
                return []
        except (p.ProtocolError, IndexError) as err:
            log.warning("actor: dropped a message: %s", err)
            return []
        calls = []
        for spec in specs:
            fn = getattr(self.instance, spec.method_name, None)
            if fn is None:
                self._send_returns(spec, self._error_returns(spec, AttributeError(
                    f"actor has no method {spec.method_name!r}")))
                continue
            calls.append((spec, fn))
        return calls

    def _serve_async(self, max_concurrency: int) -> None:
        """An async actor: its event loop, on this thread, reads the calls
        itself (no hand-off between threads) and runs up to
        ``max_concurrency`` of them at once, started in arrival order (the
        others wait in a queue, not as tasks). Whether a method is ``async
        def`` is read once per method name. A call's task frees its turn as
        it ends (nothing cancels these tasks; a cancel that did would have to
        free it), and is made as a plain Task whatever task factory user code
        sets on the loop (an eager one would run it to its end before it is
        in ``running``)."""
        import asyncio
        import inspect
        loop = asyncio.new_event_loop()
        current_task = asyncio.current_task
        running = set()                 # the loop keeps only weak references to tasks
        queued = collections.deque()    # calls past max_concurrency, in arrival order
        self._async_calls = (running, queued)
        is_async: dict[str, bool] = {}

        async def run(spec, fn):
            try:
                coroutine = is_async.get(spec.method_name)
                if coroutine is None:
                    coroutine = is_async[spec.method_name] = inspect.iscoroutinefunction(fn)
                if coroutine:
                    await self.run_call_async(spec, fn)
                else:
                    self._call_inline(spec, fn)
            finally:
                running.discard(current_task())
                if queued:
                    start(*queued.popleft())

        def start(spec, fn):
            running.add(asyncio.Task(run(spec, fn), loop=loop))

        def drain(sock):
            # ZeroMQ's descriptor is edge-triggered: read while a message waits
            for _ in range(1000):
                if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    return
                for call in self._next_calls(sock):
                    if len(running) < max_concurrency and not queued:
                        start(*call)
                    else:
                        queued.append(call)
            loop.call_soon(drain, sock)     # more wait: after the loop's other work

        for sock in self.actor_socks:
            loop.add_reader(sock.getsockopt(zmq.FD), drain, sock)
            loop.call_soon(drain, sock)
        loop.run_forever()

    def _call_inline(self, spec, fn) -> None:
        try:
            self.run_call(spec, fn)
        except ActorExit:
            self._exit_actor()

    def _call_guarded(self, spec, fn) -> None:
        try:
            self.run_call(spec, fn)
        except ActorExit:
            self._exit_actor()
        except BaseException:     # noqa: BLE001 — a pool thread must not die silently
            log.exception("actor call failed")

    def _exit_actor(self) -> None:
        """End this actor's process cleanly (no restart: exit code 0)."""
        try:
            self._replies.flush()
            sys.stdout.flush()
            sys.stderr.flush()
            self.cw.shutdown()
        finally:
            os._exit(0)

    def _run_generator(self, spec, fn, args, kwargs):
        """Stream each value to the owner; returns the error that ended the
        stream, or None."""
        cw = self.cw
        owner = spec.owner
        owner_id = p.Address(*owner).worker_id
        index = 0
        error = None
        try:
            for value in fn(*args, **kwargs):
                object_id = cw.return_id(spec.task_id, index + 1)
                ser = serialization.serialize(value)
                cw.lend(ser.contained_refs, owner_id)
                ret = cw.return_of(object_id, ser, owner_id)
                cw.send_to(owner, p.GeneratorItem(spec.task_id, index, ret))
                index += 1
        except BaseException as err:     # noqa: BLE001
            error = err
            object_id = cw.return_id(spec.task_id, index + 1)
            ret = p.Return(object_id, p.RET_ERROR, self._error_blob(spec, err))
            cw.send_to(owner, p.GeneratorItem(spec.task_id, index, ret))
            index += 1
        self._end_stream(spec, index)
        return error

    def _send_stream_error(self, spec, blob) -> None:
        object_id = self.cw.return_id(spec.task_id, 1)
        self.cw.send_to(spec.owner, p.GeneratorItem(
            spec.task_id, 0, p.Return(object_id, p.RET_ERROR, blob)))
        self._end_stream(spec, 1)

    def _end_stream(self, spec, count: int) -> None:
        """Tell the owner the stream ended after ``count`` items."""
        done = self.cw.return_id(spec.task_id, GEN_DONE_INDEX)
        self.cw.send_to(spec.owner, p.TaskReturned(spec.task_id, [
            p.Return(done, p.RET_INLINE, serialization.serialize(count).to_bytes())]))

    @staticmethod
    def _split_returns(spec, result) -> list:
        n = spec.num_returns
        if n == 1:
            return [result]
        if n == 0:
            return []
        if not isinstance(result, (tuple, list)) or len(result) != n:
            got = (f"a {type(result).__name__} of length {len(result)}"
                   if isinstance(result, (tuple, list)) else type(result).__name__)
            raise ValueError(f"{spec.function_name} has num_returns={n} but returned {got}; "
                             f"return a tuple of {n} values")
        return list(result)

    def _resolve_args(self, spec):
        cw = self.cw
        values = []
        for entry in spec.args:
            arg = p.task_arg(entry)
            if arg.kind == p.ARG_VALUE:
                values.append(serialization.deserialize(arg.blob)[1])
            elif arg.kind == p.ARG_STORED:
                pinned_at = p.Pinned(arg.offset, arg.size) if arg.offset >= 0 else None
                view = cw.stored_view(arg.object_id, pinned_at, source=arg.node_id)
                values.append(serialization.deserialize(view)[1])
            else:
                ref = cw.deserialized_ref(arg.object_id, arg.owner)
                values.append(cw.get(ref))
                del ref
        n_kw = len(spec.kwarg_names)
        if n_kw:
            return values[:-n_kw], dict(zip(spec.kwarg_names, values[-n_kw:]))
        return values, {}

    def _error_blob(self, spec, err: BaseException) -> bytes:
        if isinstance(err, exc.TaskCancelledError):
            error = exc.TaskCancelledError(f"task {spec.function_name} was cancelled")
        elif isinstance(err, exc.RayTaskError):
            error = err                  # a failed dependency: pass it on unchanged
        else:
            tb = traceback.format_exc()
            error = exc.RayTaskError(spec.function_name, tb, err, os.getpid(), self.cw.node_ip)
        try:
            return serialization.error_bytes(error)
        except TypeError:
            cause = RuntimeError(f"{type(err).__name__}: {err} (the original exception "
                                 f"could not be serialized)")
            error = exc.RayTaskError(spec.function_name, traceback.format_exc(), cause,
                                     os.getpid(), self.cw.node_ip)
            return serialization.error_bytes(error)

    # -- jobs, logs, blocking, cancel -------------------------------------
    def _bind_job(self, job_id: bytes) -> None:
        if job_id in self.jobs:
            return
        self.jobs.add(job_id)
        job = self.cw.gcs.call(p.GetJob(job_id)).job
        self.cw.bind_job(job_id, job.namespace if job else None)
        if not job:
            return
        for path in reversed(job.sys_path):
            if path not in sys.path:
                sys.path.insert(1, path)
        if job.cwd and job.cwd not in sys.path:
            sys.path.insert(0, job.cwd)
        try:
            os.chdir(job.cwd)
        except OSError:
            pass

    def forward_lines(self, lines: list[str]) -> None:
        spec = self.current
        name = spec.function_name if spec else "worker"
        prefix = f"({name} pid={os.getpid()}) "
        try:
            self.cw.raylet.send(p.LogLines(self.cw.job_id, os.getpid(),
                                           [prefix + line for line in lines]))
        except Exception as err:    # noqa: BLE001 — output must never fail the task
            log.debug("task output not forwarded to the driver: %s", err)

    def _blocked(self, blocked: bool) -> None:
        if self.current is not None:
            self.cw.raylet.send(p.WorkerBlocked(self.worker_id, blocked))

    def _cancel(self, task_id: bytes) -> None:
        """(I/O thread) Interrupt the running task if it is ``task_id``: a
        SIGINT to ourselves, whose handler raises TaskCancelledError in the
        main thread — even out of a sleep or a blocking call."""
        spec = self.current
        if spec is not None and spec.task_id == task_id:
            self.cancel_requested = task_id
            os.kill(os.getpid(), signal.SIGINT)
        elif self.leased_by is not None and len(self.cancelled_early) < 10_000:
            self.cancelled_early.add(task_id)   # sent on the lease, not started yet

    def _on_sigint(self, signum, frame) -> None:
        spec = self.current
        if spec is not None and self.cancel_requested == spec.task_id:
            self.cancel_requested = None
            raise exc.TaskCancelledError(f"task {spec.function_name} was cancelled")


class _CallPool:
    """The threads of an actor with ``max_concurrency`` > 1: up to that many
    calls run at once, each started in arrival order. Lighter than a
    ThreadPoolExecutor (no Future per call): a call is a queue entry; a
    thread is added, up to ``size``, only when none is idle."""

    def __init__(self, size: int, run):
        self._size = size
        self._run = run
        self._calls = queue.SimpleQueue()
        #: an entry per call a thread finished that no ``submit`` counted on
        #: since, ``size`` at most (the threads append, ``submit`` alone
        #: takes: both atomic)
        self._idle: list = []
        self._threads = 0

    def submit(self, spec, fn) -> None:
        """Queue a call (from the one thread that reads the actor's calls)."""
        self._calls.put((spec, fn))
        if self._idle:
            self._idle.pop()
        elif self._threads < self._size:
            self._threads += 1
            threading.Thread(target=self._serve, daemon=True,
                             name=f"zray-actor_{self._threads}").start()

    def waiting(self) -> bool:
        """Whether calls wait for a thread."""
        return not self._calls.empty()

    def _serve(self) -> None:
        get, run, idle, size = self._calls.get, self._run, self._idle, self._size
        while True:
            spec, fn = get()
            run(spec, fn)
            del spec, fn
            if len(idle) < size:
                idle.append(None)


def main(raylet_endpoint: str, session_dir: str, worker_id: bytes) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    executor = Executor(raylet_endpoint, session_dir, worker_id)
    return executor.run()

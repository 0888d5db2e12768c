"""The dashboard's monitoring threads yield the CPU to the work they watch.

A documented choice (Ray's dashboard does not do this): the threads that
follow the GCS event stream and feed live pages run at a lower scheduling
priority (``nice`` ``NICE`` above the process's, ``--nice`` of the
dashboard; 0 turns it off), so on a busy node the cluster's own processes
get the cores first and the dashboard's figures arrive a little later. On
an idle node it changes nothing. Only those threads are lowered, never the
process: a job's entrypoint, started by the dashboard, runs at the normal
priority (see ``JobSupervisor``), and an unprivileged process cannot raise
a priority back.
"""
from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)

#: how much lower the monitoring threads run (set from ``--nice``)
NICE = 10

_lowered: set[int] = set()


def lower_this_thread() -> None:
    """Lower the calling thread's priority by ``NICE`` (once per thread;
    Linux only, elsewhere a no-op). Never raises."""
    tid = threading.get_native_id()
    if NICE <= 0 or tid in _lowered or not hasattr(os, "setpriority"):
        return
    try:
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + NICE))
        _lowered.add(tid)
    except OSError as err:
        log.warning("cannot lower the priority of a dashboard thread: %s", err)


def lower_zmq_io_threads() -> None:
    """Lower ZeroMQ's I/O threads of this process (they move the event
    stream's messages) as ``lower_this_thread`` does; Linux only."""
    if NICE <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return                          # not Linux: nothing to lower
    for name in tids:
        try:
            with open(f"/proc/self/task/{name}/comm") as f:
                if not f.read().startswith("ZMQbg/"):
                    continue
            tid = int(name)
            if tid in _lowered:
                continue
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid)
                                                     + NICE))
            _lowered.add(tid)
        except (OSError, ValueError) as err:
            log.warning("cannot lower the priority of ZeroMQ's thread %s: %s", name, err)

"""The fork server: imports zray and its dependencies once, then forks a
worker per request so a new worker is ready in milliseconds. numpy is
imported right after the first fork (see ``_warm_up``): the node's first
worker, which the first task waits for, starts without it.

Protocol on stdin/stdout (one line each):
``fork <worker_id_hex>`` in; ``started <worker_id_hex> <pid>`` and
``exited <pid> <code>`` out (code < 0: killed by that signal).
The zygote holds no sockets and no threads, so forking it is safe.
"""
from __future__ import annotations

import argparse
import gc
import os
import select
import signal
import sys


def _emit(line: str) -> None:
    os.write(1, (line + "\n").encode())


def _end_children(children: set[int]) -> None:
    """Kill and reap every worker still running (so none is left a zombie)."""
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for pid in children:
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass


def _reap() -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _emit(f"exited {pid} {code}")


def _child(args, worker_id_hex: str, wake_r: int, wake_w: int, zygote_pid: int) -> None:
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.close(wake_r)
        os.close(wake_w)
        from .._private import daemon
        from .._private.session import log_path
        daemon.die_with_parent(signal.SIGKILL)
        if os.getppid() != zygote_pid:      # the zygote died before that took effect
            return
        daemon.set_process_name("zray.worker")
        out = os.open(log_path(args.session_dir, f"worker_{worker_id_hex[:12]}_{os.getpid()}.log"),
                      os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
        _reseed()
        from . import executor
        code = executor.main(args.raylet, args.session_dir, bytes.fromhex(worker_id_hex))
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code or 0)


def _reseed() -> None:
    import random
    random.seed()
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed(int.from_bytes(os.urandom(4), "little"))


def _warm_up() -> bool:
    """Import what many tasks use but no worker needs to start (numpy), so
    the workers forked from now on share it. Done right after the first
    fork: the node's first worker starts that much sooner, and loads numpy
    itself if its tasks use it."""
    gc.disable()
    try:
        import numpy  # noqa: F401
        import numpy.random  # noqa: F401 — imported lazily, it cost each worker 13 ms of CPU
    except ImportError as err:      # the workers import it themselves (and say why not)
        print(f"zygote: numpy could not be imported ahead of the workers: {err}",
              file=sys.stderr, flush=True)
    finally:
        gc.freeze()
        gc.enable()
    return True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m zray.worker.zygote")
    ap.add_argument("--raylet", required=True)
    ap.add_argument("--session-dir", required=True)
    ap.add_argument("--node-id", required=True)
    args = ap.parse_args(argv)
    from .._private import daemon
    daemon.die_with_parent(signal.SIGKILL)
    daemon.set_process_name("zray.zygote")
    # What every worker needs, imported once before the first fork, without
    # collections meanwhile (a tenth of the import time), then frozen: no
    # worker's collections touch (and so copy) the pages it shares.
    gc.disable()
    import cloudpickle  # noqa: F401
    import msgpack  # noqa: F401
    import zmq  # noqa: F401
    from . import executor  # noqa: F401
    gc.freeze()
    gc.enable()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    buffer = b""
    children: set[int] = set()
    warm = False
    while True:
        try:
            ready, _, _ = select.select([0, wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap()
        if 0 in ready:
            data = os.read(0, 4096)
            if not data:
                _end_children(children)      # the raylet is gone or stopping
                return
            buffer += data
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                parts = line.decode().split()
                if len(parts) == 2 and parts[0] == "fork":
                    if children and not warm:
                        warm = _warm_up()
                    zygote_pid = os.getpid()
                    pid = os.fork()
                    if pid == 0:
                        _child(args, parts[1], wake_r, wake_w, zygote_pid)
                    children.add(pid)
                    _emit(f"started {parts[1]} {pid}")
            if children and not warm:
                warm = _warm_up()


if __name__ == "__main__":
    main()

"""Starting zray's own processes: ``python -m <module> <args>``, or, where it
is safe, a fork of this already-warm interpreter that runs the same module.

A fork is ready in milliseconds, where a fresh interpreter spends a few
hundred milliseconds of CPU importing zmq, numpy and zray. Either way the
process carries the same command line (``ps``, ``zray status`` and
``zray stop`` cannot tell them apart), the same environment and the same
standard streams, and the caller gets the same ``Popen``-like handle.

A process is forked only when

* it dies with this one (it never outlives the files and sockets it inherits);
* this process runs a single thread (a lock held by another thread would stay
  held in the child for ever);
* this process was not forked itself: a driver's local GCS and raylet are
  forks of the driver, but the raylet's zygote, whose children run user
  code, is a fresh interpreter, so workers never start from a driver's image
  (its modules, CUDA or OpenMP state, random generators' seeds);
* ``ZRAY_START_METHOD`` is not ``spawn``.

Otherwise it is spawned. A forked child ends with ``os._exit``, so nothing of
its parent (atexit hooks, buffered output) runs twice.
"""
from __future__ import annotations

import ctypes
import fcntl
import gc
import importlib
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import traceback

from ..config import config

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT


def launch(args: list[str], *, env: dict[str, str], stdin=DEVNULL, stdout=DEVNULL,
           stderr=STDOUT, dies_with_parent: bool, new_session: bool = False,
           pass_fds: tuple = (), fresh: bool = False):
    """Start ``python -m args[0] args[1:]``; returns a ``subprocess.Popen``
    or a ``ForkedProcess`` (same methods). ``stdin``/``stdout`` may be
    ``PIPE`` (then ``.stdin``/``.stdout`` are binary file objects),
    ``DEVNULL`` or a file descriptor; ``stderr`` a descriptor or ``STDOUT``.
    ``pass_fds``: descriptors (> 2) the child keeps, under the same numbers;
    ``fresh``: always a fresh interpreter, never a fork."""
    if dies_with_parent and not fresh and may_fork():
        return _fork(args, env, stdin, stdout, stderr, new_session, pass_fds)
    return subprocess.Popen([sys.executable, "-m", *args], stdin=stdin, stdout=stdout,
                            stderr=stderr, env=env, start_new_session=new_session,
                            close_fds=True, pass_fds=pass_fds)


_forked = False      # this process is a fork (it then never forks another)


def may_fork() -> bool:
    """Forking is allowed here now: wanted, only one thread runs, and this
    process was not forked itself (its image is its parent's, say a driver's
    with its modules, CUDA or OpenMP state, which workers must not inherit)."""
    if config.start_method not in ("fork", "spawn"):
        raise ValueError(f"ZRAY_START_METHOD={config.start_method!r}: use 'fork' or 'spawn'")
    return config.start_method == "fork" and not _forked and threading.active_count() == 1


class ForkedProcess:
    """The parent's handle on a forked child: the ``subprocess.Popen``
    methods zray uses (``poll``, ``wait``, ``send_signal``, ``terminate``,
    ``kill``, ``pid``, ``args``, ``returncode``, ``stdin``, ``stdout``)."""

    def __init__(self, pid: int, args: list[str], stdin=None, stdout=None):
        self.pid = pid
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:       # reaped elsewhere
                self.returncode = 0
                return 0
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0005
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class AdoptedProcess(ForkedProcess):
    """A handle on a process another one started (so this one cannot reap
    it) and handed over, with its pipes: the ``ForkedProcess`` methods. It
    counts as ended once it is gone or a zombie; its exit code is read from
    ``/proc`` while it is a zombie (0 once it is gone)."""

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                with open(f"/proc/{self.pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:                 # gone (reaped by its parent)
                self.returncode = 0
                return 0
            fields = stat[stat.rindex(b")") + 2:].split()
            if fields[0] in (b"Z", b"X"):   # fields[0] is field 3, the state
                status = int(fields[49]) if len(fields) > 49 else 0   # field 52
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode


def _fork(args, env, stdin, stdout, stderr, new_session, pass_fds=()) -> ForkedProcess:
    argv = [sys.executable, "-m", *args]
    pipes = {}
    if stdin == PIPE:
        pipes[0] = os.pipe()
    if stdout == PIPE:
        pipes[1] = os.pipe()
    try:
        return _fork_with(args, argv, env, stdin, stdout, stderr, new_session, pipes, pass_fds)
    except BaseException:
        for fd in (fd for pair in pipes.values() for fd in pair):
            try:
                os.close(fd)
            except OSError:
                pass
        raise


def _fork_with(args, argv, env, stdin, stdout, stderr, new_session, pipes,
               pass_fds=()) -> ForkedProcess:
    for stream in {sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__}:
        try:
            stream.flush()              # else the child would write it again
        except (AttributeError, ValueError, OSError):
            pass
    parent = os.getpid()
    gc_was_enabled = gc.isenabled()
    gc.disable()                        # no collection between here and the child's freeze
    try:
        pid = os.fork()
    finally:
        if gc_was_enabled and os.getpid() == parent:
            gc.enable()
    if pid == 0:
        gc.freeze()                     # the child never collects what it inherits
        gc.enable()
        code = 1
        try:
            child_stdin = pipes[0][0] if stdin == PIPE else stdin
            child_stdout = pipes[1][1] if stdout == PIPE else stdout
            _become(argv, env, child_stdin, child_stdout, stderr, new_session, pipes, parent,
                    pass_fds)
            code = _run(args)
            from ..broker import sockets
            sockets.term()              # what the interpreter's exit does for a spawned one
        except BaseException:           # noqa: BLE001 — reported, then exit
            traceback.print_exc()
        finally:
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (ValueError, OSError):
                    pass
            os._exit(code)
    parent_stdin = parent_stdout = None
    if 0 in pipes:
        os.close(pipes[0][0])
        parent_stdin = open(pipes[0][1], "wb", buffering=0)
    if 1 in pipes:
        os.close(pipes[1][1])
        parent_stdout = open(pipes[1][0], "rb", buffering=0)
    return ForkedProcess(pid, argv, parent_stdin, parent_stdout)


_inherited_streams: tuple = ()   # the parent's stream objects, kept so none is freed


def _become(argv, env, stdin, stdout, stderr, new_session, pipes, parent,
            pass_fds=()) -> None:
    """In the child: the streams, descriptors, environment, signals and
    command line a freshly spawned ``python -m`` would have (and the
    descriptors of ``pass_fds``)."""
    global _forked, _inherited_streams
    _forked = True
    if env.get("ZRAY_DIE_WITH_PARENT") == "1":
        from . import daemon
        daemon.die_with_parent()
        if os.getppid() != parent:      # it died before that took effect
            os._exit(1)
    if new_session:
        os.setsid()
    devnull = os.open(os.devnull, os.O_RDWR)
    in_fd = devnull if stdin in (None, DEVNULL) else stdin
    out_fd = devnull if stdout in (None, DEVNULL) else stdout
    err_fd = out_fd if stderr == STDOUT else devnull if stderr == DEVNULL else stderr
    # copies above 0..2 first, so no dup2 overwrites a source still to be used
    # (a parent with closed standard streams hands out 0..2 for new files)
    copies = [fcntl.fcntl(fd, fcntl.F_DUPFD, 3) for fd in (in_fd, out_fd, err_fd)]
    for target, fd in enumerate(copies):
        os.dup2(fd, target)
    for fd in {devnull, *copies, *(fd for pair in pipes.values() for fd in pair)}:
        if fd > 2:
            os.close(fd)
    for fd in pass_fds:
        os.set_inheritable(fd, True)    # kept: exec would keep it too
    _release_inherited_descriptors()
    _inherited_streams = (sys.stdin, sys.stdout, sys.stderr,
                          sys.__stdin__, sys.__stdout__, sys.__stderr__)
    sys.stdin = sys.__stdin__ = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(io.FileIO(1, "w", closefd=False),
                                                   line_buffering=True)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(io.FileIO(2, "w", closefd=False),
                                                   line_buffering=True)
    signal.set_wakeup_fd(-1)
    for sig in signal.valid_signals():
        try:
            if callable(signal.getsignal(sig)):
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError):
            pass
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.settrace(None)
    sys.setprofile(None)
    logging.disable(logging.NOTSET)
    os.environ.clear()
    os.environ.update(env)
    config.reload()
    logging.getLogger("zray").setLevel(logging.NOTSET)
    sys.argv = argv[2:]
    try:
        _set_command_line(argv)
    except Exception:                   # cosmetic: the process runs without it
        logging.getLogger(__name__).debug("cannot set the command line", exc_info=True)


def _release_inherited_descriptors() -> None:
    """What exec would close: every descriptor above 2 marked close-on-exec
    (Python opens all its files and sockets so) is pointed at /dev/null, so
    the parent's pipes, sockets and locks are released here. The numbers stay
    taken, so an inherited object that closes its descriptor later cannot
    close one this process opened since."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    devnull = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for fd in fds:
            if fd > 2 and fd != devnull:
                try:
                    if fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC:
                        os.dup2(devnull, fd, inheritable=False)
                except OSError:         # the directory's own descriptor, gone now
                    pass
    finally:
        os.close(devnull)


def _set_command_line(argv: list[str]) -> None:
    """Show ``argv`` as this process's command line (``/proc/<pid>/cmdline``,
    ``ps``): rewrite the memory the kernel reads
    the command line from, the inherited argument strings and, when those
    are too short, the inherited environment strings after them (unused
    once the environment was replaced, which is checked)."""
    libc = ctypes.CDLL(None)
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # fields 48..51 of /proc/<pid>/stat (see proc(5)); fields[0] is field 3
    fields = stat[stat.rindex(b")") + 2:].split()
    arg_start, arg_end, env_start, env_end = (int(x) for x in fields[45:49])
    if not 0 < arg_start < arg_end <= env_start <= env_end:
        return
    with open("/proc/self/cmdline", "rb") as f:
        if ctypes.string_at(arg_start, arg_end - arg_start) != f.read():
            return                      # not the memory the kernel shows: leave it
    as_argv = b"\0".join(a.encode() for a in argv) + b"\0"
    if len(as_argv) <= arg_end - arg_start:
        data = as_argv.ljust(arg_end - arg_start, b"\0")
    else:
        # Longer than the original arguments: one string, spaces between the
        # arguments, ending in a NUL (how the kernel and psutil read a
        # rewritten command line), over the environment strings if free.
        end = env_end if env_start == arg_end and not _environ_uses(
            libc, env_start, env_end) else arg_end
        data = b" ".join(a.encode() for a in argv)[:end - arg_start - 1] + b"\0"
    ctypes.memmove(arg_start, data, len(data))


def _environ_uses(libc, start: int, end: int) -> bool:
    """Some C environment string still lies in [start, end)."""
    environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    i = 0
    while environ[i]:
        if start <= environ[i] < end:
            return True
        i += 1
    return False


def _run(args: list[str]) -> int:
    """Run the module's ``main(argv)``; its exit code."""
    module = importlib.import_module(args[0])
    if not hasattr(module, "main"):
        module = importlib.import_module(args[0] + ".__main__")
    try:
        module.main(args[1:])
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1
    return 0

"""What the running dashboard costs the core microbenchmark rows.

    python benchmarks/dashboard_overhead.py [--rounds 6] [--repeats 2] [--duration 0.4]
        [--rows single_client,1_1_actor] [--limit-pct 5] [--watch] [--control]
        [--frozen | --per-row] [--json FILE]

The goal (issue 10): every core row with the dashboard running stays within
5% of the row without it. Runs of a whole microbenchmark differ by +-15% on a
shared machine, so one run each way cannot show 5%. This measures in pairs
instead, on ONE local cluster (2 CPUs, task events reported as always):

* a round runs every row with the dashboard off, then starts the dashboard
  daemon on the same cluster (``python -m zray.dashboard``, as ``zray.init``
  does), waits until it answers and its processes are idle (its start-up
  CPU is never timed), runs every row again, and stops it; each half
  starts once the cluster has settled from the one before; odd rounds run
  "on" first, so a drift of the machine cancels out (hence an even number
  of rounds: with an odd one the order that came more often decides the
  median);
* in each half a row runs ``--repeats`` times and its best value counts:
  other work on the machine only ever slows a row down;
* a row's cost in a round is its "on" value against its "off" value of that
  round (throughput: 1 - on/off; latency: on/off - 1), so the noise of
  cluster start-up and of the rows' placement is out of every ratio;
* ``--control`` adds to every round a third half run exactly as "on" is,
  but with a stand-in in place of the dashboard (a process that imports
  what the dashboard imports and sleeps): its "cost" is what this
  procedure reads as a cost when the dashboard does nothing at all, the
  noise floor a dashboard cost must stand out of;
* the report gives per row the median cost over the rounds and its spread
  (interquartile range and min..max). The exit code is 1 when a median
  exceeds ``--limit-pct``, 0 otherwise (2: the cluster or dashboard failed);
* and, free of timing noise, the CPU time the dashboard's processes used
  while the rows ran against the CPU time of the whole cluster (a CPU-bound
  row cannot lose much more than that share to it), and how often its
  threads woke up (context switches per second: what a latency-bound row
  such as ``1_1_actor_calls_sync`` could feel).

``--watch`` keeps the dashboard's live stream (``/api/events``, what an open
Overview page reads) open while the dashboard runs: the cost with a user
watching. The rows are those of ``zray microbenchmark`` (its ``_Bench``
methods), minus init_to_first_task (a fresh process per run; the dashboard
starts 1 s after init there, so it never delays the first task) and the
zray-only rows that are not core operations. The default run takes about
6-8 minutes (``--repeats 1 --rounds 4``: about 3).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import time

#: rows measured by default: the core operations of ``zray microbenchmark``
EXCLUDED = ("init_to_first_task",)
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
#: after the dashboard answers, its start-up work (imports, fork, app, first
#: snapshot; with --watch the stream's first full read) must end first: the
#: rows start once its processes used less than IDLE_CPU of a core over
#: IDLE_WINDOW_S (at most SETTLE_MAX_S, then it is reported and they start)
IDLE_WINDOW_S = 0.5
IDLE_CPU = 0.05
SETTLE_MAX_S = 15.0
#: every half (off, on, stand-in) starts once the whole cluster has settled
#: from what ran before (the previous half's task events, frees, actor
#: deaths): its processes used less than CLUSTER_IDLE_CPU of a core over
#: IDLE_WINDOW_S (an idle cluster uses ~0.06: heartbeats, workers' ticks).
#: Without it only the halves after a dashboard's (or stand-in's) start
#: began after a pause, the "off" ones right after the previous half
CLUSTER_IDLE_CPU = 0.15


#: the --watch reader (argv: port; the token in $WATCH_TOKEN): reads the
#: dashboard's live stream as an open page does, reopening it when it ends
WATCHER = """
import http.client, os, sys, time
port, token, parent = int(sys.argv[1]), os.environ["WATCH_TOKEN"], os.getppid()
while os.getppid() == parent:       # the benchmark died: so does this
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/api/events", headers={"Authorization": "Bearer " + token})
        resp = conn.getresponse()
        while resp.readline():
            pass
    except OSError:
        time.sleep(0.2)
    finally:
        conn.close()
"""


#: the --control stand-in (argv: none): imports what the dashboard's server
#: imports, then sleeps until stopped or its parent (the benchmark) is gone
STAND_IN = """
import os, time
import flask, gunicorn.app.base, zmq, psutil
import zray.dashboard.app, zray.dashboard.cluster_view, zray.dashboard.jobs
parent = os.getppid()
while os.getppid() == parent:
    time.sleep(1.0)
"""


class _Process:
    """A process tree this benchmark started (and stops, by pid)."""

    proc: subprocess.Popen
    _watcher: subprocess.Popen | None = None

    def _wait_idle(self) -> bool:
        """Wait until the processes are idle (see IDLE_CPU); False if they
        were not within SETTLE_MAX_S."""
        deadline = time.monotonic() + SETTLE_MAX_S
        last = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_s()
            if now - last < IDLE_CPU * IDLE_WINDOW_S:
                return True
            last = now
        return False

    def _tree(self) -> list:
        import psutil
        try:
            root = psutil.Process(self.proc.pid)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_s(self) -> float:
        """CPU seconds its processes (for the dashboard: supervisor, server,
        worker) used so far."""
        import psutil
        total = 0.0
        for proc in self._tree():
            try:
                total += sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue    # gone meanwhile
        return total

    def wakeups(self) -> int:
        """Context switches of all its processes' threads so far (each
        time one of them slept and was woken, or was preempted)."""
        total = 0
        for proc in self._tree():
            total += _thread_switches(proc.pid)
        return total

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to each of its processes (SIGSTOP freezes them
        where they are, memory and sockets kept; SIGCONT goes on)."""
        import psutil
        for proc in self._tree():
            try:
                proc.send_signal(signum)
            except psutil.Error:
                continue    # gone meanwhile

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait(STOP_TIMEOUT_S)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def _thread_switches(pid: int) -> int:
    """Voluntary + involuntary context switches of every thread of ``pid``
    (Linux; 0 elsewhere or when it is gone)."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        total += int(line.split()[1])
        except (OSError, ValueError):
            continue        # the thread ended meanwhile
    return total


class StandIn(_Process):
    """The --control half's stand-in for the dashboard: a process of the
    dashboard's size (its imports) that does nothing, started and waited
    for as the dashboard is."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-c", STAND_IN],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + READY_TIMEOUT_S
            while self.cpu_s() < 0.05 and self.proc.poll() is None:     # started importing
                if time.monotonic() > deadline:
                    raise RuntimeError("the stand-in did not start")
                time.sleep(0.05)
            if self.proc.poll() is not None:
                raise RuntimeError(f"the stand-in exited with code {self.proc.returncode}")
            self.settled = self._wait_idle()
        except BaseException:
            self.stop()
            raise


class Dashboard(_Process):
    """A dashboard daemon on the running local cluster, stopped by pid."""

    def __init__(self, gcs_address: str, session_dir: str, watch: bool):
        from zray._private.node import free_port
        from zray.dashboard import launch
        self.port = free_port()
        self.token_file, _ = launch.token_file_for(session_dir)
        with open(self.token_file) as f:
            self.token = f.read().strip()
        log = open(os.path.join(session_dir, "logs", "dashboard_overhead.out"), "ab")
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "zray.dashboard", "--gcs-address", gcs_address,
                 "--session-dir", session_dir, "--port", str(self.port),
                 "--token-file", self.token_file],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "ZRAY_DIE_WITH_PARENT": "1"})
        finally:
            log.close()
        self._watcher: subprocess.Popen | None = None
        try:
            self._wait_ready()
            if watch:
                self._watch()
            self.settled = self._wait_idle()
        except BaseException:
            self.stop()
            raise

    def _get(self, path: str, timeout: float = 2.0) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {self.token}"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the dashboard exited with code {self.proc.returncode}; "
                                   f"see its logs in the session's logs directory")
            try:
                if self._get("/api/version") == 200:
                    return
            except OSError:
                pass            # not listening yet
            if time.monotonic() > deadline:
                raise RuntimeError(f"the dashboard did not answer within {READY_TIMEOUT_S}s")
            time.sleep(0.1)

    def _watch(self) -> None:
        """Read the live stream (as an open Overview page does) until
        stop(), from a process of its own: a browser is not in the driver,
        and a reader thread here would take the driver's GIL from the rows."""
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(self.port)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, env={**os.environ, "WATCH_TOKEN": self.token})

def measure(names, rounds: int, duration: float, row_timeout: float, watch: bool,
            progress=print, repeats: int = 1, control: bool = False,
            frozen: bool = False, per_row: bool = False) -> dict:
    """{row: {"off": [...], "on": [...], "control": [...], "frozen": [...]}},
    one value per round each, the best of ``repeats`` runs (None: the row
    failed that round; "control" only with ``control``; "frozen" only with
    ``frozen``: the same dashboard as "on", stopped by SIGSTOP). With
    ``per_row`` each row's two halves run back to back, the dashboard started
    and stopped for each "on" half (no control or frozen halves then)."""
    import zray
    from zray._private import microbenchmark as mb
    from zray.worker import global_state

    if per_row and (control or frozen):
        raise ValueError("per_row has no control or frozen halves")
    methods = {name: meth for name, _, meth in mb.ROWS}
    lower = {name: unit in mb.LOWER_IS_BETTER_UNITS for name, unit, _ in mb.ROWS}
    modes = ("off", "on", "control") if control else ("off", "on")
    kept = modes + (("frozen",) if frozen else ())
    values = {name: {mode: [] for mode in kept} for name in names}
    # while rows ran with the dashboard: its CPU and wake-ups, the cluster's CPU
    cpu = {"dashboard_s": 0.0, "cluster_s": 0.0, "dashboard_wakeups": 0, "timed_s": 0.0}
    zray.init(**mb.init_kwargs("zray", dashboard=False))
    try:
        worker = global_state.worker
        bench = mb._Bench(zray, duration)

        def run_row(name: str, mode: str):
            try:
                with mb._Alarm(row_timeout):
                    return float(getattr(bench, methods[name])())
            except Exception as err:    # noqa: BLE001 — reported, the round goes on
                progress(f"  {name} ({mode}): failed: {type(err).__name__}: {err}")
                return None

        def run_rows(mode: str, rows: list) -> None:
            for name in rows:
                got = [v for v in (run_row(name, mode) for _ in range(repeats)) if v]
                values[name][mode].append(
                    (min(got) if lower[name] else max(got)) if got else None)

        def on_half(half: str, rows: list, other: "_Process") -> None:
            """Time ``rows`` with ``other`` running (or frozen) and, for the
            dashboard running, add its CPU and wake-ups meanwhile."""
            _settle_cluster(progress)
            if half == "frozen":
                other.signal_all(signal.SIGSTOP)
            try:
                before = (other.cpu_s(), _cluster_cpu_s(), other.wakeups(), time.monotonic())
                run_rows(half, rows)
                after = (other.cpu_s(), _cluster_cpu_s(), other.wakeups(), time.monotonic())
            finally:
                if half == "frozen":
                    other.signal_all(signal.SIGCONT)
            if half == "on":
                cpu["dashboard_s"] += after[0] - before[0]
                cpu["cluster_s"] += after[1] - before[1]
                cpu["dashboard_wakeups"] += after[2] - before[2]
                cpu["timed_s"] += after[3] - before[3]

        def start(mode: str) -> "_Process":
            other = Dashboard(worker.gcs_address, worker.session_dir, watch) \
                if mode == "on" else StandIn()
            if not other.settled:
                progress(f"  the {'dashboard' if mode == 'on' else 'stand-in'} was still "
                         f"busy {SETTLE_MAX_S:g}s after it started; timing anyway")
            return other

        if per_row:
            # each row's off and on halves back to back (seconds apart, not a
            # whole round apart), the order alternating by round and by row
            for r in range(rounds):
                progress(f"round {r + 1}/{rounds}: row by row")
                for i, name in enumerate(names):
                    for mode in (("off", "on") if (r + i) % 2 == 0 else ("on", "off")):
                        if mode == "off":
                            _settle_cluster(progress)
                            run_rows("off", [name])
                            continue
                        other = start("on")
                        try:
                            on_half("on", [name], other)
                        finally:
                            other.stop()
        else:
            for r in range(rounds):
                # off/on alternate; the control half sits between them, on either side
                order = modes if r % 2 == 0 else modes[::-1]
                progress(f"round {r + 1}/{rounds}: {', then '.join(order)}")
                for mode in order:
                    if mode == "off":
                        _settle_cluster(progress)
                        run_rows("off", names)
                        continue
                    other = start(mode)
                    # with ``frozen``, the running dashboard's half and its frozen
                    # half take turns going first, on the same processes
                    halves = [mode] if mode != "on" or not frozen else \
                        (["on", "frozen"] if r % 2 == 0 else ["frozen", "on"])
                    try:
                        for half in halves:
                            on_half(half, names, other)
                    finally:
                        other.stop()
    finally:
        zray.shutdown()
    values["_cpu"] = cpu
    return values


def _settle_cluster(progress) -> None:
    """Wait until the cluster is idle (see CLUSTER_IDLE_CPU), at most
    SETTLE_MAX_S (then say so and go on)."""
    deadline = time.monotonic() + SETTLE_MAX_S
    last = _cluster_cpu_s()
    while time.monotonic() < deadline:
        time.sleep(IDLE_WINDOW_S)
        now = _cluster_cpu_s()
        if now - last < CLUSTER_IDLE_CPU * IDLE_WINDOW_S:
            return
        last = now
    progress(f"  the cluster was still busy after {SETTLE_MAX_S:g}s; timing anyway")


def _cluster_cpu_s() -> float:
    """CPU seconds used so far by this driver and every process it started
    (the cluster's daemons and workers, the dashboard among them)."""
    import psutil
    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for proc in me.children(recursive=True):
        try:
            total += sum(proc.cpu_times()[:2])
        except psutil.Error:
            continue        # gone meanwhile
    return total


def cost_pct(off: float, on: float, lower_is_better: bool) -> float:
    """How much worse ``on`` is than ``off``, in percent (< 0: better)."""
    from zray._private import microbenchmark as mb
    return mb.cost_pct(off, on, lower_is_better)


def summarize(values: dict, limit_pct: float) -> list[dict]:
    from zray._private import microbenchmark as mb
    units = {name: unit for name, unit, _ in mb.ROWS}
    out = []
    for name, v in values.items():
        if name.startswith("_"):
            continue
        lower = units[name] in mb.LOWER_IS_BETTER_UNITS
        costs = [cost_pct(off, on, lower) for off, on in zip(v["off"], v["on"])
                 if off and on]
        row = {"name": name, "unit": units[name], "rounds": len(costs), "costs_pct": costs,
               "off_median": _median([x for x in v["off"] if x]),
               "on_median": _median([x for x in v["on"] if x])}
        if costs:
            row.update(_spread(costs), ok=statistics.median(costs) <= limit_pct)
        else:
            row.update(median_pct=None, ok=False)
        if "control" in v:      # the same procedure with a stand-in: the noise floor
            control = [cost_pct(off, c, lower) for off, c in zip(v["off"], v["control"])
                       if off and c]
            row["control_costs_pct"] = control
            if control:
                row["control"] = _spread(control)
        if "frozen" in v:       # running against frozen: the same processes and memory
            running = [cost_pct(fz, on, lower) for fz, on in zip(v["frozen"], v["on"])
                       if fz and on]
            row["frozen_costs_pct"] = running
            if running:
                row["frozen"] = _spread(running)
        out.append(row)
    return out


def _spread(costs: list) -> dict:
    """Median, quartiles and extremes of a row's costs over the rounds."""
    q = statistics.quantiles(costs, n=4, method="inclusive") if len(costs) > 1 \
        else [costs[0]] * 3
    return {"median_pct": statistics.median(costs), "q1_pct": q[0], "q3_pct": q[2],
            "min_pct": min(costs), "max_pct": max(costs)}


def _median(xs):
    return statistics.median(xs) if xs else None


def format_report(rows: list[dict], limit_pct: float, watch: bool) -> str:
    from zray._private.microbenchmark import format_value
    control = any("control_costs_pct" in r for r in rows)
    frozen = any("frozen_costs_pct" in r for r in rows)
    head = ["row", "off (median)", "on (median)", "cost median", "IQR", "min..max"] + (
        ["stand-in median", "IQR"] if control else []) + (
        ["vs frozen median", "IQR"] if frozen else []) + [""]
    table = [head]
    for r in rows:
        if r["median_pct"] is None:
            table.append([r["name"], "n/a", "n/a", "n/a", "", ""] + ["", ""] * control
                         + ["", ""] * frozen + ["FAILED"])
            continue
        c, fz = r.get("control"), r.get("frozen")
        table.append([
            r["name"], f"{format_value(r['off_median'])} {r['unit']}",
            f"{format_value(r['on_median'])} {r['unit']}", f"{r['median_pct']:+.1f}%",
            f"{r['q1_pct']:+.1f}..{r['q3_pct']:+.1f}%",
            f"{r['min_pct']:+.1f}..{r['max_pct']:+.1f}%"]
            + ([f"{c['median_pct']:+.1f}%", f"{c['q1_pct']:+.1f}..{c['q3_pct']:+.1f}%"]
               if c else ["n/a", ""]) * control
            + ([f"{fz['median_pct']:+.1f}%", f"{fz['q1_pct']:+.1f}..{fz['q3_pct']:+.1f}%"]
               if fz else ["n/a", ""]) * frozen
            + ["ok" if r["ok"] else f"OVER {limit_pct:g}%"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in table]
    rounds = max((r["rounds"] for r in rows), default=0)
    return (f"# the dashboard{' (its live stream read)' if watch else ''} running vs not, "
            f"on one cluster, {rounds} paired rounds; cost > 0: slower with it"
            + ("; stand-in: the same with an idle process in its place (the noise floor)"
               if control else "")
            + ("; vs frozen: the dashboard running against the same processes stopped by "
               "SIGSTOP (its activity alone, not its start or its memory)" if frozen else "")
            + "\n" + "\n".join(lines))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6,
                    help="paired rounds (default 6; even, so both orders count as "
                         "often); more narrow the spread")
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of each row per half, the best kept (default 2)")
    ap.add_argument("--control", action="store_true",
                    help="also run each round with an idle stand-in in the dashboard's "
                         "place: the noise floor of this measurement")
    ap.add_argument("--frozen", action="store_true",
                    help="also run each round with the same dashboard frozen (SIGSTOP): "
                         "what its activity costs, apart from starting it and its memory")
    ap.add_argument("--per-row", action="store_true",
                    help="pair each row's off and on halves back to back, starting the "
                         "dashboard for each on half, instead of all rows off then all on: "
                         "pairs seconds apart, so a drift of the machine's speed over "
                         "minutes stays out of them")
    ap.add_argument("--duration", type=float, default=0.4,
                    help="timed seconds per row and run (default 0.4)")
    ap.add_argument("--rows", default="",
                    help="comma-separated rows or prefixes (default: the core rows)")
    ap.add_argument("--row-timeout", type=float, default=60.0)
    ap.add_argument("--limit-pct", type=float, default=5.0,
                    help="the exit code is 1 when a row's median cost exceeds this")
    ap.add_argument("--watch", action="store_true",
                    help="keep the dashboard's live stream open while it runs")
    ap.add_argument("--json", default="", help="also write the results to this file")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or args.duration <= 0:
        ap.error("--rounds and --repeats must be >= 1 and --duration > 0")
    if args.per_row and (args.control or args.frozen):
        ap.error("--per-row has no stand-in or frozen halves; leave out --control and --frozen")
    return args


def default_rows() -> list[str]:
    from zray._private import microbenchmark as mb
    return [n for n in mb.OVERHEAD_ROWS if n not in EXCLUDED]


def main(argv=None) -> int:
    args = parse_args(argv)
    from zray._private import microbenchmark as mb
    try:
        names = [n for n in mb.select_rows(args.rows) if n in default_rows()] \
            if args.rows else default_rows()
    except ValueError as err:
        print(f"dashboard_overhead: {err}", file=sys.stderr)
        return 2
    if not names:
        print(f"dashboard_overhead: no core row in {args.rows!r}; the core rows: "
              f"{', '.join(default_rows())}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    try:
        values = measure(names, args.rounds, args.duration, args.row_timeout, args.watch,
                         progress=lambda s: print(s, file=sys.stderr, flush=True),
                         repeats=args.repeats, control=args.control, frozen=args.frozen,
                         per_row=args.per_row)
    except RuntimeError as err:
        print(f"dashboard_overhead: {err}", file=sys.stderr)
        return 2
    rows = summarize(values, args.limit_pct)
    print(format_report(rows, args.limit_pct, args.watch))
    cpu = values["_cpu"]
    if cpu["cluster_s"] > 0:
        print(f"# while the rows ran with it, the dashboard used {cpu['dashboard_s']:.2f} CPU-s, "
              f"{100 * cpu['dashboard_s'] / cpu['cluster_s']:.2f}% of the "
              f"{cpu['cluster_s']:.1f} CPU-s the cluster used (noise-free: its share bounds "
              f"what it can take from a CPU-bound row)")
    if cpu["timed_s"] > 0:
        print(f"# its threads woke {cpu['dashboard_wakeups'] / cpu['timed_s']:.0f} times a "
              f"second meanwhile (context switches of all its threads)")
    print(f"# {time.monotonic() - t0:.0f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"limit_pct": args.limit_pct, "watch": args.watch, "rows": rows,
                       "values": values}, f, indent=1)
    over = [r["name"] for r in rows if not r["ok"]]
    if over:
        print(f"# over {args.limit_pct:g}% (or failed): {', '.join(over)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

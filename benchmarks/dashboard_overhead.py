"""What the running dashboard costs the core microbenchmark rows.

    python benchmarks/dashboard_overhead.py [--rounds 5] [--duration 0.4]
        [--rows single_client,1_1_actor] [--limit-pct 5] [--watch] [--json FILE]

The goal (issue 10): every core row with the dashboard running stays within
5% of the row without it. Runs of a whole microbenchmark differ by +-15% on a
shared machine, so one run each way cannot show 5%. This measures in pairs
instead, on ONE local cluster (2 CPUs, task events reported as always):

* a round runs every row with the dashboard off, then starts the dashboard
  daemon on the same cluster (``python -m zray.dashboard``, as ``zray.init``
  does), waits until it answers and its processes are idle (its start-up
  CPU is never timed), runs every row again, and stops it; odd rounds run
  "on" first, so a drift of the machine cancels out;
* a row's cost in a round is its "on" value against its "off" value of that
  round (throughput: 1 - on/off; latency: on/off - 1), so the noise of
  cluster start-up and of the rows' placement is out of every ratio;
* the report gives per row the median cost over the rounds and its spread
  (interquartile range and min..max). The exit code is 1 when a median
  exceeds ``--limit-pct``, 0 otherwise (2: the cluster or dashboard failed);
* and, free of timing noise, the CPU time the dashboard's processes used
  while the rows ran against the CPU time of the whole cluster: a CPU-bound
  row cannot lose much more than that share to it.

``--watch`` keeps the dashboard's live stream (``/api/events``, what an open
Overview page reads) open while the dashboard runs: the cost with a user
watching. The rows are those of ``zray microbenchmark`` (its ``_Bench``
methods), minus init_to_first_task (a fresh process per run; the dashboard
starts 1 s after init there, so it never delays the first task) and the
zray-only rows that are not core operations. The default run takes about
3-4 minutes.
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


class Dashboard:
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

    def _wait_idle(self) -> bool:
        """Wait until the dashboard's processes are idle (see IDLE_CPU);
        False if they were not within SETTLE_MAX_S."""
        deadline = time.monotonic() + SETTLE_MAX_S
        last = self.cpu_s()
        while time.monotonic() < deadline:
            time.sleep(IDLE_WINDOW_S)
            now = self.cpu_s()
            if now - last < IDLE_CPU * IDLE_WINDOW_S:
                return True
            last = now
        return False

    def _watch(self) -> None:
        """Read the live stream (as an open Overview page does) until
        stop(), from a process of its own: a browser is not in the driver,
        and a reader thread here would take the driver's GIL from the rows."""
        self._watcher = subprocess.Popen(
            [sys.executable, "-c", WATCHER, str(self.port)], stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, env={**os.environ, "WATCH_TOKEN": self.token})

    def cpu_s(self) -> float:
        """CPU seconds its processes (supervisor, server, worker) used so far."""
        import psutil
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                total += sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue    # gone meanwhile
        return total

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


def measure(names, rounds: int, duration: float, row_timeout: float, watch: bool,
            progress=print) -> dict:
    """{row: {"off": [...], "on": [...]}}, one value per round each (None:
    the row failed that round)."""
    import zray
    from zray._private import microbenchmark as mb
    from zray.worker import global_state

    methods = {name: meth for name, _, meth in mb.ROWS}
    values = {name: {"off": [], "on": []} for name in names}
    cpu = {"dashboard_s": 0.0, "cluster_s": 0.0}     # while rows ran with the dashboard
    zray.init(**mb.init_kwargs("zray", dashboard=False))
    try:
        worker = global_state.worker
        bench = mb._Bench(zray, duration)

        def run_rows(mode: str) -> None:
            for name in names:
                try:
                    with mb._Alarm(row_timeout):
                        value = float(getattr(bench, methods[name])())
                except Exception as err:    # noqa: BLE001 — reported, the round goes on
                    progress(f"  {name} ({mode}): failed: {type(err).__name__}: {err}")
                    value = None
                values[name][mode].append(value)

        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            progress(f"round {r + 1}/{rounds}: {order[0]} then {order[1]}")
            for mode in order:
                if mode == "off":
                    run_rows("off")
                    continue
                dashboard = Dashboard(worker.gcs_address, worker.session_dir, watch)
                if not dashboard.settled:
                    progress(f"  the dashboard was still busy {SETTLE_MAX_S:g}s after it "
                             f"answered; timing anyway")
                try:
                    before = dashboard.cpu_s(), _cluster_cpu_s()
                    run_rows("on")
                    after = dashboard.cpu_s(), _cluster_cpu_s()
                    cpu["dashboard_s"] += after[0] - before[0]
                    cpu["cluster_s"] += after[1] - before[1]
                finally:
                    dashboard.stop()
    finally:
        zray.shutdown()
    values["_cpu"] = cpu
    return values


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
    return ((on / off - 1.0) if lower_is_better else (1.0 - on / off)) * 100.0


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
            q = statistics.quantiles(costs, n=4, method="inclusive") if len(costs) > 1 \
                else [costs[0]] * 3
            row.update(median_pct=statistics.median(costs), q1_pct=q[0], q3_pct=q[2],
                       min_pct=min(costs), max_pct=max(costs),
                       ok=statistics.median(costs) <= limit_pct)
        else:
            row.update(median_pct=None, ok=False)
        out.append(row)
    return out


def _median(xs):
    return statistics.median(xs) if xs else None


def format_report(rows: list[dict], limit_pct: float, watch: bool) -> str:
    from zray._private.microbenchmark import format_value
    head = ["row", "off (median)", "on (median)", "cost median", "IQR", "min..max", ""]
    table = [head]
    for r in rows:
        if r["median_pct"] is None:
            table.append([r["name"], "n/a", "n/a", "n/a", "", "", "FAILED"])
            continue
        table.append([
            r["name"], f"{format_value(r['off_median'])} {r['unit']}",
            f"{format_value(r['on_median'])} {r['unit']}", f"{r['median_pct']:+.1f}%",
            f"{r['q1_pct']:+.1f}..{r['q3_pct']:+.1f}%",
            f"{r['min_pct']:+.1f}..{r['max_pct']:+.1f}%",
            "ok" if r["ok"] else f"OVER {limit_pct:g}%"])
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip()
             for row in table]
    rounds = max((r["rounds"] for r in rows), default=0)
    return (f"# the dashboard{' (its live stream read)' if watch else ''} running vs not, "
            f"on one cluster, {rounds} paired rounds; cost > 0: slower with it\n"
            + "\n".join(lines))


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5,
                    help="paired rounds (default 5); more narrow the spread")
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
    if args.rounds < 1 or args.duration <= 0:
        ap.error("--rounds must be >= 1 and --duration > 0")
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
                         progress=lambda s: print(s, file=sys.stderr, flush=True))
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

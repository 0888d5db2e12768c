"""What task-event reporting costs the core microbenchmark rows.

    python benchmarks/task_events_overhead.py [--rounds 10] [--sessions 2]
        [--duration 1.0] [--rows single_client,1_1_actor] [--limit-pct 5] [--json FILE]

The goal (issue 10): reporting costs at most 5% on every row. This VM's
speed changes by up to 2x within minutes, so rows measured a whole
microbenchmark apart (``zray microbenchmark --task-events-overhead``: one
cluster each way per round) differ by more than that. Here two local
clusters run side by side, one reporting task events and one not, each
driven by its own process; the rows run on them in turns, seconds apart:

* a round runs each row on both clusters back to back (odd rounds: the
  reporting one first), so a pair is measured within a few seconds;
* after each half the machine stays idle for ``--pause`` seconds; after a
  half on the reporting cluster, once its workers sent their last batch
  (1.2 s at least), its driver reads the task table, so its GCS applies
  what waits then, untimed (in use it does that when the machine has an
  idle core, or when the table is read), and none of it spills into the
  other cluster's timed half;
* a row's cost in a round is its "on" value against its "off" value
  (throughput: 1 - on/off; latency: on/off - 1); the report gives per row
  the median over all rounds, the interquartile range and min..max;
* ``--sessions`` starts both clusters anew (actors land on other cores).

Exit code 1 when a row's median cost exceeds ``--limit-pct``, else 0.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from zray._private import microbenchmark as mb  # noqa: E402

#: rows measured by default: the core rows that run in one driver process
DEFAULT_ROWS = [n for n in mb.OVERHEAD_ROWS if n != "init_to_first_task"
                and n in {name for name, _, method in mb.ROWS if method}]
RESULT = "RESULT "
#: a child's answer to one command, at the most (a row runs ~1.5 s)
ANSWER_TIMEOUT_S = 300.0
#: after a half on the reporting cluster: its workers' last batch is sent by then
FLUSHED_AFTER_S = 1.2


def child(duration: float) -> None:
    """One cluster (reporting as the environment says) and its driver: runs
    the rows named on stdin, one per line, answering ``RESULT <json>``
    (``task_rows``: how many task rows its GCS holds)."""
    import zray
    from zray.broker import protocol as p
    from zray.worker import global_state
    zray.init(**mb.init_kwargs("zray"))
    bench = mb._Bench(zray, duration)
    methods = {name: method for name, _, method in mb.ROWS}
    print(RESULT + json.dumps("ready"), flush=True)
    try:
        for line in sys.stdin:
            row = line.strip()
            if row == "quit":
                break
            try:
                if row == "task_rows":
                    answer = {"value": global_state.worker.gcs.call(p.GetTaskSummary()).total}
                else:
                    answer = {"value": float(getattr(bench, methods[row])())}
            except Exception as exc:  # noqa: BLE001 — reported to the parent
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(RESULT + json.dumps(answer), flush=True)
    finally:
        zray.shutdown()


class Cluster:
    """A child process with its cluster: ``run(row)`` -> value or None."""

    def __init__(self, reporting: bool, duration: float, timeout: float):
        env = dict(os.environ, ZRAY_TASK_EVENTS_REPORT_INTERVAL_MS="1000" if reporting
                   else "0")
        self.timeout = timeout
        # unbuffered: a line is read only when select says one came
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--_child", "--duration",
             str(duration)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0,
            env=env)
        if self._answer() != "ready":
            raise RuntimeError("the cluster did not start")

    def _answer(self):
        """The child's next RESULT line; RuntimeError if it exits or is
        silent for ``timeout`` (its cluster's daemons die with it)."""
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.proc.stdout], [], [], left)[0]:
                raise RuntimeError(f"the driver did not answer in {self.timeout} s")
            line = self.proc.stdout.readline().decode(errors="replace")
            if not line:
                raise RuntimeError(f"the driver exited ({self.proc.wait()})")
            if line.startswith(RESULT):
                return json.loads(line[len(RESULT):])

    def run(self, row: str):
        self.proc.stdin.write((row + "\n").encode())
        self.proc.stdin.flush()
        answer = self._answer()
        if "error" in answer:
            print(f"# {row}: {answer['error']}", file=sys.stderr)
        return answer.get("value")

    def close(self, timeout: float = 60.0) -> None:
        """Shut the cluster down; kill the driver (its daemons die with it)
        if it does not end in ``timeout``."""
        try:
            self.proc.stdin.write(b"quit\n")
            self.proc.stdin.close()
            self.proc.wait(timeout=timeout)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def report(costs: dict, limit: float) -> bool:
    """Print the table; whether every row's median is within ``limit``."""
    ok = True
    print(f"{'row':34s} {'rounds':>6s} {'median':>8s} {'IQR':>17s} {'min..max':>17s}")
    for row, values in costs.items():
        if not values:
            print(f"{row:34s} {0:6d} {'n/a':>8s}")
            continue
        values = sorted(values)
        median = statistics.median(values)
        q = statistics.quantiles(values, n=4) if len(values) > 1 else [median] * 3
        ok = ok and median <= limit
        print(f"{row:34s} {len(values):6d} {median:+7.1f}% {q[0]:+7.1f}% ..{q[2]:+6.1f}% "
              f"{values[0]:+7.1f}% ..{values[-1]:+6.1f}%")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="rounds per session")
    ap.add_argument("--sessions", type=int, default=2)
    ap.add_argument("--duration", type=float, default=1.0, help="seconds per row")
    ap.add_argument("--pause", type=float, default=1.5,
                    help="idle seconds after each half (default %(default)s)")
    ap.add_argument("--rows", default=None, help="comma-separated row names or prefixes")
    ap.add_argument("--limit-pct", type=float, default=5.0)
    ap.add_argument("--json", default=None, help="write every round's values here")
    ap.add_argument("--answer-timeout", type=float, default=ANSWER_TIMEOUT_S,
                    help="seconds a driver may take for a row (default %(default)s)")
    ap.add_argument("--_child", dest="child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.duration)
        return 0
    if args.rounds < 1 or args.sessions < 1:
        ap.error("--rounds and --sessions must be at least 1")
    rows = mb.select_rows(args.rows.split(",")) if args.rows else DEFAULT_ROWS
    values = {row: {"off": [], "on": []} for row in rows}
    costs: dict = {row: [] for row in rows}
    started = time.time()
    task_rows: dict = {}
    for session in range(args.sessions):
        clusters = {}
        try:
            clusters["off"] = Cluster(False, args.duration, args.answer_timeout)
            clusters["on"] = Cluster(True, args.duration, args.answer_timeout)
            for round_ in range(args.rounds):
                order = ("off", "on") if round_ % 2 == 0 else ("on", "off")
                for row in rows:
                    got = {}
                    for mode in order:
                        got[mode] = clusters[mode].run(row)
                        if mode == "on":
                            time.sleep(max(args.pause, FLUSHED_AFTER_S))
                            clusters["on"].run("task_rows")
                        time.sleep(args.pause)
                    values[row]["off"].append(got["off"])
                    values[row]["on"].append(got["on"])
                    if got["off"] and got["on"]:
                        costs[row].append(mb.cost_pct(got["off"], got["on"],
                                                      mb._UNITS[row] in mb.LOWER_IS_BETTER_UNITS))
                print(f"# session {session + 1}/{args.sessions}, round {round_ + 1}/"
                      f"{args.rounds} done ({time.time() - started:.0f} s)", file=sys.stderr)
            task_rows = {mode: cluster.run("task_rows") for mode, cluster in clusters.items()}
        finally:
            for cluster in clusters.values():
                cluster.close()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"values": values, "costs_pct": costs, "task_rows": task_rows}, f)
    print(f"# task-event reporting on vs off: two clusters side by side, "
          f"{args.sessions} x {args.rounds} rounds, {args.duration} s per row; "
          f"cost > 0: slower with reporting; the last session's GCS held "
          f"{task_rows.get('on')} task rows with reporting, {task_rows.get('off')} without")
    return 0 if report(costs, args.limit_pct) else 1


if __name__ == "__main__":
    sys.exit(main())

"""What task-event reporting costs the actor rows, switched in the same processes.

    python benchmarks/task_events_toggle.py [--rounds 10] [--seconds 1.0]
        [--rows 1_1_actor_calls_async,1_n_actor_calls_async] [--long-burst]

Two clusters side by side (``task_events_overhead.py``) differ by more than
the cost sought: each starts its actors on other cores, and a round's cost
spreads by ±10–15%. Here one cluster and one set of actors per row serve
both ways: a round runs each row with reporting off and on (the order
alternating), switching the reporting of the driver and of the actors in
place, so both halves of a pair run in the same processes seconds apart. A
third half, off again (``off2``), shows the noise floor. Per row: the median
calls/s each way; the cost of "on" against the two "off" halves, each way's
rate pooled over all rounds (all calls over all seconds), with a 95%
interval from resampling the rounds (a 0.25 s half's rate spreads by
±15–20% on a 2-core VM, so a cost known to ±2% takes a few hundred rounds);
the same for off2 against off (the noise floor: its interval should hold 0);
the CPU each process spends per call each way (``psutil``, over
all rounds: the actors, the driver, the GCS), and how many of the row's
calls the GCS's task table got (those made with reporting on, while it
keeps them all: ``task_events_max``).

Only the actor rows: a task row's work runs on leased workers the driver
cannot switch (``python benchmarks/task_events_overhead.py`` covers them).
What an "on" half noted and had not sent when it ended (its actors send
every 1,000 events, so about a tick's worth) goes in the half after it.

After each "on" half the GCS takes in the events waiting for it (the table
is read, untimed), as it does in the idle time after a microbenchmark row:
a row's burst of a few seconds leaves its events waiting, unread, while it
runs. ``--long-burst`` lets them pile up over all rounds instead, one burst
of minutes: past three times the table's rows waiting, the GCS applies (and
sheds) each new batch as it comes, about 0.3–0.5 µs per call more on the
machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

import psutil  # noqa: E402

import zray  # noqa: E402
from zray._private import microbenchmark as mb  # noqa: E402
from zray.broker import protocol as p  # noqa: E402
from zray.config import config  # noqa: E402
from zray.worker import global_state  # noqa: E402

MODES = ("off", "on", "off2")


def _report(on: bool) -> int:
    """Switch this process's task-event reporting; its pid."""
    global_state.require_worker().task_events.enabled = on
    return os.getpid()


@zray.remote
class Actor:
    def f(self):
        return b"ok"

    def report(self, on):
        return _report(on)


@zray.remote
class AsyncActor:
    async def f(self):
        return b"ok"

    async def report(self, on):
        return _report(on)


#: row -> (actor class, options, how many actors): as zray microbenchmark's rows
ROWS = {
    "1_1_actor_calls_async": (Actor, {}, 1),
    "1_1_actor_calls_concurrent": (Actor, {"max_concurrency": 16}, 1),
    "1_1_async_actor_calls_async": (AsyncActor, {}, 1),
    "1_n_actor_calls_async": (Actor, {}, 4),
}


def _is_gcs(process) -> bool:
    try:
        return "zray.gcs" in process.cmdline()
    except psutil.Error:            # gone meanwhile (a worker that exited)
        return False


def _cpu(processes) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def run_half(actors, processes: dict, on: bool, seconds: float) -> dict:
    """Calls per second with reporting ``on`` or off, the calls, and the
    seconds of CPU each process group spent."""
    zray.get([a.report.remote(on) for a in actors])
    _report(on)
    before = {name: _cpu(group) for name, group in processes.items()}
    calls = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        zray.get([actors[i % len(actors)].f.remote() for i in range(mb.BATCH)])
        calls += mb.BATCH
    took = time.perf_counter() - start
    result = {"rate": calls / took, "calls": calls}
    for name, group in processes.items():
        result[name] = _cpu(group) - before[name]
    return result


def reported_calls(at_least: int = 0) -> tuple[int, int]:
    """Rows of ``f`` calls in the GCS's task table and rows in all (it keeps
    the newest ``task_events_max``), once the workers sent what they noted:
    ``at_least`` rows of calls are there, and the count no longer grows over
    a report interval and a half (30 s at the most)."""
    gcs = global_state.require_worker().gcs

    def count():
        summary = gcs.call(p.GetTaskSummary())
        return sum(sum(states.values()) for name, states in summary.by_name.items()
                   if name.endswith(".f")), summary.total

    settle = (config.task_events_report_interval_ms if config.task_events_report_interval_ms > 0
              else 1000) / 1000 * 1.5     # (the interval reporting switched on uses)
    last, deadline = count(), time.monotonic() + 30
    while last[0] < at_least and last[1] < config.task_events_max \
            and time.monotonic() < deadline:          # (a full table drops rows)
        time.sleep(0.05)
        last = count()
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = count()
        if now == last:
            break
        last = now
    return last


def absorb() -> None:
    """(untimed) Have the GCS apply the task events waiting for it, as it
    does in the idle time after a microbenchmark row: the task table is
    read."""
    global_state.require_worker().gcs.call(p.GetTaskSummary())


def measure(row: str, rounds: int, seconds: float, long_burst: bool = False) -> dict:
    """Each mode's halves of ``row``, ``rounds`` of them, and ``reported``:
    how many of its calls the GCS's task table got (None when the table may
    have dropped some for newer ones). After each "on" half the GCS takes
    in what waits (``absorb``), unless ``long_burst``."""
    cls, options, count = ROWS[row]
    before, _ = reported_calls()
    actors = [cls.options(**options).remote() for _ in range(count)]
    try:
        pids = zray.get([a.report.remote(False) for a in actors])
        me = psutil.Process()
        gcs = [c for c in me.children(recursive=True) if _is_gcs(c)]
        if not gcs:
            raise RuntimeError("the local cluster's GCS is not a child of this driver")
        processes = {"actors": [psutil.Process(pid) for pid in pids], "driver": [me],
                     "gcs": gcs}
        run_half(actors, processes, False, seconds / 2)            # warm up
        halves = {mode: [] for mode in MODES}
        for r in range(rounds):
            for mode in (MODES if r % 2 == 0 else reversed(MODES)):
                halves[mode].append(run_half(actors, processes, mode == "on", seconds))
                if mode == "on" and not long_burst:
                    absorb()
        after, rows_after = reported_calls(before + sum(h["calls"] for h in halves["on"]))
        halves["reported"] = (after - before if rows_after < config.task_events_max
                              else None)
        return halves
    finally:
        for a in actors:
            zray.kill(a)
        _report(True)


#: bootstrap resamples of the rounds for a cost's 95% interval
RESAMPLES = 2000


def pooled_cost(rounds: list, mode: str, against: tuple) -> float:
    """1 - the calls per second of ``mode``'s halves of ``rounds`` over those
    of the ``against`` halves, each rate all the calls of its halves over
    all their seconds (each round a dict mode -> half)."""
    def rate(modes):
        halves = [r[m] for r in rounds for m in modes]
        return sum(h["calls"] for h in halves) / sum(h["calls"] / h["rate"] for h in halves)
    return 1 - rate((mode,)) / rate(against)


def cost_interval(halves: dict, mode: str, against: tuple) -> tuple[float, float, float]:
    """``pooled_cost`` of all rounds, and its 95% interval: the 2.5th and
    97.5th percentiles over RESAMPLES resamples of the rounds (with
    replacement; each round keeps its halves together, so a drift of the
    machine's speed between rounds does not widen it)."""
    rounds = [dict(zip(MODES, trio)) for trio in zip(*(halves[m] for m in MODES))]
    rng = random.Random(0)
    costs = sorted(pooled_cost(rng.choices(rounds, k=len(rounds)), mode, against)
                   for _ in range(RESAMPLES))
    return (pooled_cost(rounds, mode, against), costs[int(RESAMPLES * 0.025)],
            costs[int(RESAMPLES * 0.975) - 1])


def summary(row: str, halves: dict) -> str:
    def rate(mode):
        return statistics.median(h["rate"] for h in halves[mode])

    def per_call(mode, key):        # pooled: a process's CPU time ticks by 10 ms
        return sum(h[key] for h in halves[mode]) / sum(h["calls"] for h in halves[mode]) * 1e6
    cost = cost_interval(halves, "on", ("off", "off2"))
    noise = cost_interval(halves, "off2", ("off",))
    made = {mode: sum(h["calls"] for h in halves[mode]) for mode in MODES}
    cpu = "  ".join(f"{key} " + " / ".join(f"{per_call(mode, key):.2f}" for mode in MODES)
                    for key in ("actors", "driver", "gcs"))
    return (f"{row:30} " + " / ".join(f"{rate(mode):,.0f}" for mode in MODES)
            + " calls/s  cost {:+.1f}% (95%: {:+.1f}..{:+.1f})".format(*(c * 100 for c in cost))
            + " (off2 vs off {:+.1f}%, 95%: {:+.1f}..{:+.1f})".format(*(c * 100 for c in noise))
            + f"  µs/call {cpu}"
            + (f"  task rows {halves['reported']:,} of {made['on']:,} calls on"
               f" ({made['off'] + made['off2']:,} off)" if halves["reported"] is not None
               else "  (the task table is full: its rows of this row's calls not counted)"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per half")
    parser.add_argument("--rows", default=",".join(ROWS),
                        help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--json", help="write each row's halves and task rows here")
    parser.add_argument("--long-burst", action="store_true",
                        help="let task events pile up in the GCS over all rounds (one "
                             "burst of minutes) instead of having it take them in after "
                             "each reporting half")
    args = parser.parse_args()
    if args.rounds < 2:
        parser.error("--rounds must be 2 or more (a cost's interval resamples the rounds)")
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}: choose from {', '.join(ROWS)}")
    zray.init(**mb.init_kwargs("zray"))
    try:
        print(f"# task-event reporting off / on / off again, switched in the same processes: "
              f"{args.rounds} rounds, {args.seconds} s per half; cost > 0: slower with "
              f"reporting; CPU per call as off / on / off2")
        results = {}
        for row in rows:
            results[row] = measure(row, args.rounds, args.seconds, args.long_burst)
            print(summary(row, results[row]), flush=True)
        if args.json:
            with open(args.json, "w") as out:
                json.dump(results, out, indent=1)
    finally:
        zray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())

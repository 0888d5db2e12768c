"""CartPole-v1 with zray.rllib: env steps and wall time to a training return
of 450 (median over seeds), and env-runner sampling throughput.

    python benchmarks/rllib_cartpole.py                   # PPO, DQN, APPO, 3 seeds each
    python benchmarks/rllib_cartpole.py --algos PPO --seeds 3
    python benchmarks/rllib_cartpole.py --throughput-only
    python benchmarks/rllib_cartpole.py --algos PPO-RLLIB-TUNED --compare-rllib /tmp/rayvenv/bin/python

The measure both libraries report: wall time (from before ``zray.init`` /
``ray.init``) and env steps until ``env_runners/episode_return_mean`` >= the
goal. In RLlib 2.60 (and zray) that is the mean over env runners of each
runner's episodes completed in *this iteration* (at most its last
``ceil(100 / num_env_runners)``): a per-iteration figure. After reaching it a
run trains on until ``--hold-episodes`` (100) more episodes ended and reports
"hold": the episode-weighted mean of that metric over them and its lowest
iteration -- whether the policy stays at the goal or falls off it.

zray and RLlib runs alternate seed by seed (``--compare-rllib``), each with
the 1-minute load average at its start; a run past ``--timeout`` keeps its
steps to the goal if it got there. The end is one markdown table.

``--compare-rllib PYTHON`` runs the same config text under ``ray.rllib`` in
that interpreter (Ray with RLlib and torch installed) and prints both.
``PPO-RLLIB-TUNED`` is RLlib's tuned example for PPO on CartPole
(rllib/tuned_examples/ppo/cartpole_ppo.py: 2 env runners, batch 4000,
lr 3e-4, 6 epochs, one 32-unit linear layer shared with the value head);
``DQN-RLLIB-TUNED`` and ``APPO-RLLIB-TUNED`` are RLlib's DQN and APPO examples
(see their comment in ``CONFIGS``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
import time

# The configs: each is (config-module, class, builder calls) so that the same
# text runs under zray.rllib and under ray.rllib.
CONFIGS = {
    "PPO": ("ppo", "PPOConfig", """
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=8, rollout_fragment_length=128)
        .training(lr=1e-3, gamma=0.99, lambda_=0.95, train_batch_size_per_learner=1024,
                  minibatch_size=256, num_epochs=10, clip_param=0.2, vf_loss_coeff=0.5,
                  entropy_coeff=0.0, use_kl_loss=False, vf_clip_param=1000.0, grad_clip=0.5)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64],
                                                   fcnet_activation="tanh"))"""),
    "PPO-RLLIB-TUNED": ("ppo", "PPOConfig", """
        .environment("CartPole-v1")
        .env_runners(num_env_runners=2, num_envs_per_env_runner=1)
        .training(gamma=0.99, lr=0.0003, num_epochs=6, vf_loss_coeff=0.01,
                  train_batch_size_per_learner=4000, minibatch_size=128)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[32],
                                                   fcnet_activation="linear",
                                                   vf_share_layers=True))"""),
    "DQN": ("dqn", "DQNConfig", """
        .environment("CartPole-v1")
        .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=4)
        .training(lr=5e-4, gamma=0.99, train_batch_size_per_learner=64, n_step=3,
                  double_q=True, dueling=True, target_network_update_freq=500,
                  num_steps_sampled_before_learning_starts=1000,
                  epsilon=[(0, 1.0), (10000, 0.02)], grad_clip=40.0,
                  replay_buffer_config={"capacity": 50000})
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256],
                                                   fcnet_activation="tanh",
                                                   head_fcnet_hiddens=[256]))"""),
    "APPO": ("appo", "APPOConfig", """
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=8, rollout_fragment_length=32)
        .training(lr=1e-3, gamma=0.99, train_batch_size_per_learner=512, vf_loss_coeff=0.5,
                  entropy_coeff=0.0, grad_clip=40.0, target_network_update_freq=0.25)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64],
                                                   fcnet_activation="tanh"))
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=1000)"""),
    # RLlib's tuned examples (rllib/examples/algorithms/dqn/cartpole_dqn.py and
    # appo/cartpole_appo.py), their training settings unchanged; only the runner
    # count fits the 2-core machine (APPO's example asks for 5 runners x 16 envs)
    # (RLlib 2.60's APPO holds a CPU for its learner even with num_learners=0:
    # with 2 runners on num_cpus=2 its build_algo() never returns, so 1 runner)
    # and the iteration length is fixed for both libraries (RLlib's APPO
    # default, 10 s per iteration, would round "steps to 450" to 10 s of sampling).
    "DQN-RLLIB-TUNED": ("dqn", "DQNConfig", """
        .environment("CartPole-v1")
        .training(lr=0.0005, train_batch_size_per_learner=32,
                  replay_buffer_config={"type": "PrioritizedEpisodeReplayBuffer",
                                        "capacity": 50000, "alpha": 0.6, "beta": 0.4},
                  n_step=(2, 5), double_q=True, dueling=True,
                  epsilon=[(0, 1.0), (10000, 0.02)])
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[256],
                                                   fcnet_activation="tanh",
                                                   fcnet_bias_initializer="zeros_",
                                                   head_fcnet_bias_initializer="zeros_",
                                                   head_fcnet_hiddens=[256]))"""),
    "APPO-RLLIB-TUNED": ("appo", "APPOConfig", """
        .environment("CartPole-v1")
        .env_runners(num_env_runners=1, num_envs_per_env_runner=16)
        .training(circular_buffer_iterations_per_batch=2, vf_loss_coeff=0.05,
                  entropy_coeff=0.0)
        .rl_module(model_config=DefaultModelConfig(vf_share_layers=True))
        .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=2000)"""),
}

RUN_ONE = """
import json, sys, time
t0 = time.perf_counter()
import {pkg}
{pkg}.init(num_cpus=2, include_dashboard=False)
from {pkg}.rllib.algorithms.{mod} import {cls}
from {pkg}.rllib.core.rl_module.default_model_config import DefaultModelConfig
config = ({cls}(){calls}
          .debugging(seed={seed}))
algo = config.build_algo()
best, steps, it, reached = float("-inf"), 0, 0, None
hold_sum, hold_n, hold_min = 0.0, 0, float("inf")
while True:
    r = algo.train()
    it += 1
    er = r["env_runners"]
    ret = er.get("episode_return_mean", float("nan"))
    n_eps = int(er.get("num_episodes", 0) or 0)      # (RLlib's is a numpy integer)
    steps = er.get("num_env_steps_sampled_lifetime", r.get("num_env_steps_sampled_lifetime", 0))
    if ret == ret:
        best = max(best, ret)
    if reached is not None and ret == ret and n_eps:
        # after first reaching the goal: the episode-weighted mean of the metric
        hold_sum, hold_n, hold_min = hold_sum + ret * n_eps, hold_n + n_eps, min(hold_min, ret)
    if reached is None and ret >= {goal}:
        reached = {{"steps": int(steps), "wall": round(time.perf_counter() - t0, 1)}}
    print("PROGRESS " + json.dumps({{"reached": reached, "best": best, "iterations": it,
                                    "steps_run": int(steps), "last": ret,
                                    "driver_cpu_s": round(time.process_time(), 1)}}),
          flush=True)
    if (reached and hold_n >= {hold_episodes}) or steps >= {max_steps}:
        break
algo.stop()
hold = None if not hold_n else {{"mean": round(hold_sum / hold_n, 1), "episodes": hold_n,
                                 "min_iteration": round(hold_min, 1)}}
print("RESULT " + json.dumps({{"reached": reached, "hold": hold, "best": best,
                              "iterations": it, "steps_run": int(steps),
                              "driver_cpu_s": round(time.process_time(), 1)}}))
"""


def run_one(python: str, pkg: str, algo: str, seed: int, goal: float, max_steps: int,
            timeout: float, hold_episodes: int = 100) -> dict:
    """One training run in a fresh interpreter; its result with the 1-minute
    load average at its start (``load``)."""
    import os
    mod, cls, calls = CONFIGS[algo]
    calls = textwrap.indent(textwrap.dedent(calls).strip(), " " * 10)
    code = RUN_ONE.format(pkg=pkg, mod=mod, cls=cls, calls="\n" + calls, seed=seed, goal=goal,
                          max_steps=max_steps, hold_episodes=hold_episodes)
    load = round(os.getloadavg()[0], 1)
    proc = subprocess.Popen([python, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()                 # SIGTERM first: ray/zray shut their daemons down
        try:
            stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate(timeout=30)
        # The last progress line: steps to the goal if reached, else how far it got.
        last = [line for line in stdout.splitlines() if line.startswith("PROGRESS ")]
        if last:
            return dict(json.loads(last[-1][9:]), hold=None, timed_out=True, load=load,
                        curve=_curve(stdout))
        return {"error": f"timed out after {timeout:.0f} s", "reached": None, "load": load}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            return dict(json.loads(line[7:]), load=load, curve=_curve(stdout))
    error = (stderr.strip().splitlines() or ["no output"])[-1][:200]
    last = [line for line in stdout.splitlines() if line.startswith("PROGRESS ")]
    if last:        # it failed after some iterations: keep how far it got
        return dict(json.loads(last[-1][9:]), hold=None, error=error, load=load,
                    curve=_curve(stdout))
    return {"error": error, "reached": None, "load": load}


def _curve(stdout: str) -> list:
    """[(env steps, episode_return_mean, driver CPU s)] per iteration, from the
    progress lines: compares runs at equal steps when one stopped early."""
    rows = [json.loads(line[9:]) for line in stdout.splitlines() if line.startswith("PROGRESS ")]
    return [(r["steps_run"], None if r["last"] != r["last"] else round(r["last"], 1),
             r.get("driver_cpu_s")) for r in rows]


def throughput(seconds: float = 5.0, num_runners: int = 2, num_envs: int = 8) -> float:
    """Env steps per second sampled by ``num_runners`` runner actors (random-
    init PPO module, 64x64 MLP, fragments of 128 steps x ``num_envs`` envs)."""
    import zray
    from zray.rllib.algorithms.ppo import PPOConfig
    zray.init(num_cpus=2, include_dashboard=False)
    try:
        algo = (PPOConfig().environment("CartPole-v1")
                .env_runners(num_env_runners=num_runners, num_envs_per_env_runner=num_envs,
                             rollout_fragment_length=128)
                .rl_module(model_config={"fcnet_hiddens": [64, 64]}).build_algo())
        group, weights = algo.env_runner_group, algo.learner_group.get_weights()
        group.sample(weights, num_steps=128)          # warm-up
        start, steps = time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            steps += sum(s["num_env_steps"] for s in group.sample(weights, num_steps=128))
        rate = steps / (time.perf_counter() - start)
        algo.stop()
        return rate
    finally:
        zray.shutdown()


def _cell(row: dict) -> tuple[str, str, str]:
    """(steps, wall, hold) of one run as table cells."""
    if row.get("error"):
        return ("error", row["error"][:40], "")
    r, h = row.get("reached"), row.get("hold")
    steps = f"{r['steps'] / 1000:.1f}k" if r else \
        f"not reached (>{row.get('steps_run', 0) / 1000:.0f}k, best {row.get('best', 0):.0f})"
    wall = f"{r['wall']:.0f} s" if r else ("timed out" if row.get("timed_out") else "-")
    hold = (f"{h['mean']:.0f} (lowest iteration {h['min_iteration']:.0f}, {h['episodes']} "
             f"episodes)" if h else ("timed out" if r and row.get("timed_out") else "-"))
    return steps, wall, hold


def median_of(rows: list[dict]) -> tuple[str, str]:
    """Median steps and wall to the goal; a run that did not reach it counts
    as infinitely slow (so the median is "not reached" if half did not)."""
    inf = float("inf")
    steps = statistics.median([r["reached"]["steps"] if r.get("reached") else inf
                               for r in rows])
    wall = statistics.median([r["reached"]["wall"] if r.get("reached") else inf
                              for r in rows])
    if steps == inf:
        return "not reached", "-"
    return f"{steps / 1000:.1f}k", ("-" if wall == inf else f"{wall:.0f} s")


def table(results: dict) -> str:
    """One markdown table: every run, then the medians per algorithm and library."""
    lines = ["| config | library | seed | load (1 min) | steps to 450 | wall to 450 | "
             "hold: mean return after reaching 450 |",
             "|---|---|---|---|---|---|---|"]
    for (algo, lib), rows in results.items():
        for seed, row in rows:
            steps, wall, hold = _cell(row)
            lines.append(f"| {algo} | {lib} | {seed} | {row.get('load', '')} | {steps} | "
                         f"{wall} | {hold} |")
    for (algo, lib), rows in results.items():
        steps, wall = median_of([r for _, r in rows])
        lines.append(f"| {algo} | {lib} | **median of {len(rows)}** | | **{steps}** | "
                     f"**{wall}** | |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default="PPO,DQN,APPO")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--no-zray", action="store_true", help="with --compare-rllib: RLlib only")
    ap.add_argument("--goal", type=float, default=450.0)
    ap.add_argument("--hold-episodes", type=int, default=100,
                    help="after reaching the goal, train on until this many episodes ended")
    ap.add_argument("--max-steps", type=int, default=300_000)
    ap.add_argument("--timeout", type=float, default=900.0, help="per run, seconds")
    ap.add_argument("--json", metavar="PATH", help="also write every run's result here")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--compare-rllib", metavar="PYTHON",
                    help="an interpreter with Ray installed: run RLlib's equivalent too")
    args = ap.parse_args(argv)
    import os
    print("load average at start: %.1f %.1f %.1f (on %d cores)"
          % (os.getloadavg() + (os.cpu_count(),)), flush=True)
    results: dict = {}
    if not args.throughput_only:
        algos = [a.strip().upper() for a in args.algos.split(",") if a.strip()]
        unknown = [a for a in algos if a not in CONFIGS]
        if unknown:
            ap.error(f"unknown --algos {unknown}; known: {', '.join(CONFIGS)}")
        libs = ([] if args.no_zray else [("zray", sys.executable)]) + \
            ([("rllib", args.compare_rllib)] if args.compare_rllib else [])
        for algo in algos:
            # zray and RLlib interleaved seed by seed, so load changes hit both alike
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                for lib, python in libs:
                    row = run_one(python, "zray" if lib == "zray" else "ray", algo, seed,
                                  args.goal, args.max_steps, args.timeout, args.hold_episodes)
                    print(f"  {lib:<5} {algo} seed {seed}: {json.dumps(row)}", flush=True)
                    results.setdefault((algo, lib), []).append((seed, row))
                    if args.json:
                        with open(args.json, "w") as f:
                            json.dump([{"algo": a, "lib": lb, "seed": sd, **r}
                                       for (a, lb), rs in results.items() for sd, r in rs],
                                      f, indent=1)
        print(table(results), flush=True)
    if not args.no_throughput:
        print(f"env-runner throughput (2 runners x 8 CartPole envs): "
              f"{throughput():,.0f} env steps/s", flush=True)
    print("load average at end: %.1f %.1f %.1f" % os.getloadavg(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CartPole-v1 with zray.rllib: env steps and wall time to a training return
of 450 (median over seeds), and env-runner sampling throughput.

    python benchmarks/rllib_cartpole.py                   # PPO, DQN, APPO, 3 seeds each
    python benchmarks/rllib_cartpole.py --algos PPO --seeds 3
    python benchmarks/rllib_cartpole.py --throughput-only
    python benchmarks/rllib_cartpole.py --algos PPO-RLLIB-TUNED --compare-rllib /tmp/rayvenv/bin/python

Two stop criteria are measured in one run (wall time counts from before
``zray.init``/``ray.init``):

* RLlib's (the one both libraries report): ``env_runners/episode_return_mean``
  >= the goal. In RLlib 2.60 (and zray since 2026-11-30) that is the mean over
  env runners of each runner's episodes completed in *this iteration* (at most
  its last ``ceil(100 / num_env_runners)``): a per-iteration figure.
* window-100 (zray only, stricter): the mean of the last 100 completed
  episodes across iterations is >= the goal. 100 episodes of 450+ steps lie in
  that window, so ~45k env steps is its floor whatever the algorithm.

A run goes on until both are reached (or ``--max-steps``, or ``--timeout``:
then the first criterion's result is kept and window-100 counts as not reached).

``--compare-rllib PYTHON`` runs the same config text under ``ray.rllib`` in
that interpreter (Ray with RLlib and torch installed) and prints both.
``PPO-RLLIB-TUNED`` is RLlib's tuned example for PPO on CartPole
(rllib/tuned_examples/ppo/cartpole_ppo.py: 2 env runners, batch 4000,
lr 3e-4, 6 epochs, one 32-unit linear layer shared with the value head).
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
                  entropy_coeff=0.0, grad_clip=40.0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64],
                                                   fcnet_activation="tanh"))"""),
}

RUN_ONE = """
import collections, json, sys, time
t0 = time.perf_counter()
import {pkg}
{pkg}.init(num_cpus=2, include_dashboard=False)
from {pkg}.rllib.algorithms.{mod} import {cls}
from {pkg}.rllib.core.rl_module.default_model_config import DefaultModelConfig
config = ({cls}(){calls}
          .debugging(seed={seed}))
algo = config.build_algo()
best, steps, it, reached, window = float("-inf"), 0, 0, None, None
last100 = collections.deque(maxlen=100)
while True:
    r = algo.train()
    it += 1
    ret = r["env_runners"].get("episode_return_mean", float("nan"))
    steps = r["env_runners"].get("num_env_steps_sampled_lifetime",
                                 r.get("num_env_steps_sampled_lifetime", 0))
    if ret == ret:
        best = max(best, ret)
    if reached is None and ret >= {goal}:
        reached = {{"steps": int(steps), "wall": round(time.perf_counter() - t0, 1)}}
        print("PROGRESS " + json.dumps({{"reached": reached, "window100": None, "best": best,
                                        "iterations": it, "steps_run": int(steps)}}), flush=True)
    # zray's episodes of this iteration (a private attribute, read by this benchmark only)
    this_iter = getattr(algo, "_iter_returns", None)
    if this_iter is not None:
        last100.extend(this_iter)
        if window is None and last100 and sum(last100) / len(last100) >= {goal}:
            window = {{"steps": int(steps), "wall": round(time.perf_counter() - t0, 1)}}
    if (reached and (window or this_iter is None)) or steps >= {max_steps}:
        break
algo.stop()
print("RESULT " + json.dumps({{"reached": reached, "window100": window, "best": best,
                              "iterations": it, "steps_run": int(steps),
                              "driver_cpu_s": round(time.process_time(), 1)}}))
"""


def run_one(python: str, pkg: str, algo: str, seed: int, goal: float, max_steps: int,
            timeout: float) -> dict:
    mod, cls, calls = CONFIGS[algo]
    calls = textwrap.indent(textwrap.dedent(calls).strip(), " " * 10)
    code = RUN_ONE.format(pkg=pkg, mod=mod, cls=cls, calls="\n" + calls, seed=seed, goal=goal,
                          max_steps=max_steps)
    try:
        proc = subprocess.run([python, "-c", code], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        # A run that reached RLlib's metric but not window-100 keeps its first result.
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        for line in out.splitlines():
            if line.startswith("PROGRESS "):
                return dict(json.loads(line[9:]), timed_out=True)
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (proc.stderr.strip().splitlines() or ["no output"])[-1][:200]}


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


def _median(rows: list[dict], n: int) -> str:
    """Median steps and wall over ``n`` runs; a run that did not reach the goal
    counts as infinitely slow (so the median is "not reached" if half did not)."""
    inf = float("inf")
    steps = statistics.median([r["steps"] for r in rows] + [inf] * (n - len(rows)))
    wall = statistics.median([r["wall"] for r in rows] + [inf] * (n - len(rows)))
    each = "/".join(f"{r['steps'] / 1000:.1f}k" for r in rows)
    if steps == inf:
        return f"not reached ({len(rows)}/{n}: {each or '-'})"
    return f"{steps:>8,.0f} steps {wall:6.1f} s ({each}; {len(rows)}/{n})"


def summarize(rows: list[dict], window100: bool) -> str:
    """Median steps and wall to the goal by RLlib's metric (and window-100)."""
    ok = [r for r in rows if "error" not in r]
    if not ok:
        return "error: " + rows[0]["error"]
    text = "RLlib's metric: " + _median([r["reached"] for r in ok if r["reached"]], len(rows))
    if window100:
        text += "  |  window-100: " + _median([r["window100"] for r in ok if r["window100"]],
                                              len(rows))
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default="PPO,DQN,APPO")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--no-zray", action="store_true", help="with --compare-rllib: RLlib only")
    ap.add_argument("--goal", type=float, default=450.0)
    ap.add_argument("--max-steps", type=int, default=200_000)
    ap.add_argument("--timeout", type=float, default=300.0, help="per run, seconds")
    ap.add_argument("--throughput-only", action="store_true")
    ap.add_argument("--no-throughput", action="store_true")
    ap.add_argument("--compare-rllib", metavar="PYTHON",
                    help="an interpreter with Ray installed: run RLlib's equivalent too")
    args = ap.parse_args(argv)
    import os
    print("load average at start: %.1f %.1f %.1f (on %d cores)"
          % (os.getloadavg() + (os.cpu_count(),)), flush=True)
    if not args.throughput_only:
        algos = [a.strip().upper() for a in args.algos.split(",") if a.strip()]
        for algo in algos:
            seeds = range(args.first_seed, args.first_seed + args.seeds)
            rows = []
            for seed in seeds if not args.no_zray else ():
                row = run_one(sys.executable, "zray", algo, seed, args.goal, args.max_steps,
                              args.timeout)
                print(f"  zray  {algo:<5} seed {seed}: {row}", flush=True)
                rows.append(row)
            if rows:
                print(f"{algo:<5} zray.rllib  {summarize(rows, True)}", flush=True)
            if args.compare_rllib:
                rrows = []
                for seed in seeds:
                    row = run_one(args.compare_rllib, "ray", algo, seed, args.goal,
                                  args.max_steps, args.timeout)
                    print(f"  rllib {algo:<5} seed {seed}: {row}", flush=True)
                    rrows.append(row)
                print(f"{algo:<5} RLlib       {summarize(rrows, False)}", flush=True)
    if not args.no_throughput:
        print(f"env-runner throughput (2 runners x 8 CartPole envs): "
              f"{throughput():,.0f} env steps/s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

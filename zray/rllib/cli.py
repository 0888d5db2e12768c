"""``zray rllib train``: train an algorithm from the command line.

    zray rllib train --algo PPO --env CartPole-v1 --stop-reward 450 \
        [--stop-timesteps N] [--stop-iters N] [--config-json '{"lr": 0.001}' | FILE]

A tqdm progress bar follows env steps and the training return; the last
line is a summary. Exit status 0 when the goal was reached (or none was
set), 1 when a limit ended the run first, 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time

ALGOS = {"PPO": ("ppo", "PPOConfig"), "DQN": ("dqn", "DQNConfig"),
         "APPO": ("appo", "APPOConfig"), "IMPALA": ("impala", "IMPALAConfig")}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zray rllib", description="Reinforcement learning on zray.")
    sub = ap.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train an algorithm until a goal or a limit")
    train.add_argument("--algo", required=True, type=str.upper, choices=sorted(ALGOS))
    train.add_argument("--env", required=True, help="a gymnasium id, e.g. CartPole-v1")
    train.add_argument("--stop-reward", type=float, help="stop at this training return")
    train.add_argument("--stop-timesteps", type=int, default=1_000_000,
                       help="stop after this many env steps (default 1e6)")
    train.add_argument("--stop-iters", type=int, help="stop after this many iterations")
    train.add_argument("--config-json", help="config keys as JSON text or a JSON file path, "
                                             "e.g. '{\"lr\": 0.001, \"num_env_runners\": 1}'")
    train.add_argument("--seed", type=int)
    train.add_argument("--checkpoint-dir", help="save a checkpoint here at the end")
    train.add_argument("--address", help="an existing cluster (default: start a local one)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _load_json(text: str) -> dict:
    if os.path.isfile(text):
        with open(text) as f:
            text = f.read()
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"--config-json is neither a JSON object nor a JSON file: {exc}") \
            from None
    if not isinstance(d, dict):
        raise ValueError("--config-json must hold a JSON object of config keys")
    return d


def train(args) -> int:
    import zray
    from tqdm import tqdm
    mod, cls = ALGOS[args.algo]
    config_cls = getattr(importlib.import_module(f"zray.rllib.algorithms.{mod}"), cls)
    try:
        config = config_cls().environment(args.env)
        if args.config_json:
            config.update_from_dict(_load_json(args.config_json))
        if args.seed is not None:
            config.debugging(seed=args.seed)
    except (ValueError, TypeError) as exc:
        print(f"zray rllib: {exc}", file=sys.stderr)
        return 2
    started = not zray.is_initialized()
    if started and args.address:
        zray.init(address=args.address, include_dashboard=False)
    algo = None
    try:
        try:
            algo = config.build_algo()
        except (ValueError, TypeError) as exc:
            print(f"zray rllib: {exc}", file=sys.stderr)
            return 2
        start = time.perf_counter()
        ret, steps, it, reached = float("nan"), 0, 0, args.stop_reward is None
        with tqdm(total=args.stop_timesteps, unit="step", disable=args.no_progress,
                  desc=f"{args.algo} {args.env}") as bar:
            while True:
                result = algo.train()
                it = result["training_iteration"]
                # NaN in an iteration where no episode ended (as RLlib): keep the last
                this_ret = result["env_runners/episode_return_mean"]
                ret = this_ret if this_ret == this_ret else ret
                new_steps = result["env_runners/num_env_steps_sampled_lifetime"]
                bar.update(min(new_steps, args.stop_timesteps) - min(steps, args.stop_timesteps))
                steps = new_steps
                bar.set_postfix(ret=f"{ret:.1f}", it=it)
                if args.stop_reward is not None and ret >= args.stop_reward:
                    reached = True
                    break
                if steps >= args.stop_timesteps or (args.stop_iters and it >= args.stop_iters):
                    break
        wall = time.perf_counter() - start
        saved = ""
        if args.checkpoint_dir:
            saved = f", checkpoint {algo.save(args.checkpoint_dir)}"
        goal = "" if args.stop_reward is None else \
            (f" (goal {args.stop_reward:g} reached)" if reached else
             f" (goal {args.stop_reward:g} NOT reached)")
        print(f"{args.algo} on {args.env}: training return {ret:.1f} after {steps:,} env steps, "
              f"{it} iterations, {wall:.1f} s{goal}{saved}")
        return 0 if reached else 1
    finally:
        if algo is not None:
            algo.stop()
        if started and zray.is_initialized():   # build_algo starts a local cluster if needed
            zray.shutdown()


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return train(args)


if __name__ == "__main__":
    sys.exit(main())

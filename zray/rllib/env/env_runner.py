"""EnvRunner: steps a gymnasium vector env with its own copy of the module.

One instance lives in each env-runner actor (or in the driver when
``num_env_runners=0``). ``sample()`` returns time-major numpy arrays
[T, num_envs, ...]; episodes continue across calls. Inference runs under
``torch.no_grad`` with one torch thread.
"""
from __future__ import annotations

import os

import numpy as np


class EnvRunner:
    def __init__(self, *, env_creator, env_config, num_envs, module_spec, seed=None,
                 worker_index=0, exploration="sample", compute_values=False, torch_threads=1):
        import gymnasium as gym
        import torch
        torch.set_num_threads(torch_threads)
        self.torch = torch
        self.worker_index = worker_index
        self.exploration = exploration          # "sample" or "epsilon_greedy"
        self.compute_values = compute_values
        fns = [lambda: env_creator(dict(env_config or {})) for _ in range(num_envs)]
        self.env = gym.vector.SyncVectorEnv(fns, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
        self.num_envs = num_envs
        self.action_space = self.env.single_action_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.module = module_spec.build()
        self.module.eval()
        self.rng = np.random.default_rng(None if seed is None else seed + 7919 * worker_index)
        if seed is not None:
            torch.manual_seed(seed + 7919 * worker_index)
        base = None if seed is None else seed + 1000 * worker_index
        self.obs, _ = self.env.reset(seed=None if base is None else
                                     [base + i for i in range(num_envs)])
        self.ep_return = np.zeros(num_envs)
        self.ep_len = np.zeros(num_envs, dtype=np.int64)

    def pid(self) -> int:
        """This runner's process id (tests use it to check the runner is gone)."""
        return os.getpid()

    def set_weights(self, weights) -> None:
        if weights is not None:
            self.module.set_state(weights)

    def _act(self, obs: np.ndarray, explore: bool, epsilon: float):
        from zray.rllib.core.distribution import make_dist
        torch = self.torch
        batch = {"obs": torch.as_tensor(obs, dtype=torch.float32)}
        out = (self.module.forward_exploration(batch) if explore
               else self.module.forward_inference(batch))
        dist_inputs = out.get("action_dist_inputs")
        if "actions" in out:
            actions = out["actions"]
            logp = out.get("action_logp", torch.zeros(len(obs)))
        elif self.exploration == "epsilon_greedy" or not explore:
            dist = make_dist(self.action_space, dist_inputs)
            actions = dist.deterministic()
            logp = torch.zeros(len(obs))
        else:
            dist = make_dist(self.action_space, dist_inputs)
            actions = dist.sample()
            logp = dist.log_prob(actions)
        actions = actions.numpy()
        if explore and epsilon > 0 and self.discrete:
            mask = self.rng.random(len(obs)) < epsilon
            if mask.any():
                actions = actions.copy()
                actions[mask] = self.rng.integers(0, self.action_space.n, mask.sum())
        di = dist_inputs.numpy() if dist_inputs is not None else np.zeros((len(obs), 0))
        return actions, logp.numpy(), di

    def _env_actions(self, actions):
        if self.discrete:
            return actions.astype(np.int64)
        return np.clip(actions, self.action_space.low, self.action_space.high)

    def sample(self, weights=None, num_steps: int = 1, explore: bool = True,
               epsilon: float = 0.0) -> dict:
        """Step every env ``num_steps`` times; return {"batch": arrays [T, N, ...],
        "episode_returns", "episode_lens", "num_env_steps", "worker_index"}."""
        torch = self.torch
        self.set_weights(weights)
        T, N = num_steps, self.num_envs
        obs_buf = np.empty((T, N) + self.obs.shape[1:], np.float32)
        next_buf = np.empty_like(obs_buf)
        rew = np.empty((T, N), np.float32)
        term = np.empty((T, N), np.bool_)
        trunc = np.empty((T, N), np.bool_)
        acts, logps, dis = [], [], []
        returns, lens = [], []
        with torch.no_grad():
            for t in range(T):
                obs_buf[t] = self.obs
                a, lp, di = self._act(self.obs, explore, epsilon)
                obs, r, te, tr, info = self.env.step(self._env_actions(a))
                nxt = np.array(obs, dtype=np.float32, copy=True)
                done = np.logical_or(te, tr)
                if done.any():
                    final = info["final_obs"]
                    for i in np.flatnonzero(done):
                        nxt[i] = final[i]
                next_buf[t] = nxt
                rew[t], term[t], trunc[t] = r, te, tr
                acts.append(a)
                logps.append(lp)
                dis.append(di)
                self.ep_return += r
                self.ep_len += 1
                for i in np.flatnonzero(done):
                    returns.append(float(self.ep_return[i]))
                    lens.append(int(self.ep_len[i]))
                    self.ep_return[i] = 0.0
                    self.ep_len[i] = 0
                self.obs = obs
            batch = {"obs": obs_buf, "next_obs": next_buf, "actions": np.stack(acts),
                     "rewards": rew, "terminateds": term, "truncateds": trunc,
                     "action_logp": np.stack(logps).astype(np.float32),
                     "action_dist_inputs": np.stack(dis).astype(np.float32)}
            if self.compute_values:
                flat = torch.as_tensor(np.concatenate([obs_buf, next_buf]).reshape(
                    2 * T * N, -1))
                v = self.module.compute_values({"obs": flat}).numpy().reshape(2, T, N)
                batch["vf_preds"], batch["next_vf_preds"] = v[0], v[1]
        return {"batch": batch, "episode_returns": np.array(returns, np.float64),
                "episode_lens": np.array(lens, np.int64), "num_env_steps": T * N,
                "worker_index": self.worker_index}

    def sample_episodes(self, num_episodes: int, weights=None, explore: bool = False,
                        max_steps: int = 1_000_000) -> dict:
        """Run until ``num_episodes`` episodes completed (from fresh resets);
        return their returns and lengths. Meant for a runner used only to
        evaluate: episodes in progress are abandoned."""
        self.set_weights(weights)
        self.obs, _ = self.env.reset()
        self.ep_return = np.zeros(self.num_envs)
        self.ep_len = np.zeros(self.num_envs, dtype=np.int64)
        returns, lens, steps = [], [], 0
        with self.torch.no_grad():
            while len(returns) < num_episodes and steps < max_steps:
                a, _, _ = self._act(self.obs, explore, 0.0)
                self.obs, r, te, tr, _ = self.env.step(self._env_actions(a))
                steps += self.num_envs
                self.ep_return += r
                self.ep_len += 1
                for i in np.flatnonzero(np.logical_or(te, tr)):
                    returns.append(float(self.ep_return[i]))
                    lens.append(int(self.ep_len[i]))
                    self.ep_return[i] = 0.0
                    self.ep_len[i] = 0
        return {"episode_returns": np.array(returns[:num_episodes]),
                "episode_lens": np.array(lens[:num_episodes]), "num_env_steps": steps}

    def stop(self) -> None:
        self.env.close()

"""Algorithm: the driver-side loop shared by every algorithm.

``build_algo()`` validates the config (env, spaces, values) before any actor
starts; then it builds the learner group and the env runners. ``train()``
runs one ``training_step()`` of the subclass and returns RLlib's result keys
(nested; ``result["env_runners/episode_return_mean"]`` also works).

``episode_return_mean`` (and ``episode_len_mean``, ``episode_return_max``,
``episode_return_min``) are computed as RLlib 2.60's new API stack computes
them, so a stop criterion ported from RLlib stops at the same point: each env
runner contributes the episodes it completed in this iteration, at most its
last ``ceil(metrics_num_episodes_for_smoothing / num_env_runners)`` of them
(default 100 in all), and the result is the mean of the runners' means (max
of maxima, min of minima). Episodes of earlier iterations never count. NaN
for an iteration in which no episode completed.
"""
from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import numpy as np
import torch

import zray
from zray.rllib.algorithms.algorithm_config import ConfigError, import_path
from zray.rllib.core.learner.learner_group import LearnerGroup
from zray.rllib.core.rl_module.rl_module import RLModuleSpec
from zray.rllib.env import registry
from zray.rllib.env.env_runner import EnvRunner
from zray.rllib.env.env_runner_group import EnvRunnerGroup
from zray.rllib.utils.metrics import ResultDict

log = logging.getLogger(__name__)

DEFAULT_MODULE_ID = "default_policy"


class Checkpoint(str):
    """The path of a saved checkpoint; also ``.checkpoint.path`` as RLlib's
    ``algo.save()`` result."""

    @property
    def checkpoint(self):
        return self

    @property
    def path(self) -> str:
        return str(self)


class Algorithm:
    """Subclasses set ``learner_class``, ``default_module_class`` and implement
    ``training_step()`` (returning learner stats); flags say what the env
    runners do (``exploration``: "sample" or "epsilon_greedy";
    ``runner_computes_values``)."""

    learner_class = None
    default_module_class = None
    exploration = "sample"
    runner_computes_values = False
    discrete_actions_only = False

    def __init__(self, config):
        self.config = config
        config.validate()
        try:
            self._creator = registry.resolve_env_creator(config.env)
            obs_space, act_space = registry.env_spaces(self._creator, config.env_config)
            registry.check_spaces(obs_space, act_space, self.discrete_actions_only)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc.__cause__
        self.module_spec = self._module_spec(obs_space, act_space)
        self._check_module()
        self.validate_algo()
        self._need_cluster()
        if config.seed is not None:
            torch.manual_seed(config.seed)
        self.rng = np.random.default_rng(config.seed)
        self.iteration = 0
        self.lifetime_steps = 0
        self.lifetime_trained = 0
        self.lifetime_episodes = 0
        self._time_total = 0.0
        # this iteration's completed episodes: worker_index -> [(return, length)]
        self._iter_by_runner: dict[int, list] = {}
        self._eval_runner = None
        self.learner_group = self.env_runner_group = None
        try:
            learner_class = config.learner_class or self.learner_class
            self.learner_group = LearnerGroup(
                learner_class=learner_class, config=config, module_spec=self.module_spec,
                num_learners=config.num_learners,
                num_cpus_per_learner=config.num_cpus_per_learner)
            if self.learner_group.local is not None:
                self._module = self.learner_group.local.module
            else:
                self._module = self.module_spec.build()
                self._module.set_state(self.learner_group.get_weights())
            self.env_runner_group = EnvRunnerGroup(
                runner_kwargs=self._runner_kwargs(), num_env_runners=config.num_env_runners,
                num_cpus_per_env_runner=config.num_cpus_per_env_runner,
                restart_failed=config.restart_failed_env_runners)
            self.setup()
        except BaseException:
            self.stop()
            raise

    # ---- set-up ----------------------------------------------------------
    def _module_spec(self, obs_space, act_space) -> RLModuleSpec:
        user = self.config.rl_module_spec
        spec = RLModuleSpec(module_class=self.default_module_class,
                            observation_space=obs_space, action_space=act_space,
                            model_config=self.config.model_config_dict())
        if user is not None:
            spec.module_class = user.module_class or spec.module_class
            spec.observation_space = user.observation_space or obs_space
            spec.action_space = user.action_space or act_space
            if user.model_config is not None:
                spec.model_config = user.model_config
        return spec

    def _check_module(self) -> None:
        try:
            module = self.module_spec.build()
        except Exception as exc:
            raise ConfigError(f"the RL module {self.module_spec.module_class.__name__} could "
                              f"not be built: {type(exc).__name__}: {exc}") from exc
        if self.runner_computes_values or self.needs_values():
            if not callable(getattr(module, "compute_values", None)):
                raise ConfigError(f"{type(self).__name__} needs a value function: the module "
                                  f"{type(module).__name__} must implement "
                                  f"compute_values(batch)")

    def needs_values(self) -> bool:
        return False

    def validate_algo(self) -> None:
        """Algorithm-specific checks (override); raise ConfigError."""

    def _need_cluster(self) -> None:
        cfg = self.config
        need = (cfg.num_env_runners * cfg.num_cpus_per_env_runner
                + cfg.num_learners * cfg.num_cpus_per_learner)
        if cfg.num_env_runners == 0 and cfg.num_learners == 0:
            return
        if not zray.is_initialized():
            zray.init(include_dashboard=False)
        have = zray.cluster_resources().get("CPU", 0)
        if need > have:
            raise ConfigError(
                f"the env runners and learners need {need:g} CPUs "
                f"({cfg.num_env_runners} x num_cpus_per_env_runner={cfg.num_cpus_per_env_runner}"
                f" + {cfg.num_learners} x num_cpus_per_learner={cfg.num_cpus_per_learner}) but "
                f"the cluster has {have:g}; use fewer runners/learners or fractional CPUs")

    def _runner_kwargs(self, evaluation: bool = False) -> dict:
        cfg = self.config
        spec = RLModuleSpec(module_class=self.module_spec.module_class,
                            observation_space=self.module_spec.observation_space,
                            action_space=self.module_spec.action_space, inference_only=True,
                            model_config=self.module_spec.model_config)
        return dict(env_creator=self._creator, env_config=cfg.env_config,
                    num_envs=1 if evaluation else cfg.num_envs_per_env_runner,
                    module_spec=spec,
                    seed=None if cfg.seed is None else cfg.seed + (10_000 if evaluation else 0),
                    exploration=self.exploration,
                    compute_values=self.runner_computes_values and not evaluation)

    def setup(self) -> None:
        """Algorithm-specific state (override)."""

    # ---- the loop ----------------------------------------------------------
    def training_step(self) -> dict:
        raise NotImplementedError

    def _record(self, samples: list[dict]) -> None:
        for s in samples:
            self.lifetime_steps += s["num_env_steps"]
            self._iter_steps += s["num_env_steps"]
            self._iter_returns.extend(s["episode_returns"].tolist())
            self._iter_lens.extend(s["episode_lens"].tolist())
            self._iter_by_runner.setdefault(s.get("worker_index", 0), []).extend(
                zip(s["episode_returns"].tolist(), s["episode_lens"].tolist()))

    def train(self) -> ResultDict:
        """One training iteration; RLlib's result dict."""
        start = time.perf_counter()
        self._iter_steps, self._iter_returns, self._iter_lens = 0, [], []
        self._iter_by_runner = {}
        restarts_before = self.env_runner_group.restarts
        stats, trained = {}, 0
        while True:
            step_stats = self.training_step() or {}
            trained += int(step_stats.pop("num_env_steps_trained", 0))
            stats = step_stats or stats
            elapsed = time.perf_counter() - start
            if self._iter_steps >= (self.config.min_sample_timesteps_per_iteration or 0) and \
                    elapsed >= (self.config.min_time_s_per_iteration or 0):
                break
        self.iteration += 1
        if not self.learner_group.local:
            self._module.set_state(self.learner_group.get_weights())
        self.lifetime_episodes += len(self._iter_returns)
        elapsed = time.perf_counter() - start
        self._time_total += elapsed
        restarts = self.env_runner_group.restarts
        self.lifetime_trained += trained
        ret_mean, len_mean, ret_max, ret_min = self._window_stats()
        result = ResultDict({
            "training_iteration": self.iteration,
            "time_this_iter_s": elapsed,
            "time_total_s": self._time_total,
            "num_env_steps_sampled_lifetime": self.lifetime_steps,
            "env_runners": {
                "episode_return_mean": ret_mean,
                "episode_len_mean": len_mean,
                "episode_return_max": ret_max, "episode_return_min": ret_min,
                "num_episodes": len(self._iter_returns),
                "num_episodes_lifetime": self.lifetime_episodes,
                "num_env_steps_sampled": self._iter_steps,
                "num_env_steps_sampled_lifetime": self.lifetime_steps,
                "num_healthy_env_runners": self.env_runner_group.num_healthy(),
                "num_env_runner_restarts": restarts,
            },
            "learners": {
                DEFAULT_MODULE_ID: dict(stats, num_module_steps_trained=trained),
                "__all_modules__": {"num_env_steps_trained": trained,
                                    "num_env_steps_trained_lifetime": self.lifetime_trained},
            },
            "fault_tolerance": {
                "num_healthy_workers": self.env_runner_group.num_healthy(),
                "num_remote_worker_restarts": restarts,
                "num_restarts_this_iter": restarts - restarts_before,
            },
        })
        interval = self.config.evaluation_interval
        if interval and self.iteration % interval == 0:
            result["evaluation"] = dict(self.evaluate())
        return result

    def _window_stats(self) -> tuple[float, float, float, float]:
        """(return mean, length mean, return max, return min) of this iteration's
        episodes as RLlib 2.60 reduces them: per runner the last
        ceil(window / num_env_runners) episodes, then the mean of the runners'
        means (max of maxima, min of minima); NaNs if no episode completed."""
        per_runner = math.ceil(self.config.metrics_num_episodes_for_smoothing
                               / max(1, self.config.num_env_runners))
        windows = [np.asarray(eps[-per_runner:], float)
                   for eps in self._iter_by_runner.values() if eps]
        if not windows:
            return (float("nan"),) * 4
        return (float(np.mean([w[:, 0].mean() for w in windows])),
                float(np.mean([w[:, 1].mean() for w in windows])),
                float(max(w[:, 0].max() for w in windows)),
                float(min(w[:, 0].min() for w in windows)))

    # ---- acting and evaluation --------------------------------------------
    def get_module(self, module_id: str = DEFAULT_MODULE_ID):
        """The driver's copy of the trained module (weights as of the last
        ``train()``)."""
        if module_id != DEFAULT_MODULE_ID:
            raise KeyError(f"no module {module_id!r}; single-agent algorithms have only "
                           f"{DEFAULT_MODULE_ID!r}")
        return self._module

    def compute_single_action(self, observation, explore: bool = False):
        """The action for one observation (greedy unless ``explore``)."""
        from zray.rllib.core.distribution import make_dist
        obs = torch.as_tensor(np.asarray(observation, np.float32)[None])
        module = self.get_module()
        with torch.no_grad():
            out = (module.forward_exploration({"obs": obs}) if explore
                   else module.forward_inference({"obs": obs}))
            if "actions" in out:
                action = out["actions"][0]
            else:
                dist = make_dist(self.module_spec.action_space, out["action_dist_inputs"])
                action = (dist.sample() if explore and self.exploration == "sample"
                          else dist.deterministic())[0]
        action = action.numpy()
        return int(action) if action.ndim == 0 else action

    compute_single_action_greedy = compute_single_action

    def evaluate(self) -> ResultDict:
        """Run ``evaluation_duration`` episodes greedily in the driver; returns
        {"env_runners": {"episode_return_mean", "episode_len_mean", ...}}."""
        if self._eval_runner is None:
            self._eval_runner = EnvRunner(worker_index=0, **self._runner_kwargs(evaluation=True))
        out = self._eval_runner.sample_episodes(self.config.evaluation_duration or 10,
                                                weights=self.get_module().get_state(),
                                                explore=False)
        return ResultDict({"env_runners": {
            "episode_return_mean": float(np.mean(out["episode_returns"])),
            "episode_len_mean": float(np.mean(out["episode_lens"])),
            "num_episodes": len(out["episode_returns"]),
            "num_env_steps_sampled": out["num_env_steps"]}})

    # ---- checkpoints -------------------------------------------------------
    def get_algo_state(self) -> dict:
        """Counters and algorithm-specific state (JSON-able; override to add)."""
        return {"iteration": self.iteration, "lifetime_steps": self.lifetime_steps,
                "lifetime_trained": self.lifetime_trained,
                "lifetime_episodes": self.lifetime_episodes, "time_total": self._time_total}

    def set_algo_state(self, state: dict) -> None:
        self.iteration = state["iteration"]
        self.lifetime_steps = state["lifetime_steps"]
        self.lifetime_trained = state.get("lifetime_trained", 0)
        self.lifetime_episodes = state.get("lifetime_episodes", 0)
        self._time_total = state.get("time_total", 0.0)

    def save(self, checkpoint_dir: str | None = None) -> Checkpoint:
        """Write a checkpoint directory: module_state.pt (the module's state
        dict), optimizer_state.pt, learner_extra.pt, config.json and
        algorithm_state.json. Returns its path."""
        path = checkpoint_dir or tempfile.mkdtemp(prefix="zray_rllib_ckpt_")
        os.makedirs(path, exist_ok=True)
        state = self.learner_group.get_state()
        torch.save(state["module"], os.path.join(path, "module_state.pt"))
        torch.save(state["optimizer"], os.path.join(path, "optimizer_state.pt"))
        torch.save(state["extra"], os.path.join(path, "learner_extra.pt"))
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(self.config.to_dict(), f, indent=1, default=repr)
        with open(os.path.join(path, "algorithm_state.json"), "w") as f:
            json.dump(self.get_algo_state(), f)
        return Checkpoint(path)

    save_to_path = save

    def restore(self, checkpoint_dir) -> None:
        """Load a checkpoint written by ``save`` into this algorithm."""
        path = str(checkpoint_dir)
        if not os.path.isfile(os.path.join(path, "module_state.pt")):
            raise FileNotFoundError(f"{path} is not a zray.rllib checkpoint "
                                    f"(no module_state.pt)")
        state = {"module": torch.load(os.path.join(path, "module_state.pt")),
                 "optimizer": torch.load(os.path.join(path, "optimizer_state.pt")),
                 "extra": torch.load(os.path.join(path, "learner_extra.pt"))}
        self.learner_group.set_state(state)
        if self.learner_group.local is None:
            self._module.load_state_dict(state["module"])
        with open(os.path.join(path, "algorithm_state.json")) as f:
            self.set_algo_state(json.load(f))

    restore_from_path = restore

    @classmethod
    def from_checkpoint(cls, checkpoint_dir, **config_overrides) -> "Algorithm":
        """Build the algorithm saved in ``checkpoint_dir`` and restore it;
        ``config_overrides`` (e.g. ``env=``) replace saved keys."""
        path = str(checkpoint_dir)
        with open(os.path.join(path, "config.json")) as f:
            d = json.load(f)
        algo_cls = import_path(d["algo_class"])
        if cls is not Algorithm and not issubclass(algo_cls, cls):
            raise TypeError(f"the checkpoint holds a {algo_cls.__name__}, not a {cls.__name__}")
        if "env" in config_overrides:
            d["env"] = None
        config = algo_cls.get_default_config().from_dict(d)
        for k, v in config_overrides.items():
            setattr(config, k, v)
        algo = config.build_algo()
        algo.restore(path)
        return algo

    @classmethod
    def get_default_config(cls):
        raise NotImplementedError

    # ---- shutdown ----------------------------------------------------------
    def stop(self) -> None:
        """End every env-runner and learner actor this algorithm started."""
        if self.env_runner_group is not None:
            self.env_runner_group.stop()
        if self.learner_group is not None:
            self.learner_group.stop()
        if self._eval_runner is not None:
            self._eval_runner.stop()
            self._eval_runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

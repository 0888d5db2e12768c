"""zray.rllib: learning, checkpoints, runner failures, bad configs, the CLI
and the README example. One 2-CPU cluster for the module; short seeded runs."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

import zray
from tests.conftest import process_gone, wait_for

torch = pytest.importorskip("torch")

from zray.rllib import register_env                                    # noqa: E402
from zray.rllib.algorithms.algorithm import Algorithm                  # noqa: E402
from zray.rllib.algorithms.algorithm_config import ConfigError         # noqa: E402
from zray.rllib.algorithms.appo import APPOConfig                      # noqa: E402
from zray.rllib.algorithms.dqn import DQNConfig                        # noqa: E402
from zray.rllib.algorithms.ppo import PPOConfig                        # noqa: E402
from zray.rllib.core.rl_module.default_model_config import DefaultModelConfig  # noqa: E402
from zray.rllib.core.rl_module.rl_module import RLModuleSpec           # noqa: E402
from zray.rllib.core.rl_module.torch import TorchRLModule              # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.timeout(600)


def fast_ppo(runners=1, batch=512, **training):
    """PPO settings that learn CartPole in a few iterations."""
    kw = dict(lr=1e-3, lambda_=0.95, train_batch_size_per_learner=batch, minibatch_size=128,
              num_epochs=10, clip_param=0.2, vf_loss_coeff=0.5, use_kl_loss=False,
              vf_clip_param=1000.0, grad_clip=0.5)
    kw.update(training)
    envs = 8
    return (PPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=runners, num_envs_per_env_runner=envs,
                         rollout_fragment_length=max(1, batch // (envs * max(1, runners))))
            .training(**kw)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
            .debugging(seed=0))


def train_until(algo, goal: float, max_steps: int):
    result = None
    while True:
        result = algo.train()
        if result["env_runners/episode_return_mean"] >= goal or \
                result["env_runners/num_env_steps_sampled_lifetime"] >= max_steps:
            return result


def cpus_free(total=2.0):
    return lambda: zray.available_resources().get("CPU", 0) >= total


# ---- learning ----------------------------------------------------------------

def test_ppo_reaches_150_on_cartpole_within_20k_steps(cluster):
    algo = fast_ppo(runners=1, batch=1024).build_algo()
    try:
        result = train_until(algo, 150, 20_000)
        assert result["env_runners/episode_return_mean"] >= 150, result["env_runners"]
        assert result["env_runners/num_env_steps_sampled_lifetime"] <= 20_480
        for key in ("training_iteration", "time_this_iter_s", "env_runners/episode_len_mean",
                    "learners/default_policy/policy_loss", "learners/default_policy/vf_loss",
                    "learners/default_policy/entropy"):
            assert key in result, key
    finally:
        algo.stop()


def test_dqn_improves_clearly_on_cartpole(cluster):
    config = (DQNConfig().environment("CartPole-v1")
              .env_runners(rollout_fragment_length=8)
              .training(lr=1e-3, train_batch_size_per_learner=64, n_step=3,
                        target_network_update_freq=250,
                        num_steps_sampled_before_learning_starts=500,
                        epsilon=[(0, 1.0), (3000, 0.02)])
              .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64],
                                                         head_fcnet_hiddens=[64]))
              .reporting(min_sample_timesteps_per_iteration=500,
                         metrics_num_episodes_for_smoothing=20)   # the recent episodes
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        first = algo.train()["env_runners/episode_return_mean"]
        result = train_until(algo, 100, 12_000)
        assert first < 40
        assert result["env_runners/episode_return_mean"] >= 100, result["env_runners"]
        assert result["learners/default_policy/qf_loss"] >= 0
    finally:
        algo.stop()


def test_appo_improves_clearly_with_async_sampling_despite_a_runner_kill(cluster):
    config = (APPOConfig().environment("CartPole-v1")
              .env_runners(num_env_runners=2, num_envs_per_env_runner=4,
                           rollout_fragment_length=32, num_cpus_per_env_runner=0.5)
              .training(lr=1e-3, train_batch_size_per_learner=256, vf_loss_coeff=0.5,
                        entropy_coeff=0.0, target_network_update_freq=0.25)
              .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[64, 64]))
              .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=1000)
              .debugging(seed=0))
    algo = config.build_algo()
    try:
        first = algo.train()["env_runners/episode_return_mean"]
        zray.kill(algo.env_runner_group.remote[1])      # its in-flight sample is lost
        # sampling is asynchronous, so runs differ: the target period is the
        # benchmark's APPO config's, and the step budget leaves room for a slow run
        result = train_until(algo, 100, 40_000)
        assert first < 40
        assert result["env_runners/episode_return_mean"] >= 100, result["env_runners"]
        assert result["fault_tolerance/num_remote_worker_restarts"] == 1
    finally:
        algo.stop()


def test_impala_trains_with_vtrace_in_the_driver():
    from zray.rllib.algorithms.impala import IMPALAConfig
    algo = (IMPALAConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=4,
                         rollout_fragment_length=25)
            .training(train_batch_size_per_learner=100)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16]))
            .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=200)
            .debugging(seed=0).build_algo())
    try:
        result = algo.train()
        assert result["learners/__all_modules__/num_env_steps_trained"] == 200
        assert np.isfinite(result["learners/default_policy/total_loss"])
    finally:
        algo.stop()


# ---- RLlib's semantics: DQN replay and n-step, APPO's circular buffer -----------

def test_prioritized_replay_draws_in_proportion_to_priority_and_reweights():
    from zray.rllib.utils.replay_buffers import PrioritizedReplayBuffer
    buf = PrioritizedReplayBuffer(100, alpha=1.0, beta=1.0, eps=0.0, seed=0)
    buf.add({"x": np.arange(10)})
    buf.update_priorities(np.arange(10), np.where(np.arange(10) == 3, 91.0, 1.0))
    batch = buf.sample(10_000)                  # slot 3: 91 of 100 priority units
    assert np.mean(batch["x"] == 3) == pytest.approx(0.91, abs=0.02)
    assert (batch["x"] == batch["indices"]).all()
    # importance weights undo the skew: the frequent item weighs least, the largest is 1
    assert batch["weights"][batch["x"] == 3].max() == pytest.approx(1 / 91)
    assert batch["weights"].max() == pytest.approx(1.0)
    buf.add({"x": np.array([10])})              # new rows get the highest priority yet
    assert buf.tree[buf.leaves + 10] == pytest.approx(91.0)


def test_prioritized_replay_weights_are_relative_to_the_lowest_priority_row_like_rllib():
    from zray.rllib.utils.replay_buffers import PrioritizedReplayBuffer
    buf = PrioritizedReplayBuffer(100, alpha=1.0, beta=1.0, eps=0.0, seed=0)
    buf.add({"x": np.arange(4)})
    buf.update_priorities(np.arange(4), np.array([1.0, 1e6, 1e6, 1e6]))
    batch = buf.sample(8)                       # (almost surely) only high-priority rows
    assert not (batch["x"] == 0).any()
    # normalised by the weight row 0 would get, not by this batch's largest
    assert batch["weights"] == pytest.approx(np.full(8, 1e-6), rel=1e-3)


def test_n_step_range_draws_n_per_row_and_stops_at_episode_end():
    from zray.rllib.utils.replay_buffers import NStepAccumulator, nstep_targets
    # one env, 6 steps, reward t+1 at step t; the episode terminates at step 5
    T = 6
    batch = {"obs": np.arange(T, dtype=np.float32).reshape(T, 1, 1),
             "actions": np.zeros((T, 1), np.int64),
             "rewards": np.arange(1, T + 1, dtype=np.float32).reshape(T, 1),
             "next_obs": np.arange(1, T + 1, dtype=np.float32).reshape(T, 1, 1),
             "terminateds": (np.arange(T) == 5).reshape(T, 1),
             "truncateds": np.zeros((T, 1), bool)}
    rows = NStepAccumulator(3, gamma=0.5).add_fragment(0, batch)
    assert list(rows["obs"][:, 0]) == [0, 1, 2, 3, 4, 5] and list(rows["seq_len"]) == \
        [3, 3, 3, 3, 2, 1]
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(30):
        out = nstep_targets(rows, (2, 3), 0.5, rng)
        k = np.round(np.log(out["discounts"]) / np.log(0.5)).astype(int)
        seen |= set(k[:4].tolist())
        assert (k[:4] >= 2).all() and k[4] <= 2 and k[5] == 1      # the end shortens k
        for i in range(6):
            assert out["rewards"][i] == pytest.approx(sum(0.5 ** j * (i + 1 + j)
                                                          for j in range(k[i])))
            assert out["next_obs"][i, 0] == i + k[i]
        assert out["terminateds"][5] and not out["terminateds"][0]
    assert seen == {2, 3}


def test_dqn_auto_rollout_fragment_is_the_largest_n_step_like_rllib():
    config = DQNConfig().environment("CartPole-v1").training(n_step=(2, 5))
    config.validate()
    assert config.get_rollout_fragment_length() == 5
    with pytest.raises(ConfigError, match="n_step"):
        DQNConfig().environment("CartPole-v1").training(n_step=(4, 2)).build_algo()


def test_appo_iteration_defaults_to_rllibs_ten_seconds_and_reporting_changes_it():
    config = APPOConfig()
    assert (config.min_time_s_per_iteration, config.min_sample_timesteps_per_iteration) == \
        (10, 0)
    algo = (config.environment("CartPole-v1")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=2,
                         rollout_fragment_length=25)
            .training(train_batch_size_per_learner=50)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[8]))
            .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=100)
            .debugging(seed=0).build_algo())
    try:
        result = algo.train()
        assert 100 <= result["env_runners/num_env_steps_sampled"] < 150
        assert result["time_this_iter_s"] < 10
    finally:
        algo.stop()


def test_appo_trains_each_batch_k_times_and_updates_its_target_in_rllibs_unit():
    algo = (APPOConfig().environment("CartPole-v1")
            .env_runners(num_env_runners=0, num_envs_per_env_runner=2,
                         rollout_fragment_length=25)
            .training(train_batch_size_per_learner=50, circular_buffer_num_batches=2,
                      circular_buffer_iterations_per_batch=3, target_network_update_freq=1)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[8]))
            .reporting(min_time_s_per_iteration=0, min_sample_timesteps_per_iteration=50)
            .debugging(seed=0).build_algo())
    trained, targets = [], []
    algo.learn_on = lambda batch: trained.append(id(batch)) or {}
    real_foreach = algo.learner_group.foreach
    algo.learner_group.foreach = lambda m, *a: targets.append(m) or real_foreach(m, *a)
    try:
        for _ in range(4):                      # one 50-step batch an iteration
            result = algo.train()
            assert result["learners/__all_modules__/num_env_steps_trained"] == 50
        # every batch trained on exactly K=3 times, then evicted
        assert len(trained) == 12 and sorted({trained.count(b) for b in trained}) == [3]
        assert algo._buffer == []
        # target every 1 x N=2 x K=3 x 50 = 300 trained env steps: after 600 steps, twice
        assert targets == ["update_target", "update_target"]
    finally:
        algo.stop()


# ---- metrics ------------------------------------------------------------------

class CountingEnv(gym.Env):
    """One-step episodes whose return is 1, 2, 3, ... in the order they end
    (a class-wide count), so a window's mean is known exactly."""
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)
    ended = 0

    def __init__(self, config=None):
        pass

    def reset(self, *, seed=None, options=None):
        return np.zeros(2, np.float32), {}

    def step(self, action):
        CountingEnv.ended += 1
        return np.zeros(2, np.float32), float(CountingEnv.ended), True, False, {}


def counting_ppo(**reporting):
    CountingEnv.ended = 0
    return (PPOConfig().environment(CountingEnv)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=1,
                         rollout_fragment_length=8)
            .training(train_batch_size_per_learner=8, minibatch_size=8, num_epochs=1)
            .reporting(**reporting).debugging(seed=0))


def test_episode_return_mean_is_over_this_iterations_episodes_like_rllib():
    # RLlib 2.60 reduces its episode metrics every iteration: a stop criterion
    # ported from RLlib must see only the episodes that ended in this iteration.
    algo = counting_ppo().build_algo()
    try:
        assert algo.config.metrics_num_episodes_for_smoothing == 100
        for _ in range(3):                              # 8 episodes an iteration
            result = algo.train()
            lifetime = result["env_runners/num_episodes_lifetime"]
            assert result["env_runners/num_episodes"] == 8 and CountingEnv.ended == lifetime
            this_iteration = list(range(lifetime - 7, lifetime + 1))
            assert result["env_runners/episode_return_mean"] == pytest.approx(
                np.mean(this_iteration))
            assert result["env_runners/episode_return_max"] == lifetime
            assert result["env_runners/episode_return_min"] == lifetime - 7
    finally:
        algo.stop()


def test_metrics_window_caps_the_episodes_counted_in_an_iteration():
    algo = counting_ppo(metrics_num_episodes_for_smoothing=5).build_algo()
    try:
        result = algo.train()                           # episodes 1..8 end
        assert result["env_runners/episode_return_mean"] == pytest.approx(np.mean([4, 5, 6, 7, 8]))
        assert result["env_runners/episode_return_min"] == 4
    finally:
        algo.stop()


def test_metrics_window_is_split_among_env_runners_like_rllib(cluster):
    # Each runner process counts its own episodes 1..8 in the first iteration;
    # a window of 4 over 2 runners keeps each runner's last 2 episodes: (7 + 8) / 2.
    algo = (counting_ppo(metrics_num_episodes_for_smoothing=4)
            .env_runners(num_env_runners=2, num_cpus_per_env_runner=0.5).build_algo())
    try:
        result = algo.train()
        assert result["env_runners/num_episodes"] == 16
        assert result["env_runners/episode_return_mean"] == pytest.approx(7.5)
        assert result["env_runners/episode_return_min"] == 7
    finally:
        algo.stop()


class TwentyStepEnv(gym.Env):
    """Episodes of exactly 20 steps, reward 1 a step."""
    observation_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        self.t = 0

    def reset(self, *, seed=None, options=None):
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(2, np.float32), 1.0, self.t >= 20, False, {}


def test_episode_return_mean_is_nan_in_an_iteration_where_no_episode_ended():
    algo = (PPOConfig().environment(TwentyStepEnv)
            .env_runners(num_env_runners=0, num_envs_per_env_runner=1, rollout_fragment_length=8)
            .training(train_batch_size_per_learner=8, minibatch_size=8, num_epochs=1)
            .debugging(seed=0).build_algo())
    try:
        means = [algo.train()["env_runners/episode_return_mean"] for _ in range(3)]
        assert np.isnan(means[0]) and np.isnan(means[1])   # steps 1-16: no episode ends
        assert means[2] == 20.0                            # step 20 ends the first one
    finally:
        algo.stop()


def test_metrics_window_must_be_a_positive_integer():
    with pytest.raises(ConfigError, match="metrics_num_episodes_for_smoothing"):
        PPOConfig().environment("CartPole-v1").reporting(
            metrics_num_episodes_for_smoothing=0).build_algo()


# ---- checkpoints, acting, evaluation -----------------------------------------

def test_checkpoint_round_trip_gives_the_same_actions(cluster, tmp_path):
    algo = fast_ppo(runners=0, batch=256).evaluation(evaluation_duration=2).build_algo()
    restored = None
    try:
        algo.train()
        path = algo.save(str(tmp_path / "ckpt"))
        assert {"module_state.pt", "optimizer_state.pt", "config.json"} <= set(os.listdir(path))
        obs = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
        before = algo.get_module().forward_inference({"obs": torch.as_tensor(obs)})
        restored = Algorithm.from_checkpoint(path)
        after = restored.get_module().forward_inference({"obs": torch.as_tensor(obs)})
        assert torch.equal(before["action_dist_inputs"], after["action_dist_inputs"])
        assert [algo.compute_single_action(o) for o in obs] == \
            [restored.compute_single_action(o) for o in obs]
        assert restored.iteration == 1
        evaluation = restored.evaluate()
        assert evaluation["env_runners/num_episodes"] == 2
        assert evaluation["env_runners/episode_return_mean"] > 0
    finally:
        algo.stop()
        if restored:
            restored.stop()


# ---- failures ----------------------------------------------------------------

def test_killed_env_runner_is_restarted_and_training_goes_on(cluster):
    algo = fast_ppo(runners=2, batch=256, num_epochs=1).env_runners(
        num_cpus_per_env_runner=0.5).build_algo()
    try:
        first = algo.train()
        victim = algo.env_runner_group.remote[0]
        pid = zray.get(victim.pid.remote(), timeout=60)
        zray.kill(victim)
        wait_for(lambda: process_gone(pid), 30)
        result = algo.train()
        assert result["fault_tolerance/num_remote_worker_restarts"] == 1
        assert result["env_runners/num_env_runner_restarts"] == 1
        assert result["env_runners/num_env_steps_sampled"] == \
            first["env_runners/num_env_steps_sampled"]
        new_pid = zray.get(algo.env_runner_group.remote[0].pid.remote(), timeout=60)
        assert new_pid != pid
    finally:
        algo.stop()


def test_stop_ends_every_env_runner_actor(cluster):
    algo = fast_ppo(runners=2, batch=256).env_runners(num_cpus_per_env_runner=0.5).build_algo()
    pids = zray.get([r.pid.remote() for r in algo.env_runner_group.remote], timeout=60)
    algo.stop()
    for pid in pids:
        wait_for(lambda: process_gone(pid), 30)
    wait_for(cpus_free(), 30)


# ---- bad input ----------------------------------------------------------------

class DictObsEnv(gym.Env):
    observation_space = gym.spaces.Dict({"a": gym.spaces.Box(-1, 1, (2,))})
    action_space = gym.spaces.Discrete(2)

    def __init__(self, config=None):
        pass


BAD_CONFIGS = {
    "unknown env id": (lambda: PPOConfig().environment("NoSuchEnv-v9"), "unknown environment"),
    "unsupported spaces": (lambda: PPOConfig().environment(DictObsEnv),
                           "unsupported observation space"),
    "minibatch above batch": (lambda: PPOConfig().environment("CartPole-v1").training(
        train_batch_size_per_learner=100, minibatch_size=200), "minibatch_size"),
    "negative lr": (lambda: PPOConfig().environment("CartPole-v1").training(lr=-0.1), "lr"),
    "too many cpus": (lambda: PPOConfig().environment("CartPole-v1").env_runners(
        num_env_runners=3), "need 3 CPUs"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_raises_at_build_algo_and_starts_nothing(cluster, case):
    make, message = BAD_CONFIGS[case]
    config = make().env_runners(num_env_runners=1) if case != "too many cpus" else make()
    with pytest.raises(ConfigError, match=re.escape(message)):
        config.build_algo()
    wait_for(cpus_free(), 30)


def test_unknown_config_key_raises_and_names_the_key():
    with pytest.raises(TypeError, match="'lrr'.*Did you mean lr"):
        PPOConfig().training(lrr=0.1)
    with pytest.raises(TypeError, match="no_such_key"):
        PPOConfig().update_from_dict({"no_such_key": 1})
    with pytest.raises(TypeError, match="n_step"):
        PPOConfig().training(n_step=3)         # a DQN key is not a PPO key


def test_ppo_trains_on_box_actions():
    algo = (PPOConfig().environment("Pendulum-v1")
            .env_runners(num_envs_per_env_runner=2, rollout_fragment_length=64)
            .training(train_batch_size_per_learner=128, minibatch_size=64, num_epochs=1)
            .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=[16]))
            .debugging(seed=0).build_algo())
    try:
        result = algo.train()
        assert result["env_runners/num_env_steps_sampled"] == 128
        action = algo.compute_single_action(np.zeros(3, np.float32))
        assert action.shape == (1,)
    finally:
        algo.stop()


def test_dqn_rejects_continuous_actions():
    with pytest.raises(ConfigError, match="Discrete"):
        DQNConfig().environment("Pendulum-v1").build_algo()


# ---- environments and modules --------------------------------------------------

def test_registered_env_creator_gets_env_config(cluster):
    seen = []

    def creator(env_config):
        seen.append(dict(env_config))
        return gym.make("CartPole-v1", max_episode_steps=env_config["max_steps"])

    register_env("short_cartpole", creator)
    from zray.tune import register_env as tune_register_env
    assert tune_register_env is register_env
    algo = fast_ppo(runners=1, batch=256, num_epochs=1).environment(
        "short_cartpole", env_config={"max_steps": 20}).build_algo()
    try:
        result = algo.train()
        assert seen and seen[0] == {"max_steps": 20}
        assert result["env_runners/episode_len_mean"] <= 20
    finally:
        algo.stop()


class TinyPolicy(TorchRLModule):
    """A custom module: one linear policy layer and one linear value layer."""

    def setup(self):
        n_obs = self.observation_space.shape[0]
        self.pi = torch.nn.Linear(n_obs, self.action_space.n)
        self.vf = torch.nn.Linear(n_obs, 1)

    def _forward(self, batch, **kwargs):
        return {"action_dist_inputs": self.pi(batch["obs"])}

    def compute_values(self, batch, **kwargs):
        return self.vf(batch["obs"]).squeeze(-1)


def test_custom_rl_module_through_rl_module_spec_is_trained():
    algo = fast_ppo(runners=0, batch=256, num_epochs=2).rl_module(
        rl_module_spec=RLModuleSpec(module_class=TinyPolicy)).build_algo()
    try:
        module = algo.get_module()
        assert isinstance(module, TinyPolicy)
        before = module.pi.weight.detach().clone()
        algo.train()
        assert not torch.equal(before, module.pi.weight)
    finally:
        algo.stop()


def test_two_learner_actors_average_gradients_and_stay_equal(cluster):
    algo = fast_ppo(runners=0, batch=256, num_epochs=2).learners(
        num_learners=2, num_cpus_per_learner=0.5).build_algo()
    try:
        before = algo.get_module().get_state()
        result = algo.train()
        assert result["learners/default_policy/vf_loss"] > 0
        w0, w1 = zray.get([a.get_weights.remote() for a in algo.learner_group.remote],
                          timeout=120)
        assert all(np.array_equal(w0[k], w1[k]) for k in w0)
        assert any(not np.array_equal(w0[k], before[k]) for k in w0)
        after = algo.get_module().get_state()
        assert all(np.array_equal(w0[k], after[k]) for k in w0)
    finally:
        algo.stop()


# ---- CLI and README -----------------------------------------------------------------

def test_cli_train_prints_a_summary_line():
    cfg = ('{"train_batch_size_per_learner": 256, "minibatch_size": 64, "num_epochs": 1,'
           ' "num_envs_per_env_runner": 4}')
    result = subprocess.run(
        [sys.executable, "-m", "zray._private.cli", "rllib", "train", "--algo", "ppo", "--env",
         "CartPole-v1", "--stop-iters", "2", "--config-json", cfg, "--no-progress"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert re.search(r"PPO on CartPole-v1: training return [\d.]+ after 512 env steps, "
                     r"2 iterations", result.stdout), result.stdout


def test_cli_rejects_an_unknown_config_key():
    result = subprocess.run(
        [sys.executable, "-m", "zray._private.cli", "rllib", "train", "--algo", "PPO", "--env",
         "CartPole-v1", "--config-json", '{"lrr": 1}'],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2
    assert "unknown key 'lrr'" in result.stderr


def readme_example() -> str:
    """The python block of README.md's RLlib section (or, before the README
    has one, examples/rllib_cartpole.py, which it reproduces)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## RLlib", 1)
    if len(section) == 2:
        block = re.search(r"```python\n(.*?)```", section[1], re.S)
        if block:
            return block.group(1)
    with open(os.path.join(ROOT, "examples", "rllib_cartpole.py")) as f:
        return f.read()


def test_readme_example_runs(tmp_path):
    code = readme_example().replace("/tmp/ppo_cartpole_ckpt", str(tmp_path / "ckpt"))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=400, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] in ("0", "1")
    assert os.path.isfile(tmp_path / "ckpt" / "module_state.pt")

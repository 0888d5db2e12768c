"""AlgorithmConfig: RLlib's builder of hyper-parameters, validated before any
actor starts.

Each builder method (``environment``, ``env_runners``, ``training``, ...)
takes only the keys it knows and raises ``UnknownConfigKeyError`` (a
``TypeError``, as Ray raises) for any other. ``validate()`` checks values and
the environment, and is run by ``build_algo()`` before anything starts.
"""
from __future__ import annotations

import copy
import difflib
import importlib
import math

from zray.rllib.core.rl_module.default_model_config import DefaultModelConfig
from zray.rllib.core.rl_module.rl_module import RLModuleSpec


class ConfigError(ValueError):
    """A configuration value is invalid; the message says which and why."""


class UnknownConfigKeyError(ConfigError, TypeError):
    """A key that no builder method of this algorithm knows."""


_NOT_SET = object()

_SECTIONS = {
    "environment": {"env", "env_config", "observation_space", "action_space",
                    "clip_rewards", "normalize_actions", "clip_actions",
                    "disable_env_checking", "render_env", "is_atari"},
    "env_runners": {"num_env_runners", "num_envs_per_env_runner", "rollout_fragment_length",
                    "explore", "num_cpus_per_env_runner", "num_gpus_per_env_runner",
                    "batch_mode", "sample_timeout_s", "gym_env_vectorize_mode",
                    "env_to_module_connector", "module_to_env_connector",
                    "add_default_connectors_to_env_to_module_pipeline",
                    "add_default_connectors_to_module_to_env_pipeline"},
    "learners": {"num_learners", "num_cpus_per_learner", "num_gpus_per_learner"},
    "rl_module": {"model_config", "rl_module_spec"},
    "evaluation": {"evaluation_interval", "evaluation_duration", "evaluation_duration_unit",
                   "evaluation_num_env_runners", "evaluation_config",
                   "evaluation_parallel_to_training"},
    "debugging": {"seed", "log_level", "logger_config"},
    "fault_tolerance": {"restart_failed_env_runners", "ignore_env_runner_failures",
                        "max_num_env_runner_restarts"},
    "reporting": {"metrics_num_episodes_for_smoothing", "min_time_s_per_iteration",
                  "min_sample_timesteps_per_iteration", "min_train_timesteps_per_iteration"},
    "framework": {"framework"},
    "api_stack": {"enable_rl_module_and_learner", "enable_env_runner_and_connector_v2"},
    "resources": {"num_gpus", "num_cpus_for_main_process"},
}

# Accepted for compatibility with RLlib scripts; they do not change anything here.
_NO_EFFECT = {"observation_space", "action_space", "clip_rewards", "normalize_actions",
              "clip_actions", "disable_env_checking", "render_env", "is_atari",
              "num_gpus_per_env_runner", "batch_mode", "sample_timeout_s",
              "gym_env_vectorize_mode", "env_to_module_connector", "module_to_env_connector",
              "add_default_connectors_to_env_to_module_pipeline",
              "add_default_connectors_to_module_to_env_pipeline", "num_gpus_per_learner",
              "evaluation_num_env_runners", "evaluation_config",
              "evaluation_parallel_to_training", "log_level", "logger_config",
              "ignore_env_runner_failures", "max_num_env_runner_restarts",
              "min_train_timesteps_per_iteration", "framework",
              "enable_rl_module_and_learner", "enable_env_runner_and_connector_v2",
              "num_gpus", "num_cpus_for_main_process", "grad_clip_by"}


def class_path(obj) -> str | None:
    """"module:qualname" of an importable class or function, else None."""
    mod, name = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if not mod or not name or "<" in name or mod == "__main__":
        return None
    return f"{mod}:{name}"


def import_path(path: str):
    mod, _, name = path.partition(":")
    obj = importlib.import_module(mod)
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


class AlgorithmConfig:
    """The hyper-parameters of one algorithm; subclasses add their own
    ``training`` keys in ``TRAINING_KEYS`` and set ``algo_class``."""

    algo_class = None
    TRAINING_KEYS = {"lr", "gamma", "train_batch_size_per_learner", "train_batch_size",
                     "minibatch_size", "num_epochs", "grad_clip", "grad_clip_by", "optimizer",
                     "learner_class"}

    def __init__(self, algo_class=None):
        if algo_class is not None:
            self.algo_class = algo_class
        # environment
        self.env = None
        self.env_config = {}
        # env runners
        self.num_env_runners = 0
        self.num_envs_per_env_runner = 1
        self.rollout_fragment_length = "auto"
        self.explore = True
        self.num_cpus_per_env_runner = 1
        # training (common)
        self.lr = 5e-5
        self.gamma = 0.99
        self.train_batch_size_per_learner = 4000
        self.minibatch_size = None
        self.num_epochs = 1
        self.grad_clip = None
        self.learner_class = None
        # learners
        self.num_learners = 0
        self.num_cpus_per_learner = 1
        # module
        self.model_config = DefaultModelConfig()
        self.rl_module_spec = None
        # evaluation
        self.evaluation_interval = None
        self.evaluation_duration = 10
        self.evaluation_duration_unit = "episodes"
        # debugging, fault tolerance, reporting
        self.seed = None
        self.restart_failed_env_runners = True
        self.metrics_num_episodes_for_smoothing = 100
        self.min_time_s_per_iteration = None
        self.min_sample_timesteps_per_iteration = 0
        self._ignored = {}

    # ---- builder methods -------------------------------------------------
    def _set(self, section: str, allowed: set, kwargs: dict):
        for key in kwargs:
            if key not in allowed:
                near = difflib.get_close_matches(key, sorted(allowed), n=3)
                hint = f" Did you mean {', '.join(near)}?" if near else ""
                raise UnknownConfigKeyError(
                    f"{type(self).__name__}.{section}() got an unknown key {key!r}.{hint} "
                    f"Known keys: {', '.join(sorted(allowed))}")
        for key, value in kwargs.items():
            if value is _NOT_SET:
                continue
            if key in _NO_EFFECT:
                self._ignored[key] = value
            else:
                setattr(self, key, value)
        return self

    def environment(self, env=_NOT_SET, **kwargs):
        return self._set("environment", _SECTIONS["environment"], dict(env=env, **kwargs))

    def env_runners(self, **kwargs):
        return self._set("env_runners", _SECTIONS["env_runners"], kwargs)

    def training(self, **kwargs):
        if "lambda" in kwargs:
            kwargs["lambda_"] = kwargs.pop("lambda")
        return self._set("training", self.TRAINING_KEYS, kwargs)

    def learners(self, **kwargs):
        return self._set("learners", _SECTIONS["learners"], kwargs)

    def rl_module(self, **kwargs):
        return self._set("rl_module", _SECTIONS["rl_module"], kwargs)

    def evaluation(self, **kwargs):
        return self._set("evaluation", _SECTIONS["evaluation"], kwargs)

    def debugging(self, **kwargs):
        return self._set("debugging", _SECTIONS["debugging"], kwargs)

    def fault_tolerance(self, **kwargs):
        return self._set("fault_tolerance", _SECTIONS["fault_tolerance"], kwargs)

    def reporting(self, **kwargs):
        return self._set("reporting", _SECTIONS["reporting"], kwargs)

    def framework(self, framework="torch", **kwargs):
        if framework != "torch":
            raise ConfigError(f"zray.rllib runs torch only; got framework={framework!r}")
        return self._set("framework", _SECTIONS["framework"], kwargs)

    def api_stack(self, **kwargs):
        return self._set("api_stack", _SECTIONS["api_stack"], kwargs)

    def resources(self, **kwargs):
        return self._set("resources", _SECTIONS["resources"], kwargs)

    def all_keys(self) -> set:
        keys = set(self.TRAINING_KEYS)
        for names in _SECTIONS.values():
            keys |= names
        return keys

    def update_from_dict(self, d: dict):
        """Set keys by name (as RLlib's ``update_from_dict``); unknown keys raise."""
        d = dict(d)
        if "lambda" in d:
            d["lambda_"] = d.pop("lambda")
        if isinstance(d.get("model_config"), dict):
            d["model_config"] = DefaultModelConfig.from_dict(d["model_config"])
        return self._set("update_from_dict", self.all_keys(), d)

    def copy(self):
        return copy.deepcopy(self)

    # ---- derived values ----------------------------------------------------
    def get_rollout_fragment_length(self) -> int:
        if self.rollout_fragment_length != "auto":
            return int(self.rollout_fragment_length)
        total = self.train_batch_size_per_learner * max(1, self.num_learners)
        return max(1, math.ceil(total / (max(1, self.num_env_runners)
                                         * self.num_envs_per_env_runner)))

    def model_config_dict(self) -> dict:
        mc = self.model_config
        if isinstance(mc, DefaultModelConfig):
            return mc.to_dict()
        return dict(mc or {})

    # ---- validation --------------------------------------------------------
    def _positive(self, name: str, allow_zero=False, integer=False):
        v = getattr(self, name)
        ok_type = isinstance(v, int) if integer else isinstance(v, (int, float))
        if isinstance(v, bool) or not ok_type or (v < 0 if allow_zero else v <= 0):
            kind = "an integer" if integer else "a number"
            bound = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"{name} must be {kind} {bound}, got {v!r}")

    def validate(self) -> None:
        """Raise ConfigError for any invalid value (before any actor starts)."""
        self._positive("lr")
        if not isinstance(self.gamma, (int, float)) or not 0 < self.gamma <= 1:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma!r}")
        self._positive("train_batch_size_per_learner", integer=True)
        self._positive("num_env_runners", allow_zero=True, integer=True)
        self._positive("num_envs_per_env_runner", integer=True)
        self._positive("num_learners", allow_zero=True, integer=True)
        self._positive("num_epochs", integer=True)
        self._positive("metrics_num_episodes_for_smoothing", integer=True)
        self._positive("num_cpus_per_env_runner", allow_zero=True)
        self._positive("num_cpus_per_learner", allow_zero=True)
        if self.rollout_fragment_length != "auto":
            self._positive("rollout_fragment_length", integer=True)
        if self.minibatch_size is not None:
            self._positive("minibatch_size", integer=True)
            if self.minibatch_size > self.train_batch_size_per_learner:
                raise ConfigError(
                    f"minibatch_size ({self.minibatch_size}) is larger than the train batch "
                    f"(train_batch_size_per_learner={self.train_batch_size_per_learner}); "
                    f"lower minibatch_size or raise the batch size")
        if self.grad_clip is not None:
            self._positive("grad_clip")
        if self.evaluation_interval is not None:
            self._positive("evaluation_interval", integer=True)
            self._positive("evaluation_duration", integer=True)
            if self.evaluation_duration_unit != "episodes":
                raise ConfigError("evaluation_duration_unit: only 'episodes' is supported")
        if not isinstance(self.model_config, (DefaultModelConfig, dict)):
            raise ConfigError(f"model_config must be a DefaultModelConfig or a dict, got "
                              f"{type(self.model_config).__name__}")
        if self.rl_module_spec is not None and not isinstance(self.rl_module_spec, RLModuleSpec):
            raise ConfigError("rl_module_spec must be an RLModuleSpec")
        if self.num_learners > 0 and self.minibatch_size is not None \
                and self.minibatch_size < self.num_learners:
            raise ConfigError(f"minibatch_size ({self.minibatch_size}) must be at least "
                              f"num_learners ({self.num_learners})")

    # ---- serialisation (checkpoints, --config-json) ----------------------
    def to_dict(self) -> dict:
        """A JSON-able dict of every key (classes as "module:qualname")."""
        out = {}
        for k, v in vars(self).items():
            if k.startswith("_"):
                continue
            if k == "model_config":
                v = self.model_config_dict()
            elif k == "rl_module_spec" and v is not None:
                v = {"module_class": class_path(v.module_class),
                     "model_config": v.model_config if isinstance(v.model_config, dict)
                     else None}
            elif k == "env" and not isinstance(v, str) and v is not None:
                v = {"__class__": class_path(v)}
            elif k == "learner_class" and v is not None:
                v = {"__class__": class_path(v)}
            out[k] = v
        out["algo_class"] = class_path(self.algo_class) if self.algo_class else None
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "AlgorithmConfig":
        d = dict(d)
        d.pop("algo_class", None)
        cfg = cls()
        env = d.pop("env", None)
        if isinstance(env, dict):
            if not env.get("__class__"):
                raise ConfigError("the checkpoint's env was a function defined in a script; "
                                  "register it with register_env and pass env= to restore")
            env = import_path(env["__class__"])
        spec = d.pop("rl_module_spec", None)
        if spec:
            if not spec.get("module_class"):
                raise ConfigError("the checkpoint's RLModule class is not importable")
            spec = RLModuleSpec(module_class=import_path(spec["module_class"]),
                                model_config=spec.get("model_config"))
        lc = d.pop("learner_class", None)
        if isinstance(lc, dict) and lc.get("__class__"):
            cfg.learner_class = import_path(lc["__class__"])
        cfg.env, cfg.rl_module_spec = env, spec
        for k, v in d.items():
            if k == "model_config":
                v = DefaultModelConfig.from_dict(v) if v is not None else DefaultModelConfig()
            if k not in vars(cfg):
                raise UnknownConfigKeyError(f"unknown config key {k!r} in the saved config")
            setattr(cfg, k, v)
        return cfg

    # ---- building ----------------------------------------------------------
    def build_algo(self, **kwargs):
        """Validate, then build the algorithm (starting its actors)."""
        if self.algo_class is None:
            raise ConfigError(f"{type(self).__name__} has no algorithm class")
        return self.algo_class(self.copy(), **kwargs)

    def build(self, *args, **kwargs):
        return self.build_algo(*args, **kwargs)

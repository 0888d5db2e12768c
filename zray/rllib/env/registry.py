"""Environment creators: registered names, classes and gymnasium ids.

``register_env(name, creator)`` makes ``config.environment(name)`` call
``creator(env_config)``. The registry is per process; the resolved creator is
shipped (cloudpickled) to every env runner, so runners need no registration.
"""
from __future__ import annotations

import functools
import logging

log = logging.getLogger(__name__)

_REGISTRY: dict[str, callable] = {}


def register_env(name: str, env_creator) -> None:
    """Register ``env_creator(env_config) -> gymnasium.Env`` under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_env needs a non-empty string name, got {name!r}")
    if not callable(env_creator):
        raise TypeError(f"register_env({name!r}, ...) needs a callable env_creator(env_config), "
                        f"got {type(env_creator).__name__}")
    _REGISTRY[name] = env_creator


def registered(name: str):
    """The creator registered under ``name``, or None."""
    return _REGISTRY.get(name)


def _make_gym(env_id: str, env_config: dict):
    import gymnasium as gym
    return gym.make(env_id, **(env_config or {}))


def _make_class(cls, env_config: dict):
    return cls(env_config or {})


def resolve_env_creator(env):
    """A picklable ``creator(env_config) -> Env`` for a registered name, an env
    class, a callable or a gymnasium id. Raises ValueError for what it cannot use."""
    if env is None:
        raise ValueError("no environment set: call config.environment('CartPole-v1') or pass "
                         "an env class or a name given to zray.rllib.register_env")
    if isinstance(env, str):
        if env in _REGISTRY:
            return _REGISTRY[env]
        import gymnasium as gym
        try:
            gym.spec(env)
        except Exception as exc:     # gymnasium raises several error kinds here
            raise ValueError(f"unknown environment {env!r}: it is neither registered with "
                             f"zray.rllib.register_env nor a gymnasium id ({exc}). Register a "
                             f"creator first or fix the id.") from None
        return functools.partial(_make_gym, env)
    if isinstance(env, type):
        return functools.partial(_make_class, env)
    if callable(env):
        return env
    raise ValueError(f"config.environment(env=...) takes a gymnasium id, a registered name, "
                     f"an env class or a creator; got {type(env).__name__}")


def env_spaces(creator, env_config: dict):
    """Make one env to read its observation and action spaces, then close it."""
    try:
        env = creator(env_config or {})
    except Exception as exc:
        raise ValueError(f"the environment could not be created: {type(exc).__name__}: {exc}") \
            from exc
    try:
        return env.observation_space, env.action_space
    finally:
        try:
            env.close()
        except Exception:     # closing a probe env must not mask the real result
            log.warning("closing the probe environment failed", exc_info=True)


def check_spaces(obs_space, act_space, discrete_actions_only: bool = False) -> None:
    """Raise ValueError unless observations are a flat Box and actions a Discrete
    (or, where allowed, a 1-D Box)."""
    from gymnasium import spaces
    if not isinstance(obs_space, spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"unsupported observation space {obs_space}: zray.rllib's default "
                         f"modules take a 1-D Box; flatten it with a gymnasium wrapper "
                         f"(e.g. FlattenObservation) or pass your own RLModuleSpec")
    if isinstance(act_space, spaces.Discrete):
        return
    if isinstance(act_space, spaces.Box) and len(act_space.shape) == 1 \
            and not discrete_actions_only:
        return
    allowed = "Discrete" if discrete_actions_only else "Discrete or 1-D Box"
    raise ValueError(f"unsupported action space {act_space}: this algorithm takes {allowed} "
                     f"actions")

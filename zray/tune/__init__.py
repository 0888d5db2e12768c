"""zray.tune: only ``register_env`` for now, for scripts that import it from here."""
from zray.rllib.env.registry import register_env

__all__ = ["register_env"]

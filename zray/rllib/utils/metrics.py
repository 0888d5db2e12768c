"""Result dicts: nested like RLlib's, also readable by "a/b" paths."""
from __future__ import annotations


class ResultDict(dict):
    """A nested result dict; ``result["env_runners/episode_return_mean"]`` walks
    the nesting, as Tune's flattened keys do."""

    def __getitem__(self, key):
        if isinstance(key, str) and "/" in key and not dict.__contains__(self, key):
            node = self
            for part in key.split("/"):
                node = dict.__getitem__(node, part)
            return node
        return dict.__getitem__(self, key)

    def __contains__(self, key):
        try:
            self[key]
            return True
        except (KeyError, TypeError):
            return False

    def get(self, key, default=None):
        try:
            return self[key]
        except (KeyError, TypeError):
            return default

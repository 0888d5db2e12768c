"""LearnerGroup: ``num_learners=0`` learns in the driver; ``num_learners=N``
runs N learner actors that compute gradients on their share of each
minibatch; the driver averages them (weighted by share size) and every
learner applies the same average, so their weights stay equal."""
from __future__ import annotations

import logging

import numpy as np

import zray

log = logging.getLogger(__name__)


def _mean_stats(stats: list[dict]) -> dict:
    keys = {k for s in stats for k in s}
    return {k: float(np.mean([s[k] for s in stats if k in s])) for k in keys}


class LearnerGroup:
    def __init__(self, *, learner_class, config, module_spec, num_learners: int,
                 num_cpus_per_learner=1):
        self.num_learners = num_learners
        self.local = None
        self.remote = []
        if num_learners == 0:
            self.local = learner_class(config=config, module_spec=module_spec)
        else:
            cls = zray.remote(num_cpus=num_cpus_per_learner)(learner_class)
            self.remote = [cls.remote(config=config, module_spec=module_spec, in_actor=True)
                           for _ in range(num_learners)]
            weights = zray.get(self.remote[0].get_weights.remote(), timeout=120)
            ref = zray.put(weights)
            zray.get([a.set_weights.remote(ref) for a in self.remote[1:]], timeout=120)

    def update(self, batch: dict, minibatch_size: int | None = None, num_epochs: int = 1,
               rng: np.random.Generator | None = None) -> dict:
        """``num_epochs`` passes over ``batch`` (dict of arrays, first axis = sample)
        in shuffled minibatches; returns the mean of each loss stat."""
        n = len(next(iter(batch.values())))
        mb = min(minibatch_size or n, n)
        rng = rng or np.random.default_rng()
        stats = []
        grads = None
        for _ in range(num_epochs):
            perm = rng.permutation(n) if mb < n else np.arange(n)
            for start in range(0, n - mb + 1, mb):
                idx = perm[start:start + mb]
                minibatch = {k: v[idx] for k, v in batch.items()}
                if self.local is not None:
                    stats.append(self.local.update_minibatch(minibatch))
                else:
                    grads, s = self._remote_step(grads, minibatch)
                    stats.append(s)
        if self.remote and grads is not None:
            ref = zray.put(grads)
            zray.get([a.step.remote(ref, None) for a in self.remote], timeout=300)
        return _mean_stats(stats)

    def _remote_step(self, grads, minibatch):
        n = len(next(iter(minibatch.values())))
        shards = np.array_split(np.arange(n), len(self.remote))
        ref = zray.put(grads) if grads is not None else None
        outs = zray.get([a.step.remote(ref, {k: v[s] for k, v in minibatch.items()})
                         for a, s in zip(self.remote, shards)], timeout=300)
        sizes = np.array([len(s) for s in shards], np.float64) / n
        avg = [sum(w * out[0][j] for w, out in zip(sizes, outs)).astype(np.float32)
               for j in range(len(outs[0][0]))]
        return avg, _mean_stats([o[1] for o in outs])

    def foreach(self, method: str, *args, **kwargs) -> list:
        """Call ``method`` on every learner; the list of results."""
        if self.local is not None:
            return [self.local.call(method, *args, **kwargs)]
        return zray.get([a.call.remote(method, *args, **kwargs) for a in self.remote],
                        timeout=300)

    def get_weights(self) -> dict:
        if self.local is not None:
            return self.local.get_weights()
        return zray.get(self.remote[0].get_weights.remote(), timeout=300)

    def get_state(self) -> dict:
        if self.local is not None:
            return self.local.get_state()
        return zray.get(self.remote[0].get_state.remote(), timeout=300)

    def set_state(self, state: dict) -> None:
        if self.local is not None:
            self.local.set_state(state)
            return
        ref = zray.put(state)
        zray.get([a.set_state.remote(ref) for a in self.remote], timeout=300)

    def stop(self) -> None:
        for actor in self.remote:
            try:
                zray.kill(actor)
            except Exception:
                log.warning("could not end a learner actor", exc_info=True)
        self.remote = []

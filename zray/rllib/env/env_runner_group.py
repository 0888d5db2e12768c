"""EnvRunnerGroup: the env-runner actors (or one local runner), weight
broadcast through one ``zray.put``, sync and async sampling, and restarts.

A runner found dead while sampling is replaced by a fresh actor (when
``restart_failed_env_runners``) and the restart is counted in ``restarts``.
"""
from __future__ import annotations

import logging

import zray
from zray.exceptions import RayActorError, WorkerCrashedError
from zray.rllib.env.env_runner import EnvRunner

log = logging.getLogger(__name__)

_DEAD = (RayActorError, WorkerCrashedError)


class EnvRunnerGroup:
    def __init__(self, *, runner_kwargs: dict, num_env_runners: int, num_cpus_per_env_runner,
                 restart_failed: bool):
        self.runner_kwargs = runner_kwargs
        self.num_remote = num_env_runners
        self.restart_failed = restart_failed
        self.restarts = 0
        self.local = None
        self.remote: list = []
        self.in_flight: dict = {}           # ObjectRef -> runner index
        self._actor_cls = zray.remote(num_cpus=num_cpus_per_env_runner)(EnvRunner)
        if num_env_runners == 0:
            self.local = EnvRunner(worker_index=0, **runner_kwargs)
        else:
            self.remote = [self._new_actor(i + 1) for i in range(num_env_runners)]
            # Creation errors (e.g. the env fails in the actor) surface here.
            zray.get([r.pid.remote() for r in self.remote], timeout=120)

    def _new_actor(self, worker_index: int):
        return self._actor_cls.remote(worker_index=worker_index, **self.runner_kwargs)

    def _restart(self, index: int, exc: Exception) -> None:
        if not self.restart_failed:
            raise exc
        log.warning("env runner %d died (%s: %s); starting a new one", index + 1,
                    type(exc).__name__, exc)
        try:
            zray.kill(self.remote[index])
        except Exception:     # already gone: nothing to end
            log.debug("kill of dead env runner %d failed", index + 1, exc_info=True)
        self.remote[index] = self._new_actor(index + 1)
        self.restarts += 1

    def sample(self, weights, **kwargs) -> list[dict]:
        """One ``sample(**kwargs)`` from every runner with these weights
        (numpy state dict, put once); restarts dead runners and retries."""
        if self.local is not None:
            return [self.local.sample(weights, **kwargs)]
        ref = zray.put(weights)
        out = [None] * len(self.remote)
        pending = list(range(len(self.remote)))
        for _attempt in range(3):
            refs = {i: self.remote[i].sample.remote(ref, **kwargs) for i in pending}
            failed = []
            for i, r in refs.items():
                try:
                    out[i] = zray.get(r, timeout=300)
                except _DEAD as exc:
                    self._restart(i, exc)
                    failed.append(i)
            pending = failed
            if not pending:
                return out
        raise RuntimeError(f"env runners {[i + 1 for i in pending]} died three times in a row; "
                           f"see the worker logs in the session directory")

    # Asynchronous sampling (APPO/IMPALA): one request in flight per runner.
    def launch(self, weights_ref, **kwargs) -> None:
        """Start a sample on every remote runner that has none in flight."""
        busy = set(self.in_flight.values())
        for i, runner in enumerate(self.remote):
            if i not in busy:
                self.in_flight[runner.sample.remote(weights_ref, **kwargs)] = i

    def collect_ready(self, timeout: float) -> list[dict]:
        """The samples that arrived within ``timeout`` (at least one unless it
        passes); dead runners are restarted and their requests dropped."""
        if not self.in_flight:
            return []
        ready, _ = zray.wait(list(self.in_flight), num_returns=1, timeout=timeout)
        rest = [r for r in self.in_flight if r not in ready]
        if ready and rest:
            more, _ = zray.wait(rest, num_returns=len(rest), timeout=0)
            ready = list(ready) + list(more)
        out = []
        for r in ready:
            i = self.in_flight.pop(r)
            try:
                out.append(zray.get(r, timeout=60))
            except _DEAD as exc:
                self._restart(i, exc)
        return out

    def num_healthy(self) -> int:
        return 1 if self.local is not None else len(self.remote)

    def runner_actors(self) -> list:
        return list(self.remote)

    def stop(self) -> None:
        """End every runner actor (or close the local runner's envs)."""
        if self.local is not None:
            self.local.stop()
        for runner in self.remote:
            try:
                zray.kill(runner)
            except Exception:
                log.warning("could not end an env runner actor", exc_info=True)
        self.remote = []
        self.in_flight = {}

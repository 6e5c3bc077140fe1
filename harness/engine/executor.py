"""Runs batches of client jobs on a pool of workers: Ray actors, or in-process.

`map(method, batches)` sends batch i to worker i % W in one call each and returns the results
in batch order. When a Ray actor dies mid-round its batch is re-run on a fresh actor (up to
`max_retries` times); since a client's training depends only on (seed, round, client), the
retried results are identical to what the dead actor would have returned.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections import defaultdict
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

from harness.config import RunConfig
from harness.engine.allocator import keep_freed_memory
from harness.engine.cluster import init_ray, shutdown_ray
from harness.engine.worker import Worker, resolve_device
from partitions.federated import FederatedDataset

log = logging.getLogger(__name__)


class InProcessExecutor:
    def __init__(self, cfg: RunConfig, data: FederatedDataset):
        self.workers = [Worker(cfg.model_dump(mode="json"), data, num_threads=max(1, int(cfg.workers.num_cpus)))]
        self.num_workers = cfg.workers.num_workers

    def map(self, method: str, batches: list[list[Any]]) -> list[list[Any]]:
        return [getattr(self.workers[0], method)(batch) for batch in batches]

    def shutdown(self) -> None:
        self.workers = []


class ActorWorker(Worker):
    """The Worker of a Ray actor process: it first fixes the allocator's thresholds, without which
    the actor trained ~20% slower than the same code in the driver (harness/allocator.py)."""

    def __init__(self, config: dict, data: FederatedDataset, num_threads: int = 1):
        self.allocator_tuned = keep_freed_memory()
        super().__init__(config, data, num_threads)

    def process_info(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "device": str(self.trainer.device), "allocator_tuned": self.allocator_tuned}


class ActorCache:
    """Idle worker actors kept alive between the runs of one process (the cells of a study).

    Starting an actor costs a process start, `import torch` and a model build (~2-4 s on these
    2 cores); a study of dozens of short cells spent much of its time there. Actors are keyed by
    their Ray resources (num_cpus, num_gpus): a run borrows matching idle ones, reconfigures them
    for its own config and data (`Worker.configure`), and gives them back when it ends.
    """

    def __init__(self) -> None:
        self._idle: dict[tuple[float, float], list[Any]] = defaultdict(list)
        self._lock = threading.Lock()

    def take(self, key: tuple[float, float], count: int) -> list[Any]:
        """Up to `count` idle actors with these resources. Idle actors of other shapes are killed:
        they hold CPUs/GPUs that the caller's fresh actors may need (else they would wait forever)."""
        with self._lock:
            idle = self._idle.pop(key, [])
            taken, rest = idle[:count], idle[count:]
            others = [a for actors in self._idle.values() for a in actors]
            self._idle.clear()
            if rest:
                self._idle[key] = rest
        for actor in others:
            ray.kill(actor)
        return taken

    def give(self, key: tuple[float, float], actors: list[Any]) -> None:
        with self._lock:
            self._idle[key].extend(actors)

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def clear(self) -> None:
        with self._lock:
            actors = [a for idle in self._idle.values() for a in idle]
            self._idle.clear()
        for actor in actors:
            ray.kill(actor)


class RayExecutor:
    def __init__(self, cfg: RunConfig, data: FederatedDataset, cache: ActorCache | None = None):
        init_ray(cfg)  # joins or starts Ray, then checks that the actors fit (harness.engine.cluster)
        self.cfg = cfg
        self.cache = cache
        self.max_retries = cfg.workers.max_retries
        self.num_workers = cfg.workers.num_workers
        self._key = (float(cfg.workers.num_cpus), float(cfg.workers.num_gpus))
        self._data_ref = ray.put(data)
        self._remote = ray.remote(num_cpus=cfg.workers.num_cpus, num_gpus=cfg.workers.num_gpus)(ActorWorker)
        self.retries = 0
        reused = cache.take(self._key, self.num_workers) if cache is not None else []
        fresh = [self._new_actor() for _ in range(self.num_workers - len(reused))]
        self.actors = reused + fresh
        ready = [a.configure.remote(*self._worker_args()) for a in reused] + [a.ping.remote() for a in fresh]
        for slot, ref in enumerate(ready):
            try:
                ray.get(ref)
            except (RayActorError, ActorDiedError, ActorUnavailableError):
                if slot >= len(reused):
                    raise
                self.actors[slot] = self._new_actor()  # a cached actor that died meanwhile
                ray.get(self.actors[slot].ping.remote())

    def _worker_args(self) -> tuple:
        return self.cfg.model_dump(mode="json"), self._data_ref, max(1, int(self.cfg.workers.num_cpus))

    def _new_actor(self):
        return self._remote.remote(*self._worker_args())

    def map(self, method: str, batches: list[list[Any]]) -> list[list[Any]]:
        return self.collect(method, batches, self.submit(method, batches))

    def submit(self, method: str, batches: list[list[Any]]) -> dict[int, tuple[Any, Any]]:
        """Batch i goes to worker i % W; returns {i: (actor, ObjectRef)}."""
        inflight = {}
        for i, batch in enumerate(batches):
            actor = self.actors[i % self.num_workers]
            inflight[i] = (actor, getattr(actor, method).remote(batch))
        return inflight

    def collect(self, method: str, batches: list[list[Any]], inflight: dict[int, tuple[Any, Any]]) -> list[list[Any]]:
        results: dict[int, list[Any]] = {}
        attempts = dict.fromkeys(inflight, 0)
        while inflight:
            for i, (actor, ref) in list(inflight.items()):
                try:
                    results[i] = ray.get(ref)
                    del inflight[i]
                except (RayActorError, ActorDiedError, ActorUnavailableError) as err:
                    attempts[i] += 1
                    self.retries += 1
                    if attempts[i] > self.max_retries:
                        from harness.engine.rounds import RunFailed

                        last = (str(err).strip().splitlines() or [type(err).__name__])[0]
                        raise RunFailed(f"batch {i}: its worker died {attempts[i]} time(s), more than "
                                        f"workers.max_retries={self.max_retries}; last error: {last}") from err
                    slot = i % self.num_workers
                    log.warning("worker %d died (%s); re-running its %d clients on a new worker",
                                slot, type(err).__name__, len(batches[i]))
                    if self.actors[slot] is actor:  # not yet replaced because of another batch
                        self.actors[slot] = self._new_actor()
                    inflight[i] = (self.actors[slot], getattr(self.actors[slot], method).remote(batches[i]))
        return [results[i] for i in range(len(batches))]

    def shutdown(self) -> None:
        """Kill the actors, or hand them back to the cache for the next run to reuse."""
        if self.cache is not None:
            self.cache.give(self._key, self.actors)
        else:
            for a in self.actors:
                ray.kill(a)
        self.actors = []


class WarmingExecutor:
    """A local Ray started in the background while the first rounds train in this process.

    Starting a local Ray and its actors (ray.init, the actor processes, `import torch` and the model in each)
    takes 8-10 s on 2 cores, and a run used to wait for all of it before its first round. Here a thread starts
    it (a RayExecutor) while `map` runs each call in-process; once the actors are up, every later call goes to
    them. A client's training depends only on (seed, round, client), and every algorithm gives the same numbers
    in-process and on Ray (tests/test_every_algorithm.py), so where a round ran never shows in the results.
    Used only where nothing can go wrong later that would have failed at once before, and where the driver trains
    on the device the actors use: a local cluster started by this run, on the CPU (`make_executor` decides).
    """

    def __init__(self, cfg: RunConfig, data: FederatedDataset):
        if threading.current_thread() is threading.main_thread():
            # ray.init sets this only when it runs on the main thread: SIGTERM (kill, a scheduler's preemption)
            # must still end the run through SystemExit, which the engine records as KILLED and resumable
            signal.signal(signal.SIGTERM, _exit_on_sigterm)
        logging.getLogger("ray._private.worker").addFilter(_SIGTERM_NOTICE)  # ...and says it did not, in a warning
        self.num_workers = cfg.workers.num_workers
        self.local = InProcessExecutor(cfg, data)
        self.remote: RayExecutor | None = None
        self.error: BaseException | None = None
        self.calls_in_process = 0
        self.calls_on_ray = 0
        self._thread = threading.Thread(target=self._start, args=(cfg, data), name="fedharness-ray-start", daemon=True)
        self._thread.start()

    def _start(self, cfg: RunConfig, data: FederatedDataset) -> None:
        try:
            self.remote = RayExecutor(cfg, data)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread by the next map
            self.error = err

    def map(self, method: str, batches: list[list[Any]]) -> list[list[Any]]:
        if self._thread.is_alive():
            self.calls_in_process += 1
            return self.local.map(method, batches)
        if self.error is not None:
            raise self.error
        self.calls_on_ray += 1
        return self.remote.map(method, batches)

    def shutdown(self) -> None:
        """Waits for a start still under way (its processes must be known to be ended), then ends both. A Ctrl-C or
        SIGTERM meanwhile does not cut the wait short (Ray's processes would outlive us); harness.interrupts keeps the
        Ctrl-C for the engine, and the run's status was decided before this call."""
        while self._thread.is_alive():
            try:
                self._thread.join(0.2)
            except (KeyboardInterrupt, SystemExit):
                log.warning("still waiting for the background Ray start to finish, to end its processes")
        if self.remote is not None:
            self.remote.shutdown()
        self.local.shutdown()


def _exit_on_sigterm(signum, frame) -> None:
    sys.exit(signum)  # what ray.init's own handler does


class _NoSigtermNotice(logging.Filter):
    """Drops ray.init's warning that it set no SIGTERM handler off the main thread (WarmingExecutor sets one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SIGTERM handler is not set")


_SIGTERM_NOTICE = _NoSigtermNotice()


__all__ = ["ActorCache", "InProcessExecutor", "RayExecutor", "WarmingExecutor", "init_ray", "make_executor",
           "shutdown_ray"]


def make_executor(cfg: RunConfig, data: FederatedDataset, cache: ActorCache | None = None):
    """In-process (workers.use_ray=false); a Ray pool, its actors taken from `cache` where given; for a run that
    starts its own local Ray (no cache, no cluster address, no GPUs, training on the CPU, Ray not started yet,
    workers.warm_start), a WarmingExecutor: the first rounds in-process while Ray starts."""
    if not cfg.workers.use_ray:
        return InProcessExecutor(cfg, data)
    if (cache is None and cfg.workers.warm_start and not cfg.workers.address and cfg.workers.num_gpus == 0
            and resolve_device(cfg.device).type == "cpu" and not ray.is_initialized()):
        # CPU only: actors without a GPU share train on the CPU, and so must the driver's rounds (device=auto on a
        # machine with CUDA would put those on the GPU, whose floats differ)
        return WarmingExecutor(cfg, data)
    return RayExecutor(cfg, data, cache)

"""Worker actors reused across runs (a study's cells) give the numbers of fresh ones."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import ray

from harness.engine import run
from harness.engine.executor import ActorCache, make_executor
from partitions import build_federated_dataset
from tests.conftest import metrics_history, small_config


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_reused_actors_give_the_numbers_of_fresh_actors(tmp_path, ray_session):
    cache = ActorCache()
    seen_actors = []

    def factory(cfg, data):
        executor = make_executor(cfg, data, cache=cache)
        seen_actors.append(executor.actors[0]._actor_id.hex())
        return executor

    # different algorithms, models and partitions one after the other through the same actor
    specs = [("algorithm.name=fedala", "partition.alpha=0.3"),
             ("algorithm.name=fedrod", "model.options.hidden=16"),
             ("algorithm.name=ditto", "partition.num_clients=14")]
    common = ("workers.use_ray=true", "workers.num_workers=1", "rounds=2")
    try:
        reused = [run(small_config(tmp_path / f"r{i}", *common, *s), progress=False, executor_factory=factory)
                  for i, s in enumerate(specs)]
        assert len(set(seen_actors)) == 1 and len(cache) == 1  # one actor served all three runs
    finally:
        cache.clear()
    assert len(cache) == 0
    fresh = [run(small_config(tmp_path / f"f{i}", *common, *s), progress=False) for i, s in enumerate(specs)]
    for a, b in zip(reused, fresh, strict=True):
        assert metrics_history(a) == metrics_history(b)
        np.testing.assert_array_equal(a.global_vec, b.global_vec)


def test_a_dead_cached_actor_is_replaced(tmp_path, ray_session):
    cache = ActorCache()
    cfg = small_config(tmp_path, "workers.use_ray=true", "workers.num_workers=1", "rounds=1")
    try:
        first = run(cfg, progress=False, executor_factory=lambda c, d: make_executor(c, d, cache=cache))
        (dead,) = cache.take((1.0, 0.0), 1)
        ray.kill(dead, no_restart=True)
        cache.give((1.0, 0.0), [dead])
        second = run(small_config(tmp_path / "again", "workers.use_ray=true", "workers.num_workers=1", "rounds=1"),
                     progress=False, executor_factory=lambda c, d: make_executor(c, d, cache=cache))
        assert metrics_history(first) == metrics_history(second)
        assert len(cache) == 1
    finally:
        cache.clear()


def test_idle_actors_of_another_shape_are_killed_to_free_their_cpus(tmp_path, ray_session):
    """Two idle 1-CPU actors fill the 2-CPU test cluster; a run asking for 0.5-CPU actors must not
    wait forever for CPUs that idle actors hold."""
    import time

    cache = ActorCache()
    cfg = small_config(tmp_path, "workers.use_ray=true", "workers.num_workers=2", "rounds=1")
    try:
        run(cfg, progress=False, executor_factory=lambda c, d: make_executor(c, d, cache=cache))
        assert len(cache) == 2
        assert cache.take((0.5, 0.0), 2) == [] and len(cache) == 0
        deadline = time.time() + 30
        while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
            time.sleep(0.1)
        assert ray.available_resources().get("CPU", 0) == 2
    finally:
        cache.clear()


def test_ray_actors_run_with_the_allocator_fix(tmp_path, ray_session):
    cfg = small_config(tmp_path, "workers.use_ray=true", "workers.num_workers=2", "rounds=1")
    executor = make_executor(cfg, build_federated_dataset(cfg.data, cfg.partition, cfg.seed))
    try:
        infos = ray.get([a.process_info.remote() for a in executor.actors])
    finally:
        executor.shutdown()
    assert len({i["pid"] for i in infos}) == 2
    assert all(i["allocator_tuned"] == sys.platform.startswith("linux") for i in infos)

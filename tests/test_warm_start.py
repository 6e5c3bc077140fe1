"""Warm start: a run that starts its own local Ray trains its first rounds in-process while Ray and the actors
start, then hands over to the actors; the numbers are those of a run that never used Ray."""

from __future__ import annotations

import signal
import threading

import numpy as np
import pytest
import torch

import harness.engine.executor as executor_module
from harness.config import ConfigError
from harness.engine import run
from harness.engine.cluster import shutdown_ray
from harness.engine.executor import ActorCache, WarmingExecutor, make_executor
from harness.engine.listeners import RoundListener
from tests.conftest import metrics_history, small_config


def test_make_executor_warm_starts_only_a_local_cluster_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(executor_module, "WarmingExecutor", lambda cfg, data: "warm")
    monkeypatch.setattr(executor_module, "RayExecutor", lambda cfg, data, cache=None: "wait")
    monkeypatch.setattr(executor_module.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def made(*overrides, cache=None):
        cfg = small_config(tmp_path, "workers.use_ray=true", "workers.warm_start=true", *overrides)  # the default
        return make_executor(cfg, None, cache=cache)

    assert made() == "warm"
    assert made("workers.warm_start=false") == "wait"
    assert made("workers.address=auto") == "wait"  # a cluster to join: its errors must come before round 1
    assert made("workers.num_gpus=0.5") == "wait"
    assert made(cache=ActorCache()) == "wait"  # a study's actors, already up
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert made() == "wait"  # device=auto would train the driver's rounds on a GPU, the actors' on the CPU
    assert made("device=cpu") == "warm"
    monkeypatch.setattr(executor_module.ray, "is_initialized", lambda: True)
    assert made() == "wait"  # Ray already running: nothing to wait for


def test_a_failed_background_start_is_raised_by_the_next_call(tmp_path, monkeypatch):
    def refuse(self, cfg, data, cache=None):
        raise ConfigError("no Ray for this run")

    monkeypatch.setattr(executor_module.RayExecutor, "__init__", refuse)
    with pytest.raises(ConfigError, match="no Ray for this run"):
        run(small_config(tmp_path, "workers.use_ray=true", "rounds=200"), progress=False,
            executor_factory=WarmingExecutor)


@pytest.mark.slow  # starts a local Ray (~15-30 s): CI runs it after the default suite
def test_a_warm_start_hands_over_to_the_actors_with_unchanged_numbers(tmp_path, monkeypatch):
    """Rounds 1-2 run in-process (Ray's start is held back until round 2 ends), rounds 3-4 on the actors."""
    gate = threading.Event()
    start = WarmingExecutor._start

    def held_back(self, cfg, data):
        gate.wait(300)
        start(self, cfg, data)

    monkeypatch.setattr(WarmingExecutor, "_start", held_back)
    made: list[WarmingExecutor] = []

    def factory(cfg, data):
        made.append(WarmingExecutor(cfg, data))
        assert signal.getsignal(signal.SIGTERM) is executor_module._exit_on_sigterm  # SIGTERM -> SystemExit
        return made[-1]

    class ReleaseAfterRound2(RoundListener):
        def on_round(self, record):
            if record.round == 2:
                gate.set()
                made[0]._thread.join(300)  # the actors are up before round 3

    saved = signal.getsignal(signal.SIGTERM)
    overrides = ("rounds=4", "workers.num_workers=2")
    try:
        warm = run(small_config(tmp_path / "warm", "workers.use_ray=true", *overrides), progress=False,
                   executor_factory=factory, listeners=[ReleaseAfterRound2()])
    finally:
        gate.set()
        signal.signal(signal.SIGTERM, saved)
        shutdown_ray()
    executor = made[0]
    assert executor.error is None and executor.remote is not None
    assert executor.calls_in_process == 4  # train + evaluate of rounds 1 and 2
    assert executor.calls_on_ray == 4  # train + evaluate of rounds 3 and 4
    assert executor.remote.actors == []  # ended with the run
    local = run(small_config(tmp_path / "local", *overrides), progress=False)
    assert metrics_history(warm) == metrics_history(local)
    assert np.array_equal(warm.global_vec, local.global_vec)

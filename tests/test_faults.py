"""Nothing lost: dead workers are replaced, killed drivers resume, diverging clients follow policy."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
from mlflow.tracking import MlflowClient

from harness.engine import RunFailed, resume, run
from harness.engine.executor import InProcessExecutor, RayExecutor
from tests.conftest import ROOT, metrics_history, small_config


def _metrics(result):
    return metrics_history(result)


class KillOnceExecutor(RayExecutor):
    """Kills worker 0 right after round 2's batches are submitted, while they are in flight."""

    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.train_calls = 0

    def map(self, method, batches):
        inflight = self.submit(method, batches)
        if method == "train":
            self.train_calls += 1
            if self.train_calls == 2:
                ray.kill(inflight[0][0], no_restart=True)
        return self.collect(method, batches, inflight)


def test_worker_killed_mid_round_is_retried_and_results_are_unchanged(tmp_path, ray_session):
    overrides = ["workers.use_ray=true", "workers.num_workers=2", "rounds=3", "partition.num_clients=20",
                 "train.local_epochs=3"]
    calm = run(small_config(tmp_path / "calm", *overrides), progress=False)
    executors = []

    def factory(cfg, data):
        executors.append(KillOnceExecutor(cfg, data))
        return executors[-1]

    disturbed = run(small_config(tmp_path / "kill", *overrides), progress=False, executor_factory=factory)
    assert executors[0].retries >= 1
    assert _metrics(calm) == _metrics(disturbed)
    np.testing.assert_array_equal(calm.global_vec, disturbed.global_vec)


@pytest.mark.parametrize("backend", ["memory", "disk"])
def test_resume_after_stop_equals_uninterrupted_run(tmp_path, backend):
    overrides = ["tracking.enabled=true", "rounds=4", "algorithm.name=local", f"store.backend={backend}"]
    whole = run(small_config(tmp_path / "whole", *overrides), progress=False)
    cfg = small_config(tmp_path / "cut", *overrides)
    first = run(cfg, progress=False, stop_after=2)
    assert len(first.history) == 2
    assert MlflowClient(cfg.tracking.uri).get_run(first.run_id).info.status == "RUNNING"
    resumed = resume(first.run_id, cfg.checkpoint_dir, progress=False)
    assert resumed.run_id == first.run_id
    assert _metrics(resumed) == _metrics(whole)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
    client = MlflowClient(cfg.tracking.uri)
    assert client.get_run(first.run_id).info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(first.run_id, "personal_acc")] == [1, 2, 3, 4]


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_driver_killed_by_sigkill_resumes_to_the_same_numbers(tmp_path):
    spec = tmp_path / "spec.yaml"
    ckpt = tmp_path / "ckpt"
    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=12", "algorithm.name=fedavg",
                       "store.backend=disk", "train.local_epochs=4")
    spec.write_text(json.dumps(cfg.model_dump(mode="json")))  # JSON is YAML
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", str(spec)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meta = None
    deadline = time.time() + 120
    while time.time() < deadline:
        metas = list(Path(ckpt).glob("*/meta.json"))
        if metas:
            try:
                meta = json.loads(metas[0].read_text())
            except json.JSONDecodeError:
                meta = None
            if meta and meta["done_round"] >= 1:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert meta is not None, "the run never checkpointed"
    run_id = metas[0].parent.name
    done = json.loads((ckpt / run_id / "meta.json").read_text())["done_round"]
    assert done < 11, "the run finished before it could be killed; make it longer"
    resumed = resume(run_id, str(ckpt), progress=False)
    whole = run(small_config(tmp_path / "whole", "tracking.enabled=true", "rounds=12", "algorithm.name=fedavg",
                             "store.backend=disk", "train.local_epochs=4"), progress=False)
    assert _metrics(resumed) == _metrics(whole)


def test_diverging_client_is_dropped_under_drop_policy(tmp_path):
    # lr=1e4: 3 of the 5 sampled clients diverge, 2 survive (with every client diverged the run now fails:
    # tests/test_adversarial_input.py)
    result = run(small_config(tmp_path, "train.lr=1e4", "rounds=1", "nan_policy=drop"), progress=False)
    h = result.history[0]
    assert h["clients_nonfinite"] > 0 and h["clients_kept"] > 0
    assert h["clients_kept"] == h["clients_trained"] - h["clients_nonfinite"]
    assert np.isfinite(result.global_vec).all()


def test_diverging_client_fails_the_run_with_reason_under_fail_policy(tmp_path):
    cfg = small_config(tmp_path, "train.lr=1e12", "rounds=2", "nan_policy=fail", "tracking.enabled=true")
    with pytest.raises(RunFailed, match="produced NaN/inf"):
        run(cfg, progress=False)
    client = MlflowClient(cfg.tracking.uri)
    mlrun = client.search_runs([client.get_experiment_by_name("tests").experiment_id])[0]
    assert mlrun.info.status == "FAILED"
    assert "NaN/inf" in mlrun.data.tags["fedharness.failure"]


def test_resume_without_mlflow_uses_the_same_checkpoint(tmp_path):
    overrides = ["rounds=3", "algorithm.name=local"]  # small_config: tracking disabled
    whole = run(small_config(tmp_path / "whole", *overrides), progress=False)
    cfg = small_config(tmp_path / "cut", *overrides)
    first = run(cfg, progress=False, stop_after=1)
    resumed = resume(first.run_id, cfg.checkpoint_dir, progress=False)
    assert resumed.run_id == first.run_id
    assert _metrics(resumed) == _metrics(whole)


class CrashInRound5(InProcessExecutor):
    def __init__(self, cfg, data):
        super().__init__(cfg, data)
        self.train_calls = 0

    def map(self, method, batches):
        if method == "train":
            self.train_calls += 1
            if self.train_calls == 5:
                raise RuntimeError("simulated crash in round 5")
        return super().map(method, batches)


def test_memory_store_with_checkpoint_every_replays_rounds_since_the_snapshot(tmp_path):
    """checkpoint_every=3: a crash in round 5 leaves the round-3 snapshot; resume replays 4-6 and
    ends with the numbers of an uninterrupted run."""
    overrides = ["rounds=6", "algorithm.name=fedobp", "store.backend=memory", "checkpoint_every=3"]
    whole = run(small_config(tmp_path / "whole", *overrides), progress=False)
    cfg = small_config(tmp_path / "cut", *overrides)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, progress=False, executor_factory=CrashInRound5)
    (meta_path,) = Path(cfg.checkpoint_dir).glob("*/meta.json")
    assert json.loads(meta_path.read_text())["done_round"] == 2  # round 3 (0-based 2), not round 4
    resumed = resume(meta_path.parent.name, cfg.checkpoint_dir, progress=False)
    assert _metrics(resumed) == _metrics(whole)
    np.testing.assert_array_equal(resumed.global_vec, whole.global_vec)
    rows = resumed.client_log
    assert sorted(rows["round"].unique()) == [1, 2, 3, 4, 5, 6]
    assert not rows.duplicated(["round", "client"]).any()  # replayed rounds are not logged twice


def test_a_run_that_dies_in_round_1_is_resumable(tmp_path):
    cfg = small_config(tmp_path, "rounds=2")

    class CrashAtOnce(InProcessExecutor):
        def map(self, method, batches):
            raise RuntimeError("simulated crash in round 1")

    with pytest.raises(RuntimeError, match="simulated crash"):
        run(cfg, progress=False, executor_factory=CrashAtOnce)
    (meta_path,) = Path(cfg.checkpoint_dir).glob("*/meta.json")
    assert json.loads(meta_path.read_text())["done_round"] == -1
    resumed = resume(meta_path.parent.name, cfg.checkpoint_dir, progress=False)
    whole = run(small_config(tmp_path / "whole", "rounds=2"), progress=False)
    assert _metrics(resumed) == _metrics(whole)


def test_a_swallowed_ctrl_c_still_stops_the_run_at_the_next_round(tmp_path):
    """The SIGINT handler records the request; even if its KeyboardInterrupt is swallowed (here by
    the executor), the engine stops at the next round, the run ends KILLED and stays resumable."""
    from harness import interrupts

    class SwallowsCtrlC(InProcessExecutor):
        train_calls = 0

        def map(self, method, batches):
            SwallowsCtrlC.train_calls += method == "train"
            if method == "train" and SwallowsCtrlC.train_calls == 2:  # during round 2
                try:
                    interrupts._handler(signal.SIGINT, None)  # what Ctrl-C runs
                except KeyboardInterrupt:
                    pass  # a library that catches too broadly
            return super().map(method, batches)

    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=5")
    try:
        with pytest.raises(KeyboardInterrupt):
            run(cfg, progress=False, executor_factory=SwallowsCtrlC)
    finally:
        interrupts.reset()
    (meta_path,) = Path(cfg.checkpoint_dir).glob("*/meta.json")
    run_id = meta_path.parent.name
    assert json.loads(meta_path.read_text())["done_round"] == 1  # round 2 finished, round 3 never started
    assert MlflowClient(cfg.tracking.uri).get_run(run_id).info.status == "KILLED"
    resumed = resume(run_id, cfg.checkpoint_dir, progress=False)
    whole = run(small_config(tmp_path / "whole", "tracking.enabled=true", "rounds=5"), progress=False)
    assert metrics_history(resumed) == metrics_history(whole)


def test_a_sigterm_mid_run_ends_it_killed_and_resumable_never_finished(tmp_path):
    """Ray's driver turns SIGTERM (`kill`, a scheduler's preemption) into SystemExit. The run used to end
    FINISHED after two of five rounds, with its checkpoint discarded, so a study rerun skipped it as done."""

    class Terminated(InProcessExecutor):
        train_calls = 0

        def map(self, method, batches):
            Terminated.train_calls += method == "train"
            if method == "train" and Terminated.train_calls == 3:  # round 3
                raise SystemExit(signal.SIGTERM)  # what ray's sigterm_handler does: sys.exit(signum)
            return super().map(method, batches)

    cfg = small_config(tmp_path, "tracking.enabled=true", "rounds=5")
    with pytest.raises(SystemExit):
        run(cfg, progress=False, executor_factory=Terminated)
    (meta_path,) = Path(cfg.checkpoint_dir).glob("*/meta.json")
    run_id = meta_path.parent.name
    meta = json.loads(meta_path.read_text())
    assert meta["status"] == "RUNNING" and meta["done_round"] == 1
    mlrun = MlflowClient(cfg.tracking.uri).get_run(run_id)
    assert mlrun.info.status == "KILLED" and "SIGTERM" in mlrun.data.tags["fedharness.failure"]
    resumed = resume(run_id, cfg.checkpoint_dir, progress=False)
    whole = run(small_config(tmp_path / "whole", "tracking.enabled=true", "rounds=5"), progress=False)
    assert metrics_history(resumed) == metrics_history(whole)

"""Several fedharness processes on one MLflow store at once: nothing crashes, nothing runs twice.

Each case starts real `fedharness` processes (in-process workers, so that 8 at once fit on 2 cores)
and asserts on what MLflow and the checkpoint folder hold afterwards.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

RUN = {"name": "conc", "seed": 0, "rounds": 2, "join_ratio": 0.5, "eval_every": 1, "data": {"source": "digits"},
       "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_samples": 10},
       "model": {"name": "mlp", "options": {"hidden": 16}}, "train": {"local_epochs": 1, "batch_size": 16},
       "workers": {"num_workers": 1, "use_ray": False}}


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness.cli", *args], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float = 900) -> list[tuple[int, str]]:
    deadline = time.monotonic() + timeout
    out = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            text, _ = p.communicate()
            text += "\n(HUNG: killed by the test)"
        out.append((p.returncode, text))
    return out


def _runs(uri: str, experiment: str) -> list:
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`fedharness.config_hash` != ''", max_results=1000)


def _eight_runs(tmp_path: Path, uri: str, experiment: str) -> None:
    procs = []
    for seed in range(8):
        spec = tmp_path / f"run{seed}.yaml"
        spec.write_text(json.dumps({**RUN, "seed": seed}))  # JSON is YAML
        procs.append(_start(["run", str(spec), "--quiet", "--tracking-uri", uri, f"tracking.experiment={experiment}",
                             f"checkpoint_dir={tmp_path}/ckpt", f"partition.cache_dir={tmp_path}/cache"]))
    t0 = time.monotonic()
    results = _finish(procs)
    wall = time.monotonic() - t0
    for code, text in results:
        assert code == 0 and "Traceback" not in text, text[-3000:]
    runs = _runs(uri, experiment)
    assert len(runs) == 8 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(int(r.data.tags["fedharness.seed"]) for r in runs) == list(range(8))
    assert not list((tmp_path / "ckpt").glob("*/meta.json"))  # finished runs leave no checkpoint behind
    print(f"8 concurrent runs: {wall:.1f} s")


@pytest.mark.slow  # a real multi-process scenario (~30-100 s): CI runs it after the default suite
def test_eight_runs_at_once_on_a_fresh_sqlite_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/fresh/mlflow.db"  # neither the folder nor the database exists yet
    _eight_runs(tmp_path, uri, "conc")


@pytest.mark.slow  # ~1 min on 2 quiet cores; the fresh-store case above also races on the experiment
def test_eight_runs_at_once_on_a_new_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).search_experiments()  # the store exists; the experiment does not
    _eight_runs(tmp_path, uri, "brand-new")
    assert len([e for e in MlflowClient(uri).search_experiments() if e.name == "brand-new"]) == 1


def test_the_same_study_twice_at_once_runs_each_cell_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    spec = tmp_path / "twice.yaml"
    spec.write_text(json.dumps({"name": "twice", "base": {**RUN, "rounds": 3},
                                "grid": {"algorithm.name": ["fedavg", "local"], "seed": [0, 1]}}))
    args = ["study", str(spec), "--tracking-uri", uri, "--quiet", "--no-table", f"checkpoint_dir={tmp_path}/ckpt",
            f"partition.cache_dir={tmp_path}/cache"]
    results = _finish([_start(args), _start(args)])
    for code, text in results:
        assert code == 0 and "Traceback" not in text, text[-3000:]
    runs = _runs(uri, "twice")
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}  # 4 cells, 4 runs
    assert len({r.data.tags["fedharness.config_hash"] for r in runs}) == 4
    ran = [int(re.search(r"finished, (\d+) run, ", text).group(1)) for _, text in results]
    assert sum(ran) == 4, [t for _, t in results]
    assert not list((tmp_path / "ckpt").glob("*/meta.json"))

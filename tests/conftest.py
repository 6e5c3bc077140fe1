"""Shared fixtures. One local Ray cluster per pytest session (starting one costs ~4 s)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(sub: str) -> Path:
    """Path into ../shared/data; skips the test with a clear reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real offline data {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # address="local": our own cluster, never one that happens to run on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    yield ray
    ray.shutdown()


@pytest.fixture
def tmp_tracking(tmp_path):
    """Overrides that send a run's MLflow records and checkpoints into the test's tmp dir."""
    return [f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"checkpoint_dir={tmp_path}/ckpt",
            f"partition.cache_dir={tmp_path}/cache"]


def small_config(tmp_path, *overrides: str, **fields):
    """A fast digits run spec (in-process workers unless overridden)."""
    from harness.config import load_config

    base = {
        "name": "test", "seed": 0, "rounds": 3, "join_ratio": 0.5, "eval_every": 1,
        "data": {"source": "digits"},
        "partition": {"scheme": "dirichlet", "num_clients": 10, "alpha": 0.5, "min_samples": 10,
                      "cache_dir": str(tmp_path / "cache")},
        "model": {"name": "mlp", "options": {"hidden": 32}},
        "train": {"local_epochs": 1, "batch_size": 16, "lr": 0.05},
        # warm_start off: a test that asks for Ray means the actors (tests/test_warm_start.py turns it on)
        "workers": {"num_workers": 2, "use_ray": False, "warm_start": False},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db", "experiment": "tests", "enabled": False},
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    for key, value in fields.items():
        base[key] = value
    return load_config(base, list(overrides))



class OneWorker:
    """One algorithm on digits with one in-process worker (model + trainer), the algorithm instance the worker
    holds and the run's initial global vector: the client side of a mechanism test, without an engine."""

    def __init__(self, tmp_path, algo: str, *overrides: str, data=None):
        from harness.engine.worker import Worker, build_algorithm
        from partitions import build_federated_dataset

        self.cfg = small_config(tmp_path, f"algorithm.name={algo}", *overrides)
        self.data = data if data is not None else build_federated_dataset(self.cfg.data, self.cfg.partition,
                                                                          self.cfg.seed)
        self.worker = Worker(self.cfg.model_dump(mode="json"), self.data)
        self.algo, self.trainer, self.spec = self.worker.algo, self.worker.trainer, self.worker.algo.spec
        _, _, self.init = build_algorithm(self.cfg, self.data)
        self.batch = self.cfg.train.batch_size

#: What an algorithm needs beyond small_config to run on digits at all: FedBN keeps the BatchNorm layers
#: personal and refuses a model without them.
NEEDS_ON_DIGITS: dict[str, tuple[str, ...]] = {"fedbn": ("model.options.batchnorm=true",)}

#: Where an algorithm's own step sizes (not train.lr) set the pace, or its defaults are meant for hundreds of
#: rounds and larger cohorts, the two-round learning check uses faster values; each default itself is tested
#: against its paper elsewhere. DP-FedAvg's noise std z*S/|S_t| is 0.1 per weight with 10 clients at z=1
#: (more than a tiny MLP's weights); q-FFL's h_k grows with ||Δw||² (q=1 barely moves after 3 epochs at lr
#: 0.1); FedAdagrad/FedYogi's first steps are eta*(1-beta1) per coordinate; Per-FedAvg trains with alpha/beta.
FAST_LEARNING: dict[str, tuple[str, ...]] = {
    **NEEDS_ON_DIGITS,
    "dpfedavg": ("algorithm.noise_multiplier=0.01",),
    "qffl": ("algorithm.q=0.01",),
    "fedadagrad": ("algorithm.server_lr=0.3",),
    "fedyogi": ("algorithm.server_lr=0.03",),
    "perfedavg_fo": ("algorithm.alpha=0.1", "algorithm.beta=0.2"),
    "perfedavg_hf": ("algorithm.alpha=0.1", "algorithm.beta=0.2"),
}


def metrics_history(result, drop: tuple[str, ...] = ("wall_round_time",)) -> list[dict]:
    """A run's per-round metrics in a form `==` can compare: wall-clock times dropped and NaN
    (global_* of an algorithm without a global model) replaced by None, since NaN != NaN."""
    return [{k: (None if v != v else v) for k, v in h.items() if k not in drop} for h in result.history]


@pytest.fixture(scope="module")
def actors(ray_session):
    """An executor factory whose Ray actors are reused by every run of the module (reconfigured, not restarted)."""
    from harness.engine.executor import ActorCache, make_executor

    cache = ActorCache()
    yield lambda cfg, data: make_executor(cfg, data, cache=cache)
    cache.clear()


def runs_everywhere(tmp_path, *overrides: str, actors, one_worker: bool = True) -> dict:
    """The same small run in-process, on Ray, with the disk store (under tmp_path/store), with one worker, and
    stopped after round 2 then resumed; asserts that all give identical metrics and global vectors."""
    import numpy as np

    from harness.engine import resume, run

    out = {"local": run(small_config(tmp_path / "local", *overrides), progress=False),
           "ray": run(small_config(tmp_path / "ray", *overrides, "workers.use_ray=true"), progress=False,
                      executor_factory=actors),
           "disk": run(small_config(tmp_path / "disk", *overrides, "store.backend=disk",
                                    f"store.path={tmp_path}/store"), progress=False)}
    if one_worker:
        out["one"] = run(small_config(tmp_path / "one", *overrides, "workers.num_workers=1"), progress=False)
    cut = small_config(tmp_path / "cut", *overrides)
    first = run(cut, progress=False, stop_after=2)
    out["resumed"] = resume(first.run_id, cut.checkpoint_dir, progress=False)
    history = metrics_history(out["local"])
    for name, other in out.items():
        assert metrics_history(other) == history, name
        assert np.array_equal(other.global_vec, out["local"].global_vec), name
    return out

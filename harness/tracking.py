"""MLflow tracking: one MLflow run per fedharness run.

Params are the flattened config, each round's metrics go in one `log_batch` (one SQLite
transaction instead of one per value), tags identify the code (git commit, package
version) and the experiment (config hash). Default store: sqlite:///mlruns/mlflow.db.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import harness
from harness.config import RunConfig

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_CHARS = 6000


def tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, creating it if needed; with a SQLite store its artifacts live beside the
    database (MLflow's default is ./mlruns under whatever the current directory happens to be)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).resolve()
        location = (db.parent / "artifacts" / re.sub(r"[^A-Za-z0-9_.-]", "_", name)).as_uri()
    return client.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


class Tracker:
    def __init__(self, cfg: RunConfig, tags: dict[str, str] | None = None, run_id: str | None = None):
        self.uri = tracking_uri(cfg.tracking.uri)
        self.client = MlflowClient(self.uri)
        if run_id is None:
            exp_id = ensure_experiment(self.client, self.uri, cfg.tracking.experiment)
            all_tags = {
                "mlflow.runName": cfg.name,
                "fedharness.version": harness.__version__,
                "fedharness.config_hash": cfg.config_hash(),
                "fedharness.algorithm": cfg.algorithm.name,
                "fedharness.dataset": cfg.data.source,
                "fedharness.partition": partition_label(cfg),
                "fedharness.budget": budget_label(cfg),
                "fedharness.seed": str(cfg.seed),
                "mlflow.source.git.commit": git_commit(),
                **(tags or {}),
            }
            run = self.client.create_run(exp_id, tags=all_tags)
            self.run_id = run.info.run_id
            params = [Param(k, _param_value(v)) for k, v in cfg.flat().items()]
            for i in range(0, len(params), 100):
                self.client.log_batch(self.run_id, params=params[i : i + 100])
        else:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")

    def log_round(self, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(batch), 1000):
            self.client.log_batch(self.run_id, metrics=batch[i : i + 1000])

    def set_tags(self, tags: dict[str, str]) -> None:
        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def end(self, status: str = "FINISHED", reason: str | None = None) -> None:
        if reason:
            self.set_tags({"fedharness.failure": reason[:4000]})
        self.client.set_terminated(self.run_id, status=status)


def partition_label(cfg: RunConfig) -> str:
    p = cfg.partition
    detail = {"dirichlet": f"alpha={p.alpha}", "pathological": f"k={p.classes_per_client}",
              "shards": f"shards={p.shards_per_client}", "quantity": f"{p.quantity_distribution}"}.get(p.scheme, "")
    label = f"{p.scheme}({detail})" if detail else p.scheme
    if p.feature_shift.kind != "none":
        label += f"+{p.feature_shift.kind}"
    return f"{label},n={p.num_clients}"


def budget_label(cfg: RunConfig) -> str:
    b = cfg.budget
    if b.mode == "deadline":
        return f"deadline={b.deadline_s}s" + ("" if b.partial_work else ",drop")
    if b.mode == "overcommit":
        return f"overcommit={b.overcommit}"
    return f"fixed,{b.devices.distribution}"


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."

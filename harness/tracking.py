"""MLflow tracking: one MLflow run per fedharness run.

Params are the flattened config, each round's metrics go in one `log_batch` (one SQLite
transaction instead of one per value), tags identify the code (git commit, package
version) and the experiment (config hash). Default store: sqlite:///mlruns/mlflow.db.

Several processes may share one store (`fedharness run` x 8, two studies): MLflow itself does not
serialise creating and migrating a new SQLite database or creating an experiment, so both happen
under an inter-process file lock beside the database (`store_lock`), an experiment is got-or-created,
and every MLflow call is retried while SQLite answers "database is locked" (`mlflow_client`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import yaml
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import harness
from harness.config import RunConfig
from harness.engine.listeners import RoundListener, RoundRecord, RunStart
from partitions import scheme_label

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (one process per store)
    fcntl = None

if TYPE_CHECKING:
    from harness.engine.run import RunResult

DEFAULT_URI = "sqlite:///mlruns/mlflow.db"
MAX_PARAM_CHARS = 6000


def tracking_uri(uri: str | None) -> str:
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return uri


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
LOCKED = ("database is locked", "database table is locked")
RETRY_DELAYS = (0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 5.0)  # then the error goes up


def safe_name(name: str) -> str:
    """A file-name component for a user-given name (an experiment's). A name that already is one stays as it
    is; any other (`../../x`, `a/b`, `..`, empty) is cleaned and gets a short hash of the original, so it can
    never reach outside the folder it is put in and two names never share a folder."""
    if SAFE_NAME.fullmatch(name):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-")[:80] or "experiment"
    return f"{cleaned}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@contextlib.contextmanager
def store_lock(uri: str):
    """Hold an inter-process lock on a SQLite store (`<db>.lock` beside the database): what MLflow does not
    serialise itself (creating the tables of a new database, creating an experiment) happens inside it. For
    other stores (a tracking server serialises its own database) it does nothing."""
    if fcntl is None or not uri.startswith("sqlite:///"):
        yield
        return
    db = Path(uri.removeprefix("sqlite:///").split("?", 1)[0])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def mlflow_client(uri: str | None) -> MlflowClient:
    """An MlflowClient for the store at `uri` (default: tracking_uri): a new store is created and migrated by
    one process at a time, and every call is retried while SQLite says the database is locked."""
    uri = tracking_uri(uri)
    with store_lock(uri):
        client = MlflowClient(uri)  # opens (creates, migrates) the store
    return RetryingClient(client)  # type: ignore[return-value]


class RetryingClient:
    """An MlflowClient whose calls are retried (RETRY_DELAYS) while SQLite answers "database is locked";
    SQLite rolls such a transaction back, so a retried call does not happen twice."""

    def __init__(self, client: MlflowClient):
        self._client = client

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            for delay in (*RETRY_DELAYS, None):
                try:
                    return attr(*args, **kwargs)
                except Exception as err:  # noqa: BLE001 - only "database is locked" is retried
                    if delay is None or not any(text in str(err) for text in LOCKED):
                        raise
                    time.sleep(delay)
            raise AssertionError("unreachable")

        return call


#: MLflow 3's UI opens an experiment of this kind on its training runs table
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development"}


def ensure_experiment(client: MlflowClient, uri: str, name: str) -> str:
    """The experiment's id, creating it if needed (get-or-create: several processes may ask for a new
    experiment at once); with a SQLite store its artifacts live beside the database (MLflow's default is
    ./mlruns under whatever the current directory happens to be), in a folder named safe_name(name)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:  # made by an older fedharness: give it the kind too
            for key, value in EXPERIMENT_TAGS.items():
                client.set_experiment_tag(exp.experiment_id, key, value)
        return exp.experiment_id
    with store_lock(uri):
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = None
        if uri.startswith("sqlite:///"):
            db = Path(uri.removeprefix("sqlite:///")).resolve()
            location = (db.parent / "artifacts" / safe_name(name)).as_uri()
        try:  # the kind tag makes MLflow's UI open the experiment on its runs table (not the GenAI overview)
            return client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_TAGS)
        except MlflowException as err:  # created meanwhile by a process that does not take the lock
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
    return client.get_experiment_by_name(name).experiment_id


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
        self.client = mlflow_client(self.uri)
        if run_id is None:
            exp_id = ensure_experiment(self.client, self.uri, cfg.tracking.experiment)
            all_tags = {
                "mlflow.runName": run_name(cfg),
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
        elif status == "FINISHED" and "fedharness.failure" in self.client.get_run(self.run_id).data.tags:
            self.client.delete_tag(self.run_id, "fedharness.failure")  # an earlier attempt's, before a resume
        self.client.set_terminated(self.run_id, status=status)


class MlflowListener(Tracker, RoundListener):
    """The engine's MLflow listener: start artifacts (config, partition) for a new run, one log_batch per
    round, end artifacts (per-client finals, history, client log, curves, best_*) and the end status. A run
    stopped on purpose (stop_after / --until-round) stays RUNNING, resumable."""

    def on_start(self, start: RunStart) -> None:
        self._data = start.data  # for the final model's shapes (log_model)
        self.set_tags({"fedharness.dataset": start.data.name})  # e.g. cifar10_jpeg_blob, not "arrays"
        # a resume replays the rounds since its checkpoint: their metrics are already logged (identical)
        self._logged = {m.key: m.step for m in self.client.get_run(self.run_id).data.to_proto().metrics} \
            if start.resumed else {}
        if not start.resumed:
            self._log_start_artifacts(start)

    def on_round(self, record: RoundRecord) -> None:
        logged = getattr(self, "_logged", {})
        # the evaluation's wall time, next to wall_round_time (which includes it); kept out of the run's history
        # (timings are not results), so histories compare equal across runs
        timed = {"wall_eval_time": record.timings["evaluate"]} if "evaluate" in record.timings else {}
        self.log_round(record.round, {k: v for k, v in {**record.metrics, **timed}.items()
                                      if logged.get(k, 0) < record.round})

    def on_end(self, result: RunResult, status: str, reason: str | None) -> None:
        if status == "FINISHED" and result.final:
            self._log_end_artifacts(result, status)
        if status != "RUNNING":
            self.end(status, reason)

    def _log_start_artifacts(self, start: RunStart) -> None:
        from partitions.stats import partition_summary, save_partition_artifacts

        with tempfile.TemporaryDirectory() as tmp:
            cfg_path = Path(tmp) / "config.yaml"
            cfg_path.write_text(yaml.safe_dump(start.config.model_dump(mode="json"), sort_keys=False))
            self.log_artifact(cfg_path)
            for path in save_partition_artifacts(start.data, Path(tmp)):
                self.log_artifact(path, "partition")
            self.set_tags({f"partition.{k}": v for k, v in partition_summary(start.data).items()})

    def _log_end_artifacts(self, result: RunResult, status: str) -> None:
        from harness.engine.listeners import ClientLog
        from harness.plots import plot_run_curves

        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            if result.clients is not None:
                result.clients.to_csv(tmp / "clients_final.csv", index=False)
                self.log_artifact(tmp / "clients_final.csv")
            pd.DataFrame(result.history).to_csv(tmp / "history.csv", index=False)
            self.log_artifact(tmp / "history.csv")
            if result.client_log is not None:
                result.client_log.to_csv(tmp / ClientLog.NAME, index=False)
                self.log_artifact(tmp / ClientLog.NAME)
            best = {k: v for k, v in result.final.items() if k.startswith("best_")}
            self.log_round(int(result.history[-1]["round"]), best)
            cfg = result.config
            plot_run_curves(result.history, tmp / "accuracy.png", title=f"{cfg.name} — {cfg.algorithm.name}")
            self.log_artifact(tmp / "accuracy.png")
            if cfg.tracking.log_model and result.global_vec is not None:
                for path in self._save_model(result, tmp / "model"):
                    self.log_artifact(path, "model")

    def _save_model(self, result: RunResult, folder: Path) -> list[Path]:
        """The final server model: global.npy (the flat float32 vector), param_spec.json (each tensor's name,
        offset and shape in it) and global_state_dict.pt (torch tensors only: torch.load(..., weights_only=True)
        reads it into harness.models.build_model's model). The personal models live in the per-client states."""
        import json

        import numpy as np
        import torch

        from harness.engine.worker import build_algorithm
        from protocol.params import vector_to_model

        folder.mkdir()
        algo, model, _ = build_algorithm(result.config, self._data)
        vector_to_model(result.global_vec, model, algo.spec)
        np.save(folder / "global.npy", result.global_vec)
        slots = [{"name": s.name, "start": s.start, "stop": s.stop, "shape": list(s.shape)} for s in algo.spec.slots]
        (folder / "param_spec.json").write_text(json.dumps({"size": algo.spec.size, "slots": slots}, indent=1))
        torch.save(model.state_dict(), folder / "global_state_dict.pt")
        return [folder / "global.npy", folder / "param_spec.json", folder / "global_state_dict.pt"]


def run_name(cfg: RunConfig, what: str | None = None, extra: str = "") -> str:
    """The name MLflow lists a run under: what ran (the algorithm, or a study cell's name), its seed, data set and
    partition, most telling first since the UI's run list cuts names at ~25 characters:
    `fedobp · s42 · cifar10 · dirichlet(alpha=0.1)`."""
    parts = [what or cfg.algorithm.name, f"s{cfg.seed}", cfg.data.source, scheme_label(cfg.partition)]
    return " · ".join([*parts, extra] if extra else parts)


def partition_label(cfg: RunConfig) -> str:
    p = cfg.partition
    label = scheme_label(p)
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
